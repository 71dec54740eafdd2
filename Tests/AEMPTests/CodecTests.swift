import AEMPTestSupport
import BigInt
import NIOCore
import Testing

@testable import AEMP

/// JSON (jansson) and CBOR codecs and their stream decoders (aemp-protocol §5).
@Suite("Codecs")
struct CodecTests {
    // MARK: - Fixtures

    /// A value with a name for the test report.
    struct Sample: Sendable, CustomTestStringConvertible {
        var name: String
        var value: Value
        var testDescription: String { name }
    }

    static func nested(_ depth: Int) -> Value {
        var v: Value = "bottom"
        for i in 0..<depth { v = i.isMultiple(of: 2) ? [v] : ["k\(i)": v] }
        return v
    }

    static let samples: [Sample] = [
        Sample(name: "null", value: nil),
        Sample(name: "true", value: true),
        Sample(name: "false", value: false),
        Sample(name: "small ints", value: [0, 1, 23, 24, 255, 256, 65535, 65536, 4_294_967_295, 4_294_967_296]),
        Sample(name: "negative ints", value: [-1, -24, -25, -256, -257, -65537, -4_294_967_297]),
        Sample(name: "Int64.max", value: .int(.max)),
        Sample(name: "Int64.min", value: .int(.min)),
        Sample(name: "Int64 extremes in an array", value: [.int(.min), .int(.min + 1), .int(.max - 1), .int(.max)]),
        Sample(name: "empty string", value: ""),
        Sample(name: "ascii", value: "hello"),
        Sample(name: "unicode", value: "ünïcödé ✓ 日本語 😀 🇩🇪 e\u{301}"),
        Sample(name: "NUL inside", value: "a\u{0}b"),
        Sample(name: "NUL only", value: "\u{0}"),
        Sample(name: "control and escapes", value: "tab\tnl\ncr\r\"quote\" back\\slash /\u{1}\u{1f}\u{7f}"),
        Sample(name: "BMP edges", value: "\u{80}\u{7ff}\u{800}\u{fffd}\u{ffff}\u{10000}\u{10ffff}"),
        Sample(name: "float32-exact 1.5", value: 1.5),
        Sample(name: "float32-exact 2^40", value: 1_099_511_627_776.0),
        Sample(name: "float32-exact negative", value: -0.375),
        Sample(name: "zero double", value: 0.0),
        Sample(name: "float64 0.1", value: 0.1),
        Sample(name: "float64 2^24+1", value: 16_777_217.0),
        Sample(name: "float64 time", value: 1_795_610_868.513363),
        Sample(name: "float64 large", value: 1e300),
        Sample(name: "float64 tiny", value: -1e-300),
        Sample(name: "float64 subnormal", value: .double(.leastNonzeroMagnitude)),
        Sample(name: "Float.greatestFiniteMagnitude", value: .double(Double(Float.greatestFiniteMagnitude))),
        Sample(name: "Double.greatestFiniteMagnitude", value: .double(.greatestFiniteMagnitude)),
        Sample(name: "empty array", value: []),
        Sample(name: "empty object", value: [:]),
        Sample(name: "empty containers nested", value: [[], [:], [[]], ["": [:]]]),
        Sample(name: "AEMP packet", value: ["", "g_slave", ["'l": ["recv": ["127.0.0.1:4041"]]]]),
        Sample(name: "mixed", value: ["port", "test", "hello", 42, -7, 1.5, "ünïcödé ✓", [1, 2, 3], ["a": 1, "b": [nil]], nil]),
        Sample(name: "object with unicode and empty keys", value: ["ü": 1, "a b": 2, "": 3, "😀": [true, false], "\"": "\u{0}"]),
        Sample(name: "nested 200", value: nested(200)),
    ]

    // MARK: - Round trips

    @Test("JSON round trip", arguments: samples)
    func jsonRoundTrip(_ s: Sample) throws {
        let text = JSONCodec.encodeString(s.value)
        #expect(try JSONCodec.decode(text) == s.value, "via \(text)")
        var buffer = ByteBufferAllocator().buffer(capacity: 16)
        try JSONCodec.encode(s.value, into: &buffer)
        #expect(try JSONCodec.decode(Array(buffer.readableBytesView)) == s.value)
    }

    @Test("CBOR round trip", arguments: samples)
    func cborRoundTrip(_ s: Sample) throws {
        let bytes = CBORCodec.encode(s.value)
        #expect(try CBORCodec.decode(bytes) == s.value, "via \(Vectors.hex(bytes))")
    }

    @Test("packets round trip through the stream decoders", arguments: Framing.allCases)
    func framingRoundTrip(_ framing: Framing) throws {
        var buffer = ByteBufferAllocator().buffer(capacity: 256)
        let packets = Self.samples.map { [.string($0.name), $0.value] as [Value] }
        for p in packets { try framing.encode(p, into: &buffer) }
        var decoder = PacketDecoder(framing, maxPacketSize: 1 << 20)
        var got: [[Value]] = []
        while let p = try decoder.next(from: &buffer) { got.append(p) }
        #expect(got == packets)
        #expect(buffer.readableBytes == 0)
    }

