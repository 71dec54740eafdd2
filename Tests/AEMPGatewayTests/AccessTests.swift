import AEMP
import Foundation
import Testing

/// CORS (`--cors-origin`) on successful, error, timeout and streaming responses, also with bearer
/// tokens configured (the tokens themselves: SecurityTests).
@Suite("gateway: CORS", .serialized, .timeLimit(.minutes(3)))
struct AccessTests {
    static let origin = "https://app.example.org"

    // Bearer tokens on every route (401 without one, 403 read_only_token for writes with a
    // read-only one) are SecurityTests.tokensOnEveryRoute, derived from the contract.

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
