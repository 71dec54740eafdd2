import BigInt
import NIOCore
import Testing

@testable import AEMP

/// Perl's own bytes for every edge value (aemp-vectors `edge-values-cbor/`, `edge-values-json/`,
/// README "Edge values"; aemp-protocol §14): the stream a Perl 2.02 node `psend` wrote to `recv`,
/// replayed through our packet decoder and compared with what `psend` meant (`perl-sent.txt`).
///
/// Documented differences are asserted, never skipped:
/// - `negzero`: CBOR::XS and JSON::XS write −0.0 as the integer 0 (checked on the wire);
/// - JSON floats: JSON::XS prints 15 significant digits, so they equal the wire text's value and
///   perl-sent's 17-digit one only to 1e-14 (relative);
/// - `hz_bigint`: exact big integers from the bignum tags; `hz_tag`: other tags are skipped;
/// - the JSON capture: JSON::XS could not send `hz_above10ffff`, `hz_bigint`, `hz_tag` at all.
@Suite("Edge values replayed from Perl's own bytes")
struct EdgeValueVectorTests {
    static let scenarios = ["edge-values-cbor", "edge-values-json"]

    // MARK: - Decoding Perl's stream

    @Test("the psend→recv stream decodes, whole and in random chunks, never throwing or skipping",
          arguments: scenarios)
    func streamDecodes(_ scenario: String) throws {
        let capture = try EdgeCapture.load(scenario)
        let whole = EdgeCapture.decode(capture.data, framing: capture.framing) { capture.data.count }
        #expect(whole.thrown == nil, "the decoder threw: \(whole.thrown ?? "")")
        #expect(whole.skipped.isEmpty, "skipped: \(whole.skipped)")
        #expect(whole.leftover == 0)
        // Every case packet, plus the leading ["","devnull"] and the trailing snd receipt.
        #expect(whole.packets.count == capture.names.count + 2, "\(whole.packets.count) packets")
        #expect(whole.packets.map(\.raw).reduce(0) { $0 + $1.count } == capture.data.count, "every byte belongs to a packet")
        for seed in 0..<5 {
            var rng = SeededGenerator(seed: "\(scenario)#\(seed)")
            let chunked = EdgeCapture.decode(capture.data, framing: capture.framing) { Int.random(in: 1...37, using: &rng) }
            #expect(chunked.thrown == nil, "seed \(seed): the decoder threw: \(chunked.thrown ?? "")")
            #expect(chunked.skipped.isEmpty && chunked.leftover == 0, "seed \(seed)")
            #expect(chunked.packets.count == whole.packets.count, "seed \(seed)")
            for (a, b) in zip(chunked.packets, whole.packets) {
                #expect(a.raw == b.raw && EdgeValues.same(.array(a.value), .array(b.value)),
                        "seed \(seed): chunked decoding differs at \(EdgeValues.brief(.array(b.value)))")
            }
        }
    }

    @Test("every case arrives as perl-sent.txt says, up to the documented differences", arguments: scenarios)
    func casesMatchPerlSent(_ scenario: String) throws {
        let capture = try EdgeCapture.load(scenario)
        let got = try capture.received()
        let sent = try EdgeCapture.perlSent(scenario)
        #expect(got.map(\.name) == capture.names)
        let special: Set<String> = ["negzero", "hz_bigint", "hz_tag", "floats"]
        for (name, values) in got where !special.contains(name) {
            let expected = try #require(sent.first { $0.name == name }, "\(name) not in perl-sent.txt").values
            #expect(EdgeValues.same(.array(values), .array(expected)),
                    "\(scenario) \(name): got \(EdgeValues.brief(.array(values))), Perl sent \(EdgeValues.brief(.array(expected)))")
        }

        // −0.0: Perl itself writes the integer 0 (CBOR 0x00, JSON `-0`), so 0 is what arrives.
        let negzeroRaw = capture.raw(of: "negzero")
        let negzero = try #require(negzeroRaw)
        if capture.framing == .cbor {
            #expect(negzero.last == 0x00, "CBOR::XS wrote \(Vectors.hex(negzero))")
        } else {
            #expect(String(decoding: negzero, as: UTF8.self).hasSuffix(#""negzero",-0]"#))
        }
        #expect(EdgeValues.same(.array(try #require(got.first { $0.name == "negzero" }).values), [.int(0)]))
        let sentNegzero = try #require(sent.first { $0.name == "negzero" }).values
        guard sentNegzero.count == 1, case .double(let d) = sentNegzero[0] else {
            Issue.record("perl-sent negzero is \(sentNegzero)")
            return
        }
        #expect(d == 0 && d.sign == .minus)

        // Floats: exact in CBOR; in JSON the wire's 15-digit text.
        let floats = try #require(got.first { $0.name == "floats" }).values
        let sentFloats = try #require(sent.first { $0.name == "floats" }).values
        if capture.framing == .cbor {
            #expect(EdgeValues.same(.array(floats), .array(sentFloats)), "\(floats) vs \(sentFloats)")
        } else {
            let floatsRaw = capture.raw(of: "floats")
            let text = String(decoding: try #require(floatsRaw), as: UTF8.self)
            let tokens = try #require(text.split(separator: #""floats","#).last).dropLast().split(separator: ",")
            let wire: [Value] = tokens.map { t in Int64(t).map(Value.int) ?? .double(Double(t) ?? .nan) }
            #expect(tokens.count == 10 && tokens[6] == "3.14159265358979", "\(tokens)")
            #expect(EdgeValues.same(.array(floats), .array(wire)), "got \(floats), the wire says \(tokens)")
            #expect(EdgeValues.same(.array(floats), .array(sentFloats), relativeTolerance: 1e-14),
                    "got \(floats), Perl sent \(sentFloats)")
            #expect(!EdgeValues.same(.array(floats), .array(sentFloats)), "15 digits lose something (e.g. π)")
        }

        if capture.framing == .cbor {
            // Objects Perl can only show as "<blessed …>"; the exact values are asserted in
            // `cborBignumsAndTags`.
            #expect(sent.first { $0.name == "hz_bigint" }?.values == ["<blessed Math::BigInt>", "<blessed Math::BigInt>"])
            #expect(sent.first { $0.name == "hz_tag" }?.values == ["<blessed CBOR::XS::Tagged>", "<blessed CBOR::XS::Tagged>"])
        }
    }

    @Test("JSON: exactly the cases JSON::XS could send, and every packet after its bare `inf` still arrives")
    func jsonCasesAndTheNextMessage() throws {
        let capture = try EdgeCapture.load("edge-values-json")
        let sentNames = try EdgeCapture.perlSent("edge-values-json").map(\.name)
        // psend's log: hz_above10ffff ("out of range codepoint"), hz_bigint and hz_tag ("encountered
        // object") failed to encode; the capture ends with hz_nest510 and the snd receipt.
        #expect(capture.names == sentNames.filter { !["hz_above10ffff", "hz_bigint", "hz_tag"].contains($0) })
        #expect(capture.names.last == "hz_nest510")
        let whole = EdgeCapture.decode(capture.data, framing: .json) { capture.data.count }
        #expect(whole.thrown == nil)
        let names = whole.packets.compactMap { EdgeCapture.caseName($0.value) }
        let inf = try #require(names.firstIndex(of: "hz_inf"))
        // Perl's receiver lost every one of these (perl-received.txt stops before hz_inf).
        #expect(Array(names[(inf + 1)...]) == ["hz_ninf", "hz_nan", "hz_surrogate", "hz_nest510"])
        let received = try EdgeCapture.perlReceivedNames("edge-values-json")
        // recv's JSON::XS kept the first 20 (up to nest500; the rest of that read, up to hz_2p63,
        // went with the `inf` error) and nothing after: we decode all 30.
        #expect(received == Array(capture.names.prefix(20)), "\(received)")
        #expect(names == capture.names)
        // The bare words are really on the wire.
        let raw = whole.packets.map { String(decoding: $0.raw, as: UTF8.self) }
        #expect(raw.contains { $0.hasSuffix(#""hz_inf",inf]"#) })
        #expect(raw.contains { $0.hasSuffix(#""hz_ninf",-inf]"#) })
        #expect(raw.contains { $0.hasSuffix(#""hz_nan",nan]"#) || $0.hasSuffix(#""hz_nan",-nan]"#) })
        let byName = Dictionary(whole.packets.compactMap { p in EdgeCapture.caseName(p.value).map { ($0, Array(p.value.dropFirst(3))) } },
                                uniquingKeysWith: { a, _ in a })
        #expect(EdgeValues.same(.array(byName["hz_inf"] ?? []), [.double(.infinity)]))
        #expect(EdgeValues.same(.array(byName["hz_ninf"] ?? []), [.double(-.infinity)]))
        #expect(EdgeValues.same(.array(byName["hz_nan"] ?? []), [.double(.nan)]))
        // The trailing snd receipt too.
        #expect(whole.packets.last?.value == ["", "snd", .string("\(capture.sender)#b"), "delivered"])
    }

    @Test("Perl strings and numbers kept exact: byte strings as Latin-1 under both framings, surrogates, UVs, NUL keys, 510 deep",
          arguments: scenarios)
    func exactValues(_ scenario: String) throws {
        let capture = try EdgeCapture.load(scenario)
        let got = Dictionary(try capture.received().map { ($0.name, $0.values) }, uniquingKeysWith: { a, _ in a })
        func expect(_ name: String, _ expected: [Value], sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(EdgeValues.same(.array(got[name] ?? [.string("<missing>")]), .array(expected)),
                    "\(scenario) \(name): got \(EdgeValues.brief(.array(got[name] ?? [])))", sourceLocation: sourceLocation)
        }
        // Item 4 of issue 13: the same Perl string under both framings.
        expect("latin1_bytes", [.string("caf\u{E9}")])
        #expect(got["latin1_bytes"]?.first?.perlCodePoints == [0x63, 0x61, 0x66, 0xE9])
        expect("utf8_bytes", [.string("caf\u{C3}\u{A9}")])
        #expect(got["utf8_bytes"]?.first?.perlCodePoints == [0x63, 0x61, 0x66, 0xC3, 0xA9])
        expect("binary", [.string(codePoints: (0...255).map(UInt32.init))])
        expect("hz_surrogate", [.codePoints([0x61, 0xD800, 0x62])])
        if capture.framing == .cbor {
            expect("hz_above10ffff", [.codePoints([0x61, 0x11_0000, 0x62])])
        } else {
            #expect(got["hz_above10ffff"] == nil)
        }
        expect("hz_uvmax", [.bigInteger(BigInt("18446744073709551615"))])
        expect("hz_2p63", [.bigInteger(BigInt("9223372036854775808"))])
        expect("hz_nulkey", [.object(["a\u{0}b": 4])])
        expect("ints", [0, 1, -1, 2_147_483_648, 4_294_967_296, 9_007_199_254_740_992, 9_007_199_254_740_993,
                        .int(.max), .int(.min)])

        // 509 arrays inside the packet: 510 levels as Perl counts them, within its 512.
        let nest = try #require(got["hz_nest510"]?.first)
        let packetDepth = Value.array(["port", "case", "hz_nest510", nest]).nestingDepth
        #expect(packetDepth == 510 && packetDepth <= MeshLimits.maxDepth)
        var inner = nest
        for _ in 0..<508 { inner = inner.arrayValue?.first ?? .null }
        #expect(inner == ["deep"], "the innermost array holds \"deep\"")
    }

    @Test("CBOR bignums (tags 2/3) are exact integers; other tags are skipped")
    func cborBignumsAndTags() throws {
        let capture = try EdgeCapture.load("edge-values-cbor")
        let got = try capture.received()
        let bigint = try #require(got.first { $0.name == "hz_bigint" }).values
        // From the capture's cbor_diag: 2(h'018ee90ff6c373e0ee4e3f0ad2'), 3(h'113f20d9c2fff89d38e1c70cb1').
        let diag = try #require(capture.transcriptPacket("hz_bigint")?.cborDiag)
        let magnitudes = diag.split(separator: "h'").dropFirst().map { BigInt(String($0.prefix { $0 != "'" }), radix: 16)! }
        #expect(diag.contains("2(h'018ee90ff6c373e0ee4e3f0ad2')") && diag.contains("3(h'113f20d9c2fff89d38e1c70cb1')"), "\(diag)")
        #expect(magnitudes.count == 2)
        let positive = BigInt("123456789012345678901234567890")
        // Tag 3 as CBOR::XS reads it: -n (its filter negates the magnitude; not RFC 8949's -1 - n).
        // What psend meant was -0x13f20d9c2fff89d38e1c70cb1: CBOR::XS 1.86's encoder garbles a
        // negative's hex ("x13f2…" packs as 11 3f …), so this is what a Perl receiver gets too.
        let negative = BigInt("-1366416032338105944707690859697")
        #expect(magnitudes.first == positive)
        #expect(magnitudes.last.map { -$0 } == negative)
        #expect(bigint == [.bigInteger(positive), .bigInteger(negative)], "\(bigint)")

        let tag = try #require(got.first { $0.name == "hz_tag" }).values
        #expect(capture.transcriptPacket("hz_tag")?.cborDiag?.hasSuffix("42('tagged'), 1(1700000000)]") == true)
        #expect(EdgeValues.same(.array(tag), ["tagged", 1_700_000_000]), "\(tag)")
    }

    // MARK: - Back to Perl

    @Test("CBOR round trip: every packet re-encodes to the same values, Perl's byte strings byte-exact")
    func cborRoundTrip() throws {
        let capture = try EdgeCapture.load("edge-values-cbor")
        let whole = EdgeCapture.decode(capture.data, framing: .cbor) { capture.data.count }
        try #require(whole.thrown == nil)
        var byteStringsChecked = 0
        for p in whole.packets {
            var buffer = ByteBufferAllocator().buffer(capacity: 64)
            try Framing.cbor.encode(p.value, into: &buffer)
            let ours = Array(buffer.readableBytesView)
            let back = try CBORCodec.decode(ours)
            let name = EdgeCapture.caseName(p.value) ?? "\(p.value.prefix(2))"
            #expect(EdgeValues.same(back, .array(p.value)), "\(name): \(EdgeValues.brief(back))")

            // Every byte string Perl sent comes back with the same bytes: as a byte string when it
            // holds a non-ASCII byte (as CBOR::XS writes unflagged strings), ASCII ones may be text.
            let perlStrings = try RawCBOR.strings(in: p.raw)
            var ourStrings = try RawCBOR.strings(in: ours)
            for s in perlStrings where s.major == 2 {
                let nonASCII = s.bytes.contains { $0 >= 0x80 }
                let match = ourStrings.firstIndex { $0.bytes == s.bytes && (!nonASCII || $0.major == 2) }
                #expect(match != nil, "\(name): Perl's byte string h'\(Vectors.hex(s.bytes))' is not in our encoding")
                if let match { ourStrings.remove(at: match) }
                if nonASCII { byteStringsChecked += 1 }
            }
        }
        // latin1_bytes, utf8_bytes, binary, the key "caf\xe9" of hashkeys and the two bignum magnitudes.
        #expect(byteStringsChecked == 6, "\(byteStringsChecked) non-ASCII byte strings")

        // The three Perl byte-string cases, position by position.
        let expected: [String: [UInt8]] = [
            "latin1_bytes": [0x63, 0x61, 0x66, 0xE9], "utf8_bytes": [0x63, 0x61, 0x66, 0xC3, 0xA9], "binary": Array(0...255),
        ]
        for (name, bytes) in expected {
            let p = try #require(whole.packets.first { EdgeCapture.caseName($0.value) == name })
            guard case .array(let perl) = try RawCBOR.parse(p.raw), perl.count == 4, case .bytes(let perlBytes) = perl[3] else {
                Issue.record("\(name): Perl did not send a byte string: \(Vectors.hex(p.raw))")
                continue
            }
            #expect(perlBytes == bytes, "\(name): Perl sent h'\(Vectors.hex(perlBytes))'")
            var buffer = ByteBufferAllocator().buffer(capacity: 64)
            try Framing.cbor.encode(p.value, into: &buffer)
            guard case .array(let ours) = try RawCBOR.parse(Array(buffer.readableBytesView)), ours.count == 4 else {
                Issue.record("\(name): our encoding is not a 4-element array")
                continue
            }
            #expect(ours[3] == .bytes(bytes), "\(name): we write \(ours[3]), Perl wrote h'\(Vectors.hex(bytes))'")
        }
    }

    @Test("JSON round trip: the same values, NaN/±Inf as the strings \"NaN\"/\"Infinity\"/\"-Infinity\"; Perl's string bytes kept")
    func jsonRoundTrip() throws {
        let capture = try EdgeCapture.load("edge-values-json")
        let whole = EdgeCapture.decode(capture.data, framing: .json) { capture.data.count }
        try #require(whole.thrown == nil)
        let before = ValueEvents.count(.nonFiniteConverted)
        var ours: [String: [UInt8]] = [:]
        for p in whole.packets {
            var buffer = ByteBufferAllocator().buffer(capacity: 64)
            try Framing.json.encode(p.value, into: &buffer)
            let bytes = Array(buffer.readableBytesView)
            let again = EdgeCapture.decode(bytes, framing: .json) { bytes.count }
            let name = EdgeCapture.caseName(p.value) ?? "\(p.value.prefix(2))"
            ours[name] = bytes
            #expect(again.thrown == nil && again.packets.count == 1, "\(name): \(again.thrown ?? "")")
            guard let back = again.packets.first?.value else { continue }
            #expect(EdgeValues.same(.array(back), EdgeValues.nonFiniteAsStrings(.array(p.value))),
                    "\(name): \(EdgeValues.brief(.array(back)))")
        }
        #expect(ValueEvents.count(.nonFiniteConverted) - before >= 3)
        let port = capture.port
        #expect(ours["hz_inf"].map { String(decoding: $0, as: UTF8.self) } == #"["\#(port)","case","hz_inf","Infinity"]"#)
        #expect(ours["hz_ninf"].map { String(decoding: $0, as: UTF8.self) } == #"["\#(port)","case","hz_ninf","-Infinity"]"#)
        #expect(ours["hz_nan"].map { String(decoding: $0, as: UTF8.self) } == #"["\#(port)","case","hz_nan","NaN"]"#)
        // Perl's own bytes for strings it wrote as characters: Latin-1 and lone surrogate (lax UTF-8).
        for name in ["latin1_bytes", "utf8_bytes", "hz_surrogate", "ascii", "emoji", "cjk"] {
            let perl = try #require(whole.packets.first { EdgeCapture.caseName($0.value) == name }).raw
            #expect(ours[name] == perl, "\(name): we write \(Vectors.hex(ours[name] ?? [])), Perl wrote \(Vectors.hex(perl))")
        }
    }
}

