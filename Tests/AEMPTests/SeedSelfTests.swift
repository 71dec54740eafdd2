import AEMPTestSupport
import Foundation
import Logging
import NIOCore
import Testing

@testable import AEMP

/// Issue 15, item 12: whether a seed is this node is decided from the node's own listen
/// addresses, never from what an unauthenticated peer says in its greeting.
@Suite("Seed self-detection")
struct SeedSelfTests {

    @Test("a fake seed that greets with our own node ID (no valid auth) is refused with a warning; the node stays non-global and keeps retrying it")
    func fakeSeedEchoingOurID() async throws {
        try await ScriptedResources.with { res in
            let fake = res.listener(try await ScriptedListener.start())
            let log = CapturedLog()
            var c = scriptedNodeConfiguration(id: "self-victim-\(UUID().uuidString.prefix(8))", binds: ["127.0.0.1:0"], seeds: [fake.address])
            c.logger = log.logger()
            let node = res.node(try Node(configuration: c))
            try await node.start()

            // The fake seed answers the node's dial with the node's own ID, a fresh nonce, and an
            // auth line whose token is made up: nothing it says is authenticated.
            let first = try await fake.accept(within: 10)
            try await first.write(
                ScriptedPeer.perlGreeting(nodeID: node.id, peerAddr: "127.0.0.1:1") + "\n" + ScriptedPeer.nonce() + "\n"
                    + "hmac_sha3_512;\(String(repeating: "0", count: 128));json\n")
            _ = try await first.waitForClose(within: 5)

            // The refusal's log line, or (the old behaviour) the node turning global on the greeting.
            _ = try await waitFor("the node's verdict on the greeting") {
                let warned = log.records.withLock { $0.contains { $0.level == .warning } }
                let global = await node.withKernel { $0.isGlobal } == true
                return warned || global ? true : nil
            }
            #expect(await node.withKernel { $0.isGlobal } == false, "the node became global on an unauthenticated greeting")
            #expect(await node.master() == nil)
            #expect(await node.withKernel { k in k.seeds.contains { $0.isSelf } } == false, "the fake seed counts as this node")
            let refusal = log.records.withLock { records in
                records.first { $0.level == .warning && $0.metadata["reason"]?.contains("claims this node's ID") == true }
            }
            #expect(refusal?.metadata["reason"]?.contains(node.id) == true, "no warning naming the claim: \(log.records.withLock { $0 })")
            // It keeps dialing its seed (0.6-1.2 s backoff, capped at 2 s here).
            let second = try? await fake.accept(within: 5)
            #expect(second != nil, "the node did not dial its seed again")
            await second?.close()
            #expect(await node.withKernel { $0.isGlobal } == false)
            let global = log.records.withLock { $0.filter { $0.message.contains("global node") || $0.message.contains("seed is this node") } }
            #expect(global.isEmpty, "\(global)")
        }
    }

    @Test("a seed that is one of the node's own listen addresses (literally, or a name resolving to it) makes it global at once, without dialing itself")
    func seedThatIsOurBindAddress() async throws {
        for spelling in ["127.0.0.1", "localhost"] {
            try await ScriptedResources.with { res in
                let port = try freePort()
                let log = CapturedLog()
                var c = scriptedNodeConfiguration(
                    id: "self-seed-\(UUID().uuidString.prefix(8))", binds: ["127.0.0.1:\(port)"], seeds: ["\(spelling):\(port)"])
                c.logger = log.logger()
                let node = res.node(try Node(configuration: c))
                try await node.start()
                _ = try await waitFor("\(spelling): the node is global and its own master") {
                    let global = await node.withKernel { $0.isGlobal } == true
                    let master = await node.master()
                    return global && master == node.id ? true : nil
                }
                #expect(await node.withKernel { k in k.seeds.allSatisfy(\.isSelf) } == true, "\(spelling)")
                // A moment for a dial to itself (which the old code made) to show in the log.
                try await Task.sleep(for: .milliseconds(300))
                let selfTalk = log.records.withLock {
                    $0.filter { ($0.metadata["reason"] ?? "").contains("claims this node's ID") || $0.level >= .warning }
                }
                #expect(selfTalk.isEmpty, "\(spelling): \(selfTalk)")
            }
        }
    }
}

/// Polls `body` until it returns a value; records an issue and throws after `seconds`.
private func waitFor<T: Sendable>(
    within seconds: Double = 10, _ what: String, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: @Sendable () async throws -> T?
) async throws -> T {
    let seconds = seconds * sanitizerSlowdown
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while ContinuousClock.now < deadline {
        if let value = try await body() { return value }
        try? await Task.sleep(nanoseconds: 20_000_000)
    }
    Issue.record("not within \(seconds) s: \(what)", sourceLocation: sourceLocation)
    throw TestTimeout(what: what)
}
