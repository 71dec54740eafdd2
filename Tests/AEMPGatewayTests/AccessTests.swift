import AEMP
import Foundation
import Testing

/// Bearer tokens (`--token-file`, read-write and read-only) and CORS (`--cors-origin`), on
/// successful, error, timeout and streaming responses.
@Suite("gateway: tokens and CORS", .serialized, .timeLimit(.minutes(3)))
struct AccessTests {
    static let origin = "https://app.example.org"

    @Test("with a token file: 401 without a valid token, 403 read_only_token for writes with a read-only one")
    func bearerTokens() async throws {
        let file = try TokenFile("# tokens for the test\nrw-token-0123456789 rw\n\nro-token-9876543210\tro\n")
        defer { file.remove() }
        let rw = [("Authorization", "Bearer rw-token-0123456789")]
        let ro = [("Authorization", "Bearer ro-token-9876543210")]
        try await GatewayNetwork.with(gatewayArguments: ["--token-file", file.path], authHeaders: rw) { net in
            let http = net.http
            for headers in [[], [("Authorization", "Bearer wrong")], [("Authorization", "Basic cnctdG9rZW4=")],
                [("Authorization", "Bearer rw-token-012345678")], [("Authorization", "Bearer rw-token-01234567890")],
                [("Authorization", "Bearer ")]] as [[(String, String)]]
            {
                let r = try await http.request("GET", "/v1/node", headers: headers)
                expectProblem(r, 401, "unauthorized")
                #expect(r.header("WWW-Authenticate")?.hasPrefix("Bearer") == true, "\(r)")
                expectProblem(try await http.request("POST", "/v1/ports", headers: headers), 401, "unauthorized")
            }
            // Health and the contract need no token.
            #expect(try await http.request("GET", "/healthz").status == 200)
            #expect(try await http.request("GET", "/openapi.json").status == 200)

            // Read-only: every read works, every write is refused.
            #expect(try await http.request("GET", "/v1/node", headers: ro).status == 200)
            #expect(try await http.request("GET", "/v1/db/f", headers: ro).status == 200)
            let box = try await net.createMailbox()  // with the rw token
            #expect(try await http.request("GET", "/v1/ports/\(box.name)/messages?wait=0", headers: ro).status == 200)
            let sse = try await net.gateway.sse("/v1/ports/\(box.name)/messages", headers: ro)
            #expect(sse.status == 200)
            await sse.close()
            let unauthorizedStream = try await net.gateway.sse("/v1/nodes/events")
            #expect(unauthorizedStream.status == 401)
            await unauthorizedStream.close()
            let writes: [(String, String, Value?)] = [
                ("POST", "/v1/ports", nil),
                ("POST", "/v1/send", ["port": .string(box.port), "message": [1]]),
                ("POST", "/v1/call", ["port": .string(box.port), "message": [1]]),
                ("DELETE", "/v1/ports/\(box.name)", nil),
                ("POST", "/v1/ports/\(box.name)/monitor", ["port": "x#y"]),
                ("PUT", "/v1/db/f/k", 1),
                ("DELETE", "/v1/db/f/k", nil),
                ("POST", "/v1/db/f/reg", ["port": .string(box.name)]),
            ]
            for (method, path, body) in writes {
                let r: HTTPTestResponse
                if let body {
                    r = try await http.request(method, path, json: body, headers: ro)
                } else {
                    r = try await http.request(method, path, headers: ro)
                }
                expectProblem(r, 403, "read_only_token")
            }
            // The mailbox survived the refused DELETE, and the read-write token may write.
            let send = try await http.request("POST", "/v1/send", json: ["port": .string(box.port), "message": ["rw"]], headers: rw)
            #expect(send.status == 202, "\(send)")
            #expect(GatewayNetwork.messages(try await http.request("GET", "/v1/ports/\(box.name)/messages?wait=5", headers: ro)) == [["rw"]])
        }
    }