    @Test("JSON encoding is compact")
    func jsonCompact() throws {
        #expect(JSONCodec.encodeString(["", 1, -1, 1.5, nil, true, false, ["a": []]]) == #"["",1,-1,1.5,null,true,false,{"a":[]}]"#)
        #expect(JSONCodec.encodeString("a\u{0}b") == #""a\u0000b""#)
        #expect(try JSONCodec.decode(#"["a\u0000b"]"#) == ["a\u{0}b"])
        // Doubles stay doubles, ints stay ints.
        #expect(try JSONCodec.decode("[1.0, 1, -0.0, 1e2]") == [.double(1), .int(1), .double(-0.0), .double(100)])
    }

    @Test("CBOR encoding uses the shortest heads and float32 when exact")
    func cborEncodings() {
        let cases: [(Value, String)] = [
            (nil, "f6"), (true, "f5"), (false, "f4"),
            (0, "00"), (23, "17"), (24, "1818"), (255, "18ff"), (256, "190100"), (65536, "1a00010000"),
            (4_294_967_296, "1b0000000100000000"),
            (-1, "20"), (-24, "37"), (-25, "3818"), (-257, "390100"),
            (.int(.max), "1b7fffffffffffffff"), (.int(.min), "3b7fffffffffffffff"),
            (1.5, "fa3fc00000"), (1_099_511_627_776.0, "fa53800000"), (-0.0, "fa80000000"),
            (0.1, "fb3fb999999999999a"), (16_777_217.0, "fb4170000010000000"),
            ("", "60"), ("a\u{0}b", "63610062"), ("ü", "41fc"), ("€", "63e282ac"),
            ([], "80"), ([:], "a0"), (["", "g_slave"], "826067675f736c617665"),
        ]
        for (value, hex) in cases {
            #expect(Vectors.hex(CBORCodec.encode(value)) == hex, "\(value)")
        }
    }

    @Test("NaN and infinities are written to JSON as strings, per value, and counted")
    func jsonNonFinite() throws {
        let before = ValueEvents.count(.nonFiniteConverted)
        let value: Value = [1, ["a": .double(.nan)], .double(.infinity), .double(-.infinity), "ok"]
        #expect(JSONCodec.encodeString(value) == #"[1,{"a":"NaN"},"Infinity","-Infinity","ok"]"#)
        var buffer = ByteBufferAllocator().buffer(capacity: 16)
        try Framing.json.encode(["", .double(.nan)], into: &buffer)
        #expect(String(buffer: buffer) == #"["","NaN"]"#)
        #expect(ValueEvents.count(.nonFiniteConverted) - before >= 4)  // process-wide; exact per call below
        var conversions = JSONConversions()
        _ = JSONWriter.httpBytes([.double(.nan), ["k": .double(-.infinity)], 1.5, .codePoints([0x61, 0xD800])], conversions: &conversions)
        #expect(conversions.nonFinite == 2 && conversions.invalidCodePoints == 1, "\(conversions)")
        var none = JSONConversions()
        _ = JSONWriter.httpBytes(["plain", 1, 2.5, -0.0], conversions: &none)
        #expect(none.isEmpty)
        // CBOR can carry them.
        let nan = try CBORCodec.decode(CBORCodec.encode(.double(.nan)))
        guard case .double(let d) = nan, d.isNaN else {
            Issue.record("NaN did not survive CBOR: \(nan)")
            return
        }
        #expect(try CBORCodec.decode(CBORCodec.encode(.double(-.infinity))) == .double(-.infinity))
    }

