import AEMP
import Testing

/// `/v1/node`, `/v1/nodes`, `/v1/nodes/events`, `/healthz`.
@Suite("gateway: node information", .serialized, .timeLimit(.minutes(3)))
struct NodeRoutesTests {

    @Test("GET /v1/node shows the gateway's node, its master, seeds and connections")
    func nodeInfo() async throws {
        try await GatewayNetwork.with { net in
            _ = try await net.createMailbox()
            let r = try await net.get("/v1/node")
            #expect(r.status == 200, "\(r)")
            let o = try #require(r.json?.objectValue)
            #expect(o["node"] == .string(net.gateway.nodeID))
            #expect(net.gateway.nodeID.hasPrefix("aemp-gateway/"))
            #expect(o["master"] == .string(net.seed.id))
            #expect(o["standalone"] == false)
            #expect(o["seeds"] == [.string(net.seed.address)])
            #expect(o["listen"] == [], "a gateway with seeds is a private node")
            let up = Set(o["up_nodes"]?.arrayValue ?? [])
            #expect(up.isSuperset(of: [.string(net.seed.id), .string(net.node.id)]), "\(r)")
            #expect(o["mailboxes"] == 1)
            let health = try await net.get("/healthz")
            #expect(health.status == 200 && health.json == ["status": "ok"], "\(health)")
        }
    }

    @Test("GET /v1/nodes lists every node the network knows, with addresses and connection state")
    func nodeList() async throws {
        try await GatewayNetwork.with { net in
            let nodes = try await waitFor("the seed and the public node in /v1/nodes") { () async throws -> [String: [String: Value]]? in
                let r = try await net.get("/v1/nodes")
                guard r.status == 200, let list = r.json?.objectValue?["nodes"]?.arrayValue else { return nil }
                var byID: [String: [String: Value]] = [:]
                for entry in list.compactMap(\.objectValue) {
                    if let id = entry["node"]?.stringValue { byID[id] = entry }
                }
                return byID[net.seed.id] != nil && byID[net.node.id] != nil ? byID : nil
            }
            let seed = try #require(nodes[net.seed.id])
            #expect(seed["addresses"] == [.string(net.seed.address)] && seed["public"] == true, "\(seed)")
            #expect(seed["connected"] == true && seed["self"] == false, "\(seed)")
            let node = try #require(nodes[net.node.id])
            let listen = await net.node.listenAddresses()
            #expect(node["addresses"] == .array(listen.map { .string($0) }) && node["public"] == true, "\(node)")
            #expect(node["connected"] == true, "\(node)")
            let me = try #require(nodes[net.gateway.nodeID])
            #expect(me["self"] == true && me["public"] == false, "\(me)")
        }
    }

    @Test("GET /v1/nodes/events: a snapshot, then up when a node joins and down when it leaves")
    func nodeEvents() async throws {
        try await GatewayNetwork.with { net in
            let sse = try await net.sse("/v1/nodes/events")
            #expect(sse.status == 200)
            let snapshot = try await sse.next()
            #expect(snapshot.event == "snapshot", "\(snapshot)")
            #expect(snapshot.json?.objectValue?["node"] == .string(net.gateway.nodeID))
            let up = Set(snapshot.json?.objectValue?["up_nodes"]?.arrayValue ?? [])
            #expect(up.isSuperset(of: [.string(net.seed.id), .string(net.node.id)]), "\(snapshot)")

            let late = try await net.startNode(id: "gw-joiner-%u")
            let joined = try await nextEvent(sse, about: late.id)
            #expect(joined.event == "up" && joined.json == ["node": .string(late.id), "up": true], "\(joined)")
            await late.shutdown()
            let left = try await nextEvent(sse, about: late.id)
            #expect(left.event == "down" && left.json == ["node": .string(late.id), "up": false], "\(left)")
        }
    }

    /// The next node event about `node` (events about other nodes are skipped).
    func nextEvent(_ sse: SSEStream, about node: String) async throws -> SSEEvent {
        for _ in 0..<20 {
            let e = try await sse.next(within: 20)
            if e.json?.objectValue?["node"] == .string(node) { return e }
        }
        throw TestTimeout(what: "an event about \(node)")
    }
}
