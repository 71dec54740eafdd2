import NIOCore
import Testing

@testable import AEMP

/// Every captured byte stream in `aemp-vectors/*/streams` replayed through the handshake parsers
/// and the packet decoders, and compared with the independent Python decoding in `transcript.json`
/// (aemp-protocol §4, §5).
@Suite("Stream vectors")
struct StreamVectorTests {
    /// The secret of every capture (aemp-vectors/README.md).
    static let secret = "aemp-test-secret"

    /// The scenario folders the README lists; all must be present.
    static let expectedScenarios = [
        "cbor", "failover-json", "json", "mixed-framing",
        "pyprobe-cbor", "pyprobe-cleartext", "pyprobe-json", "pyprobe-wrongsecret",
    ]

    /// One direction of one captured connection.
    struct Case: Sendable, CustomTestStringConvertible {
        var scenario: String
        var connection: Transcript.Connection
        var direction: Transcript.Direction

        var testDescription: String { "\(scenario)/\(connection.id).\(direction.rawValue)" }
        var handshake: Transcript.Handshake { connection.handshake[direction]! }
        var peerHandshake: Transcript.Handshake { connection.handshake[direction.opposite]! }
        var packets: [Transcript.Packet] { connection.packets.filter { $0.direction == direction } }
        var sender: String? { connection.node(sending: direction) }
        var receiver: String? { connection.node(sending: direction.opposite) }

        static func all() throws -> [Case] {
            try Vectors.scenarioNames().flatMap { scenario in
                try Vectors.transcript(scenario).connections.flatMap { connection in
                    Transcript.Direction.allCases.map { Case(scenario: scenario, connection: connection, direction: $0) }
                }
            }
        }
    }

    // MARK: - Coverage

    @Test("every scenario is there and every packet belongs to a replayed direction")
    func coverage() throws {
        #expect(try Vectors.scenarioNames() == Self.expectedScenarios)
        var total = 0
        for scenario in try Vectors.scenarioNames() {
            let transcript = try Vectors.transcript(scenario)
            #expect(transcript.secret == Self.secret)
            #expect(!transcript.connections.isEmpty, "\(scenario) has no connections")
            total += transcript.connections.reduce(0) { $0 + $1.packets.count }
        }
        let cases = try Case.all()
        #expect(cases.reduce(0) { $0 + $1.packets.count } == total)
        // 51 packets each in json, cbor, mixed-framing; 66 in failover-json; 41 in each pyprobe
        // scenario but the wrong-secret one (21).
        #expect(total == 51 * 3 + 66 + 41 * 3 + 21)
        // Both directions of every connection, each with its stream file.
        #expect(cases.count == 2 * (4 * 6 + 18 + 3))
    }

    // MARK: - Handshake

