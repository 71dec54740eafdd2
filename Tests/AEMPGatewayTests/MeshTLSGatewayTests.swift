import AEMP
import AEMPGateway
import Foundation
import Testing

// Issue 14, the gateway's side: a gateway joins (or is the seed of) an AnyEvent::MP network
// secured with a certificate and no shared secret (`--mesh-cert`, AEMP_GATEWAY_MESH_CERT, config
// key `mesh-cert`, or the profile's `cert` text), serves the whole HTTP API over TLS links, says
// which links are TLS (/v1/node, /metrics), and refuses a file it cannot use with one line.

/// The network certificate of these tests (one per test process).
private let meshPEM: String = try! MeshCertificate.generate()
private let meshCertificate: MeshCertificate = try! MeshCertificate(pem: meshPEM, source: "test")

/// The PEM blocks of `pem` with the given label, each with its BEGIN and END lines.
private func blocks(_ label: String, of pem: String) -> [String] {
    let begin = "-----BEGIN \(label)-----", end = "-----END \(label)-----"
    var out: [String] = []
    var rest = Substring(pem)
    while let b = rest.range(of: begin), let e = rest.range(of: end, range: b.upperBound..<rest.endIndex) {
        out.append(String(rest[b.lowerBound..<e.upperBound]) + "\n")
        rest = rest[e.upperBound...]
    }
    return out
}

/// A temporary file holding `text` (mode 0600), removed by `cleanup`.
private func temporaryFile(_ text: String, _ cleanup: Cleanup, suffix: String = ".pem") throws -> String {
    let path = NSTemporaryDirectory() + "aemp-gw-tls-\(UUID().uuidString)\(suffix)"
    try text.write(toFile: path, atomically: true, encoding: .utf8)
    cleanup.add { try? FileManager.default.removeItem(atPath: path) }
    return path
}

@Suite("gateway: mesh TLS (issue 14)", .serialized, .timeLimit(.minutes(3)))
struct MeshTLSGatewayTests {