// MARK: - The captures

/// One edge-value capture: the data phase psend→recv and what psend meant to send.
struct EdgeCapture {
    var scenario: String
    var framing: Framing
    var transcript: Transcript
    var connection: Transcript.Connection
    var direction: Transcript.Direction
    /// psend's node ID (its greeting).
    var sender: String
    /// The data phase, handshake lines skipped.
    var data: [UInt8]
    /// The case names in the capture, in order (from the transcript's packets; JSON's last ones
    /// were not split by the capture tool, so read from the raw text).
    var names: [String]
    /// The port of recv that every case went to.
    var port: String

    static func load(_ scenario: String) throws -> EdgeCapture {
        let transcript = try Vectors.transcript(scenario)
        var found: (Transcript.Connection, Transcript.Direction)?
        for c in transcript.connections {
            if let p = c.packets.first(where: { caseName($0.decoded.arrayValue ?? []) != nil }) {
                found = (c, p.direction)
                break
            }
        }
        let (connection, direction) = try #require(found, "\(scenario): no connection carries case packets")
        let framingName = try #require(connection.handshake[direction]?.sendFraming)
        let framing = try #require(Framing(rawValue: framingName))
        let sender = try #require(connection.node(sending: direction))
        #expect(sender.hasPrefix("psend/"))
        let bytes = try Vectors.stream(scenario, connection: connection.id, direction: direction)
        let handshake = try #require(connection.handshake[direction])
        let (_, dataStart) = try StreamVectorTests.splitLines(bytes, count: handshake.lines.count)
        let data = Array(bytes[dataStart...])
        // Names from the raw bytes of the transcript's packets ("case", NAME appear literally).
        var names: [String] = []
        var port = ""
        for p in connection.packets where p.direction == direction {
            if let a = p.decoded.arrayValue, let n = caseName(a) {
                names.append(n)
                port = a[0].stringValue ?? ""
            } else if let text = p.rawText, text.contains(#","case",""#) {
                for part in text.components(separatedBy: #","case",""#).dropFirst() {
                    names.append(String(part.prefix { $0 != "\"" }))
                }
            }
        }
        return EdgeCapture(scenario: scenario, framing: framing, transcript: transcript, connection: connection,
                           direction: direction, sender: sender, data: data, names: names, port: port)
    }

