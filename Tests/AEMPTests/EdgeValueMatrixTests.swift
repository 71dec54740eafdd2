import AEMPTestSupport
import BigInt
import Foundation
import NIOCore
import Testing

@testable import AEMP

// Issue 13's payload matrix: every legal-but-odd value a Perl node sends, in both framings, through
// a real `aemp-gateway` process to HTTP (mailbox long-poll and SSE, /v1/call, the database), and
// from HTTP to the node. The node is a `ScriptedPeer` playing Perl: it writes the bytes JSON::XS
// and CBOR::XS write (bare `nan`, raw surrogate bytes, byte strings, bignum tags) and decodes
// exactly 512 levels, failing the test if anything deeper reaches it (a Perl node would lose that
// packet and every later one). Each value must arrive exactly or as documented (README: "What the
// mesh can carry"), and the next message on the same connection must still arrive.

/// One case: the values as a Perl node writes them in each framing, and what HTTP shows.
struct EdgeCase: Sendable, CustomStringConvertible {
    let name: String
    /// The values' JSON text, raw bytes as JSON::XS writes them (may be invalid JSON: `nan`).
    let json: [UInt8]
    /// The values' CBOR items, hex, as CBOR::XS writes them.
    let cbor: String
    /// The number of values (for the CBOR array head).
    let count: Int
    /// What an HTTP client reads: the message `["case", name, values…]`.
    let http: [Value]
    var description: String { name }

    init(_ name: String, json: String, jsonBytes: [UInt8]? = nil, cbor: String, count: Int, http: [Value]) {
        self.name = name
        self.json = jsonBytes ?? Array(json.utf8)
        self.cbor = cbor
        self.count = count
        self.http = http
    }

    /// The whole packet `[port, "case", name, values…]` in `framing`.
    func packet(port: String, framing: String) -> [UInt8] {
        if framing == "json" {
            return Array("[\"\(port)\",\"case\",\"\(name)\",".utf8) + json + [UInt8(ascii: "]")]
        }
        var head = CBORCodec.encode(.array([.string(port), "case", .string(name)]))
        head[0] = 0x80 | UInt8(3 + count)  // the values follow in the same array
        return head + EdgeValueMatrixTests.unhex(cbor)
    }
}

@Suite("edge values through the gateway, both framings, both directions (issue 13)", .serialized, .timeLimit(.minutes(3)))
struct EdgeValueMatrixTests {
    static func unhex(_ hex: String) -> [UInt8] {
        let digits = Array(hex.filter { !$0.isWhitespace }.utf8)
        return stride(from: 0, to: digits.count, by: 2).map { i in
            UInt8(String(decoding: digits[i..<i + 2], as: UTF8.self), radix: 16)!
        }
    }

    static func nested(_ levels: Int, object: Bool) -> Value {
        var v: Value = "deep"
        for _ in 0..<levels { v = object ? ["k": v] : [v] }
        return v
    }

    static let big = BigInt("123456789012345678901234567890")

