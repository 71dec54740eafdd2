import Logging
import NIOCore
import NIOEmbedded
import AEMPTestSupport
import Testing

@testable import AEMP

// A property test of the transport (issue 7): the real `Connection` handler, on an EmbeddedChannel
// (in process, with virtual time, so thousands of cases run in seconds), fed the Perl captures of
// ../shared/aemp-vectors mutated, in random pieces:
// - as a handshake: it never crashes, never buffers more than `maxHandshakeBuffer` plus one read,
//   and ends closed with a reason (at the latest at the handshake deadline) unless established;
// - as a data phase after a valid handshake, in the capture's framing: it never crashes, never
//   buffers more than `maxPacketSize` plus one read, and a close always carries a reason.
// Mutated handshakes do establish now and then: the cleartext captures carry the shared secret
// itself, which Perl accepts (pyprobe-cleartext). The live-node variant (real TCP, fewer cases)
// is in WireAbuseTests.

@Suite("transport property test: mutated captures against Connection", .timeLimit(.minutes(2)))
struct HandshakeFuzzTests {
    static let settings = ConnectionSettings(
        nodeID: "fuzz-node", authenticator: Authenticator(secret: testSecret), framings: [.cbor, .json],
        handshakeTimeout: .seconds(5), maxHandshakeBuffer: 4096, maxPacketSize: 64 << 10)

    @Test("mutated captured handshakes: no crash, bounded buffer, closed with a reason by the deadline")
    func handshakes() async throws {
        // Seconds of CPU: off the cooperative pool (see `computing`).
        try await computing { try mutatedHandshakes() }
    }