    @Test("CORS headers for an allowed origin on success, errors, timeouts and streams; none for others")
    func cors() async throws {
        let file = try TokenFile("cors-token-0123456789 rw\n")
        defer { file.remove() }
        let auth = [("Authorization", "Bearer cors-token-0123456789")]
        try await GatewayNetwork.with(gatewayArguments: ["--cors-origin", Self.origin, "--token-file", file.path], authHeaders: auth) { net in
            let http = net.http
            let allowed = [("Origin", Self.origin)]
            func expectCORS(_ r: HTTPTestResponse, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
                #expect(r.header("Access-Control-Allow-Origin") == Self.origin, "\(what): \(r)", sourceLocation: sourceLocation)
                #expect(r.header("Vary")?.contains("Origin") == true, "\(what): \(r)", sourceLocation: sourceLocation)
                #expect(r.header("Access-Control-Expose-Headers")?.contains("X-AEMP-Index") == true, "\(what): \(r)", sourceLocation: sourceLocation)
            }
            let ok = try await http.request("GET", "/v1/node", headers: allowed + auth)
            #expect(ok.status == 200)
            expectCORS(ok, "success")
            expectCORS(try await http.request("GET", "/v1/node", headers: allowed), "401")
            expectCORS(try await http.request("GET", "/v1/nothing", headers: allowed + auth), "404")
            expectCORS(try await http.request("DELETE", "/v1/send", headers: allowed + auth), "405")
            expectCORS(try await http.request("POST", "/v1/send", headers: allowed + auth, body: Array("{".utf8)), "400")
            let silent = net.node.port { _ in }
            let timeout = try await http.request(
                "POST", "/v1/call", json: ["port": .string(silent.description), "message": [], "timeout": 0.3], headers: allowed + auth)
            expectProblem(timeout, 504, "timeout")
            expectCORS(timeout, "504")
            let box = try await net.createMailbox()
            let parked = try await http.request("GET", "/v1/ports/\(box.name)/messages?wait=1", headers: allowed + auth)
            #expect(parked.status == 200)
            expectCORS(parked, "long-poll answered by its deadline")

            let stream = try await net.gateway.sse("/v1/ports/\(box.name)/messages", headers: allowed + auth)
            #expect(stream.status == 200)
            #expect(stream.header("Access-Control-Allow-Origin") == Self.origin, "\(stream.responseHeaders)")
            await stream.close()

            // A preflight needs no token and says what is allowed.
            let preflight = try await http.request(
                "OPTIONS", "/v1/send",
                headers: allowed + [("Access-Control-Request-Method", "POST"), ("Access-Control-Request-Headers", "authorization, content-type")])
            #expect(preflight.status == 204, "\(preflight)")
            #expect(preflight.header("Access-Control-Allow-Origin") == Self.origin, "\(preflight)")
            #expect(preflight.header("Access-Control-Allow-Methods")?.contains("POST") == true, "\(preflight)")
            #expect(preflight.header("Access-Control-Allow-Headers")?.lowercased().contains("authorization") == true, "\(preflight)")

            // Another origin, or none: no CORS headers at all.
            for headers in [[("Origin", "https://evil.example")], [("Origin", "https://app.example.org.evil.example")], []] as [[(String, String)]] {
                let r = try await http.request("GET", "/v1/node", headers: headers + auth)
                #expect(r.status == 200)
                #expect(r.header("Access-Control-Allow-Origin") == nil, "\(r)")
                let e = try await http.request("GET", "/v1/nothing", headers: headers + auth)
                #expect(e.header("Access-Control-Allow-Origin") == nil, "\(e)")
            }
        }
    }

    @Test("--cors-origin '*' allows any origin")
    func corsAnyOrigin() async throws {
        try await Cleanup.scope { cleanup in
            let gateway = try await GatewayProcess.start(seeds: ["127.0.0.1:\(try freePort())"], arguments: ["--cors-origin", "*"])
            cleanup.add { gateway.child.stop() }
            let http = try await gateway.client()
            cleanup.add { await http.close() }
            let r = try await http.request("GET", "/healthz", headers: [("Origin", "https://anyone.example")])
            #expect(r.status == 200 && r.header("Access-Control-Allow-Origin") == "*", "\(r)")
            let e = try await http.request("POST", "/v1/send", json: ["port": "n#p", "message": []], headers: [("Origin", "null")])
            expectProblem(e, 503, "mesh_unavailable")
            #expect(e.header("Access-Control-Allow-Origin") == "*", "\(e)")
        }
    }
}

/// A token file in the temporary directory.
struct TokenFile {
    let path: String

    init(_ contents: String) throws {
        path = NSTemporaryDirectory() + "aemp-gateway-tokens-\(UUID().uuidString)"
        try contents.write(toFile: path, atomically: true, encoding: .utf8)
    }

    func remove() { try? FileManager.default.removeItem(atPath: path) }
}