    /// NAME of a packet `[port, "case", NAME, …]`.
    static func caseName(_ packet: [Value]) -> String? {
        guard packet.count >= 3, packet[1] == "case" else { return nil }
        return packet[2].stringValue
    }

    /// The case packets we decode, in order: NAME and the values after it.
    func received() throws -> [(name: String, values: [Value])] {
        let whole = Self.decode(data, framing: framing) { data.count }
        if let thrown = whole.thrown { throw Vectors.Failure(description: "\(scenario): the decoder threw: \(thrown)") }
        return whole.packets.compactMap { p in Self.caseName(p.value).map { ($0, Array(p.value.dropFirst(3))) } }
    }

    /// The raw bytes of case `name`'s packet (as we delimit it in the stream).
    func raw(of name: String) -> [UInt8]? {
        Self.decode(data, framing: framing) { data.count }.packets.first { Self.caseName($0.value) == name }?.raw
    }

    /// The transcript's packet for case `name` (CBOR: one per case).
    func transcriptPacket(_ name: String) -> Transcript.Packet? {
        connection.packets.first { $0.direction == direction && Self.caseName($0.decoded.arrayValue ?? []) == name }
    }

    /// `perl-sent.txt`: each line `["case", NAME, values…]` read as Perl JSON, `<U+XXXXXX>` tokens
    /// inside strings replaced by their code point.
    static func perlSent(_ scenario: String) throws -> [(name: String, values: [Value])] {
        try lines("\(scenario)/perl-sent.txt").map { line in
            let parsed = try line.withUnsafeBytes { try JSONCodec.decode($0, dialect: .perl, maxDepth: 2048) }
            let value = EdgeValues.replacingCodePointTokens(parsed)
            guard let a = value.arrayValue, a.count >= 2, a[0] == "case", let name = a[1].stringValue else {
                throw Vectors.Failure(description: "\(scenario)/perl-sent.txt: not a case line: \(EdgeValues.brief(value))")
            }
            return (name, Array(a.dropFirst(2)))
        }
    }