    /// The node-to-HTTP cases. Depth cases are built from `nested`; their packet depth is one
    /// more than the value's (the packet array counts, aemp-protocol §14).
    static func cases() -> [EdgeCase] {
        var cases = [
            EdgeCase(
                "nonfinite", json: "nan,inf,-inf", cbor: "fb7ff8000000000000 fa7f800000 faff800000", count: 3,
                http: ["NaN", "Infinity", "-Infinity"]),
            EdgeCase("negzero", json: "-0.0", cbor: "fb8000000000000000", count: 1, http: [.double(-0.0)]),
            EdgeCase(
                "uv", json: "9223372036854775808,18446744073709551615", cbor: "1b8000000000000000 1bffffffffffffffff",
                count: 2, http: [.integer(BigInt(1) << 63), .integer((BigInt(1) << 64) - 1)]),
            EdgeCase(
                "bigint", json: "123456789012345678901234567890,-123456789012345678901234567890",
                cbor: "c24d018ee90ff6c373e0ee4e3f0ad2 c34d018ee90ff6c373e0ee4e3f0ad2", count: 2,  // tag 3: -n, as CBOR::XS reads it
                http: [.integer(big), .integer(-big)]),
            EdgeCase(
                "nul", json: #""a\u0000b",{"k\u0000y":1}"#, cbor: "43610062 a1436b007901", count: 2,
                http: ["a\u{0}b", ["k\u{0}y": 1]]),
            // A lone surrogate: kept on the mesh, U+FFFD over HTTP (documented, counted).
            EdgeCase(
                "surrogate", json: "", jsonBytes: Array("\"a".utf8) + [0xED, 0xA0, 0x80] + Array("b\"".utf8),
                cbor: "6561eda08062", count: 1, http: ["a\u{FFFD}b"]),
            EdgeCase(
                "maxcp", json: "", jsonBytes: [0x22, 0xF4, 0x8F, 0xBF, 0xBF, 0x22, 0x2C, 0x22, 0xF4, 0x90, 0x80, 0x80, 0x22],
                cbor: "64f48fbfbf 64f4908080", count: 2, http: ["\u{10FFFF}", "\u{FFFD}"]),
            // A hash key Unicode cannot hold (a lone surrogate): the key becomes U+FFFD, counted
            // and logged; the other pairs and the packet are kept.
            EdgeCase(
                "badkey", json: "", jsonBytes: Array("{\"".utf8) + [0xED, 0xA0, 0x80] + Array("\":1,\"k\":2}".utf8),
                cbor: "a2 63eda080 01 616b 02", count: 1, http: [["\u{FFFD}": 1, "k": 2]]),
            // Perl's byte strings are Latin-1 characters: "caf\xe9" is café, "caf\xc3\xa9" five
            // characters, the same under both framings (JSON::XS writes their UTF-8).
            EdgeCase(
                "bytes", json: "", jsonBytes: Array("\"caf".utf8) + [0xC3, 0xA9, 0x22, 0x2C] + Array("\"caf".utf8) + [0xC3, 0x83, 0xC2, 0xA9, 0x22],
                cbor: "44636166e9 45636166c3a9", count: 2, http: ["caf\u{E9}", "caf\u{C3}\u{A9}"]),
        ]
        // Packet depth 509…512 arrives (the message array's own level is the packet's).
        for depth in 509...512 {
            for object in [false, true] {
                let v = nested(depth - 1, object: object)  // the packet's own level, then the value's
                let json = JSONCodec.encodeString(v)
                let cbor = CBORCodec.encode(v).map { String(format: "%02x", $0) }.joined()
                cases.append(EdgeCase("deep\(depth)\(object ? "o" : "a")", json: json, cbor: cbor, count: 1, http: [v]))
            }
        }
        return cases
    }

    /// A standalone gateway process and a Perl-like scripted node `<name>-<framing>` joined to it,
    /// once the gateway lists the node as up.
    static func joinedPerlPeer(_ name: String, framing: String) async throws -> (GatewayChild, ScriptedPeer, String) {
        let bind = "127.0.0.1:\(try freePort())"
        let gateway = try await GatewayChild.start(standaloneBind: bind)
        do {
            let perl = "\(name)-\(framing)"
            let peer = try await ScriptedPeer.dial(bind)
            _ = try await peer.handshake(ScriptedHandshakeOptions(
                greeting1: ScriptedPeer.perlGreeting(nodeID: perl, framings: framing, peerAddr: bind),
                greeting2: ScriptedPeer.nonce(), sendFraming: framing))
            await eventually(within: 10, "the gateway lists \(perl) as up") {
                (try? await gateway.get("/v1/node").body.contains("\"\(perl)\"")) == true
            }
            return (gateway, peer, perl)
        } catch {
            gateway.child.stop()
            throw error
        }
    }

