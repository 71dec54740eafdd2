import AEMP
import Foundation
import Testing

/// Processes killed under the gateway and the gateway itself killed (issue 7): clients get a clear
/// answer, never silence.
@Suite("gateway: faults", .serialized, .timeLimit(.minutes(3)))
struct FaultTests {

    @Test("killing the process that owns a port a mailbox monitors: the mailbox gets a monitor event with transport_error")
    func monitoredProcessKilled() async throws {
        try await GatewayNetwork.with { net in
            // A public node in a process of its own, holding the watched port.
            let sink = try ChildProcess(
                "aemp",
                ["sink", "--bind", "127.0.0.1:0", "--seeds", net.seed.address, "--secret", gatewayTestSecret,
                 "--report", "0.1", "--log-level", "\(testLogLevel)"])
            net.cleanup.add { sink.stop() }
            let line = try await sink.readLine()
            try #require(line.hasPrefix("sink "), "unexpected line from aemp sink: \(line)")
            let watched = String(line.dropFirst(5))

            let box = try await net.createMailbox()
            let sse = try await net.sse("/v1/ports/\(box.name)/messages")
            let r = try await net.post("/v1/ports/\(box.name)/monitor", json: ["port": .string(watched)])
            #expect(r.status == 200, "\(r)")
            // The monitor request travels on the connection to the sink's node before this message
            // (one connection, in order): once the sink counted it, the monitor is in place there.
            let sent = try await net.post("/v1/send", json: ["port": .string(watched), "message": ["ping"]])
            #expect(sent.status == 202, "\(sent)")
            while try await sink.readLine(within: 10) != "count 1" {}

            sink.signal(SIGKILL)
            let e = try await sse.next(within: 15)
            #expect(e.event == "monitor", "\(e)")
            #expect(e.json?.objectValue?["port"] == .string(watched), "\(e)")
            #expect(e.json?.objectValue?["reason"]?.arrayValue?.first == "transport_error", "\(e)")
            // The long-poll view has the same entry.
            let polled = try await net.poll(box.name)
            let entry = polled.json?.objectValue?["messages"]?.arrayValue?.first?.objectValue
            #expect(entry?["type"] == "monitor" && entry?["reason"]?.arrayValue?.first == "transport_error", "\(polled)")
        }
    }

    @Test("a gateway killed and restarted: the old process's mailboxes are 410 mailbox_gone, the new one has a fresh node ID and serves")
    func gatewayRestarted() async throws {
        try await Cleanup.scope { cleanup in
            let seed = try await SeedProcess.start()
            cleanup.add { seed.child.stop() }
            let node = try makeNode(id: "gw-fault-%u", binds: ["127.0.0.1:0"], seeds: [seed.address])
            cleanup.add { await node.shutdown() }
            try await node.start()
            #expect(await node.waitForMaster(timeout: .seconds(15)) == seed.id)

            let first = try await GatewayProcess.start(seeds: [seed.address])
            cleanup.add { first.child.stop() }
            try await first.waitForMaster()
            let client1 = try await first.client()
            cleanup.add { await client1.close() }
            let created = try await client1.request("POST", "/v1/ports")
            let old = try #require(created.json?.objectValue?["name"]?.stringValue, "\(created)")

            first.child.signal(SIGKILL)
            let second = try await GatewayProcess.start(seeds: [seed.address])
            cleanup.add { second.child.stop() }
            try await second.waitForMaster()
            #expect(second.nodeID != first.nodeID)
            let client2 = try await second.client()
            cleanup.add { await client2.close() }

            // The old mailbox is named for what it is: gone with its process, not unknown.
            expectProblem(try await client2.request("GET", "/v1/ports/\(old)/messages?wait=0"), 410, "mailbox_gone")
            expectProblem(try await client2.request("DELETE", "/v1/ports/\(old)"), 410, "mailbox_gone")

            // The new process serves: a node's message reaches a new mailbox.
            try await second.waitForConnection(to: node.id)
            let made = try await client2.request("POST", "/v1/ports")
            let fresh = try #require(made.json?.objectValue?["port"]?.stringValue.flatMap(PortID.init), "\(made)")
            let name = try #require(made.json?.objectValue?["name"]?.stringValue)
            node.snd(fresh, ["after restart"])
            let polled = try await client2.request("GET", "/v1/ports/\(name)/messages?wait=10", timeout: 15)
            #expect(GatewayNetwork.messages(polled) == [["after restart"]], "\(polled)")
        }
    }
}

