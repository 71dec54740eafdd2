import AEMP
import Foundation
import Testing

/// Every error status the gateway answers, each produced by a real request, each an RFC 9457
/// problem (`application/problem+json` with type, title, status, detail and code).
@Suite("gateway: errors", .serialized, .timeLimit(.minutes(3)))
struct ProblemTests {

    // Node-port destinations (403 node_port_forbidden in every spelling, on every route that
    // takes a port) are SecurityTests.nodePortsUnreachable.

    @Test("malformed JSON is 400 malformed_json, wherever a body is read")
    func malformedJSON() async throws {
        try await GatewayNetwork.with { net in
            let box = try await net.createMailbox()
            let bodies: [[UInt8]] = [
                Array("{".utf8), Array("{\"port\": \"a#b\", \"message\": [1,]}".utf8), Array("[1, 2".utf8),
                Array("{\"port\": \"a#b\"} trailing".utf8), Array("nul\u{0}l".utf8), [],
                Array("{\"port\": \"a#b\", \"message\": [\"".utf8) + [0xFF, 0xFE] + Array("\"]}".utf8),  // invalid UTF-8
                [0xEF, 0xBB, 0xBF] + Array("{\"port\":\"a#b\",\"message\":[]}".utf8) + [0xC0],
            ]
            let routes = [
                ("POST", "/v1/send"), ("POST", "/v1/call"), ("POST", "/v1/ports/\(box.name)/monitor"),
                ("PUT", "/v1/db/f/k"), ("POST", "/v1/db/f/reg"),
            ]
            for (method, path) in routes {
                for body in bodies {
                    let r = try await net.http.request(method, path, headers: [("Content-Type", "application/json")], body: body)
                    expectProblem(r, 400, "malformed_json")
                }
            }
            // POST /v1/ports takes an empty body, but not a broken one.
            expectProblem(try await net.http.request("POST", "/v1/ports", headers: [("Content-Type", "application/json")], body: Array("{\"ttl\": 5".utf8)), 400, "malformed_json")
        }
    }

    @Test("a body of the wrong shape or an invalid port is 422")
    func wrongShape() async throws {
        try await GatewayNetwork.with { net in
            let shapes: [(Value, String)] = [
                (42, "invalid_request"), ("text", "invalid_request"), (nil, "invalid_request"),
                (["message": ["x"]], "invalid_request"),
                (["port": "a#b"], "invalid_request"),
                (["port": "a#b", "message": "not a list"], "invalid_request"),
                (["port": "a#b", "message": ["k": 1]], "invalid_request"),
                ([42], "invalid_request"),
                (["port": 5, "message": []], "invalid_port"),
                (["port": ["a#b"], "message": []], "invalid_port"),
                (["port": "", "message": []], "invalid_port"),
                (["port": "   ", "message": []], "invalid_port"),
                (["port": "#name", "message": []], "invalid_port"),
                (["port": "a#b#c", "message": []], "invalid_port"),
                (["port": "no\u{1}de#b", "message": []], "invalid_port"),
                (["port": "node#na\u{7F}me", "message": []], "invalid_port"),
                (["port": "no%00de#b", "message": []], "invalid_port"),
            ]
            for (body, code) in shapes {
                let r = try await net.post("/v1/send", json: body)
                expectProblem(r, 422, code)
                if case .object = body {
                    let c = try await net.post("/v1/call", json: body)
                    expectProblem(c, 422, code)
                }
            }
        }
    }

    @Test("unknown routes are 404 route_not_found; wrong methods 405 with Allow (HEAD wherever GET)")
    func routesAndMethods() async throws {
        try await GatewayNetwork.with { net in
            for path in ["/", "/v1", "/v2/send", "/v1/nope", "/v1/ports/a/b/c", "/v1/db", "/v1/db/f/k/extra", "/v1/node/x"] {
                expectProblem(try await net.get(path), 404, "route_not_found")
            }
            let box = try await net.createMailbox()
            let cases: [(String, String, String)] = [
                ("GET", "/v1/send", "POST"), ("DELETE", "/v1/call", "POST"), ("GET", "/v1/ports", "POST"),
                ("POST", "/v1/ports/\(box.name)", "GET, HEAD, DELETE"), ("POST", "/v1/ports/\(box.name)/messages", "GET, HEAD"),
                ("GET", "/v1/ports/\(box.name)/monitor", "POST"), ("POST", "/v1/db/f", "GET, HEAD"),
                ("PATCH", "/v1/db/f/k", "GET, HEAD, PUT, DELETE"), ("POST", "/v1/db/f/keys", "GET, HEAD, PUT, DELETE"),
                ("PATCH", "/v1/db/f/watch", "GET, HEAD, PUT, DELETE"), ("PATCH", "/v1/db/f/reg", "GET, HEAD, POST, PUT, DELETE"), ("POST", "/v1/node", "GET, HEAD"), ("DELETE", "/v1/nodes", "GET, HEAD"),
                ("PUT", "/v1/nodes/events", "GET, HEAD"), ("POST", "/healthz", "GET, HEAD"), ("DELETE", "/openapi.json", "GET, HEAD"),
            ]
            for (method, path, allow) in cases {
                let r = try await net.http.request(method, path, body: method == "GET" || method == "DELETE" ? nil : [])
                expectProblem(r, 405, "method_not_allowed")
                #expect(r.header("Allow") == allow, "\(method) \(path): \(r)")
            }
            // An undecodable path is a client error too, not a crash.
            let undecodable = try await net.get("/v1/ports/%FF%FE/messages")
            expectProblem(undecodable, 400, "invalid_path")
            #expect(try await net.get("/healthz").status == 200, "the gateway still serves")
        }
    }