    /// The case names in `perl-received.txt`.
    static func perlReceivedNames(_ scenario: String) throws -> [String] {
        try lines("\(scenario)/perl-received.txt").compactMap { line in
            let text = String(decoding: line, as: UTF8.self)
            guard text.hasPrefix(#"["case",""#) else { return nil }
            return String(text.dropFirst(9).prefix { $0 != "\"" })
        }
    }

    private static func lines(_ path: String) throws -> [[UInt8]] {
        try Vectors.data(path).split(separator: 0x0A).map(Array.init).filter { !$0.isEmpty }
    }

    struct Decoded {
        var packets: [(value: [Value], raw: [UInt8])] = []
        var skipped: [String] = []
        var leftover = 0
        /// What the decoder threw, if it did (it must never, for anything Perl sent).
        var thrown: String?
    }

    /// Feeds `data` to a `PacketDecoder` in chunks of `chunkSize()` bytes; each packet with its bytes.
    static func decode(_ data: [UInt8], framing: Framing, chunkSize: () -> Int) -> Decoded {
        var decoder = PacketDecoder(framing, maxPacketSize: 1 << 20)
        var buffer = ByteBufferAllocator().buffer(capacity: 256)
        var out = Decoded()
        var fed = 0
        do {
            while fed < data.count {
                let end = min(fed + max(1, chunkSize()), data.count)
                buffer.writeBytes(data[fed..<end])
                fed = end
                buffer.discardReadBytes()
                while true {
                    let start = fed - buffer.readableBytes
                    guard let packet = try decoder.next(from: &buffer) else { break }
                    out.packets.append((packet, Array(data[start..<(fed - buffer.readableBytes)])))
                }
                out.skipped += decoder.takeNotes().skipped
            }
        } catch {
            out.thrown = "\(error) after \(out.packets.count) packets"
        }
        out.leftover = buffer.readableBytes
        return out
    }
}

// MARK: - Comparing values as Perl does

enum EdgeValues {
    /// Equality as Perl sees it: strings by code point (not Swift's canonical equivalence), NaN
    /// equal to NaN, −0.0 distinct from 0.0 and from the integer 0; doubles within
    /// `relativeTolerance` when one is given.
    static func same(_ a: Value, _ b: Value, relativeTolerance tolerance: Double = 0) -> Bool {
        switch (a, b) {
        case (.double(let x), .double(let y)):
            if x.isNaN || y.isNaN { return x.isNaN && y.isNaN }
            if x == y { return x.sign == y.sign || tolerance > 0 }
            return tolerance > 0 && x.isFinite && y.isFinite && abs(x - y) <= tolerance * max(abs(x), abs(y))
        case (.string(let x), .string(let y)):
            return x.unicodeScalars.elementsEqual(y.unicodeScalars)
        case (.array(let x), .array(let y)):
            return x.count == y.count && zip(x, y).allSatisfy { same($0, $1, relativeTolerance: tolerance) }
        case (.object(let x), .object(let y)):
            guard x.count == y.count else { return false }
            return x.allSatisfy { key, v in
                y.contains { $0.key.unicodeScalars.elementsEqual(key.unicodeScalars) && same(v, $0.value, relativeTolerance: tolerance) }
            }
        default:
            return a == b
        }
    }