    @Test("--mesh-cert, AEMP_GATEWAY_MESH_CERT, config key mesh-cert and the profile's cert text: each is a certificate, and with one no secret is needed")
    func settings() async throws {
        try await Cleanup.scope { cleanup in
            let file = try temporaryFile(meshPEM, cleanup)
            let other = try temporaryFile(try MeshCertificate.generate(commonName: "other"), cleanup)
            let config = try temporaryFile(#"{"mesh-cert": "\#(file)", "seeds": ["127.0.0.1:9"]}"#, cleanup, suffix: ".json")
            let profileText = Value.object(["profile": ["tls": ["cert": .string(meshPEM), "seeds": ["127.0.0.1:7"]]]])
            let rc = try temporaryFile(JSONCodec.encodeString(profileText), cleanup, suffix: ".json")

            func resolve(_ build: (inout GatewaySettings, inout [String]) -> Void) throws -> GatewayConfiguration {
                var s = GatewaySettings()
                var problems: [String] = []
                build(&s, &problems)
                let (c, invalid) = s.configuration(environment: [:])
                #expect(problems.isEmpty && invalid.isEmpty, "\(problems + invalid)")
                return try #require(c)
            }
            let byFlag = try resolve { s, _ in s.addFlags(["mesh-cert": [file], "seeds": ["127.0.0.1:1"]]) }
            #expect(byFlag.node.certificate?.fingerprint == meshCertificate.fingerprint && byFlag.node.secret.isEmpty)
            let byEnvironment = try resolve { s, _ in
                s.addEnvironment(["AEMP_GATEWAY_MESH_CERT": file, "AEMP_GATEWAY_SEEDS": "127.0.0.1:1"])
            }
            #expect(byEnvironment.node.certificate?.fingerprint == meshCertificate.fingerprint)
            let byConfig = try resolve { s, p in s.addConfigFile(path: config, problems: &p) }
            #expect(byConfig.node.certificate?.fingerprint == meshCertificate.fingerprint && byConfig.node.seeds == ["127.0.0.1:9"])
            let byProfile = try resolve { s, p in s.addProfile(name: "tls", path: rc, problems: &p) }
            #expect(byProfile.node.certificate?.fingerprint == meshCertificate.fingerprint && byProfile.node.seeds == ["127.0.0.1:7"])
            #expect(byProfile.node.certificate?.source == "\(rc) profile tls key cert")
            // A flag beats the profile's text.
            let flagOverProfile = try resolve { s, p in
                s.addFlags(["mesh-cert": [other]])
                s.addProfile(name: "tls", path: rc, problems: &p)
            }
            #expect(flagOverProfile.node.certificate?.subject == "CN=other")
            // Standalone with a certificate alone.
            let standalone = try resolve { s, _ in s.addFlags(["mesh-cert": [file]]) }
            #expect(standalone.isStandalone && standalone.node.certificate != nil)

            // Neither: the message names both ways.
            var none = GatewaySettings()
            none.addFlags(["seeds": ["127.0.0.1:1"]])
            #expect(none.configuration(environment: [:]).1 == [
                "a shared secret or a mesh certificate is required to join a network (--secret, --secret-file, AEMP_SECRET, --mesh-cert or --profile)"
            ])
            // A profile whose cert is unusable: one line naming the profile.
            let bad = try temporaryFile(#"{"cert": "not a certificate", "seeds": ["127.0.0.1:7"]}"#, cleanup, suffix: ".json")
            var t = GatewaySettings()
            var problems: [String] = []
            t.addProfile(name: "", path: bad, problems: &problems)
            let (c, invalid) = t.configuration(environment: [:])
            #expect(c == nil && problems.isEmpty)
            #expect(invalid.count == 1 && invalid.first?.hasPrefix("mesh certificate \(bad) profile (top level) key cert: no PEM blocks") == true, "\(invalid)")
        }
    }