    @Test("handshake lines parse and the auth tokens verify", arguments: try Case.all())
    func handshake(_ c: Case) throws {
        let bytes = try Vectors.stream(c.scenario, connection: c.connection.id, direction: c.direction)
        let hs = c.handshake
        let present = [hs.greeting1, hs.greeting2, hs.auth].filter { $0 != nil }.count
        #expect(hs.lines.count == present, "a handshake line is missing before a present one")

        let (lines, dataStart) = try Self.splitLines(bytes, count: hs.lines.count)
        #expect(lines == hs.lines)
        if hs.auth == nil {
            // Refused or aborted before authentication: nothing but the greeting lines.
            #expect(dataStart == bytes.count, "\(bytes.count - dataStart) bytes after an incomplete handshake")
            #expect(c.packets.isEmpty)
        }

        if let g1 = lines.first {
            let greeting = try #require(Greeting(line: Substring(g1)), "greeting1 does not parse: \(g1)")
            #expect(greeting == Greeting(line: Substring(try #require(hs.greeting1))))
            #expect(Greeting(line: Substring(greeting.line)) == greeting)
            #expect(greeting.protocolName == "aemp")
            #expect(greeting.version == "1")
            #expect(greeting.numericVersion == 1)
            #expect(greeting.nodeID == c.sender)
            #expect(greeting.authMethods.contains(AuthMethod.hmacSHA3_512.rawValue))
            #expect(!greeting.framings.isEmpty)
            #expect(greeting.framings.allSatisfy { ["json", "cbor", "storable"].contains($0) })
        }
        if lines.count >= 2 {
            #expect(!lines[1].isEmpty)
        }

        guard let authLine = hs.auth else { return }
        let fields = authLine.split(separator: ";", omittingEmptySubsequences: false).map(String.init)
        try #require(fields.count >= 3, "auth line has fewer than 3 fields: \(authLine)")
        #expect(fields[0] == hs.authMethod)
        #expect(fields[1] == hs.authToken)
        #expect(fields[2] == hs.sendFraming)
        let method = try #require(AuthMethod(rawValue: fields[0]), "unknown auth method \(fields[0])")
        #expect(Framing(rawValue: fields[2]) != nil, "unknown framing \(fields[2])")

        // The sender computed its token with its own lines first; the receiver checks it.
        let senderLines = (try #require(hs.greeting1), try #require(hs.greeting2))
        let receiverLines = (try #require(c.peerHandshake.greeting1), try #require(c.peerHandshake.greeting2))
        let auth = Authenticator(secret: Self.secret)
        let computed = auth.tokenToSend(method, local: senderLines, remote: receiverLines)
        let expectedByReceiver = auth.tokenExpected(method, local: receiverLines, remote: senderLines)
        #expect(computed == expectedByReceiver)
        if let python = hs.authRecomputedInPython {
            #expect(computed == python)
        }
        let verifies = Authenticator.constantTimeEqual(expectedByReceiver, fields[1])

        // Only the probe with the wrong secret must fail; everything else Perl accepted.
        let wrongSecret = c.scenario == "pyprobe-wrongsecret" && c.sender == "pyprobe"
        #expect(verifies == !wrongSecret, "token of \(c.sender ?? "?") verifies: \(verifies)")
        #expect(hs.authOK == !wrongSecret)
        if c.scenario == "pyprobe-cleartext" && c.sender == "pyprobe" {
            #expect(method == .cleartext)
        }
    }

    // MARK: - Data phase

    @Test("packets decode like the transcript, whole and in random chunks", arguments: try Case.all())
    func packets(_ c: Case) throws {
        let bytes = try Vectors.stream(c.scenario, connection: c.connection.id, direction: c.direction)
        let hs = c.handshake
        let expected = c.packets
        guard let framingName = hs.sendFraming else {
            #expect(expected.isEmpty)
            return
        }
        let framing = try #require(Framing(rawValue: framingName))
        let (_, dataStart) = try Self.splitLines(bytes, count: hs.lines.count)
        let data = Array(bytes[dataStart...])

        let whole = try Self.decode(data, framing: framing, chunkSize: { data.count })
        // Nothing may be left over: no capture ends inside a packet.
        #expect(whole.leftover == 0, "\(whole.leftover) undecoded bytes at the end")
        #expect(whole.packets.count == expected.count)

        for (i, p) in expected.enumerated() {
            #expect(p.framing == framingName)
            #expect(p.sender == c.sender)
            #expect(p.receiver == c.receiver)
            // The packet's bytes are where the transcript says, and decode alone to the same value.
            try #require(p.offset >= dataStart && p.offset + p.length <= bytes.count)
            #expect(Array(bytes[p.offset..<p.offset + p.length]) == p.raw)
            #expect(try Self.decodeOne(p.raw, framing: framing) == p.decoded, "packet \(i) alone")
            if framing == .json {
                #expect(p.rawText == String(decoding: p.raw, as: UTF8.self))
            } else {
                #expect(p.cborDiag != nil)
            }
            guard i < whole.packets.count else { continue }
            let got = whole.packets[i]
            #expect(got.value == p.decoded, "packet \(i) at offset \(p.offset)")
            #expect(dataStart + got.start == p.offset, "packet \(i) offset")
            #expect(got.end - got.start == p.length, "packet \(i) length")
        }

        for seed in 0..<3 {
            var rng = SeededGenerator(seed: "\(c.testDescription)#\(seed)")
            let chunked = try Self.decode(data, framing: framing, chunkSize: { Int.random(in: 1...17, using: &rng) })
            #expect(chunked.leftover == 0)
            #expect(chunked.packets == whole.packets, "chunked decoding (seed \(seed)) differs from whole-stream")
        }
    }

    // MARK: - Helpers

    /// Splits `count` LF-terminated lines (a CR before the LF is dropped) off the front of `bytes`.
    static func splitLines(_ bytes: [UInt8], count: Int) throws -> (lines: [String], rest: Int) {
        var lines: [String] = []
        var pos = 0
        for n in 0..<count {
            guard let lf = bytes[pos...].firstIndex(of: 0x0A) else {
                throw Vectors.Failure(description: "handshake line \(n + 1) has no LF")
            }
            var end = lf
            if end > pos, bytes[end - 1] == 0x0D { end -= 1 }
            lines.append(String(decoding: bytes[pos..<end], as: UTF8.self))
            pos = lf + 1
        }
        return (lines, pos)
    }

    struct Decoded: Equatable {
        /// Offsets in the data stream of the packet's first byte and one past its last.
        var start: Int
        var end: Int
        var value: Value
    }

    /// Feeds `data` to a `PacketDecoder` in chunks of `chunkSize()` bytes and collects every packet
    /// with where it started and ended.
    static func decode(
        _ data: [UInt8], framing: Framing, chunkSize: () -> Int
    ) throws -> (packets: [Decoded], leftover: Int) {
        var decoder = PacketDecoder(framing, maxPacketSize: 1 << 20)
        var buffer = ByteBufferAllocator().buffer(capacity: 256)
        var fed = 0
        var out: [Decoded] = []
        while fed < data.count {
            let end = min(fed + chunkSize(), data.count)
            buffer.writeBytes(data[fed..<end])
            fed = end
            // Move the unread bytes to the front; the decoder must only rely on the readable bytes.
            buffer.discardReadBytes()
            while true {
                let start = fed - buffer.readableBytes
                guard let packet = try decoder.next(from: &buffer) else { break }
                let stop = fed - buffer.readableBytes
                guard stop > start else { throw Vectors.Failure(description: "a packet consumed no bytes") }
                out.append(Decoded(start: start, end: stop, value: .array(packet)))
            }
        }
        return (out, buffer.readableBytes)
    }

    static func decodeOne(_ raw: [UInt8], framing: Framing) throws -> Value {
        switch framing {
        case .json: return try JSONCodec.decode(raw)
        case .cbor: return try CBORCodec.decode(raw)
        }
    }
}