/// The gateway's master is killed (issue 7).
@Suite("gateway: master failover", .serialized, .timeLimit(.minutes(3)))
struct MasterFailoverTests {
    @Test("two global seeds, the gateway's master killed: it re-attaches within 5 s, its keys are back everywhere, its feeds carry on without a silent gap")
    func masterKilled() async throws {
        try await Cleanup.scope { cleanup in
            let seedA = try await SeedProcess.start(id: "gw-ga-%u")
            cleanup.add { seedA.child.stop() }
            let seedB = try await SeedProcess.start(id: "gw-gb-%u", seeds: [seedA.address])
            cleanup.add { seedB.child.stop() }
            let node = try makeNode(id: "gw-fo-node-%u", binds: ["127.0.0.1:0"], seeds: [seedA.address, seedB.address])
            cleanup.add { await node.shutdown() }
            try await node.start()
            _ = try #require(await node.waitForMaster(timeout: .seconds(15)))

            let gateway = try await GatewayProcess.start(seeds: [seedA.address, seedB.address])
            cleanup.add { gateway.child.stop() }
            try await gateway.waitForMaster()
            let http = try await gateway.client()
            cleanup.add { await http.close() }

            // The gateway's own key, and a feed of the family.
            #expect(try await http.request("PUT", "/v1/db/fofam/gw", json: "from the gateway").status == 200)
            try await eventually("the node sees the gateway's key") { await node.dbFamily("fofam")["gw"] == "from the gateway" }
            let feed = try await gateway.sse("/v1/db/fofam/watch")
            cleanup.add { await feed.close() }
            let snapshot = try await feed.next()
            #expect(snapshot.event == "snapshot" && snapshot.json?.objectValue?["values"]?.objectValue?["gw"] == "from the gateway", "\(snapshot)")

            // Kill the gateway's master.
            let info = try await http.request("GET", "/v1/node")
            let master = try #require(info.json?.objectValue?["master"]?.stringValue, "\(info)")
            let (dying, survivor) = master == seedA.id ? (seedA, seedB) : (seedB, seedA)
            #expect(master == seedA.id || master == seedB.id, "master \(master)")
            let killed = ContinuousClock.now
            dying.child.signal(SIGKILL)

            // Re-attached to the survivor within 5 s (readiness says so).
            var reattached: Duration?
            while ContinuousClock.now - killed < .seconds(10) {
                let ready = try await http.request("GET", "/readyz")
                let now = try await http.request("GET", "/v1/node")
                if ready.status == 200, now.json?.objectValue?["master"]?.stringValue == survivor.id {
                    reattached = ContinuousClock.now - killed
                    break
                }
                try await Task.sleep(for: .milliseconds(20))
            }
            let took = try #require(reattached, "not re-attached within 10 s")
            #expect(took < .seconds(5), "re-attached after \(took)")
            // It is usually a few ms: the gateway holds a connection to every public node, so the
            // survivor is at hand when the master's connection drops; the gap is shorter than a poll
            // here (the 503 of a gap is tested in OperationsTests, where no survivor exists).

            // The gateway's key is back in every view; the node's new key reaches the feed.
            try await eventually(within: 10, "the gateway's key on the node after the failover") {
                await node.dbFamily("fofam")["gw"] == "from the gateway"
            }
            node.dbSet("fofam", "after", "set after the failover")
            // Every event after the kill: changes in order, or a reset snapshot; never a silent gap.
            var seen: [String: Value] = ["gw": "from the gateway"]
            let deadline = ContinuousClock.now + .seconds(15)
            while seen["after"] != "set after the failover", ContinuousClock.now < deadline {
                let e = try await feed.next(within: 15)
                let o = e.json?.objectValue ?? [:]
                switch e.event {
                case "change":
                    for (k, v) in (o["added"]?.objectValue ?? [:]).merging(o["changed"]?.objectValue ?? [:], uniquingKeysWith: { a, _ in a }) {
                        seen[k] = v
                    }
                    for k in o["deleted"]?.arrayValue ?? [] { if let k = k.stringValue { seen[k] = nil } }
                case "snapshot":
                    #expect(o["reset"] == true, "a snapshot mid-stream must say reset: \(e)")
                    seen = o["values"]?.objectValue ?? [:]
                default:
                    break
                }
            }
            #expect(seen == ["gw": "from the gateway", "after": "set after the failover"], "\(seen)")
        }
    }
}