    /// What a JSON writer sends for NaN and ±Inf (aemp-protocol §14, JSONWriter).
    static func nonFiniteAsStrings(_ v: Value) -> Value {
        switch v {
        case .double(let d) where d.isNaN: return "NaN"
        case .double(let d) where d == .infinity: return "Infinity"
        case .double(let d) where d == -.infinity: return "-Infinity"
        case .array(let a): return .array(a.map(nonFiniteAsStrings))
        case .object(let o): return .object(o.mapValues(nonFiniteAsStrings))
        default: return v
        }
    }

    /// `<U+XXXXXX>` inside strings (perl-sent.txt's spelling of code points JSON cannot carry)
    /// replaced by the code point.
    static func replacingCodePointTokens(_ v: Value) -> Value {
        switch v {
        case .string(let s) where s.contains("<U+"):
            let scalars = Array(s.unicodeScalars)
            var cps: [UInt32] = []
            var i = 0
            while i < scalars.count {
                if scalars[i] == "<", i + 3 < scalars.count, scalars[i + 1] == "U", scalars[i + 2] == "+",
                    let close = scalars[(i + 3)...].firstIndex(of: ">"),
                    let cp = UInt32(String(String.UnicodeScalarView(scalars[(i + 3)..<close])), radix: 16)
                {
                    cps.append(cp)
                    i = close + 1
                } else {
                    cps.append(scalars[i].value)
                    i += 1
                }
            }
            return .string(codePoints: cps)
        case .array(let a): return .array(a.map(replacingCodePointTokens))
        case .object(let o): return .object(o.mapValues(replacingCodePointTokens))
        default: return v
        }
    }

