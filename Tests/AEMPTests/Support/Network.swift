import AEMP
@_exported import AEMPTestSupport
import Foundation
import Logging
import NIOCore
import Testing

/// The secret used by every test network (the same as the captured Perl vectors).
let testSecret = "aemp-test-secret"

/// Log level of test nodes: `AEMP_TEST_LOG=debug swift test` shows what the nodes do.
let testLogLevel: Logger.Level = {
    guard let raw = getenv("AEMP_TEST_LOG") else { return .error }
    return Logger.Level(rawValue: String(cString: raw)) ?? .error
}()

/// Builds a node on 127.0.0.1 with short timeouts for tests.
func makeNode(
    id: String, binds: [String] = [], seeds: [String] = [], framings: [Framing] = [.json, .cbor],
    secret: String = testSecret
) throws -> Node {
    var c = NodeConfiguration(secret: secret)
    c.nodeID = id
    c.binds = binds
    c.seeds = seeds
    c.framings = framings
    c.handshakeTimeout = stretched(.seconds(5))
    c.connectTimeout = .milliseconds(Int64(3000 * sanitizerSlowdown))  // connects are slower under a sanitizer
    c.connectInterval = .milliseconds(300)
    c.seedBackoffLimit = .seconds(2)
    c.logger.logLevel = testLogLevel
    return try Node(configuration: c)
}

/// Makes and starts a node that listens where another node of the test just stopped listening.
/// The address was free when the test picked it, but while it was free the kernel may have handed
/// it to another socket for a moment (an outgoing connection's source port, where the ephemeral
/// range reaches below it; a CI run failed so once). Retries `make` on `bindFailed` for up to
/// 10 s (stretched under a sanitizer); any other error is thrown at once.
func startTakingOver(_ address: String, _ make: () throws -> Node) async throws -> Node {
    let deadline = ContinuousClock.now + .milliseconds(Int(10_000 * sanitizerSlowdown))
    while true {
        let node = try make()
        do {
            try await node.start()
            return node
        } catch NodeError.bindFailed(_, let reason) where ContinuousClock.now < deadline {
            await node.shutdown()
            print("\(address) still taken (\(reason)); trying again")
            try await Task.sleep(for: .milliseconds(250))
        }
    }
}

/// Polls `condition` until it holds or `seconds` pass (a condition that throws does not hold yet).
/// The default bound says "it happens", not "promptly" (that is `promptly()`'s job): when the
/// suite starts, some 300 tests start at once on 2 cores and the first 10-20 s crawl.
func eventually(
    within seconds: Double = 30, _ what: String, sourceLocation: SourceLocation = #_sourceLocation,
    _ condition: @Sendable () async throws -> Bool
) async {
    let seconds = seconds * sanitizerSlowdown  // what must happen may take longer under a sanitizer
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while ContinuousClock.now < deadline {
        if (try? await condition()) == true { return }
        try? await Task.sleep(nanoseconds: 20_000_000)
    }
    Issue.record("condition not met within \(seconds) s: \(what)", sourceLocation: sourceLocation)
}
