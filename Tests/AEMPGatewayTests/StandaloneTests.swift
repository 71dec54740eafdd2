import AEMP
import Foundation
import Testing

/// A gateway without seeds runs standalone: its node is its own seed and global node, and other
/// nodes join it. Also the process life cycle: heartbeats, and shutdown with waiting clients.
@Suite("gateway: standalone and life cycle", .serialized, .timeLimit(.minutes(3)))
struct StandaloneTests {

    @Test("standalone: /v1/node says so, a Swift node joins it as seed and exchanges messages and keys")
    func standalone() async throws {
        try await Cleanup.scope { cleanup in
            let bind = "127.0.0.1:\(try freePort())"
            let gateway = try await GatewayProcess.start(seeds: nil, arguments: ["--standalone-bind", bind])
            cleanup.add { gateway.child.stop() }
            #expect(gateway.line.hasSuffix("(standalone seed on \(bind))"), "\(gateway.line)")
            let info = try await gateway.waitForNodeInfo("standalone and its own master") { info in
                info["master"]?.stringValue == gateway.nodeID
            }
            #expect(info["standalone"] == true, "\(info)")
            #expect(info["listen"] == [.string(bind)], "\(info)")

            let node = try makeNode(id: "gw-joins-standalone-%u", binds: ["127.0.0.1:0"], seeds: [bind])
            cleanup.add { await node.shutdown() }
            try await node.start()
            #expect(try await node.waitForMaster(timeout: stretched(.seconds(15))) == gateway.nodeID)

            let http = try await gateway.client()
            cleanup.add { await http.close() }
            let created = try await http.request("POST", "/v1/ports")
            #expect(created.status == 201, "\(created)")
            let name = try #require(created.json?.objectValue?["name"]?.stringValue)
            let port = try #require(created.json?.objectValue?["port"]?.stringValue)
            node.snd(port, ["to the gateway", 1])
            let polled = try await http.request("GET", "/v1/ports/\(name)/messages?wait=10", timeout: 15)
            #expect(GatewayNetwork.messages(polled) == [["to the gateway", 1]], "\(polled)")

            let (nodePort, inbox) = node.mailbox()
            var messages = inbox.makeAsyncIterator()
            let sent = try await http.request("POST", "/v1/send", json: ["port": .string(nodePort.description), "message": ["to the node"]])
            #expect(sent.status == 202, "\(sent)")
            #expect(try await next(&messages) == ["to the node"])

            #expect(try await http.request("PUT", "/v1/db/standalone/k", json: "v").status == 200)
            try await eventually("the node sees the gateway's key") { try await node.family("standalone")["k"] == "v" }
            node.dbSet("standalone", "n", 2)
            try await eventually("the gateway sees the node's key") {
                try await http.request("GET", "/v1/db/standalone").json?.objectValue?["values"] == ["k": "v", "n": 2]
            }
        }
    }