    @Test("a body over --max-body is 413 body_too_large (Content-Length or chunked), and the gateway keeps serving")
    func bodyTooLarge() async throws {
        try await GatewayNetwork.with(gatewayArguments: ["--max-body", "1024"]) { net in
            let (port, inbox) = net.node.mailbox()
            var messages = inbox.makeAsyncIterator()
            let big: Value = ["port": .string(port.description), "message": [.string(String(repeating: "x", count: 2000))]]
            let r = try await net.post("/v1/send", json: big)
            let p = expectProblem(r, 413, "body_too_large")
            #expect(p["limit"] == 1024, "\(r)")
            expectProblem(try await net.http.request("PUT", "/v1/db/f/k", body: Array(repeating: 0x20, count: 1500)), 413, "body_too_large")

            // Chunked, with no Content-Length to refuse it early.
            let chunk = Array(repeating: UInt8(ascii: "a"), count: 1500)
            let raw = Array("POST /v1/send HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)
                + Array(String(chunk.count, radix: 16).utf8) + [13, 10] + chunk + [13, 10] + Array("0\r\n\r\n".utf8)
                + Array("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
            let answer = try await net.http.rawExchange(raw)
            let text = String(decoding: answer, as: UTF8.self)
            let chunked = try #require(HTTPTestResponse.parse(answer), "raw answer: \(text)")
            expectProblem(chunked, 413, "body_too_large")
            // Answered as soon as the body outgrew the limit (its end may never come), and the
            // connection closed: the request behind it is not read.
            #expect(chunked.header("Connection")?.lowercased() == "close", "\(chunked)")
            #expect(!text.contains("HTTP/1.1 200 OK"), "\(text)")

            // Expect: 100-continue with a body that is too large: refused before it is sent.
            let expect = try await net.http.rawExchange(
                Array("POST /v1/send HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n".utf8))
            let refused = try #require(HTTPTestResponse.parse(expect), "\(String(decoding: expect, as: UTF8.self))")
            expectProblem(refused, 413, "body_too_large")

            // Just under the limit is fine, on a fresh request.
            let fits: Value = ["port": .string(port.description), "message": [.string(String(repeating: "y", count: 900))]]
            #expect(try await net.post("/v1/send", json: fits).status == 202)
            #expect(try await next(&messages) == [.string(String(repeating: "y", count: 900))])
        }
    }

    @Test("malformed HTTP and abrupt clients do not disturb the gateway")
    func malformedHTTP() async throws {
        try await GatewayNetwork.with { net in
            let garbage: [[UInt8]] = [
                Array("GARBAGE\r\n\r\n".utf8),
                Array("GET /v1/node HTTP/9.9\r\n\r\n".utf8),
                Array("POST /v1/send HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n".utf8),
            ]
            for bytes in garbage {
                // Either an error answer or a closed connection; just never a hang or a crash.
                let answer = try await net.http.rawExchange(bytes, timeout: 10) { received in
                    HTTPTestResponse.parse(received) != nil
                }
                if let r = HTTPTestResponse.parse(answer) {
                    #expect(r.status >= 400 && r.status <= 505, "\(r)")
                }
            }
            // Clients that hang up mid-request, mid-body, or while a long-poll waits.
            let box = try await net.createMailbox()
            for bytes in [
                "POST /v1/send HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"port\"",
                "GET /v1/node HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                "GET /v1/ports/\(box.name)/messages?wait=30 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                "GET /v1/ports/\(box.name)/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n",
                "GET /v1/db/f/watch?wait=30 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                "\u{16}\u{3}\u{1}\u{2}\u{0}\u{1}\u{0}\u{1}\u{FC}\u{3}\u{3}",  // a TLS client hello
            ] {
                try await net.http.rawSendAndHangUp(Array(bytes.utf8))
            }
            // The mailbox still delivers (to the next poll).
            net.node.snd(box.port, ["after the hang-ups"])
            let polled = try await net.poll(box.name, query: "wait=10")
            #expect(GatewayNetwork.messages(polled) == [["after the hang-ups"]], "\(polled)")
            let r = try await net.get("/v1/node")
            #expect(r.status == 200 && r.json?.objectValue?["node"] == .string(net.gateway.nodeID), "\(r)")
        }
    }

    @Test("without a master: 503 mesh_unavailable with Retry-After; local mailboxes still work")
    func meshUnavailable() async throws {
        try await Cleanup.scope { cleanup in
            let nowhere = "127.0.0.1:\(try freePort())"  // nothing listens there
            let gateway = try await GatewayProcess.start(seeds: [nowhere])
            cleanup.add { gateway.child.stop() }
            let http = try await gateway.client()
            cleanup.add { await http.close() }
            let info = try await http.request("GET", "/v1/node")
            #expect(info.status == 200 && info.json?.objectValue?["master"] == .null, "\(info)")

            let refused: [HTTPTestResponse] = [
                try await http.request("POST", "/v1/send", json: ["port": "somenode#p", "message": ["x"]]),
                try await http.request("POST", "/v1/call", json: ["port": "somenode#p", "message": ["x"], "timeout": 1]),
                try await http.request("GET", "/v1/db/f"),
                try await http.request("GET", "/v1/db/f/keys"),
                try await http.request("GET", "/v1/db/f/values"),
                try await http.request("GET", "/v1/nodes"),
            ]
            for r in refused {
                expectProblem(r, 503, "mesh_unavailable")
                #expect(r.header("Retry-After") != nil, "\(r)")
            }
            // The feed waits for a snapshot from a master, boundedly.
            let feed = try await http.request("GET", "/v1/db/f/watch?wait=1", timeout: 20)
            expectProblem(feed, 503, "mesh_unavailable")

            // The gateway's own mailboxes need no network.
            let created = try await http.request("POST", "/v1/ports")
            #expect(created.status == 201, "\(created)")
            let name = try #require(created.json?.objectValue?["name"]?.stringValue)
            let port = try #require(created.json?.objectValue?["port"])
            let local = try await http.request("POST", "/v1/send", json: ["port": port, "message": ["to myself"]])
            #expect(local.status == 202, "\(local)")
            let polled = try await http.request("GET", "/v1/ports/\(name)/messages?wait=5")
            #expect(GatewayNetwork.messages(polled) == [["to myself"]], "\(polled)")
        }
    }

    @Test("limits: too many mailboxes or feed subscribers is 503 over_capacity with Retry-After")
    func overCapacity() async throws {
        try await GatewayNetwork.with(gatewayArguments: ["--max-mailboxes", "2", "--max-subscribers-per-family", "1"]) { net in
            _ = try await net.createMailbox()
            let second = try await net.createMailbox()
            let third = try await net.http.request("POST", "/v1/ports")
            expectProblem(third, 503, "over_capacity")
            #expect(third.header("Retry-After") != nil, "\(third)")
            // Room again once one is deleted.
            #expect(try await net.http.request("DELETE", "/v1/ports/\(second.name)").status == 200)
            _ = try await net.createMailbox()

            let first = try await net.sse("/v1/db/crowded/watch")
            #expect(try await first.next().event == "snapshot")
            let crowded = try await net.get("/v1/db/crowded/watch?wait=0")
            expectProblem(crowded, 503, "over_capacity")
            #expect(crowded.header("Retry-After") != nil, "\(crowded)")
        }
    }

    @Test("limits: connections beyond --max-connections are answered 503 over_capacity and closed; others keep working")
    func tooManyConnections() async throws {
        try await GatewayNetwork.with(gatewayArguments: ["--max-connections", "3"]) { net in
            // Open connections until one is refused (the harness may still hold some of its own,
            // so the exact count is not known): bounded at 8.
            var held: [HTTPTestClient] = []
            var refused: HTTPTestResponse?
            for _ in 0..<8 {
                let c = try await HTTPTestClient(port: net.gateway.port)
                let r = try await c.request("GET", "/v1/node")
                if r.status == 503 {
                    refused = r
                    await c.close()
                    break
                }
                #expect(r.status == 200, "\(r)")
                held.append(c)
            }
            let r = try #require(refused, "no connection was refused with --max-connections 3")
            expectProblem(r, 503, "over_capacity")
            #expect(r.header("Retry-After") != nil && r.header("Connection")?.lowercased() == "close", "\(r)")
            #expect(held.count <= 3, "at most 3 connections served, got \(held.count)")
            // The connections within the limit are served as before.
            if let first = held.first { #expect(try await first.request("GET", "/healthz").status == 200) }
            // Closing them makes room again.
            for c in held { await c.close() }
            try await eventually(within: 10, "a new connection is served again") {
                let c = try await HTTPTestClient(port: net.gateway.port)
                let status = try await c.request("GET", "/healthz").status
                await c.close()
                return status == 200
            }
        }
    }
}