    private func mutatedHandshakes() throws {
        let captures = try WireAbuseTests.Capture.all()
        try #require(captures.count >= 20)
        var rng = SeededGenerator(seed: "handshake-fuzz")
        var outcomes: [String: Int] = [:]
        for round in 0..<3000 {
            let capture = captures.randomElement(using: &rng)!
            let input = round % 5 == 0
                ? (0..<Int.random(in: 0...600, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                : WireAbuseTests.mutate(capture.handshake + capture.data.prefix(200), using: &rng)
            let harness = try Harness(origin: round % 2 == 0 ? .accepted : .dialed(address: "127.0.0.1:4040"))
            let peak = harness.feed(pieces: Self.pieces(input, using: &rng))
            #expect(peak <= Self.settings.maxHandshakeBuffer, "round \(round) (\(capture.name)): \(peak) bytes held")
            if harness.delegate.closed == nil && !harness.delegate.established {
                harness.channel.embeddedEventLoop.advanceTime(by: .seconds(6))
            }
            let outcome = harness.delegate.established ? "established" : harness.delegate.closed.map { Self.kind($0) } ?? "open"
            #expect(outcome != "open", "round \(round) (\(capture.name)): still open after the handshake deadline")
            outcomes[outcome, default: 0] += 1
            harness.finish()
        }
        // The mutations must reach the different refusals, not only one of them.
        #expect(outcomes.count >= 4, "\(outcomes)")
        #expect(outcomes["handshake timeout", default: 0] > 0, "\(outcomes)")
    }

    @Test("mutated captured data phases after a valid handshake: no crash, bounded buffer, every close has a reason")
    func dataPhases() async throws {
        // Seconds of CPU: off the cooperative pool (see `computing`).
        try await computing { try mutatedDataPhases() }
    }

    private func mutatedDataPhases() throws {
        let captures = try WireAbuseTests.Capture.all().filter { Framing(rawValue: $0.framing) != nil && !$0.data.isEmpty }
        try #require(captures.count >= 10)
        var rng = SeededGenerator(seed: "data-phase-fuzz")
        var outcomes: [String: Int] = [:]
        for round in 0..<2000 {
            let capture = captures.randomElement(using: &rng)!
            let harness = try Harness(origin: .accepted)
            try harness.completeHandshake(sendFraming: capture.framing)
            try #require(harness.delegate.established, "round \(round): the valid handshake did not establish")
            let input = round % 4 == 0
                ? (0..<Int.random(in: 0...2000, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                : WireAbuseTests.mutate(capture.data, using: &rng)
            let peak = harness.feed(pieces: Self.pieces(input, using: &rng))
            #expect(peak <= Self.settings.maxPacketSize, "round \(round) (\(capture.name)): \(peak) bytes held")
            if let reason = harness.delegate.closed {
                #expect(!reason.isEmpty)
                outcomes[Self.kind(reason), default: 0] += 1
            } else {
                outcomes["served \(harness.delegate.packets > 0 ? "with" : "without") packets", default: 0] += 1
            }
            harness.finish()
        }
        #expect(outcomes["served with packets", default: 0] > 0, "\(outcomes)")
        #expect(outcomes.keys.contains { $0.hasPrefix("undecodable") }, "\(outcomes)")
    }

    /// `input` cut into pieces of 1 to 300 bytes.
    static func pieces(_ input: [UInt8], using rng: inout SeededGenerator) -> [[UInt8]] {
        var out: [[UInt8]] = []
        var rest = input[...]
        while !rest.isEmpty {
            let n = min(rest.count, Int.random(in: 1...300, using: &rng))
            out.append(Array(rest.prefix(n)))
            rest = rest.dropFirst(n)
        }
        return out
    }

    /// A close reason without its details (for counting outcomes).
    static func kind(_ reason: String) -> String {
        for prefix in [
            "handshake timeout", "handshake line longer", "malformed greeting", "unsupported protocol version",
            "unsupported protocol", "echo detected", "no common auth method", "no common framing", "malformed auth line",
            "unsupported auth method", "peer announced unsupported framing", "authentication failure", "undecodable json",
            "undecodable cbor", "connection closed",
        ] where reason.hasPrefix(prefix) {
            return prefix
        }
        return reason
    }
}

/// A `Connection` on an EmbeddedChannel, with a delegate that records what happened.
private final class Harness {
    final class Delegate: ConnectionDelegate {
        var established = false
        var closed: String?
        var packets = 0
        func connection(_ connection: Connection, checkGreeting greeting: Greeting) -> String? { nil }
        func connectionEstablished(_ connection: Connection) { established = true }
        func connection(_ connection: Connection, received packet: [Value]) { packets += 1 }
        func connectionClosed(_ connection: Connection, reason: String) { closed = reason }
    }

    let channel = EmbeddedChannel()
    let delegate = Delegate()
    let connection: Connection

    init(origin: Connection.Origin) throws {
        var logger = Logger(label: "fuzz")
        logger.logLevel = .critical
        connection = Connection(origin: origin, settings: HandshakeFuzzTests.settings, delegate: delegate, logger: logger)
        try channel.pipeline.syncOperations.addHandler(connection)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 4041)).wait()
    }

    /// Feeds `pieces` until the connection closes; returns the most it held beyond the last piece.
    func feed(pieces: [[UInt8]]) -> Int {
        var peak = 0
        for piece in pieces {
            feed(piece)
            peak = max(peak, connection.bufferedInboundBytes - piece.count)
            if delegate.closed != nil { break }
        }
        return peak
    }

    func feed(_ bytes: [UInt8]) {
        guard channel.isActive else { return }
        var buffer = channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        _ = try? channel.writeInbound(buffer)
        channel.embeddedEventLoop.run()
    }

    /// Plays a Perl peer's side of a valid handshake (aemp-protocol §4.1), sending in `sendFraming`.
    func completeHandshake(sendFraming: String) throws {
        var sent = ""
        while let b = try channel.readOutbound(as: ByteBuffer.self) { sent += String(buffer: b) }
        let lines = sent.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard lines.count >= 2 else { throw ScriptedPeerError.protocolViolation("no greeting from the connection: \(sent)") }
        let node = (lines[0], lines[1])
        let ours = (
            ScriptedPeer.perlGreeting(nodeID: "fuzz-peer", framings: "json,cbor", peerAddr: "127.0.0.1:4041"),
            ScriptedPeer.nonce()
        )
        let token = Authenticator(secret: testSecret).tokenToSend(.hmacSHA3_512, local: ours, remote: node)
        feed(Array("\(ours.0)\n\(ours.1)\n\(AuthMethod.hmacSHA3_512.rawValue);\(token);\(sendFraming)\n".utf8))
    }

    func finish() {
        _ = try? channel.finish()
    }
}
