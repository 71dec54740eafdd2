import AEMPTestSupport
import Foundation
import NIOCore
import Testing

@testable import AEMP

// Issue 13 item 7: when the network says a node has no known address (the master's `g_found`
// carries `null` or `[]`, or a global's own directory has no entry), Perl fails the connect at
// once with `transport_error <node> "no known address"` (Node.pm `connect_to`, aemp-protocol §9,
// §14). Queued messages are dropped and monitors fire without waiting for the connect deadline.

@Suite("unknown and private nodes fail fast", .serialized, .timeLimit(.minutes(5)))
struct UnreachableNodeTests {

    /// Monitors `port` from `node`, sends one message to it, and returns the monitor's reason and
    /// how long it took to come.
    private func monitorReason(_ node: Node, _ port: PortID) async throws -> ([Value], Duration) {
        let (stream, continuation) = AsyncStream<[Value]>.makeStream()
        var reasons = stream.makeAsyncIterator()
        let started = ContinuousClock.now
        _ = node.mon(port) { continuation.yield($0) }
        node.snd(port, ["queued, then dropped"])
        let reason = try await next(&reasons, within: 10, "the monitor of \(port)")
        return (reason, ContinuousClock.now - started)
    }

    @Test("library: mon of a port on an unknown node, or on a private node nobody can dial, fires at once with transport_error … no known address")
    func libraryMonitorFiresAtOnce() async throws {
        // Takes turns with the tests that load the machine or check promptness (MachineLoad).
        try await takingTurns {
            let seed = try makeNode(id: "ff-seed-%u", binds: ["127.0.0.1:0"])
            try await seed.start()
            let seedAddress = try #require(await seed.listenAddresses().first)
            let a = try makeNode(id: "ff-a-%u", seeds: [seedAddress])
            let b = try makeNode(id: "ff-b-%u", seeds: [seedAddress])
            try await a.start()
            try await b.start()
            defer { Task { await a.shutdown(); await b.shutdown(); await seed.shutdown() } }
            #expect(try await a.waitForMaster(timeout: stretched(.seconds(10))) == seed.id)
            #expect(try await b.waitForMaster(timeout: stretched(.seconds(10))) == seed.id)
            // b has registered its (empty) listener list with the seed: 'l => {b: []}. Asked through a
            // (its g_slave went first on that connection, so the seed is global when it answers); the
            // seed itself answers a query only once it is global, and a query before that never returns.
            await eventually(within: 10, "the seed knows b") { try await a.dbKeys("'l").contains(b.id) }

            // A node nobody has: the master answers g_found null. (makeNode's connect deadline is 3 s;
            // "at once" is promptly(1 s): 2 s in a plain run, below that deadline.)
            let (unknown, unknownTook) = try await monitorReason(a, PortID(node: "nobody/x", name: "p"))
            #expect(unknown == ["transport_error", "nobody/x", "no known address"])
            #expect(unknownTook < promptly(.seconds(1)), "took \(unknownTook)")

            // A private node that never connected to a: the master answers g_found [].
            let (privateReason, privateTook) = try await monitorReason(a, PortID(node: b.id, name: "p"))
            #expect(privateReason == ["transport_error", .string(b.id), "no known address"])
            #expect(privateTook < promptly(.seconds(1)), "took \(privateTook)")

            // A global looks in its own directory: no entry, no wait either.
            let (global, globalTook) = try await monitorReason(seed, PortID(node: "nobody/y", name: "p"))
            #expect(global == ["transport_error", "nobody/y", "no known address"])
            #expect(globalTook < promptly(.seconds(1)), "took \(globalTook)")

            // The node is not wedged: a later connection to a real node works as before.
            let (port, inbox) = seed.mailbox()
            var messages = inbox.makeAsyncIterator()
            a.snd(port, ["still works"])
            #expect(try await next(&messages, within: 5, "a message to the seed") == ["still works"])
        }
    }

    @Test("library: while the lookup is genuinely in progress (no master yet), the connect deadline still applies")
    func noMasterKeepsWaiting() async throws {
        // Nothing listens at the seed address: no master, so no g_find can be answered.
        let a = try makeNode(id: "ff-lonely-%u", seeds: ["127.0.0.1:\(try freePort())"])
        try await a.start()
        defer { Task { await a.shutdown() } }
        let (reason, took) = try await monitorReason(a, PortID(node: "nobody/z", name: "p"))
        #expect(reason == ["transport_error", "nobody/z", "connect timeout"])
        #expect(took >= .seconds(2), "waited for the lookup (connect deadline 3 s): \(took)")
    }

    @Test("standalone gateway: /v1/call, a mailbox monitor and aemp snd to nobody/x#port are answered in under a second with the reason")
    func gatewayAndToolFailFast() async throws {
        let bind = "127.0.0.1:\(try freePort())"
        let gateway = try await GatewayChild.start(standaloneBind: bind)
        defer { gateway.child.stop() }
        await eventually(within: 10, "the standalone gateway is ready") {
            (try? await gateway.get("/readyz").status) == 200
        }

        // POST /v1/call: an immediate 502 node_unreachable with Perl's reason, not 504 after the timeout.
        var started = ContinuousClock.now
        let call = try await gateway.post(
            "/v1/call", json: #"{"port": "nobody/call#p", "message": ["hi"], "timeout": 20}"#)
        var took = ContinuousClock.now - started
        #expect(call.status == 502, "\(call.status) \(call.body)")
        #expect(call.body.contains(#""code":"node_unreachable""#), "\(call.body)")
        #expect(call.body.contains(#""reason":["transport_error","nobody/call","no known address"]"#), "\(call.body)")
        #expect(took < promptly(.seconds(1)), "took \(took)")

        // A mailbox monitor of a port on such a node gets its event at once.
        let created = try await gateway.post("/v1/ports", json: "")
        #expect(created.status == 201, "\(created.body)")
        let name = try #require(
            (try JSONSerialization.jsonObject(with: Data(created.body.utf8)) as? [String: Any])?["name"] as? String)
        started = ContinuousClock.now
        let monitor = try await gateway.post("/v1/ports/\(name)/monitor", json: #"{"port": "nobody/mailbox#p"}"#)
        #expect(monitor.status == 200, "\(monitor.body)")
        let event = try await gateway.get("/v1/ports/\(name)/messages?wait=20")
        took = ContinuousClock.now - started
        #expect(event.status == 200, "\(event.body)")
        #expect(event.body.contains(#""type":"monitor""#), "\(event.body)")
        #expect(event.body.contains(#"["transport_error","nobody/mailbox","no known address"]"#), "\(event.body)")
        #expect(took < promptly(.seconds(1)), "took \(took)")

        // aemp snd exits at once, non-zero, with the reason (not "no delivery receipt" after 10 s).
        started = ContinuousClock.now
        let sent = try await ChildProcess.run(
            "aemp", ["snd", "--secret", testSecret, "--seeds", bind, "nobody/tool#p", "x"],
            unset: ["AEMP_SECRET", "XDG_STATE_HOME", "PERL_ANYEVENT_MP_RC"])
        took = ContinuousClock.now - started
        #expect(sent.exit == .exited(1), "\(sent)")
        #expect(
            sent.stderr == "aemp: error: message not delivered: cannot reach node nobody/tool: no known address\n",
            "\(sent)")
        #expect(took < promptly(.seconds(3)), "the whole aemp snd run (process start and join included; 10 s before) took \(took)")
    }
}