    @Test("a gateway with --mesh-cert and no secret, joined to a cert-only seed, serves the whole HTTP API over TLS")
    func certificateOnlyNetwork() async throws {
        try await Cleanup.scope { cleanup in
            let file = try temporaryFile(meshPEM, cleanup)
            let address = "127.0.0.1:\(try freePort())"
            // The seed has the certificate and no secret: it can talk TLS only.
            let seed = try makeNode(id: "tls-seed-%u", binds: [address], seeds: [address], secret: "", certificate: meshCertificate)
            cleanup.add { await seed.shutdown() }
            try await seed.start()
            let gateway = try await GatewayProcess.start(
                seeds: [address], secret: nil, arguments: ["--mesh-cert", file, "--log-level", "notice"])
            cleanup.add { gateway.child.stop() }
            let http = try await gateway.client()
            cleanup.add { await http.close() }

            let ready = try await waitFor(within: 20, "/readyz 200") { () async throws -> HTTPTestResponse? in
                let r = try await http.request("GET", "/readyz")
                return r.status == 200 ? r : nil
            }
            #expect(ready.json == ["status": "ready", "master": .string(seed.id)], "\(ready)")
            #expect(gateway.log.contains("mesh TLS on"), "\(gateway.log)")
            #expect(gateway.log.contains("fingerprint=\(meshCertificate.fingerprint)"), "\(gateway.log)")
            #expect(gateway.log.contains("subject=CN=AnyEvent::MP"), "\(gateway.log)")
            #expect(!gateway.log.contains("mesh certificate not valid now"), "\(gateway.log)")

            // POST /v1/send to a port of the seed.
            let (inboxPort, inbox) = seed.mailbox()
            var messages = inbox.makeAsyncIterator()
            let sent = try await http.request("POST", "/v1/send", json: ["port": .string(inboxPort.description), "message": ["over tls", 1, ["k": [true]]]])
            #expect(sent.status == 202, "\(sent)")
            #expect(try await next(&messages, "the message sent through the gateway") == ["over tls", 1, ["k": [true]]])

            // A mailbox of the gateway receives a message of the seed.
            let created = try await http.request("POST", "/v1/ports")
            #expect(created.status == 201, "\(created)")
            let mailbox = try #require(created.json?.objectValue?["name"]?.stringValue)
            let mailboxPort = try #require(created.json?.objectValue?["port"]?.stringValue)
            seed.snd(mailboxPort, ["from the seed", 42])
            let polled = try await http.request("GET", "/v1/ports/\(mailbox)/messages?wait=10", timeout: 15)
            #expect(GatewayNetwork.messages(polled) == [["from the seed", 42]], "\(polled)")

            // PUT and GET /v1/db, and a change feed event.
            let put = try await http.request("PUT", "/v1/db/tls-cfg/limit", json: ["max": 10])
            #expect(put.status == 200, "\(put)")
            try await eventually(within: 10, "the seed sees the gateway's key") { try await seed.dbFamily("tls-cfg")["limit"] == ["max": 10] }
            seed.dbSet("tls-cfg", "owner", "seed")
            let got = try await waitFor(within: 10, "GET /v1/db/tls-cfg with both keys") { () async throws -> HTTPTestResponse? in
                let r = try await http.request("GET", "/v1/db/tls-cfg")
                return r.json?.objectValue?["values"]?.objectValue?.count == 2 ? r : nil
            }
            #expect(got.json == ["family": "tls-cfg", "values": ["limit": ["max": 10], "owner": "seed"]], "\(got)")
            let feed = try await gateway.sse("/v1/db/tls-feed/watch")
            cleanup.add { await feed.close() }
            #expect(try await feed.next().event == "snapshot")
            seed.dbSet("tls-feed", "a", 1)
            let change = try await feed.next()
            #expect(change.event == "change" && change.json?.objectValue?["added"] == ["a": 1], "\(change)")

            // POST /v1/call: a round trip to a port of the seed.
            let echo = seed.port { message in
                guard let reply = message.last?.stringValue else { return }
                seed.snd(reply, ["pong"] + message.dropLast())
            }
            let call = try await http.request("POST", "/v1/call", json: ["port": .string(echo.description), "message": ["ping"], "timeout": 5])
            #expect(call.status == 200 && call.json == ["reply": ["pong", "ping"]], "\(call)")

            // /v1/node: the certificate and the TLS link to the seed (and the contract holds).
            let info = try await http.request("GET", "/v1/node")
            let o = try #require(info.json?.objectValue, "\(info)")
            #expect(o["mesh_tls"] == [
                "subject": "CN=AnyEvent::MP", "fingerprint": .string(meshCertificate.fingerprint),
                "not_after": .string(MeshCertificate.format(meshCertificate.notValidAfter)),
            ], "\(info)")
            let connections = o["connections"]?.arrayValue ?? []
            #expect(connections == [[
                "node": .string(seed.id), "address": .string(address), "dialed": true, "tls": "TLSv1.3", "auth": "tls_sha3_512",
                "send_framing": .string(Framing.cbor.rawValue), "receive_framing": .string(Framing.cbor.rawValue),
            ]], "\(info)")
            let contract = try OpenAPIValidator(json: Array(OpenAPIDocument.json.utf8))
            let violations = contract.validateResponse("GET", "/v1/node", status: info.status, headers: info.headers, body: info.body)
            #expect(violations.isEmpty, "\(violations)")

            // /metrics: one established connection, and it is TLS.
            let metrics = try await MetricsSample.scrape(http)
            #expect(metrics["aemp_gateway_mesh_tls_connections"] == 1, "\(metrics)")
            #expect(metrics["aemp_gateway_mesh_connections"] == 1, "\(metrics)")
        }
    }

    @Test("a gateway with the profile's cert text (no secret, no --mesh-cert) joins an `aemp seed --cert` seed made with `aemp cert generate`")
    func profileCertificate() async throws {
        try await Cleanup.scope { cleanup in
            let dir = NSTemporaryDirectory() + "aemp-gw-tls-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            cleanup.add { try? FileManager.default.removeItem(atPath: dir) }
            let file = dir + "/mesh.pem"
            let generated = try await ChildProcess.run("aemp", ["cert", "generate", "--out", file])
            #expect(generated.exit == .exited(0), "\(generated)")
            let pem = try String(contentsOfFile: file, encoding: .utf8)
            let certificate = try MeshCertificate(pem: pem, source: file)

            let seed = try await SeedProcess.start(id: "tls-tool-seed-%u", secret: nil, certificate: file)
            cleanup.add { seed.child.stop() }
            // The profile holds the PEM text itself, as Perl's `aemp setcert` stores it.
            let rc = try temporaryFile(
                JSONCodec.encodeString(["profile": ["secured": ["cert": .string(pem), "seeds": [.string(seed.address)]]]]), cleanup,
                suffix: ".json")
            let gateway = try await GatewayProcess.start(
                seeds: nil, secret: nil, arguments: ["--profile", "secured", "--aemp-rc", rc],
                environment: ["AEMP_GATEWAY_STATE_DIR": dir + "/state"])
            cleanup.add { gateway.child.stop() }
            #expect(gateway.earlierLines.isEmpty, "no secret generated: \(gateway.earlierLines)")
            try await gateway.waitForMaster()
            let info = try await gateway.waitForNodeInfo("a TLS connection to the seed") { info in
                info["connections"]?.arrayValue?.contains { $0.objectValue?["node"] == .string(seed.id) } == true
            }
            #expect(info["master"] == .string(seed.id))
            #expect(info["mesh_tls"]?.objectValue?["fingerprint"] == .string(certificate.fingerprint), "\(info)")
            let link = info["connections"]?.arrayValue?.first?.objectValue
            #expect(link?["tls"] == "TLSv1.3" && link?["auth"] == "tls_sha3_512", "\(info)")
            #expect(!FileManager.default.fileExists(atPath: dir + "/state/secret"), "a gateway with a certificate generates no secret")
        }
    }

    @Test("a standalone gateway with --mesh-cert and no secret is the seed of a cert-only network")
    func standaloneSeed() async throws {
        try await Cleanup.scope { cleanup in
            let dir = NSTemporaryDirectory() + "aemp-gw-tls-\(UUID().uuidString)"
            cleanup.add { try? FileManager.default.removeItem(atPath: dir) }
            let file = try temporaryFile(meshPEM, cleanup)
            let bind = "127.0.0.1:\(try freePort())"
            let gateway = try await GatewayProcess.start(
                seeds: nil, secret: nil, arguments: ["--mesh-cert", file, "--standalone-bind", bind],
                environment: ["AEMP_GATEWAY_STATE_DIR": dir])
            cleanup.add { gateway.child.stop() }
            #expect(gateway.earlierLines.isEmpty, "no secret generated: \(gateway.earlierLines)")
            let node = try makeNode(id: "tls-joiner-%u", binds: ["127.0.0.1:0"], seeds: [bind], secret: "", certificate: meshCertificate)
            cleanup.add { await node.shutdown() }
            try await node.start()
            #expect(try await node.waitForMaster(timeout: stretched(.seconds(15))) == gateway.nodeID)
            let info = try await gateway.waitForNodeInfo("the joined node's TLS connection") { info in
                info["connections"]?.arrayValue?.contains { $0.objectValue?["node"] == .string(node.id) } == true
            }
            let link = info["connections"]?.arrayValue?.first { $0.objectValue?["node"] == .string(node.id) }?.objectValue
            #expect(link?["tls"] == "TLSv1.3" && link?["auth"] == "tls_sha3_512" && link?["dialed"] == false, "\(info)")
            // A node without the certificate cannot join: it has only a secret, and the gateway has none.
            let stranger = try makeNode(id: "tls-stranger-%u", seeds: [bind], secret: "some-secret")
            cleanup.add { await stranger.shutdown() }
            try await stranger.start()
            #expect((try? await stranger.waitForMaster(timeout: stretched(.seconds(3)))) == nil, "a node without the certificate is refused")
        }
    }

    @Test("an expired certificate: the gateway starts, and its log says at once that peers will refuse it")
    func expiredCertificate() async throws {
        try await Cleanup.scope { cleanup in
            let dir = NSTemporaryDirectory() + "aemp-gw-tls-\(UUID().uuidString)"
            cleanup.add { try? FileManager.default.removeItem(atPath: dir) }
            let expired = try MeshCertificate.generate(days: 1, now: Date().addingTimeInterval(-3 * 86400))
            let file = try temporaryFile(expired, cleanup)
            let gateway = try await GatewayProcess.start(
                seeds: nil, secret: nil,
                arguments: ["--mesh-cert", file, "--standalone-bind", "127.0.0.1:\(try freePort())", "--log-level", "notice"],
                environment: ["AEMP_GATEWAY_STATE_DIR": dir])
            cleanup.add { gateway.child.stop() }
            let warning = try await waitFor(within: 5, "the warning line") { () -> String? in
                gateway.log.split(separator: "\n").first { $0.contains("mesh certificate not valid now") }.map(String.init)
            }
            #expect(warning.contains(" warning ") && warning.contains("problem=\(file): the certificate (CN=AnyEvent::MP) expired on "), "\(warning)")
            #expect(gateway.log.contains("mesh TLS on"), "\(gateway.log)")
        }
    }

    @Test(
        "a certificate file the gateway cannot use: exit status 2 and one line naming the file and the problem",
        arguments: [
            ("no key", "certificate", "no private key"),
            ("garbage", "garbage", "no PEM blocks"),
            ("encrypted key", "encrypted", "the private key is encrypted"),
            ("a key of another certificate", "mismatch", "the private key does not belong to the first certificate"),
            ("missing", "missing", "no such file"),
        ])
    func badFile(_ what: String, _ kind: String, _ problem: String) async throws {
        try await Cleanup.scope { cleanup in
            let other = try MeshCertificate.generate(commonName: "other")
            let text: String
            switch kind {
            case "certificate": text = blocks("CERTIFICATE", of: meshPEM).joined()
            case "garbage": text = "this is not PEM\n\u{1}\u{2}\n"
            case "encrypted":
                text = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n"
                    + blocks("CERTIFICATE", of: meshPEM).joined()
            case "mismatch": text = blocks("PRIVATE KEY", of: other).joined() + blocks("CERTIFICATE", of: meshPEM).joined()
            default: text = ""
            }
            let file = kind == "missing" ? NSTemporaryDirectory() + "aemp-gw-tls-missing-\(UUID().uuidString).pem" : try temporaryFile(text, cleanup)
            let r = try await ChildProcess.run(
                "aemp-gateway", ["--http", "127.0.0.1:0", "--seeds", "127.0.0.1:1", "--mesh-cert", file],
                unset: ["AEMP_SECRET", "PERL_ANYEVENT_MP_RC"])
            #expect(r.exit == .exited(2), "\(what): \(r)")
            let lines = r.stderr.split(separator: "\n").map(String.init)
            #expect(lines.count == 1, "\(what): one line: \(r.stderr)")
            #expect(lines.first?.hasPrefix("aemp-gateway: error: --mesh-cert: mesh certificate \(file): ") == true, "\(what): \(r.stderr)")
            #expect(lines.first?.contains(problem) == true, "\(what): \(r.stderr)")
            #expect(r.stdout.isEmpty, "\(what): \(r.stdout)")
        }
    }
}
