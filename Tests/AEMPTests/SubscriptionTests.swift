@testable import AEMP
import AEMPTestSupport
import NIOCore
import Testing

/// Issue 16: one subscription handle type with one way to end it (`Subscription.cancel()`), for
/// monitors, node and master watchers, node-port observers and family watchers, and async forms
/// that end with the loop that reads them. Each test shows the handler stops, and that the
/// registration is gone from the node (not merely ignored).
@Suite("Subscriptions", .timeLimit(.minutes(1)))
struct SubscriptionTests {
    /// A seed (global node) and a private node attached to it.
    static func network() async throws -> (seed: Node, node: Node) {
        let seed = try makeNode(id: "sub-seed-%u", binds: ["127.0.0.1:0"])
        try await seed.start()
        let node = try makeNode(id: "sub-node-%u", seeds: [try #require(await seed.listenAddresses().first)])
        try await node.start()
        _ = try await node.waitForMaster(timeout: stretched(.seconds(10)))
        return (seed, node)
    }

    /// What the node holds for its subscriptions: monitors on `peer`'s ports, node and master
    /// watchers, node-port observers, watched families, death waits.
    static func held(_ node: Node, peer: String) async -> [Int] {
        await node.withKernel { k in
            [
                k.peers[peer]?.monitors.filter { !$0.key.isEmpty }.values.reduce(0) { $0 + $1.count } ?? 0,
                k.nodeWatchers.count, k.masterWatchers.count, k.nodePortObservers.count, k.families.count, k.deathWaits.count,
            ]
        } ?? []
    }

    @Test("cancel() ends every kind: the handler stops and the node lets go of the registration (mon0 and g_mon0 go out)")
    func cancelEveryKind() async throws {
        let (seed, node) = try await Self.network()
        let base = await Self.held(node, peer: seed.id)
        let target = seed.port { _ in }
        let fired = Locked<[String]>([])
        let monitor = node.mon(target) { _ in fired.withLock { $0.append("monitor") } }
        let nodes = node.monNodes { _, _ in fired.withLock { $0.append("nodes") } }
        let master = node.monMaster { _ in fired.withLock { $0.append("master") } }
        let observer = await node.observeNodePort { _, _ in fired.withLock { $0.append("nodePort") } }
        let family = node.dbMon("sub-family") { _ in fired.withLock { $0.append("family") } }
        #expect(monitor.kind == .monitor(target) && nodes.kind == .nodes && master.kind == .master)
        #expect(observer.kind == .nodePort && family.kind == .family("sub-family"))
        await eventually("the seed has the family watch") {
            await seed.withKernel { k in k.subscribers["sub-family"]?.contains(node.id) == true } ?? false
        }
        let during = await Self.held(node, peer: seed.id)
        #expect(during == zip(base, [1, 1, 1, 1, 1, 0]).map { $0 + $1 }, "\(during) (before: \(base))")

        for s in [monitor, nodes, master, observer, family] {
            s.cancel()
            s.cancel()  // twice: nothing more happens
        }
        await eventually("the node holds nothing for them") { await Self.held(node, peer: seed.id) == base }
        // The seed heard mon0 and g_mon0: it holds no monitor and no family watch for the node.
        await eventually("the seed let go of both") {
            await seed.withKernel { k in
                k.watchers[target.name]?.monitors.isEmpty != false && k.subscribers["sub-family"]?.contains(node.id) != true
            } ?? false
        }

        fired.withLock { $0.removeAll() }
        seed.dbSet("sub-family", "k", 1)
        node.snd(PortID(node: node.id, name: ""), ["devnull"])
        seed.kil(target)
        try await Task.sleep(for: .milliseconds(300))
        #expect(fired.withLock { $0 } == [], "handlers ran after cancel")
        await node.shutdown()
        await seed.shutdown()
    }

    @Test("the async forms deliver in order and cancel their registration when the loop ends")
    func asyncForms() async throws {
        let (seed, node) = try await Self.network()
        let base = await Self.held(node, peer: seed.id)

        // familyChanges: the current family first, then each change.
        seed.dbSet("sub-async", "a", 1)
        await eventually("the key is in the database") { (try? await node.dbFamily("sub-async")) == ["a": 1] }
        var seen: [[String: Value]] = []
        for await change in node.familyChanges("sub-async") {
            seen.append(change.values)
            if seen.count == 1 { seed.dbSet("sub-async", "b", 2) }
            if change.values["b"] != nil { break }
        }
        #expect(seen.first == ["a": 1] && seen.last == ["a": 1, "b": 2], "\(seen)")

        // masterChanges: the master now.
        for await master in node.masterChanges() {
            #expect(master == seed.id)
            break
        }

        // nodeEvents: a third node connecting and leaving.
        let events = Task<[NodeEvent], Never> {
            var got: [NodeEvent] = []
            for await e in node.nodeEvents() where e.node.hasPrefix("sub-third-") {
                got.append(e)
                if !e.isUp { break }
            }
            return got
        }
        await eventually("the node watcher is in place") { await Self.held(node, peer: seed.id)[1] == base[1] + 1 }
        let third = try makeNode(id: "sub-third-%u", binds: ["127.0.0.1:0"], seeds: [try #require(await seed.listenAddresses().first)])
        try await third.start()
        node.keepConnected(to: third.id)  // dials once the directory lists the third node
        await eventually(within: 20, "the node connected to the third node") { await node.upNodes().contains(third.id) }
        await third.shutdown()
        node.stopKeepingConnected(to: third.id)
        let got = await events.value
        #expect(got == [NodeEvent(node: third.id, isUp: true), NodeEvent(node: third.id, isUp: false)], "\(got)")

        await eventually("every loop's registration is gone") { await Self.held(node, peer: seed.id) == base }

        // The node's shutdown ends a loop that is still reading, and one begun afterwards.
        let read = Locked(0)
        let reading = Task<Int, Never> {
            for await _ in node.familyChanges("sub-async") { read.withLock { $0 += 1 } }
            for await _ in node.nodeEvents() { read.withLock { $0 += 1 } }
            return read.withLock { $0 }
        }
        await eventually("the loop read the snapshot") { read.withLock { $0 } >= 1 }
        await node.shutdown()
        #expect(await reading.value >= 1, "the loop ended")
        #expect(await node.withKernel { $0.streamEnds.count } == 0)
        await seed.shutdown()
    }

    @Test("death(of:) answers the kill reason; a cancelled wait throws cancelled and removes its monitor; shutdown ends it")
    func death() async throws {
        let (seed, node) = try await Self.network()
        let base = await Self.held(node, peer: seed.id)
        let target = seed.port { _ in }
        let waiting = Task { try await node.death(of: target) }
        // In place on both sides: the seed has the mon1 (a kil before it would be no_such_port).
        await eventually("the monitor is in place") {
            let here = await Self.held(node, peer: seed.id)[0] == base[0] + 1
            let there = await seed.withKernel { $0.watchers[target.name]?.remote.contains(node.id) == true } ?? false
            return here && there
        }
        seed.kil(target, reason: ["bye", 7])
        #expect(try await waiting.value == ["bye", 7])
        #expect(try await node.death(of: PortID(node: node.id, name: "no-such-port")).first == "no_such_port")

        let other = seed.port { _ in }
        let cancelled = Task { try await node.death(of: other) }
        await eventually("the second monitor is in place") { await Self.held(node, peer: seed.id)[0] == base[0] + 1 }
        cancelled.cancel()
        await #expect(throws: RequestError.cancelled) { try await cancelled.value }
        await eventually("nothing held") { await Self.held(node, peer: seed.id) == base }

        let last = Task { try await node.death(of: other) }
        await eventually("the third monitor is in place") { await Self.held(node, peer: seed.id)[5] == 1 }
        await node.shutdown()
        await #expect(throws: RequestError.shutDown) { try await last.value }
        await seed.shutdown()
    }
}