    @Test("node to HTTP: mailbox long-poll and SSE, /v1/call, database — every value exact or converted as documented, the link never wedged", arguments: ["json", "cbor"])
    func nodeToHTTP(framing: String) async throws {
        let (gateway, peer, perl) = try await Self.joinedPerlPeer("pm-perl", framing: framing)
        defer { gateway.child.stop() }
        defer { Task { await peer.close() } }

        let box = try await gateway.post("/v1/ports", json: "{}")
        let created = try JSONCodec.decode(Array(box.body.utf8)).objectValue ?? [:]
        let name = try #require(created["name"]?.stringValue, "\(box)")
        let port = try #require(created["port"]?.stringValue.flatMap(PortID.init), "\(box)")

        // An SSE reader on the mailbox, open before anything is sent (HTTP/1.0: no chunking).
        let sse = try await ScriptedPeer.dial("127.0.0.1:\(gateway.port)")
        defer { Task { await sse.close() } }
        try await sse.write("GET /v1/ports/\(name)/messages HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        #expect(try await sse.readLine(within: 10, "the SSE status line").contains("200"))

        // Every case, then a packet too deep for Perl (513 levels: skipped by the gateway, which keeps
        // the link and counts it), then an end marker that must still arrive.
        let cases = Self.cases()
        for c in cases { try await peer.write(c.packet(port: port.name, framing: framing)) }
        let tooDeep = EdgeCase(
            "deep513", json: JSONCodec.encodeString(Self.nested(512, object: false)),
            cbor: CBORCodec.encode(Self.nested(512, object: false)).map { String(format: "%02x", $0) }.joined(), count: 1,
            http: [])
        try await peer.write(tooDeep.packet(port: port.name, framing: framing))
        let end = EdgeCase("end", json: "1", cbor: "01", count: 1, http: [1])
        try await peer.write(end.packet(port: port.name, framing: framing))

        // Long-poll: every case, in order, exact; the too-deep one absent; the end there.
        var got: [Value] = []
        for _ in 0..<50 {
            let r = try await gateway.get("/v1/ports/\(name)/messages?wait=5&max=1000&after=0")
            let messages = (try decodeJSONOnBigStack(Array(r.body.utf8)).objectValue?["messages"]?.arrayValue ?? [])
            got = messages.compactMap { $0.objectValue?["message"] }
            if got.last?.arrayValue?.dropFirst().first == "end" { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        let expected: [Value] = (cases + [end]).map { .array(["case", .string($0.name)] + $0.http) }
        // Value equality cannot tell -0.0 from 0.0: the sign is in the text.
        let negzero = try await gateway.get("/v1/ports/\(name)/messages?wait=0&max=1000&after=0")
        #expect(negzero.body.contains(#"["case","negzero",-0.0]"#), "-0.0 lost its sign: \(negzero.body.prefix(400))")
        #expect(got.count == expected.count, "\(got.count) messages, expected \(expected.count)")
        for (g, e) in zip(got, expected) {
            #expect(g == e, "\(framing): \(e.arrayValue?[1] ?? "?")")
        }

        // SSE: the same events, each a JSON document of its own (never `data: null`).
        var sseMessages: [Value] = []
        while sseMessages.count < expected.count {
            let line = try await sse.readLine(within: 10, "SSE event \(sseMessages.count + 1) of \(expected.count)")
            guard line.hasPrefix("data: ") else { continue }
            let data = try decodeJSONOnBigStack(Array(line.dropFirst(6).utf8))
            #expect(data != .null, "an SSE event was data: null")
            if let m = data.objectValue?["message"] { sseMessages.append(m) }
        }
        #expect(sseMessages == expected, "SSE differs from the long-poll")

        // The gateway said what it skipped and converted.
        let metrics = try await gateway.get("/metrics").body
        func count(_ kind: String) -> Double {
            metrics.split(separator: "\n").first { $0.hasPrefix("aemp_gateway_value_events_total{kind=\"\(kind)\"}") }
                .flatMap { $0.split(separator: " ").last.flatMap { Double($0) } } ?? -1
        }
        #expect(count("packet_too_deep_skipped") == 1, "\(metrics.split(separator: "\n").filter { $0.contains("value_events") })")
        #expect(count("non_finite_converted") >= 2)  // at least the long-poll's and the SSE's
        #expect(count("invalid_code_point_replaced") >= 2)
        #expect(count("hash_key_replaced") == 1)
        await eventually(within: 5, "a notice names the packet whose hash key was changed") {
            gateway.child.errorText.contains("changed values in a packet from the peer")
        }
        await eventually(within: 5, "a warning names the skipped packet") {
            gateway.child.errorText.contains("skipped a packet from the peer that Perl could not decode either")
        }
        await eventually(within: 5, "a notice says a response carried converted values") {
            gateway.child.errorText.contains("a response carried values JSON cannot hold as they are")
        }
        #expect(!gateway.child.errorText.contains("cutting off"), "the peer was cut off")

        // /v1/call: the node answers with the odd values; the reply is one JSON document.
        async let call = gateway.post("/v1/call", json: #"{"port":"\#(perl)#echo","message":["hi"],"timeout":10}"#)
        var request = try await peer.readMeaningfulPacket(within: 10, "the call request")
        while request.first == "" { request = try await peer.readMeaningfulPacket(within: 10, "the call request") }
        #expect(request.first == "echo" && request.dropFirst().first == "hi", "\(request)")
        let replyTo = try #require(request.last?.stringValue.flatMap(PortID.init), "\(request)")
        let reply = EdgeCase("reply", json: "nan,18446744073709551615,\"ok\"", cbor: "f97e00 1bffffffffffffffff 626f6b", count: 3, http: [])
        // A reply is [replyport, values…].
        let replyPacket = framing == "json"
            ? Array("[\"\(replyTo.name)\",".utf8) + reply.json + [UInt8(ascii: "]")]
            : [0x80 | UInt8(1 + reply.count)] + CBORCodec.encode(.string(replyTo.name)) + Self.unhex(reply.cbor)
        try await peer.write(replyPacket)
        let answered = try await call
        #expect(answered.status == 200, "\(answered)")
        let replyValue = try JSONCodec.decode(Array(answered.body.utf8)).objectValue?["reply"]
        #expect(replyValue == ["NaN", .integer((BigInt(1) << 64) - 1), "ok"], "\(answered.body)")

        // The database: a key the node sets with odd values reads back per value, by every route.
        let family = "pm-fam-\(framing)"
        let value = EdgeCase("db", json: "", jsonBytes: Array("[nan,18446744073709551615,\"a".utf8) + [0xED, 0xA0, 0x80] + Array("b\"]".utf8),
            cbor: "83 f97e00 1bffffffffffffffff 6561eda08062", count: 1, http: [])
        let upd: [UInt8] = framing == "json"
            ? Array("[\"\",\"g_upd\",\"\(family)\",{\"k\":".utf8) + value.json + Array("},[]]".utf8)
            : [0x85] + CBORCodec.encode(["", "g_upd", .string(family)]).dropFirst() + [0xA1, 0x61, 0x6B] + Self.unhex(value.cbor) + [0x80]
        try await peer.write(upd)
        let shown: Value = ["NaN", .integer((BigInt(1) << 64) - 1), "a\u{FFFD}b"]
        await eventually(within: 10, "GET /v1/db/\(family) shows the key, converted per value") {
            let r = try? await gateway.get("/v1/db/\(family)")
            return (try? r.map { try JSONCodec.decode(Array($0.body.utf8)) })??.objectValue?["values"] == ["k": shown]
        }
        let values = try await gateway.get("/v1/db/\(family)/values")
        #expect(values.status == 200 && values.body.contains("NaN"), "\(values)")
        let feed = try await gateway.get("/v1/db/\(family)/watch?wait=0")
        #expect(feed.status == 200 && feed.body.contains("\"NaN\"") && !feed.body.hasPrefix("null"), "\(feed)")

        // And the link still carries messages: one more case arrives.
        try await peer.write(end.packet(port: port.name, framing: framing))
        await eventually(within: 10, "a message after everything still arrives") {
            let r = try? await gateway.get("/v1/ports/\(name)/messages?wait=1&max=1000&after=0")
            return (r?.body.components(separatedBy: "\"end\"").count ?? 0) == 3
        }
    }

    @Test("HTTP to node: odd values reach a Perl-like node exactly; nothing deeper than 512 levels ever reaches it", arguments: ["json", "cbor"])
    func httpToNode(framing: String) async throws {
        let (gateway, peer, perl) = try await Self.joinedPerlPeer("pm-sink", framing: framing)
        defer { gateway.child.stop() }
        defer { Task { await peer.close() } }

        func nextInbox() async throws -> [Value] {
            while true {
                let p = try await peer.readMeaningfulPacket(within: 10, "a message for the inbox")
                if p.first == "inbox" { return Array(p.dropFirst()) }
            }
        }

        let body = #"{"port":"\#(perl)#inbox","message":[-0.0,18446744073709551615,123456789012345678901234567890,-123456789012345678901234567890,"a\u0000b",{"k\u0000y":1},"x\ud800y","\udbff\udfff","caf\u00e9"]}"#
        let sent = try await gateway.post("/v1/send", json: body)
        #expect(sent.status == 202, "\(sent)")
        let got = try await nextInbox()
        let expected: [Value] = [
            .double(-0.0), .integer((BigInt(1) << 64) - 1), .integer(Self.big), .integer(-Self.big), "a\u{0}b", ["k\u{0}y": 1],
            .codePoints([0x78, 0xD800, 0x79]), "\u{10FFFF}", "caf\u{E9}",
        ]
        #expect(got == expected, "\(got)")
        if case .double(let z) = got.first { #expect(z.sign == .minus, "-0.0 kept its sign") }

        // Depth: a message whose packet is 512 deep arrives; one level more is refused before
        // anything is sent, and the next message arrives (the peer would throw on a deeper packet).
        let fits = Self.nested(511, object: false)  // packet [port, fits]: 1 + 511 levels
        #expect(Value.array(["inbox", fits]).nestingDepth == 512)
        let ok = try await gateway.post("/v1/send", json: #"{"port":"\#(perl)#inbox","message":[\#(JSONCodec.encodeString(fits))]}"#)
        #expect(ok.status == 202, "\(ok.status) \(ok.body.prefix(300))")
        #expect(try await nextInbox() == [fits])
        let deeper = Self.nested(512, object: true)
        let refused = try await gateway.post("/v1/send", json: #"{"port":"\#(perl)#inbox","message":[\#(JSONCodec.encodeString(deeper))]}"#)
        #expect(refused.status == 422 && refused.body.contains("too_deep"), "\(refused.status) \(refused.body.prefix(300))")
        _ = try await gateway.post("/v1/send", json: #"{"port":"\#(perl)#inbox","message":["after"]}"#)
        #expect(try await nextInbox() == ["after"], "the link carries on")
    }
}
