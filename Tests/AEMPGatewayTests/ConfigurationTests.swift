import AEMP
import AEMPGateway
import Foundation
import Testing

/// Flags, environment, config file and AnyEvent::MP profile: precedence and validation.
@Suite("gateway: configuration")
struct ConfigurationTests {
    private func file(_ text: String) throws -> String {
        let path = NSTemporaryDirectory() + "aemp-gw-conf-\(UUID().uuidString)"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test("flag beats environment beats config file beats profile; lists from repeats and commas")
    func precedence() throws {
        let config = try file(#"{"http": "127.0.0.1:1111", "max-body": 1000, "seeds": ["127.0.0.1:9", "127.0.0.1:10"], "mailbox-ttl": 60}"#)
        let rc = try file(#"{"secret": "top", "seeds": ["127.0.0.1:1"], "profile": {"base": {"secret": "base-secret"}, "prod": {"parent": "base", "seeds": ["127.0.0.1:2"]}}}"#)
        defer { for p in [config, rc] { try? FileManager.default.removeItem(atPath: p) } }
        var s = GatewaySettings()
        s.addFlags(["http": ["127.0.0.1:3333"], "cors-origin": ["https://a.example,https://b.example", "https://c.example"]])
        s.addEnvironment(["AEMP_GATEWAY_HTTP": "127.0.0.1:2222", "AEMP_GATEWAY_MAX_BODY": "2000"])
        var problems: [String] = []
        s.addConfigFile(path: config, problems: &problems)
        s.addProfile(name: "prod", path: rc, problems: &problems)
        #expect(problems.isEmpty, "\(problems)")
        let (c, invalid) = s.configuration(environment: [:])
        #expect(invalid.isEmpty, "\(invalid)")
        let conf = try #require(c)
        #expect(conf.http.address == "127.0.0.1:3333")  // flag
        #expect(conf.http.maxBodySize == 2000)  // environment over file
        #expect(conf.mailboxTTL == 60)  // file
        #expect(conf.node.seeds == ["127.0.0.1:9", "127.0.0.1:10"])  // file over profile
        #expect(conf.node.secret == Array("base-secret".utf8))  // profile chain: prod's parent
        #expect(conf.corsOrigins == ["https://a.example", "https://b.example", "https://c.example"])

        // The profile's seeds when nothing else names seeds; the top level without a profile name.
        var t = GatewaySettings()
        t.addProfile(name: "", path: rc, problems: &problems)
        let top = try #require(t.configuration(environment: [:]).0)
        #expect(top.node.seeds == ["127.0.0.1:1"] && top.node.secret == Array("top".utf8))
        #expect(!top.isStandalone)
    }

    @Test("every problem is reported, one line each, naming where the value came from")
    func problems() throws {
        var s = GatewaySettings()
        s.addFlags(["http": ["nope"], "max-body": ["x"], "log-level": ["loud"], "tls-cert": ["/nonexistent/cert.pem"]])
        s.addEnvironment(["AEMP_GATEWAY_SEEDS": "127.0.0.1:1,bad", "AEMP_GATEWAY_MAX_WAIT": "10", "AEMP_GATEWAY_DEFAULT_WAIT": "20"])
        let config = try file(#"{"bogus": 1, "max-mailboxes": {"a": 1}}"#)
        defer { try? FileManager.default.removeItem(atPath: config) }
        var problems: [String] = []
        s.addConfigFile(path: config, problems: &problems)
        let (c, invalid) = s.configuration(environment: [:])
        #expect(c == nil)
        let all = problems + invalid
        let expected = [
            "unknown option \"bogus\"", "max-mailboxes must be a string, number or list",
            "--http: \"nope\" is not host:port", "--max-body: \"x\" is not an integer",
            "--log-level: unknown log level \"loud\"", "--tls-cert: cannot read /nonexistent/cert.pem",
            "AEMP_GATEWAY_SEEDS: seed \"bad\" is not host:port", "--default-wait (20) exceeds --max-wait (10)",
            "a shared secret or a mesh certificate is required",
        ]
        for e in expected { #expect(all.contains { $0.contains(e) }, "missing \(e.debugDescription) in \(all)") }
        #expect(all.count == expected.count, "one line per problem: \(all)")

        // A readable certificate without a key.
        let cert = try file("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
        defer { try? FileManager.default.removeItem(atPath: cert) }
        var t = GatewaySettings()
        t.addFlags(["tls-cert": [cert]])
        #expect(t.configuration(environment: [:]).1 == ["--tls-cert and --tls-key go together"])
    }

    @Test("several --http addresses: every one serves the same gateway")
    func severalAddresses() async throws {
        var s = GatewaySettings()
        s.addFlags(["http": ["127.0.0.1:0,127.0.0.1:0", "127.0.0.1:0"], "secret": ["conf-test-secret"],
                    "standalone-bind": ["127.0.0.1:\(try freePort())"]])
        let c = try #require(s.configuration(environment: [:]).0)
        #expect(c.additionalHTTPAddresses.count == 2)
        let gateway = try Gateway(configuration: c)
        try await gateway.start()
        let addresses = gateway.httpAddresses
        #expect(addresses.count == 3 && Set(addresses).count == 3, "\(addresses)")
        var names: [String] = []
        for address in addresses {
            let port = try #require(Int(address.split(separator: ":").last ?? ""))
            let client = try await HTTPTestClient(port: port)
            #expect(try await client.request("GET", "/healthz").status == 200)
            let created = try await client.request("POST", "/v1/ports")
            names.append(try #require(created.json?.objectValue?["name"]?.stringValue))
            await client.close()
        }
        // One gateway behind every address: a mailbox made through one is read through another.
        let port = try #require(Int(addresses[2].split(separator: ":").last ?? ""))
        let client = try await HTTPTestClient(port: port)
        #expect(try await client.request("GET", "/v1/ports/\(names[0])").status == 200)
        await client.close()
        await gateway.shutdown()
    }

    @Test("the executable prints each problem on its own line and exits 2")
    func exitStatus() async throws {
        let child = try ChildProcess(
            "aemp-gateway", ["--http", "nope", "--max-connections", "0", "--seeds", "127.0.0.1:1"],
            unset: ["AEMP_SECRET"])
        defer { child.stop() }
        #expect(try await child.waitForExit(within: 20) == .exited(2))
        let lines = child.errorText.split(separator: "\n").map(String.init)
        #expect(lines == [
            "aemp-gateway: error: --http: \"nope\" is not host:port",
            "aemp-gateway: error: --max-connections: \"0\" is not an integer in 1...19000",
            "aemp-gateway: error: a shared secret or a mesh certificate is required to join a network (--secret, --secret-file, AEMP_SECRET, --mesh-cert or --profile)",
        ], "\(child.errorText)")
    }
}