    @Test("standalone without a secret: one is generated once, stored 0600, printed, reused, and nodes join with it")
    func generatedSecret() async throws {
        let stateDir = NSTemporaryDirectory() + "aemp-gateway-state-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: stateDir) }
        let secret = try await Cleanup.scope { cleanup -> String in
            let bind = "127.0.0.1:\(try freePort())"
            let gateway = try await GatewayProcess.start(
                seeds: nil, secret: nil, arguments: ["--standalone-bind", bind], environment: ["AEMP_GATEWAY_STATE_DIR": stateDir])
            cleanup.add { gateway.child.stop() }
            let line = try #require(gateway.earlierLines.first { $0.contains("generated the network secret ") }, "\(gateway.earlierLines)")
            let secret = try #require(
                line.components(separatedBy: "generated the network secret ").last?.split(separator: " ").first.map(String.init))
            #expect(secret.count >= 32, "a generated secret must be strong: \(secret)")
            let stored = try String(contentsOfFile: stateDir + "/secret", encoding: .utf8)
            #expect(stored.trimmingCharacters(in: .whitespacesAndNewlines) == secret)
            let mode = try FileManager.default.attributesOfItem(atPath: stateDir + "/secret")[.posixPermissions] as? Int
            #expect(mode == 0o600, "the stored secret must be private, mode \(String(mode ?? 0, radix: 8))")

            let node = try makeNode(id: "gw-secret-%u", seeds: [bind], secret: secret)
            cleanup.add { await node.shutdown() }
            try await node.start()
            #expect(try await node.waitForMaster(timeout: stretched(.seconds(15))) == gateway.nodeID)
            let stranger = try makeNode(id: "gw-stranger-%u", seeds: [bind], secret: "not the secret")
            cleanup.add { await stranger.shutdown() }
            try await stranger.start()
            #expect((try? await stranger.waitForMaster(timeout: stretched(.seconds(2)))) == nil, "a node with another secret must not join")
            return secret
        }
        // The next run reuses the stored secret (and does not announce a new one).
        try await Cleanup.scope { cleanup in
            let bind = "127.0.0.1:\(try freePort())"
            let gateway = try await GatewayProcess.start(
                seeds: nil, secret: nil, arguments: ["--standalone-bind", bind], environment: ["AEMP_GATEWAY_STATE_DIR": stateDir])
            cleanup.add { gateway.child.stop() }
            #expect(!gateway.earlierLines.contains { $0.contains("generated") }, "\(gateway.earlierLines)")
            let node = try makeNode(id: "gw-secret-again-%u", seeds: [bind], secret: secret)
            cleanup.add { await node.shutdown() }
            try await node.start()
            #expect(try await node.waitForMaster(timeout: stretched(.seconds(15))) == gateway.nodeID)
        }
    }

    @Test("SSE streams carry comment heartbeats (--heartbeat-interval) and a retry hint")
    func heartbeats() async throws {
        try await GatewayNetwork.with(gatewayArguments: ["--heartbeat-interval", "0.2"]) { net in
            let box = try await net.createMailbox()
            for path in ["/v1/ports/\(box.name)/messages", "/v1/db/hb/watch", "/v1/nodes/events"] {
                let sse = try await net.sse(path)
                let comment = try await sse.waitForComment(within: 5)
                #expect(comment?.contains("heartbeat") == true, "\(path): comments \(sse.comments)")
                if path != "/v1/ports/\(box.name)/messages" {
                    _ = try await sse.next()  // the snapshot follows the retry hint
                    #expect(sse.retries == [1000], "\(path)")
                }
                await sse.close()
            }
            // Heartbeats keep a mailbox with an SSE client alive, and do not count as messages.
            let sse = try await net.sse("/v1/ports/\(box.name)/messages")
            _ = try await sse.waitForComment(within: 5)
            net.node.snd(box.port, ["real"])
            let e = try await sse.next()
            #expect(e.id == "1" && e.json?.objectValue?["message"] == ["real"], "\(e)")
        }
    }

    @Test("on SIGTERM, waiting long-polls get 503 shutting_down, streams a final shutdown event, and the process exits 0")
    func shutdown() async throws {
        try await GatewayNetwork.with { net in
            let box = try await net.createMailbox()
            let poller = try await net.client()
            let waiting = Task { try await poller.request("GET", "/v1/ports/\(box.name)/messages?wait=60", timeout: 30) }
            let mailboxStream = try await net.sse("/v1/ports/\(box.name)/messages")
            let feed = try await net.sse("/v1/db/bye/watch")
            #expect(try await feed.next().event == "snapshot")
            let nodes = try await net.sse("/v1/nodes/events")
            #expect(try await nodes.next().event == "snapshot")
            try await Task.sleep(nanoseconds: 300_000_000)  // lets the long-poll park (a 503 either way)

            net.gateway.child.signal(SIGTERM)
            let answer = try await waiting.value
            let p = expectProblem(answer, 503, "shutting_down")
            #expect(answer.header("Retry-After") != nil, "\(answer) \(p)")
            for stream in [mailboxStream, feed, nodes] {
                let last = try await stream.next()
                #expect(last.event == "shutdown", "\(stream.path): \(last)")
                #expect(try await stream.waitForEnd(), "\(stream.path) must end")
            }
            let exit = try await net.gateway.child.waitForExit(within: 15)
            #expect(exit == .exited(0), "exit: \(exit); log: \(net.gateway.log.suffix(2000))")
        }
    }
}
