import AEMP
import Foundation
import Testing

/// What the mesh can carry (`MeshLimits`, aemp-protocol §14) at every HTTP entry point: nothing
/// nested deeper than Perl decodes, and no packet over `--max-packet`, is ever sent; the client gets
/// 422 too_deep or 413 message_too_large, and the link stays usable (the next message arrives).
@Suite("gateway: what the mesh can carry", .serialized, .timeLimit(.minutes(3)))
struct MeshLimitsTests {

    /// `levels` arrays around a string: nesting depth `levels`.
    static func nested(_ levels: Int) -> Value {
        var v: Value = "bottom"
        for _ in 0..<levels { v = .array([v]) }
        return v
    }

    /// `levels` objects around a string: nesting depth `levels`.
    static func nestedObjects(_ levels: Int) -> Value {
        var v: Value = "bottom"
        for _ in 0..<levels { v = ["a": v] }
        return v
    }

    /// A message whose packet nests `depth` levels deep (the message array is the packet's).
    static func message(depth: Int, objects: Bool = false) -> Value {
        .array([objects ? nestedObjects(depth - 1) : nested(depth - 1)])
    }

    @Test("send, batch and call: a 512-deep message (packet) goes through; 513 is 422 too_deep with the limit, nothing is sent, the next message arrives")
    func messageDepth() async throws {
        try await GatewayNetwork.with { net in
            let (port, inbox) = net.node.mailbox()
            var messages = inbox.makeAsyncIterator()
            let to = Value.string(port.description)

            // At the limit: delivered, unchanged (arrays and objects).
            for objects in [false, true] {
                let ok = try await net.post("/v1/send", json: ["port": to, "message": Self.message(depth: 512, objects: objects)])
                #expect(ok.status == 202, "\(ok)")
                let got = try await next(&messages, "the 512-deep message")
                #expect(Value.array(got) == Self.message(depth: 512, objects: objects))
            }

            // One deeper: refused whole, with the numbers.
            for objects in [false, true] {
                let deep = try await net.post("/v1/send", json: ["port": to, "message": Self.message(depth: 513, objects: objects)])
                let p = expectProblem(deep, 422, "too_deep")
                #expect(p["limit"] == 512 && p["depth"] == 513, "\(deep)")
            }
            let batch = try await net.post(
                "/v1/send",
                json: [["port": to, "message": ["batch item 0, must not arrive"]], ["port": to, "message": Self.message(depth: 513)]])
            let b = expectProblem(batch, 422, "too_deep")
            #expect(b["index"] == 1 && b["limit"] == 512, "\(batch)")

            // Deeper than the JSON parser itself goes (2048): still too_deep, not malformed JSON.
            let raw = Array(#"{"port": "\#(port)", "message": "#.utf8) + [UInt8](repeating: UInt8(ascii: "["), count: 3_000)
            let r = try await net.http.request("POST", "/v1/send", headers: [("Content-Type", "application/json")], body: raw)
            let rp = expectProblem(r, 422, "too_deep")
            #expect(rp["limit"] == 512 && (rp["depth"]?.integerValue ?? 0) > 2048, "\(r)")

            // Call: the reply port is appended, a string, so the same limit.
            let node = net.node
            let echo = node.port { message in
                guard let reply = message.last?.stringValue else { return }
                node.snd(reply, [.int(Int64(Value.array(Array(message.dropLast())).nestingDepth))])
            }
            let called = try await net.post("/v1/call", json: ["port": .string(echo.description), "message": Self.message(depth: 512), "timeout": .double(5 * sanitizerSlowdown)])
            #expect(called.status == 200 && called.json == ["reply": [512]], "\(called)")
            let deepCall = try await net.post("/v1/call", json: ["port": to, "message": Self.message(depth: 513), "timeout": 1])
            let c = expectProblem(deepCall, 422, "too_deep")
            #expect(c["limit"] == 512 && c["depth"] == 513, "\(deepCall)")

            // Nothing of the refused requests reached the node: the next message is the next one.
            #expect(try await net.post("/v1/send", json: ["port": to, "message": ["after"]]).status == 202)
            #expect(try await next(&messages, "the message after the refused ones") == ["after"])

            // Counted.
            let metrics = String(decoding: try await net.get("/metrics").body, as: UTF8.self)
            #expect(metrics.contains("aemp_gateway_requests_refused_too_deep_total 5"), "\(metrics.split(separator: "\n").filter { $0.contains("refused") })")
        }
    }

    @Test("db PUT and reg: a 509-deep value is stored and reaches a watcher; 510 is 422 too_deep (g_slave wraps it in 3 levels), nothing is sent")
    func databaseValueDepth() async throws {
        try await GatewayNetwork.with { net in
            let (changes, sink) = AsyncStream.makeStream(of: FamilyChange.self)
            let watch = net.node.dbMon("limits") { sink.yield($0) }
            defer { watch.cancel() }
            var feed = changes.makeAsyncIterator()
            _ = try await next(&feed, "the first snapshot of the family")
            let put = { (key: String, value: Value) async throws -> HTTPTestResponse in
                try await net.http.request("PUT", "/v1/db/limits/\(key)", json: value, headers: net.authHeaders)
            }

            let ok = try await put("ok", Self.nested(509))
            #expect(ok.status == 200, "\(ok)")
            let stored = try await next(&feed, "the 509-deep value")
            #expect(stored.values["ok"] == Self.nested(509))

            for value in [Self.nested(510), Self.nestedObjects(510)] {
                let deep = try await put("deep", value)
                let p = expectProblem(deep, 422, "too_deep")
                #expect(p["limit"] == 509 && p["depth"] == 510, "\(deep)")
            }
            // Beyond jansson's own limit: too_deep as well.
            let raw = [UInt8](repeating: UInt8(ascii: "["), count: 3_000)
            let r = try await net.http.request("PUT", "/v1/db/limits/raw", headers: [("Content-Type", "application/json")] + net.authHeaders, body: raw)
            expectProblem(r, 422, "too_deep")

            // db_reg of a mailbox: the same limit on its value.
            let box = try await net.createMailbox()
            let reg = try await net.post("/v1/db/limits/reg", json: ["port": .string(box.name), "value": Self.nested(509)])
            #expect(reg.status == 201, "\(reg)")
            let registered = try await next(&feed, "the registered mailbox")
            #expect(registered.values[box.port] == Self.nested(509))
            let box2 = try await net.createMailbox()
            let deepReg = try await net.post("/v1/db/limits/reg", json: ["port": .string(box2.name), "value": Self.nested(510)])
            let rp = expectProblem(deepReg, 422, "too_deep")
            #expect(rp["limit"] == 509 && rp["depth"] == 510, "\(deepReg)")

            // The next write is the next change: nothing deep was sent, and the link to the master works.
            #expect(try await put("after", "after").status == 200)
            let after = try await next(&feed, "the write after the refused ones")
            #expect(after.added == ["after"] && after.changed.isEmpty, "\(after)")
            #expect(after.values["deep"] == nil && after.values["raw"] == nil && after.values[box2.port] == nil, "\(after.values.keys.sorted())")
        }
    }

    @Test("a 1 MiB message is accepted by the default --max-body and arrives")
    func megabyteMessage() async throws {
        try await GatewayNetwork.with { net in
            let (port, inbox) = net.node.mailbox()
            var messages = inbox.makeAsyncIterator()
            let payload = Value.string(String(repeating: "m", count: 1 << 20))
            let r = try await net.post("/v1/send", json: ["port": .string(port.description), "message": [payload]], timeout: 30)
            #expect(r.status == 202, "\(r.status) \(String(decoding: r.body.prefix(300), as: UTF8.self))")
            #expect(try await next(&messages, within: 30, "the 1 MiB message") == [payload])
        }
    }

    @Test("with --max-packet, a message or db value whose packet is larger is 413 message_too_large; nothing is sent; the next message arrives")
    func packetLimit() async throws {
        try await GatewayNetwork.with(gatewayArguments: ["--max-packet", "65536"]) { net in
            let (port, inbox) = net.node.mailbox()
            var messages = inbox.makeAsyncIterator()
            let to = Value.string(port.description)
            let big = Value.string(String(repeating: "b", count: 70_000))

            let fits = Value.string(String(repeating: "f", count: 60_000))
            #expect(try await net.post("/v1/send", json: ["port": to, "message": [fits]]).status == 202)
            #expect(try await next(&messages, "the 60 KB message") == [fits])

            let r = try await net.post("/v1/send", json: ["port": to, "message": [big]])
            let p = expectProblem(r, 413, "message_too_large")
            #expect(p["limit"] == 65536 && (p["size"]?.integerValue ?? 0) > 70_000, "\(r)")
            let batch = try await net.post("/v1/send", json: [["port": to, "message": ["item 0"]], ["port": to, "message": [big]]])
            let b = expectProblem(batch, 413, "message_too_large")
            #expect(b["index"] == 1, "\(batch)")
            let call = try await net.post("/v1/call", json: ["port": to, "message": [big], "timeout": 1])
            expectProblem(call, 413, "message_too_large")
            let put = try await net.http.request("PUT", "/v1/db/limits/big", json: big, headers: net.authHeaders)
            expectProblem(put, 413, "message_too_large")

            #expect(try await net.post("/v1/send", json: ["port": to, "message": ["after"]]).status == 202)
            #expect(try await next(&messages, "the message after the refused ones") == ["after"])
            let metrics = String(decoding: try await net.get("/metrics").body, as: UTF8.self)
            #expect(metrics.contains("aemp_gateway_requests_refused_too_large_total 4"), "\(metrics.split(separator: "\n").filter { $0.contains("refused") })")
        }
    }

    @Test("--max-packet is in --help; a bad value is the usual one-line configuration error (exit 2)")
    func maxPacketOption() async throws {
        let help = try ChildProcess("aemp-gateway", ["--help"], unset: ["AEMP_SECRET"])
        defer { help.stop() }
        var lines: [String] = []
        while let line = try? await help.readLine(within: 10) { lines.append(line) }
        #expect(lines.contains { $0.contains("--max-packet") }, "\(lines.joined(separator: "\n"))")

        let bad = try ChildProcess("aemp-gateway", ["--max-packet", "x"], unset: ["AEMP_SECRET"])
        defer { bad.stop() }
        #expect(try await bad.waitForExit(within: 20) == .exited(2))
        #expect(bad.errorText.split(separator: "\n") == [#"aemp-gateway: error: --max-packet: "x" is not an integer in 65536...268435456"#], "\(bad.errorText)")

        let env = try ChildProcess("aemp-gateway", ["--http", "127.0.0.1:0", "--standalone-bind", "127.0.0.1:0"], environment: ["AEMP_GATEWAY_MAX_PACKET": "100"], unset: ["AEMP_SECRET"])
        defer { env.stop() }
        #expect(try await env.waitForExit(within: 20) == .exited(2))
        #expect(env.errorText.contains(#"AEMP_GATEWAY_MAX_PACKET: "100" is not an integer in 65536...268435456"#), "\(env.errorText)")
    }
}