    /// A value for a failure message, cut short.
    static func brief(_ v: Value) -> String {
        let text = v.description
        return text.count > 300 ? String(text.prefix(300)) + "…" : text
    }
}

// MARK: - CBOR items as bytes (independent of the codec under test)

/// A CBOR item with its strings as raw bytes, to compare byte-exactly what Perl wrote and what we write.
indirect enum RawCBOR: Equatable, Sendable, CustomStringConvertible {
    case unsigned(UInt64)
    case negative(UInt64)
    case bytes([UInt8])
    case text([UInt8])
    case array([RawCBOR])
    case map([RawCBOR])  // key, value, key, value …
    case tag(UInt64, RawCBOR)
    case simple(UInt8, UInt64)

    var description: String {
        switch self {
        case .unsigned(let n): return "\(n)"
        case .negative(let n): return "-1-\(n)"
        case .bytes(let b): return "h'\(Vectors.hex(b))'"
        case .text(let t): return "text'\(Vectors.hex(t))'"
        case .array(let a): return "[\(a.map(\.description).joined(separator: ", "))]"
        case .map(let a): return "{\(a.map(\.description).joined(separator: ", "))}"
        case .tag(let t, let item): return "\(t)(\(item))"
        case .simple(let info, let arg): return "simple(\(info), \(arg))"
        }
    }

    /// The single item filling `bytes`.
    static func parse(_ bytes: [UInt8]) throws -> RawCBOR {
        var i = 0
        let item = try parse(bytes, &i)
        guard i == bytes.count else { throw Vectors.Failure(description: "trailing bytes after a CBOR item") }
        return item
    }

    static func parse(_ b: [UInt8], _ i: inout Int) throws -> RawCBOR {
        func need(_ n: Int) throws {
            guard b.count - i >= n else { throw Vectors.Failure(description: "truncated CBOR") }
        }
        try need(1)
        let initial = b[i]
        i += 1
        let major = initial >> 5
        let info = initial & 0x1F
        var arg = UInt64(info)
        if (24...27).contains(info) {
            let n = 1 << Int(info - 24)
            try need(n)
            arg = b[i..<(i + n)].reduce(0) { $0 << 8 | UInt64($1) }
            i += n
        } else if info > 27 {
            throw Vectors.Failure(description: "unsupported CBOR head 0x\(String(initial, radix: 16))")
        }
        switch major {
        case 0: return .unsigned(arg)
        case 1: return .negative(arg)
        case 2, 3:
            try need(Int(arg))
            let s = Array(b[i..<(i + Int(arg))])
            i += Int(arg)
            return major == 2 ? .bytes(s) : .text(s)
        case 4: return .array(try (0..<arg).map { _ in try parse(b, &i) })
        case 5: return .map(try (0..<(2 * arg)).map { _ in try parse(b, &i) })
        case 6: return .tag(arg, try parse(b, &i))
        default: return .simple(info, arg)
        }
    }

    /// Every string in the item (map keys included), with its major type.
    static func strings(in bytes: [UInt8]) throws -> [(major: UInt8, bytes: [UInt8])] {
        var out: [(major: UInt8, bytes: [UInt8])] = []
        func walk(_ item: RawCBOR) {
            switch item {
            case .bytes(let b): out.append((2, b))
            case .text(let t): out.append((3, t))
            case .array(let a), .map(let a): a.forEach(walk)
            case .tag(_, let t): walk(t)
            default: break
            }
        }
        walk(try parse(bytes))
        return out
    }
}
