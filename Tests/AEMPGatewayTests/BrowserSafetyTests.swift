import AEMP
@testable import AEMPGateway
import Foundation
import Testing

/// The checks' pure parts: what passes as an address, a JSON type, a same-origin.
@Suite("gateway: browser safety, the parsing")
struct BrowserSafetyParsingTests {
    @Test("IPv4 authorities are recognised without parsing a name; anything else takes the general check")
    func ipv4() {
        for ok in ["127.0.0.1", "127.0.0.1:8080", "10.0.0.255:1", "0.0.0.0:65535"] { #expect(BrowserSafety.isIPv4Authority(ok), "\(ok)") }
        for no in ["", "127.0.0", "127.0.0.1.", "256.0.0.1", "1.2.3.4:", "1.2.3.4:123456", "1.2.3.4:80:80", "a.b.c.d", "1..2.3", "1.2.3.4a", "0x7f.0.0.1"] {
            #expect(!BrowserSafety.isIPv4Authority(no), "\(no)")
        }
        let safety = BrowserSafety(allowedHosts: [], listenAddresses: ["gw.internal:8080", "0.0.0.0:8081"], cors: CORSPolicy(origins: []), anyContentType: false)
        for ok in ["[::1]:80", "[fe80::1]", "::1", "gw.internal", "GW.internal.:8080", "localhost", "x.localhost"] {
            #expect((try? safety.checkHost(ok)) != nil, "\(ok)")
        }
        for no in ["gw.internal.evil", "localhostx", "0.0.0.0.evil", "[::1", "evil"] { #expect((try? safety.checkHost(no)) == nil, "\(no)") }
    }

    @Test("JSON types: application/json and +json, UTF-8 or no charset")
    func json() {
        for ok in ["application/json", "APPLICATION/JSON", "application/json;charset=utf-8", "application/json ; charset=\"UTF8\"", "application/problem+json", "application/json; foo=bar"] {
            #expect(BrowserSafety.isJSON(ok), "\(ok)")
        }
        for no in [nil, "", "text/json", "application/jsonx", "application/json; charset=latin1", "text/plain", "application/x-www-form-urlencoded", "+json"] {
            #expect(!BrowserSafety.isJSON(no), "\(no ?? "nil")")
        }
    }

    @Test("an origin's host:port, for the same-origin comparison")
    func originHost() {
        #expect(BrowserSafety.originHost("http://127.0.0.1:8080") == "127.0.0.1:8080")
        #expect(BrowserSafety.originHost("https://App.Example") == "app.example")
        #expect(BrowserSafety.originHost("null") == nil)
        #expect(BrowserSafety.originHost("http://a/b") == nil)
    }
}

/// Issue 17's safe defaults, seen from HTTP clients (curl and a raw client that sends what a
/// browser sends): without tokens, a web page of another site cannot put anything into the
/// network, whatever it tries, and programs are not hindered. Before: a `text/plain` body, a
/// foreign `Origin` and a foreign `Host` were all served (202, 200).
@Suite("gateway: browser safety (Host, Origin, Content-Type)", .timeLimit(.minutes(3)))
struct BrowserSafetyTests {
    static func standalone(_ arguments: [String] = []) async throws -> (GatewayProcess, HTTPTestClient) {
        let gateway = try await GatewayProcess.start(
            seeds: nil, arguments: ["--standalone-bind", "127.0.0.1:\(try freePort())"] + arguments)
        do {
            return (gateway, try await gateway.client())
        } catch {
            gateway.child.stop()
            throw error
        }
    }

    /// A mailbox of the gateway and the body of a send to it.
    static func mailbox(_ http: HTTPTestClient) async throws -> (name: String, send: [UInt8]) {
        let made = try await http.request("POST", "/v1/ports")
        let o = try #require(made.json?.objectValue, "\(made)")
        let name = try #require(o["name"]?.stringValue), port = try #require(o["port"]?.stringValue)
        return (name, Array(#"{"port": "\#(port)", "message": ["from a page"]}"#.utf8))
    }

    /// What the mailbox holds now (nothing acknowledged).
    static func messages(_ http: HTTPTestClient, _ name: String) async throws -> [Value] {
        let r = try await http.request("GET", "/v1/ports/\(name)/messages?wait=0")
        return r.json?.objectValue?["messages"]?.arrayValue ?? []
    }

    static func metric(_ http: HTTPTestClient, _ check: String) async throws -> Double? {
        let text = try await http.request("GET", "/metrics").text
        let prefix = "aemp_gateway_requests_refused_browser_total{check=\"\(check)\"} "
        return text.split(separator: "\n").first { $0.hasPrefix(prefix) }.flatMap { Double($0.dropFirst(prefix.count)) }
    }

    @Test("a Host that is not the gateway's (DNS rebinding) gets 403 host_not_allowed on every route, the quick send too; addresses, localhost and --allowed-host pass")
    func hosts() async throws {
        let (gateway, http) = try await Self.standalone(["--allowed-host", "gw.example.net"])
        defer { gateway.child.stop() }
        let box = try await Self.mailbox(http)
        let json = [("Content-Type", "application/json")]
        for host in ["attacker.example", "attacker.example:\(gateway.port)", "localhost.attacker.example", "gw.example.net.attacker.example"] {
            let h = [("Host", host)]
            let p = expectProblem(try await http.request("GET", "/v1/node", headers: h), 403, "host_not_allowed")
            #expect(p["detail"]?.stringValue?.contains("--allowed-host") == true, "\(p)")
            expectProblem(try await http.request("POST", "/v1/send", headers: h + json, body: box.send), 403, "host_not_allowed")
            expectProblem(try await http.request("GET", "/healthz", headers: h), 403, "host_not_allowed")
        }
        #expect(try await Self.messages(http, box.name).isEmpty, "a send with a foreign Host arrived")
        #expect(try await Self.metric(http, "host") == 12)

        for host in [
            "127.0.0.1:\(gateway.port)", "127.0.0.1", "localhost:\(gateway.port)", "LOCALHOST", "localhost.", "app.localhost:3000",
            "[::1]:\(gateway.port)", "10.1.2.3:8080", "gw.example.net", "GW.Example.NET.:443",
        ] {
            let r = try await http.request("POST", "/v1/send", headers: [("Host", host)] + json, body: box.send)
            #expect(r.status == 202, "Host \(host): \(r)")
        }
        #expect(try await Self.messages(http, box.name).count == 10)

        // --allowed-host '*' turns the check off.
        let (any, anyHTTP) = try await Self.standalone(["--allowed-host", "*"])
        defer { any.child.stop() }
        #expect(try await anyHTTP.request("GET", "/v1/node", headers: [("Host", "attacker.example")]).status == 200)
    }

    @Test("a state-changing request from a page of another origin gets 403 origin_not_allowed and nothing arrives; reads, the gateway's own origin, --cors-origin and programs (no Origin) pass")
    func origins() async throws {
        let (gateway, http) = try await Self.standalone()
        defer { gateway.child.stop() }
        let box = try await Self.mailbox(http)
        let json = [("Content-Type", "application/json")]
        for origin in ["https://evil.example", "null", "http://127.0.0.1:1", "http://localhost:\(gateway.port)"] {
            let o = [("Origin", origin)]
            let p = expectProblem(try await http.request("POST", "/v1/send", headers: o + json, body: box.send), 403, "origin_not_allowed")
            #expect(p["detail"]?.stringValue?.contains("--cors-origin") == true, "\(p)")
            expectProblem(try await http.request("POST", "/v1/ports", headers: o), 403, "origin_not_allowed")
            expectProblem(try await http.request("PUT", "/v1/db/f/k", headers: o + json, body: Array("1".utf8)), 403, "origin_not_allowed")
            expectProblem(try await http.request("DELETE", "/v1/ports/\(box.name)", headers: o), 403, "origin_not_allowed")
            // Reading is left to CORS (the page cannot read the answer without its headers).
            #expect(try await http.request("GET", "/v1/node", headers: o).status == 200)
        }
        #expect(try await Self.messages(http, box.name).isEmpty, "a send from another origin arrived")
        #expect(try await http.request("GET", "/v1/db/f").json?.objectValue?["values"] == [:], "a write from another origin landed")
        #expect(try await Self.metric(http, "origin") == 16)

        // The gateway's own origin (same Host), and a program that sends no Origin.
        let own = [("Origin", "http://127.0.0.1:\(gateway.port)")]
        #expect(try await http.request("POST", "/v1/send", headers: own + json, body: box.send).status == 202)
        #expect(try await http.request("POST", "/v1/send", headers: json, body: box.send).status == 202)
        #expect(try await Self.messages(http, box.name).count == 2)

        // An origin allowed by CORS may write; others still may not.
        let (cors, corsHTTP) = try await Self.standalone(["--cors-origin", "https://app.example"])
        defer { cors.child.stop() }
        let corsBox = try await Self.mailbox(corsHTTP)
        let allowed = try await corsHTTP.request("POST", "/v1/send", headers: [("Origin", "https://app.example")] + json, body: corsBox.send)
        #expect(allowed.status == 202 && allowed.header("Access-Control-Allow-Origin") == "https://app.example", "\(allowed)")
        expectProblem(
            try await corsHTTP.request("POST", "/v1/send", headers: [("Origin", "https://evil.example")] + json, body: corsBox.send), 403,
            "origin_not_allowed")
        #expect(try await Self.messages(corsHTTP, corsBox.name).count == 1)
    }

    @Test("a JSON body not sent as application/json gets 415 unsupported_media_type (quick and general path) and nothing arrives; curl --json passes, curl -d is told how")
    func contentTypes() async throws {
        let (gateway, http) = try await Self.standalone()
        defer { gateway.child.stop() }
        let box = try await Self.mailbox(http)
        for type: String? in [nil, "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                              "application/json; charset=iso-8859-1", "application/jsonp", "json"] {
            let h = type.map { [("Content-Type", $0)] } ?? []
            expectProblem(try await http.request("POST", "/v1/send", headers: h, body: box.send), 415, "unsupported_media_type")
            expectProblem(try await http.request("PUT", "/v1/db/f/k", headers: h, body: Array("1".utf8)), 415, "unsupported_media_type")
        }
        #expect(try await Self.messages(http, box.name).isEmpty, "a send that was not application/json arrived")
        #expect(try await Self.metric(http, "content_type") == 16)
        for type in ["application/json", "Application/JSON; charset=utf-8", "application/json;charset=\"UTF-8\"", "application/vnd.api+json"] {
            let r = try await http.request("POST", "/v1/send", headers: [("Content-Type", type)], body: box.send)
            #expect(r.status == 202, "\(type): \(r)")
        }
        #expect(try await Self.messages(http, box.name).count == 4)

        // The real curl: -d sends application/x-www-form-urlencoded, --json sends application/json.
        let url = "http://127.0.0.1:\(gateway.port)/v1/send"
        let body = String(decoding: box.send, as: UTF8.self)
        let form = try await ChildProcess.run(executable: "/usr/bin/env", ["curl", "-sS", "--max-time", "10", "-d", body, url], within: 30)
        #expect(form.stdout.contains("\"unsupported_media_type\"") && form.stdout.contains("curl: --json"), "\(form.stdout)")
        let proper = try await ChildProcess.run(executable: "/usr/bin/env", ["curl", "-sS", "--max-time", "10", "--json", body, url], within: 30)
        #expect(proper.stdout == "{\"accepted\":1}", "\(proper.stdout)")
        // (A read without `after` acknowledges nothing: the 4 above are still there.)
        #expect(try await Self.messages(http, box.name).count == 5)

        // --allow-any-content-type accepts them again.
        let (lenient, lenientHTTP) = try await Self.standalone(["--allow-any-content-type"])
        defer { lenient.child.stop() }
        let lenientBox = try await Self.mailbox(lenientHTTP)
        #expect(try await lenientHTTP.request("POST", "/v1/send", headers: [("Content-Type", "text/plain")], body: lenientBox.send).status == 202)
    }
}