    @Test("JSON for HTTP writes object members sorted by key, at every level (the same value, the same bytes)")
    func httpObjectsSorted() {
        var members: [String: Value] = [:]
        for i in (0..<40).reversed() { members["k\(i < 10 ? "0" : "")\(i)"] = ["z": 1, "a": [["y": nil, "b": true]]] }
        let text = JSONCodec.encodeString(["outer": .object(members), "b": "", "a": 0])
        let inner = (0..<40).map { #""k\#($0 < 10 ? "0" : "")\#($0)":{"a":[{"b":true,"y":null}],"z":1}"# }.joined(separator: ",")
        #expect(text == #"{"a":0,"b":"","outer":{"# + inner + "}}")
    }

    // MARK: - CBOR decoding details

    @Test("CBOR byte strings are Latin-1 characters, as in Perl; text strings are UTF-8")
    func cborStringTypes() throws {
        #expect(try Self.cbor("47675f736c617665") == "g_slave")  // major 2
        #expect(try Self.cbor("67675f736c617665") == "g_slave")  // major 3
        #expect(try Self.cbor("40") == "")
        #expect(try Self.cbor("60") == "")
        // Two bytes are two characters, valid UTF-8 or not (aemp-protocol §14): Perl's "\xc3\xbc".
        #expect(try Self.cbor("42c3bc") == "\u{C3}\u{BC}")
        #expect(try Self.cbor("62c3bc") == "ü")
        #expect(try Self.cbor("41fc") == "ü")
        // And back out byte-exact: Latin-1 characters are written as a byte string.
        #expect(Vectors.hex(CBORCodec.encode("\u{C3}\u{BC}")) == "42c3bc")
        #expect(Vectors.hex(CBORCodec.encode(["caf\u{E9}": "\u{FF}\u{0}"])) == "a144636166e942ff00")
        // Perl's 'l key as a byte string in a map.
        #expect(try Self.cbor("a142276ca0") == ["'l": [:]])
    }

    @Test("CBOR byte strings that are not UTF-8 decode as Latin-1")
    func cborLatin1() throws {
        #expect(try Self.cbor("43fffe41") == "ÿþA")
        #expect(try Self.cbor("41e9") == "é")
        #expect(try Self.cbor("42c328") == "Ã(")
        #expect(try Self.cbor("4180") == "\u{80}")
        #expect(try Self.cbor("4300ff00") == "\u{0}ÿ\u{0}")
    }

    @Test("the bytes Perl sent for [\"\",\"g_slave\"]")
    func perlGSlave() throws {
        let bytes: [UInt8] = [0x82, 0x40, 0x47, 0x67, 0x5f, 0x73, 0x6c, 0x61, 0x76, 0x65]
        #expect(try CBORCodec.decode(bytes) == ["", "g_slave"])
        var buffer = ByteBufferAllocator().buffer(capacity: 16)
        buffer.writeBytes(bytes + bytes)
        var stream = CBORStreamDecoder()
        #expect(try stream.next(from: &buffer) == ["", "g_slave"])
        var packets = PacketDecoder(.cbor, maxPacketSize: 1024)
        #expect(try packets.next(from: &buffer) == ["", "g_slave"])
        #expect(buffer.readableBytes == 0)
        #expect(try packets.next(from: &buffer) == nil)
    }

    @Test("CBOR float16")
    func cborFloat16() throws {
        let cases: [(String, Double)] = [
            ("f93c00", 1.0), ("f97bff", 65504), ("f9c400", -4.0), ("f93e00", 1.5), ("f93555", 0.333251953125),
            ("f90001", 5.960464477539063e-8),  // smallest subnormal, 2^-24
            ("f903ff", 0.00006097555160522461),  // largest subnormal
            ("f90400", 0.00006103515625),  // smallest normal, 2^-14
            ("f98001", -5.960464477539063e-8),
            ("f97c00", .infinity), ("f9fc00", -.infinity), ("f90000", 0.0),
        ]
        for (hex, expected) in cases {
            #expect(try Self.cbor(hex) == .double(expected), "\(hex)")
        }
        guard case .double(let negZero) = try Self.cbor("f98000"), negZero == 0, negZero.sign == .minus else {
            Issue.record("f98000 is not -0.0")
            return
        }
        guard case .double(let nan) = try Self.cbor("f97e00"), nan.isNaN else {
            Issue.record("f97e00 is not NaN")
            return
        }
    }

    @Test("CBOR float32 and float64")
    func cborFloats() throws {
        #expect(try Self.cbor("fa3fc00000") == 1.5)
        #expect(try Self.cbor("fa53800000") == 1_099_511_627_776.0)
        #expect(try Self.cbor("fa7f800000") == .double(.infinity))
        #expect(try Self.cbor("fb3fb999999999999a") == 0.1)
        #expect(try Self.cbor("fb41dac1f47d20d9f2") == .double(Double(bitPattern: 0x41da_c1f4_7d20_d9f2)))
    }

    @Test("CBOR integers beyond Int64 and bignums stay exact, both ways")
    func cborBigIntegers() throws {
        #expect(try Self.cbor("1b7fffffffffffffff") == .int(.max))
        #expect(try Self.cbor("1b8000000000000000") == .bigInteger(BigInt("9223372036854775808")))
        #expect(try Self.cbor("1bffffffffffffffff") == .bigInteger(BigInt("18446744073709551615")))
        #expect(try Self.cbor("3b7fffffffffffffff") == .int(.min))
        #expect(try Self.cbor("3b8000000000000000") == .bigInteger(BigInt("-9223372036854775809")))
        #expect(try Self.cbor("3bffffffffffffffff") == .bigInteger(BigInt("-18446744073709551616")))
        // Math::BigInt as CBOR::XS writes it (tags 2 and 3), from the edge-values capture.
        #expect(try Self.cbor("c24d018ee90ff6c373e0ee4e3f0ad2") == .bigInteger(BigInt("123456789012345678901234567890")))
        // Tag 3 is -n, as CBOR::XS reads it (its filter: -Math::BigInt->new("0x" . hex)), not
        // RFC 8949's -1 - n: a Perl receiver is what the value is for.
        #expect(try Self.cbor("c34d113f20d9c2fff89d38e1c70cb1") == .bigInteger(BigInt("-1366416032338105944707690859697")))
        #expect(Vectors.hex(CBORCodec.encode(.bigInteger(BigInt("-123456789012345678901234567890")))) == "c34d018ee90ff6c373e0ee4e3f0ad2")
        #expect(try Self.cbor("c24101") == 1)  // a small bignum is an ordinary integer
        for text in ["9223372036854775808", "18446744073709551615", "-9223372036854775809", "-18446744073709551616",
                     "123456789012345678901234567890", "-123456789012345678901234567890"] {
            let v = Value.integer(BigInt(text)!)
            #expect(try CBORCodec.decode(CBORCodec.encode(v)) == v, "\(text)")
            #expect(JSONCodec.encodeString(v) == text)
            #expect(try JSONCodec.decode(text) == v)
            var buffer = ByteBufferAllocator().buffer(capacity: 64)
            try Framing.json.encode([v], into: &buffer)
            var decoder = JSONStreamDecoder()
            #expect(try decoder.next(from: &buffer) == [v])
        }
        #expect(Vectors.hex(CBORCodec.encode(.bigInteger(BigInt("18446744073709551615")))) == "1bffffffffffffffff")
        #expect(Vectors.hex(CBORCodec.encode(.bigInteger(BigInt("-18446744073709551616")))) == "3bffffffffffffffff")
        #expect(Vectors.hex(CBORCodec.encode(.bigInteger(BigInt("18446744073709551616")))) == "c249010000000000000000")
        // Non-shortest heads are still the same numbers.
        #expect(try Self.cbor("1b0000000000000001") == 1)
        #expect(try Self.cbor("3800") == -1)
    }

    @Test("CBOR tags are skipped")
    func cborTags() throws {
        #expect(try Self.cbor("c074323031332d30332d32315432303a30343a30305a") == "2013-03-21T20:04:00Z")
        #expect(try Self.cbor("c11a514b67b0") == 1_363_896_240)
        #expect(try Self.cbor("d9d9f7820102") == [1, 2])  // self-describe tag
        #expect(try Self.cbor("d82072687474703a2f2f6578616d706c652e636f6d") == "http://example.com")
        #expect(try Self.cbor("c6c6c601") == 1)
        #expect(try Self.cbor("82c101a1c04161c0f6") == [1, ["a": nil]])
        // Also inside a streamed packet, split byte by byte.
        let r = Self.runCBOR(Self.unhex("82c101c04161" + "82c101c04161"), chunk: 1)
        #expect(r.error == nil)
        #expect(r.packets == [[1, "a"], [1, "a"]])
        #expect(r.leftover == 0)
    }

    @Test("CBOR simple values, map keys, truncation and trailing bytes")
    func cborMisc() throws {
        #expect(try Self.cbor("f7") == nil)  // undefined
        #expect(try Self.cbor("a10102") == ["1": 2])  // Perl stringifies integer hash keys
        #expect(try Self.cbor("a2f401f502") == ["0": 1, "1": 2])  // and Types::Serialiser false/true as 0/1
        // ... and float keys as Perl prints them (%.15g): 0.1+0.2 is "0.3", 1.5 "1.5", 1e20 "1e+20".
        #expect(try Self.cbor("a1fb3fd333333333333401") == ["0.3": 1])
        #expect(try Self.cbor("a1f93e0001") == ["1.5": 1])
        #expect(try Self.cbor("a1fb4415af1d78b58c4001") == ["1e+20": 1])
        // The fallback reader takes JSON's literals in their one spelling; only inf/nan vary (Perl).
        #expect(throws: JSONCodecError.self) { try JSONCodec.decode("[tRUE]") }
        var perl = JSONStreamDecoder()
        var text = ByteBufferAllocator().buffer(string: #"["p",NaN,Inf,-inf,"\u0000",18446744073709551616]"#)
        let packet = try #require(try perl.next(from: &text)?.arrayValue)
        #expect(packet.count == 6 && packet[2] == .double(.infinity) && packet[3] == .double(-.infinity))
        #expect(packet[5] == .integer(BigInt(1) << 64))
        // An array key (Perl could not use it either) drops that pair, not the packet.
        let dropped = ValueEvents.count(.hashKeyDropped)
        #expect(try Self.cbor("a280016161 02".replacingOccurrences(of: " ", with: "")) == ["a": 2])
        #expect(ValueEvents.count(.hashKeyDropped) > dropped)
        #expect(Self.cborError("8201") == .truncated)
        #expect(Self.cborError("5a00010000") == .truncated)
        guard case .malformed = Self.cborError("0102") else {
            Issue.record("trailing bytes accepted")
            return
        }
        guard case .malformed = Self.cborError("1c") else {
            Issue.record("reserved additional information accepted")
            return
        }
        guard case .malformed = Self.cborError("ff") else {
            Issue.record("lone break accepted")
            return
        }
    }

    @Test("CBOR indefinite lengths are rejected with a typed error")
    func cborIndefinite() {
        for hex in ["9f01ff", "bf616101ff", "5f4161ff", "7f6161ff", "829f01ff02", "825f4161ff01"] {
            guard case .malformed = Self.cborError(hex) else {
                Issue.record("one-shot decoder accepted \(hex): \(String(describing: Self.cborError(hex)))")
                continue
            }
            // In a stream every packet is an array, so wrap the non-array items.
            let packet = hex.hasPrefix("9") || hex.hasPrefix("8") ? hex : "81" + hex
            for chunk in [1, 64] {
                let r = Self.runCBOR(Self.unhex(packet), chunk: chunk)
                guard case .malformed = r.error else {
                    Issue.record("stream decoder (chunk \(chunk)) did not reject \(packet): \(r)")
                    continue
                }
            }
        }
    }

    // MARK: - Stream decoders

    @Test("JSON texts separated by whitespace are separate packets")
    func jsonWhitespace() throws {
        let text = Array("[\"a\",1]\n [\"b\"]\r\n[\"c\",[]]".utf8)
        for chunk in [text.count, 1, 2, 5] {
            let r = Self.runJSON(text, chunk: chunk)
            #expect(r.error == nil)
            #expect(r.packets == [["a", 1], ["b"], ["c", []]], "chunk \(chunk)")
            #expect(r.leftover == 0)
        }
        let padded = Self.runJSON(Array(" \t\r\n[1] \n".utf8), chunk: 1)
        #expect(padded.error == nil)
        #expect(padded.packets == [[1]])
        #expect(padded.leftover == 0)
    }

    @Test("whitespace between JSON packets is consumed, not hoarded")
    func jsonWhitespaceConsumed() throws {
        var decoder = JSONStreamDecoder(maxPacketSize: 1000)
        var buffer = ByteBufferAllocator().buffer(capacity: 1 << 16)
        for _ in 0..<20 {
            buffer.writeRepeatingByte(UInt8(ascii: " "), count: 50_000)
            #expect(try decoder.next(from: &buffer) == nil)
            #expect(buffer.readableBytes == 0)
        }
        buffer.writeString("\n[1]")
        #expect(try decoder.next(from: &buffer) == [1])
    }

    @Test("NUL in a JSON object key is read exactly (jansson refuses it; the second reader takes it)")
    func jsonNulKey() throws {
        #expect(try JSONCodec.decode(Array(#"{"a\u0000b":1}"#.utf8)) == ["a\u{0}b": 1])
        var decoder = JSONStreamDecoder()
        var buffer = ByteBufferAllocator().buffer(string: #"["p",{"a\u0000b":4}]["p","next"]"#)
        #expect(try decoder.next(from: &buffer) == ["p", ["a\u{0}b": 4]])
        #expect(try decoder.next(from: &buffer) == ["p", "next"])
        #expect(try CBORCodec.decode(CBORCodec.encode(["a\u{0}b": 1])) == ["a\u{0}b": 1])
    }

    @Test("hash keys Perl tells apart but Swift strings do not (canonical equivalence) are counted when merged")
    func canonicallyEquivalentKeys() throws {
        let before = ValueEvents.count(.hashKeyMerged)
        // {"é": 1, "e\u{301}": 2} as text strings: one Swift key, the later value.
        let cbor = try Self.cbor("a262c3a901 6365cc8102".replacingOccurrences(of: " ", with: ""))
        #expect(cbor.objectValue?.count == 1)
        #expect(ValueEvents.count(.hashKeyMerged) >= before + 1)
        let json = try JSONCodec.decode(#"{"\u00e9":1,"e\u0301":2}"#)
        #expect(json.objectValue?.count == 1)
        #expect(ValueEvents.count(.hashKeyMerged) >= before + 2)
        // A key repeated byte for byte is ordinary JSON (the last wins, as in Perl), not a merge.
        #expect(try JSONCodec.decode(#"{"a":1,"a":2}"#) == ["a": 2])
        #expect(ValueEvents.count(.hashKeyMerged) >= before + 2)
    }

    @Test("JSON strings with brackets, quotes and escapes split anywhere")
    func jsonStringsInStream() throws {
        let packet = #"["]","[","\\","\"]\\",{"}":"{","a\"b":["\u005d"]},"ü\u00fc"]"#
        let expected: Value = ["]", "[", "\\", "\"]\\", ["}": "{", "a\"b": ["]"]], "üü"]
        let bytes = Array((packet + packet).utf8)
        for chunk in 1...7 {
            let r = Self.runJSON(bytes, chunk: chunk)
            #expect(r.error == nil, "chunk \(chunk)")
            #expect(r.packets == [expected, expected], "chunk \(chunk)")
        }
    }

    @Test("a JSON stream must consist of arrays")
    func jsonNotAnArray() {
        #expect(Self.runJSON(Array(#"{"a":1}"#.utf8), chunk: 100).error == .notAnArray(found: UInt8(ascii: "{"), offset: 0))
        #expect(Self.runJSON(Array("x".utf8), chunk: 100).error == .notAnArray(found: UInt8(ascii: "x"), offset: 0))
        #expect(Self.runJSON(Array("1".utf8), chunk: 100).error == .notAnArray(found: UInt8(ascii: "1"), offset: 0))
        #expect(Self.runJSON(Array("\"s\"".utf8), chunk: 100).error == .notAnArray(found: UInt8(ascii: "\""), offset: 0))
        let padded = Self.runJSON(Array("  {".utf8), chunk: 100)
        guard case .notAnArray(found: UInt8(ascii: "{"), offset: _) = padded.error else {
            Issue.record("leading whitespace then { not rejected: \(padded)")
            return
        }
        let after = Self.runJSON(Array("[1]{}".utf8), chunk: 100)
        #expect(after.packets == [[1]])
        #expect(after.error == .notAnArray(found: UInt8(ascii: "{"), offset: 0))
        // Through the framing-agnostic decoder too.
        var decoder = PacketDecoder(.json, maxPacketSize: 100)
        var buffer = ByteBufferAllocator().buffer(capacity: 8)
        buffer.writeString("x")
        #expect(throws: JSONCodecError.notAnArray(found: UInt8(ascii: "x"), offset: 0)) { try decoder.next(from: &buffer) }
    }

    @Test("a CBOR stream must consist of arrays")
    func cborNotAnArray() {
        for hex in ["a0", "01", "6161", "f6", "c082"] {
            #expect(Self.runCBOR(Self.unhex(hex), chunk: 100).error == .notAnArray(offset: 0), "\(hex)")
        }
    }

    @Test("JSON syntax errors in a stream are typed")
    func jsonSyntaxInStream() {
        for text in ["[1,]", "[1 2]", "[tru]", "[\"a]\"", "[1}", "[\u{1}]", "[01]", "[\"\\x\"]"] {
            let r = Self.runJSON(Array(text.utf8), chunk: 100)
            guard case .syntax = r.error else {
                if !(r.error == nil && r.packets.isEmpty) {  // an unterminated text may just wait
                    Issue.record("\(text.debugDescription): \(r)")
                }
                continue
            }
        }
        // Invalid UTF-8 inside a string.
        let r = Self.runJSON([0x5b, 0x22, 0xff, 0x22, 0x5d], chunk: 100)
        guard case .syntax = r.error else {
            Issue.record("invalid UTF-8 accepted: \(r)")
            return
        }
    }

    @Test("a JSON packet over maxPacketSize is refused, complete or not")
    func jsonTooLarge() {
        let limit = 64
        let big = Array(("[\"" + String(repeating: "x", count: 100)).utf8)
        for chunk in [1, 10, big.count] {
            #expect(Self.runJSON(big, max: limit, chunk: chunk).error == .packetTooLarge(limit: limit), "incomplete, chunk \(chunk)")
        }
        let complete = Array(("[\"" + String(repeating: "x", count: 100) + "\"]").utf8)
        for chunk in [1, complete.count] {
            #expect(Self.runJSON(complete, max: limit, chunk: chunk).error == .packetTooLarge(limit: limit), "complete, chunk \(chunk)")
        }
        // Exactly at the limit is fine.
        let exact = Array(("[\"" + String(repeating: "x", count: limit - 4) + "\"]").utf8)
        #expect(exact.count == limit)
        let r = Self.runJSON(exact, max: limit, chunk: 3)
        #expect(r.error == nil)
        #expect(r.packets.count == 1)
    }

    @Test("a CBOR packet over maxPacketSize is refused, complete or not")
    func cborTooLarge() {
        let limit = 64
        // A declared string length beyond the limit, only a few bytes present.
        #expect(Self.runCBOR(Self.unhex("81591000") + [UInt8](repeating: 0x61, count: 10), max: limit, chunk: 100).error
            == .packetTooLarge(limit: limit))
        #expect(Self.runCBOR(Self.unhex("815b7fffffffffffffff00"), max: limit, chunk: 100).error == .packetTooLarge(limit: limit))
        // A huge declared array count.
        #expect(Self.runCBOR(Self.unhex("9b7fffffffffffffff"), max: limit, chunk: 100).error == .packetTooLarge(limit: limit))
        // Many small items, never complete.
        let many = Self.unhex("99ffff") + [UInt8](repeating: 0x01, count: 100)
        for chunk in [1, 7, many.count] {
            #expect(Self.runCBOR(many, max: limit, chunk: chunk).error == .packetTooLarge(limit: limit), "chunk \(chunk)")
        }
        // Complete but too large.
        let complete = Self.unhex("815864") + [UInt8](repeating: 0x61, count: 100)
        for chunk in [1, complete.count] {
            #expect(Self.runCBOR(complete, max: limit, chunk: chunk).error == .packetTooLarge(limit: limit), "complete, chunk \(chunk)")
        }
        // Exactly at the limit is fine: 81 58 3d + 61 bytes = 64.
        let exact = Self.unhex("81583d") + [UInt8](repeating: 0x61, count: 61)
        #expect(exact.count == limit)
        let r = Self.runCBOR(exact, max: limit, chunk: 5)
        #expect(r.error == nil)
        #expect(r.packets.count == 1)
    }

    @Test("deep JSON nesting: over-deep packets are skipped (the next one arrives), never a stack overflow")
    func jsonDeepNesting() throws {
        let depth = 100_000
        let deep = [UInt8](repeating: UInt8(ascii: "["), count: depth) + [UInt8](repeating: UInt8(ascii: "]"), count: depth)
        let next = Array(#"["p","next"]"#.utf8)
        let r = Self.runJSON(deep + next, chunk: deep.count)
        #expect(r.error == nil && r.packets == [["p", "next"]] && r.skipped == 1, "\(r)")
        #expect(Self.jsonError(deep) == .tooDeep(limit: JSONCodec.janssonMaxDepth))
        let objects = Array((String(repeating: #"[{"a":"#, count: depth / 2) + "1" + String(repeating: "}]", count: depth / 2)).utf8)
        let o = Self.runJSON(objects + next, chunk: 4096)
        #expect(o.error == nil && o.packets == [["p", "next"]] && o.skipped == 1, "\(o)")
        // Unterminated: just waits for more (bounded by maxPacketSize).
        let open = [UInt8](repeating: UInt8(ascii: "["), count: depth)
        let waiting = Self.runJSON(open, chunk: 1000)
        #expect(waiting.error == nil && waiting.packets.isEmpty)
        #expect(Self.runJSON(open, max: 1000, chunk: 1000).error == .packetTooLarge(limit: 1000))
        // Perl's limit exactly (aemp-protocol §14): 512 levels decode, 513 are skipped.
        for (levels, decoded) in [(511, true), (512, true), (513, false), (600, false)] {
            let packet = [UInt8](repeating: UInt8(ascii: "["), count: levels) + [UInt8](repeating: UInt8(ascii: "]"), count: levels)
            let run = Self.runJSON(packet + next, chunk: 33)
            #expect(run.error == nil, "\(levels)")
            #expect(run.packets.count == (decoded ? 2 : 1), "\(levels)")
            #expect(run.skipped == (decoded ? 0 : 1), "\(levels)")
            #expect(run.packets.last == ["p", "next"], "\(levels)")
        }
    }

    @Test("deep CBOR nesting: over-deep packets are skipped (the next one arrives), never a stack overflow")
    func cborDeepNesting() throws {
        let depth = 100_000
        let next = Self.unhex("826170646e657874")  // ["p","next"]
        #expect(try CBORCodec.decode(next) == ["p", "next"])
        let arrays = [UInt8](repeating: 0x81, count: depth) + [0x00]
        for chunk in [arrays.count + next.count, 4096] {
            let r = Self.runCBOR(arrays + next, chunk: chunk)
            #expect(r.error == nil && r.packets == [["p", "next"]] && r.skipped == 1, "chunk \(chunk): \(r)")
        }
        #expect(Self.cborError(arrays) == .tooDeep(limit: CBORCodec.maxDepth))
        let maps = [0x81] + Array([[UInt8]](repeating: [0xa1, 0x41, 0x61], count: depth).joined()) + [0x00]
        let m = Self.runCBOR(maps + next, chunk: maps.count + next.count)
        #expect(m.error == nil && m.packets == [["p", "next"]] && m.skipped == 1, "\(m)")
        // Tags nest without end too: refused, never a stack overflow.
        let tags = [0x81] + [UInt8](repeating: 0xc0, count: depth) + [0x00]
        let t = Self.runCBOR(tags + next, chunk: tags.count + next.count)
        #expect(t.error == nil && t.packets == [["p", "next"]] && t.skipped == 1, "\(t)")
        #expect(Self.cborError(Array(tags.dropFirst())) == .tooDeep(limit: CBORCodec.maxDepth))
        // Unterminated: waits (bounded by maxPacketSize).
        let open = [UInt8](repeating: 0x81, count: depth)
        let waiting = Self.runCBOR(open, chunk: 1000)
        #expect(waiting.error == nil)
        #expect(waiting.packets.isEmpty)
        // Perl's limit exactly (aemp-protocol §14): 512 levels decode, 513 are skipped.
        for (levels, decoded) in [(511, true), (512, true), (513, false), (600, false)] {
            let packet = [UInt8](repeating: 0x81, count: levels) + [0x00]
            let run = Self.runCBOR(packet + next, chunk: 33)
            #expect(run.error == nil, "\(levels)")
            #expect(run.packets.count == (decoded ? 2 : 1), "\(levels)")
            #expect(run.skipped == (decoded ? 0 : 1), "\(levels)")
        }
        // And never written: the encoders refuse what Perl could not read.
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        #expect(throws: CBORCodecError.tooDeep(limit: 512)) { try Framing.cbor.encode([Self.nestedArray(512)], into: &buffer) }
        #expect(throws: JSONCodecError.tooDeep(limit: 512)) { try Framing.json.encode([Self.nestedArray(512)], into: &buffer) }
        #expect(buffer.readableBytes == 0)
        try Framing.cbor.encode([Self.nestedArray(511)], into: &buffer)
        try Framing.json.encode([Self.nestedArray(511)], into: &buffer)
        #expect(Value.array([Self.nestedArray(511)]).nestingDepth == 512)
    }

    static func nestedArray(_ levels: Int) -> Value {
        var v: Value = 0
        for _ in 0..<levels { v = [v] }
        return v
    }

    @Test("garbage never crashes or hangs a stream decoder", .timeLimit(.minutes(2)), arguments: Framing.allCases)
    func garbage(_ framing: Framing) async throws {
        // Seconds of CPU: off the cooperative pool (see `computing`).
        try await computing { try feedGarbage(framing) }
    }

    private func feedGarbage(_ framing: Framing) throws {
        var rng = SeededGenerator(seed: "garbage-\(framing.rawValue)")
        let valid = try Self.validStream(framing)
        var outcomes = [String: Int]()
        for iteration in 0..<10_000 {
            let input: [UInt8]
            switch iteration % 3 {
            case 0:  // uniform random bytes
                input = (0..<Int.random(in: 0...300, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            case 1:  // starts like a packet, then random bytes from a framing-shaped alphabet
                let alphabet: [UInt8] =
                    framing == .json
                    ? Array("[]{}\",:\\ 0123456789.-+eEtrufalsn\u{0}\n".utf8) + [0x80, 0xc3, 0xff]
                    : [0x00, 0x01, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1f, 0x20, 0x38, 0x40, 0x41, 0x58, 0x5f, 0x60, 0x61,
                       0x78, 0x7f, 0x80, 0x81, 0x82, 0x98, 0x9f, 0xa0, 0xa1, 0xb8, 0xbf, 0xc0, 0xc1, 0xd8, 0xdb, 0xf4,
                       0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xff]
                let start: [UInt8] = framing == .json ? [UInt8(ascii: "[")] : [UInt8.random(in: 0x80...0x9f, using: &rng)]
                input = start + (0..<Int.random(in: 0...300, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! }
            default:  // real packets with a few bytes flipped, cut at a random place
                var mutated = Array(valid.prefix(Int.random(in: 0...valid.count, using: &rng)))
                if !mutated.isEmpty {
                    for _ in 0..<Int.random(in: 1...4, using: &rng) {
                        mutated[Int.random(in: 0..<mutated.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                    }
                }
                input = mutated
            }
            let chunk = Int.random(in: 1...64, using: &rng)
            let outcome = try Self.feed(input, framing: framing, max: 4096, chunk: chunk)
            outcomes[outcome, default: 0] += 1
        }
        // The generator must have exercised all outcomes.
        #expect(outcomes["packets", default: 0] > 0, "\(outcomes)")
        #expect(outcomes["needs more", default: 0] > 0, "\(outcomes)")
        #expect(outcomes["error", default: 0] > 0, "\(outcomes)")
    }

    // MARK: - Helpers

    static func unhex(_ hex: String) -> [UInt8] {
        do {
            return try Vectors.unhex(hex)
        } catch {
            Issue.record("bad hex in the test itself: \(hex)")
            return []
        }
    }

    static func cbor(_ hex: String) throws -> Value {
        try CBORCodec.decode(unhex(hex))
    }

    static func cborError(_ hex: String) -> CBORCodecError? {
        cborError(unhex(hex))
    }

    static func cborError(_ bytes: [UInt8]) -> CBORCodecError? {
        do {
            _ = try CBORCodec.decode(bytes)
            return nil
        } catch {
            return error
        }
    }

    static func jsonError(_ bytes: [UInt8]) -> JSONCodecError? {
        do {
            _ = try JSONCodec.decode(bytes)
            return nil
        } catch {
            return error
        }
    }

    struct Run<E: Error>: CustomStringConvertible {
        var packets: [Value]
        var error: E?
        var leftover: Int
        /// Packets the decoder skipped (too deep for Perl).
        var skipped = 0
        var description: String { "packets \(packets.count), error \(String(describing: error)), leftover \(leftover), skipped \(skipped)" }
    }

    /// Feeds `bytes` in chunks of `chunk`, draining packets after each; stops at the first error.
    static func run<E: Error>(
        _ bytes: [UInt8], chunk: Int, _ next: (inout ByteBuffer) throws(E) -> Value?
    ) -> Run<E> {
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        var packets: [Value] = []
        var fed = 0
        while fed < bytes.count {
            let end = min(fed + chunk, bytes.count)
            buffer.writeBytes(bytes[fed..<end])
            fed = end
            do {
                while true {
                    let before = buffer.readableBytes
                    guard let p = try next(&buffer) else { break }
                    packets.append(p)
                    if buffer.readableBytes >= before {
                        Issue.record("a packet consumed no bytes")
                        return Run(packets: packets, error: nil, leftover: buffer.readableBytes)
                    }
                }
            } catch {
                return Run(packets: packets, error: error, leftover: buffer.readableBytes)
            }
        }
        return Run(packets: packets, error: nil, leftover: buffer.readableBytes)
    }

    static func runJSON(_ bytes: [UInt8], max: Int = 1 << 24, chunk: Int) -> Run<JSONCodecError> {
        var decoder = JSONStreamDecoder(maxPacketSize: max)
        var r = run(bytes, chunk: chunk) { (b: inout ByteBuffer) throws(JSONCodecError) in try decoder.next(from: &b) }
        r.skipped = decoder.notes.takeSkipped().count
        return r
    }

    static func runCBOR(_ bytes: [UInt8], max: Int = 1 << 24, chunk: Int) -> Run<CBORCodecError> {
        var decoder = CBORStreamDecoder(maxPacketSize: max)
        var r = run(bytes, chunk: chunk) { (b: inout ByteBuffer) throws(CBORCodecError) in try decoder.next(from: &b) }
        r.skipped = decoder.notes.takeSkipped().count
        return r
    }

    /// Runs the framing's decoder over `input`; the outcome must be packets, a wait for more bytes,
    /// or one of the codec's own errors.
    static func feed(_ input: [UInt8], framing: Framing, max: Int, chunk: Int) throws -> String {
        var decoder = PacketDecoder(framing, maxPacketSize: max)
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        var fed = 0
        var sawPacket = false
        while fed < input.count {
            let end = min(fed + chunk, input.count)
            buffer.writeBytes(input[fed..<end])
            fed = end
            do {
                while true {
                    let before = buffer.readableBytes
                    guard try decoder.next(from: &buffer) != nil else { break }
                    sawPacket = true
                    try #require(buffer.readableBytes < before, "a packet consumed no bytes")
                }
            } catch let error as JSONCodecError {
                #expect(framing == .json, "\(error)")
                return "error"
            } catch let error as CBORCodecError {
                #expect(framing == .cbor, "\(error)")
                return "error"
            } catch {
                Issue.record("untyped error \(error) for input \(Vectors.hex(input))")
                return "error"
            }
        }
        return sawPacket ? "packets" : "needs more"
    }

    /// Several real packets in `framing`, concatenated.
    static func validStream(_ framing: Framing) throws -> [UInt8] {
        var buffer = ByteBufferAllocator().buffer(capacity: 1024)
        let packets: [[Value]] = [
            ["", "g_slave", ["'l": ["recv": ["127.0.0.1:4041"]]]],
            ["port", "test", "hello", 42, -7, 1.5, 0.1, "ünïcödé ✓", [1, 2, 3], ["a": 1, "b": [nil]], nil, true],
            ["", "time", "gw#r1", "time-reply"],
            [],
            ["", .int(.min), .int(.max), 1e300, ""],
        ]
        for p in packets { try framing.encode(p, into: &buffer) }
        return Array(buffer.readableBytesView)
    }
}
