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
