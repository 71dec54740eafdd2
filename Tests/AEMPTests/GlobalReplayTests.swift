import Foundation
import NIOCore
import Testing

@testable import AEMP

/// The global protocol (aemp-protocol §10-§11) replayed from the captured Perl conversations in
/// both directions: scripted Perl non-global nodes against a Swift global (does the Swift global
/// answer what the Perl seed answered?), and a scripted Perl global against a Swift non-global node
/// (does the Swift node send what Perl's `recv`/`send`/`setter` sent?), including the failover of
/// `failover-json`. Node IDs, port names, request IDs and addresses that are random or
/// machine-specific are renamed; hash order is ignored; everything else must match.
@Suite("Global protocol replayed from the Perl captures", .serialized, .timeLimit(.minutes(2)))
struct GlobalReplayTests {

    // MARK: - The Swift global in the Perl seed's place

    @Test("a Swift global answers the captured Perl nodes (recv watching, send/pyprobe setting) as the Perl seed did",
          arguments: ["json", "cbor", "mixed-framing", "pyprobe-json", "pyprobe-cbor"])
    func globalAnswersLikePerlSeed(_ scenario: String) async throws {
        try await ScriptedResources.with { res in
            let replay = try await GlobalSideReplay.start(
                scenario: scenario, global: "seed",
                listeners: ["seed": "127.0.0.1:4040", "recv": "127.0.0.1:4041"], res: res)
            let outcome = try await replay.run()
            #expect(outcome == .completed)
            try await replay.finish(outcome)
            // recv's and send's/pyprobe's conversations: g_global, g_found, g_chg1, g_reply, g_chg2 …
            #expect(replay.compared == replay.expectedCount && replay.compared >= 10,
                    "compared \(replay.compared) of \(replay.expectedCount) packets")
        }
    }

    @Test("a Swift global in seedA's or seedB's place of failover-json: mesh with the other Perl global, forwarding, failover",
          arguments: ["seedA", "seedB"])
    func globalMeshLikePerlSeeds(_ role: String) async throws {
        try await ScriptedResources.with { res in
            let replay = try await GlobalSideReplay.start(
                scenario: "failover-json", global: role,
                listeners: ["seedA": "127.0.0.1:4040", "seedB": "127.0.0.1:4042", "recv": "127.0.0.1:4041"], res: res)
            let outcome = try await replay.run()
            // seedA was stopped in the capture (run-info.txt); seedB lived on and took recv over.
            #expect(outcome == (role == "seedA" ? .globalStopped : .completed))
            try await replay.finish(outcome)
            #expect(replay.compared == replay.expectedCount && replay.compared >= 10,
                    "compared \(replay.compared) of \(replay.expectedCount) packets")
        }
    }

    // MARK: - A Swift non-global node in a Perl node's place

    @Test("a public Swift node joins a scripted Perl seed as recv did (json conn02): g_slave with 'l and db, g_mon1, g_chg1/g_chg2, g_upd on kil, g_mon0")
    func nodeJoinsLikeRecv() async throws {
        try await ScriptedResources.with { res in
            let capture = try ReplayCapture.load("json", "conn02")
            let capturedPort = try Self.registeredPort(in: capture)
            let listener = res.listener(try await ScriptedListener.start())
            let node = res.node(try Node(configuration: scriptedNodeConfiguration(
                id: "gr-recv-%u", binds: ["127.0.0.1:0"], seeds: [listener.address])))
            // What recv did at start, before it had a master: db_reg its port, db_mon the family.
            let port = node.port { _ in }
            node.dbReg("aemp_test_receivers", port: port, ["node": .string(node.id)])
            let feed = Events<FamilyChange>()
            let watch = node.dbMon("aemp_test_fam") { feed.yield($0) }
            var changes = feed.stream.makeAsyncIterator()
            try await node.start()
            let address = try #require(await node.listenAddresses().first)
            let renaming = CaptureRenaming([
                "recv": node.id, capturedPort: port.description,
                "127.0.0.1:4041": address, "127.0.0.1:4040": listener.address,
            ])
            let seed = try await Self.acceptPerlSeed(listener, capture, res)
            let fromRecv = capture.packets.filter { $0.dir == "c2s" }.map { renaming.packet($0.decoded) }
            let fromSeed = capture.packets.filter { $0.dir == "s2c" }.map { renaming.packet($0.decoded) }

            // Joining: everything recv sent before its first db write, in order.
            let join = fromRecv.prefix { !["g_upd", "g_mon0"].contains(WireShape.tag($0)) }
            try await Self.expectJoin(Array(join), from: seed, seedIDs: ["seed"])
            #expect(await node.master() == "seed")

            // The seed's answers and change feed, as captured; the watcher sees what Perl's db_mon saw.
            var perl = PerlFamilyMonitor()
            for packet in fromSeed {
                try await seed.send(packet)
                if let expected = perl.apply(packet, family: "aemp_test_fam") {
                    let got = try await next(&changes, within: 5, "db_mon after \(packet)")
                    Self.check(got, expected, after: packet)
                }
            }

            // kil of the db_reg'ed port: the registration goes (db_del), then db_mon ends (g_mon0).
            let rest = fromRecv.dropFirst(join.count)
            #expect(rest.map(WireShape.tag) == ["g_upd", "g_mon0"], "\(Array(rest))")
            node.kil(port)
            try await Self.expectPackets([rest[rest.startIndex]], from: seed, "g_upd after kil")
            watch.cancel()
            try await Self.expectPackets([rest[rest.startIndex + 1]], from: seed, "g_mon0 after the last watcher")
            try await Self.barrier(seed, node: "seed")
        }
    }

    @Test("a private Swift node joins a scripted Perl seed as send did (json conn03, conn04): g_db_* with reply ids, g_find/g_found then a dial, g_upd for db_set/db_del")
    func nodeJoinsLikeSend() async throws {
        try await ScriptedResources.with { res in
            let capture = try ReplayCapture.load("json", "conn03")
            let direct = try ReplayCapture.load("json", "conn04")
            let seedListener = res.listener(try await ScriptedListener.start())
            let recvListener = res.listener(try await ScriptedListener.start())
            let node = res.node(try Node(configuration: scriptedNodeConfiguration(
                id: "gr-send-%u", seeds: [seedListener.address])))
            var renaming = CaptureRenaming([
                "send": node.id, "127.0.0.1:4040": seedListener.address, "127.0.0.1:4041": recvListener.address,
            ])
            let fromSend = capture.packets.filter { $0.dir == "c2s" }.map { $0.decoded.arrayValue ?? [] }
            let fromSeed = capture.packets.filter { $0.dir == "s2c" }.map { $0.decoded.arrayValue ?? [] }
            func seedReply(_ tag: String, id: String) throws -> [Value] {
                try #require(fromSeed.first { WireShape.tag($0) == tag && $0.count > 2 && $0[2] == .string(id) })
            }

            // send asked db_keys before it had a master: the request goes out right after g_slave.
            let keysAtStart = Task { try await node.dbKeys("aemp_test_receivers") }
            try await node.start()
            let seed = try await Self.acceptPerlSeed(seedListener, capture, res)
            try await seed.send(renaming.packet(.array(fromSeed[0])))  // g_global
            let join = Array(fromSend.prefix { WireShape.tag($0) != "g_find" || $0[2] == "seed" })
            #expect(join.map(WireShape.tag) == ["g_slave", "g_slave", "g_db_keys", "g_find", "g_slave"])
            let expectedJoin = join.map { renaming.packet(.array($0)) }
            let gotJoin = try await Self.expectJoin(expectedJoin, from: seed, seedIDs: ["seed"], requestIDs: &renaming)
            #expect(gotJoin.count == 2)
            // The seed answers with the captured values (its g_found for the seed too: harmless).
            for reply in fromSeed.dropFirst() where ["g_reply", "g_found"].contains(WireShape.tag(reply)) {
                if WireShape.tag(reply) == "g_found", reply[2] != "seed" { break }
                try await seed.send(renaming.packet(.array(reply)))
            }
            let keys = try await value(of: keysAtStart, within: 5, "db_keys at start")
            #expect(keys == ["recv#NhOkk0WVGb"])

            // A message to a port on recv: the node asks where recv is, then dials what g_found says.
            let message = try #require(direct.packets.first { $0.dir == "c2s" }?.decoded.arrayValue)
            let findRecv = try #require(fromSend.first { WireShape.tag($0) == "g_find" && $0[2] == "recv" })
            node.snd(PortID(node: "recv", name: try #require(message.first?.stringValue)), Array(message.dropFirst()))
            try await Self.expectPackets([renaming.packet(.array(findRecv))], from: seed, "g_find recv")
            try await seed.send(renaming.packet(.array(try seedReply("g_found", id: "recv"))))
            let recv = res.peer(try await recvListener.accept(within: 5))
            let g1 = ScriptedPeer.rewritePeerAddr(try #require(direct.greeting1["s2c"]), to: recv.remoteAddress)
            let hs = try await recv.handshake(ScriptedHandshakeOptions(
                greeting1: g1, greeting2: try #require(direct.greeting2["s2c"])))
            #expect(hs.nodeTokenValid)
            try await Self.expectPackets([message], from: recv, "the test message over the direct connection")

            // db_set / db_del exactly as send sent them (g_upd with 4 elements for a set, null + list for a delete).
            let updates = fromSend.filter { WireShape.tag($0) == "g_upd" }
            #expect(updates.count == 4)
            for update in updates {
                Self.perform(update, on: node)
                try await Self.expectPackets([renaming.packet(.array(update))], from: seed, "\(update)")
            }
            // Setting a value it already has sends nothing (Perl compares with sv_eq, K 784-825).
            var local: [String: Value] = [:]
            for update in updates {
                if update.count == 4 { local.merge(update[3].objectValue ?? [:]) { _, new in new } }
                for key in update.count == 5 ? (update[4].arrayValue ?? []) : [] { local[key.stringValue ?? ""] = nil }
            }
            #expect(!local.isEmpty)
            for (key, value) in local { node.dbSet("aemp_test_fam", key, value) }

            // db_family / db_keys / db_values: any request id, echoed in g_reply.
            for tag in ["g_db_family", "g_db_keys", "g_db_values"] {
                let request = try #require(fromSend.first { WireShape.tag($0) == tag && $0[2] == "aemp_test_fam" })
                let query = Task { () -> Value in
                    switch tag {
                    case "g_db_family": return .object(try await node.dbFamily("aemp_test_fam"))
                    case "g_db_keys": return .array(try await node.dbKeys("aemp_test_fam").map { .string($0) })
                    default: return .array(try await node.dbValues("aemp_test_fam"))
                    }
                }
                let expectedRequest = renaming.packet(.array(request))
                try await Self.expectJoin([expectedRequest], from: seed, seedIDs: [], requestIDs: &renaming)
                let reply = try seedReply("g_reply", id: try #require(request[3].stringValue))
                try await seed.send(renaming.packet(.array(reply)))
                #expect(try await value(of: query, within: 5, tag) == reply[3], "\(tag)")
            }
            try await Self.barrier(seed, node: "seed")

            // send exits: both connections end.
            await node.shutdown()
            _ = try await seed.waitForClose(within: 5)
            _ = try await recv.waitForClose(within: 5)
        }
    }

    @Test("a private Swift node sets keys as setter did (failover-json conn08): db in g_slave, g_upd per change, numbers and strings kept")
    func nodeSetsLikeSetter() async throws {
        try await ScriptedResources.with { res in
            let capture = try ReplayCapture.load("failover-json", "conn08")
            let listener = res.listener(try await ScriptedListener.start())
            let node = res.node(try Node(configuration: scriptedNodeConfiguration(
                id: "gr-setter-%u", seeds: [listener.address], framings: [.json])))
            let renaming = CaptureRenaming(["setter": node.id, "127.0.0.1:4042": listener.address])
            let fromSetter = capture.packets.filter { $0.dir == "c2s" }.map { $0.decoded.arrayValue ?? [] }
            // setter's db_set before it had a master travels inside g_slave.
            let slave = try #require(fromSetter.first { $0.count == 3 && WireShape.tag($0) == "g_slave" })
            for (family, entries) in slave[2].objectValue ?? [:] where family != "'l" {
                for (key, value) in entries.objectValue ?? [:] { node.dbSet(family, key, value) }
            }
            try await node.start()
            let seed = try await Self.acceptPerlSeed(listener, capture, res)
            try await seed.send(["", "g_global"])
            let join = fromSetter.prefix { WireShape.tag($0) != "g_upd" }.map { renaming.packet(.array($0)) }
            try await Self.expectJoin(Array(join), from: seed, seedIDs: ["seedA", "seedB"])

            let updates = fromSetter.filter { WireShape.tag($0) == "g_upd" }
            #expect(updates.count == 9)
            for update in updates {
                Self.perform(update, on: node)
                try await Self.expectPackets([update], from: seed, "\(update)")
            }
            Self.perform(try #require(updates.last), on: node)  // unchanged: nothing goes out
            try await Self.barrier(seed, node: "seedB")
        }
    }

    @Test("failover (failover-json conn06 → conn05): the Swift node re-attaches with a full g_slave, re-sends g_mon1, and takes the next g_chg1 as a full replacement")
    func nodeFailsOverLikeRecv() async throws {
        try await ScriptedResources.with { res in
            let toA = try ReplayCapture.load("failover-json", "conn06")  // recv ↔ seedA, its master until seedA died
            let toB = try ReplayCapture.load("failover-json", "conn05")  // recv ↔ seedB, its master afterwards
            let capturedPort = try Self.registeredPort(in: toA)
            let listenerA = res.listener(try await ScriptedListener.start())
            let listenerB = res.listener(try await ScriptedListener.start())
            let node = res.node(try Node(configuration: scriptedNodeConfiguration(
                id: "gr-failover-%u", binds: ["127.0.0.1:0"], seeds: [listenerA.address, listenerB.address],
                framings: [.json])))
            let port = node.port { _ in }
            node.dbReg("aemp_test_receivers", port: port, ["node": .string(node.id)])
            let feed = Events<FamilyChange>()
            let watch = node.dbMon("aemp_test_fam") { feed.yield($0) }
            var changes = feed.stream.makeAsyncIterator()
            try await node.start()
            let address = try #require(await node.listenAddresses().first)
            let renaming = CaptureRenaming([
                "recv": node.id, capturedPort: port.description, "127.0.0.1:4041": address,
                "127.0.0.1:4040": listenerA.address, "127.0.0.1:4042": listenerB.address,
            ])
            func packets(_ c: ReplayCapture, _ dir: String) -> [[Value]] {
                c.packets.filter { $0.dir == dir }.map { renaming.packet($0.decoded) }
            }

            // seedA first (Perl's recv picked seedA): the node makes it its master.
            let a = try await Self.acceptPerlSeed(listenerA, toA, res)
            try await a.send(["", "g_global"])
            let fromRecvToA = packets(toA, "c2s")
            try await Self.expectJoin(fromRecvToA, from: a, seedIDs: ["seedA", "seedB"])
            #expect(await node.master() == "seedA")
            let b = try await Self.acceptPerlSeed(listenerB, toB, res)
            try await b.send(["", "g_global"])
            await eventually(within: 5, "both seeds up") { await node.upNodes() == ["seedA", "seedB"] }

            // seedA's answers and change feed until it died, as captured.
            var perl = PerlFamilyMonitor()
            for packet in packets(toA, "s2c") where WireShape.tag(packet) != "g_global" {
                try await a.send(packet)
                if let expected = perl.apply(packet, family: "aemp_test_fam") {
                    Self.check(try await next(&changes, within: 5, "db_mon after \(packet)"), expected, after: packet)
                }
            }
            // Beyond the capture: a key only the dying master reported (it must vanish on failover, once) …
            let vanishing: [Value] = ["", "g_chg2", "aemp_test_fam", ["only_on_seedA": "x"], []]
            try await a.send(vanishing)
            let vanishingResult = perl.apply(vanishing, family: "aemp_test_fam")
            let vanishingCall = try #require(vanishingResult)
            Self.check(try await next(&changes, within: 5, "the key only seedA knows"), vanishingCall, after: vanishing)
            // … changes from a global that is not the master are ignored (K 891, K 917) …
            try await b.send(["", "g_chg2", "aemp_test_fam", ["not_from_master": 1], []])
            try await b.send(["", "g_chg1", "aemp_test_fam", ["not_from_master": 1]])
            var emptySlavesToB = try await Self.barrier(b, node: "seedB")
            // … and a query still unanswered when the master dies is asked again (K 680-697).
            let pendingQuery = Task { try await node.dbKeys("aemp_test_receivers") }
            let asked = try await a.readSkippingEmptySlave(within: 5, "g_db_keys to seedA")
            #expect(asked.count == 4 && WireShape.tag(asked) == "g_db_keys" && asked[2] == "aemp_test_receivers",
                    "\(asked)")

            // seedA dies and refuses reconnects (conn10-18).
            await listenerA.close()
            await a.close()

            // On seedB: the whole db in g_slave, every subscription and the pending query again.
            let fromRecvToB = packets(toB, "c2s")
            let reattach = fromRecvToB.filter { $0.count > 2 && ["g_slave", "g_mon1"].contains(WireShape.tag($0)) }
            #expect(reattach.map(WireShape.tag) == ["g_slave", "g_mon1"])
            #expect(reattach.first == fromRecvToA.first { $0.count == 3 && WireShape.tag($0) == "g_slave" },
                    "the same db as to seedA")
            let slave = try await b.readSkippingEmptySlave(within: 10, "g_slave to seedB", skipped: &emptySlavesToB)
            #expect(WireShape.same(reattach[0], slave), "expected \(reattach[0]) got \(slave)")
            var resent: [[Value]] = []
            for _ in 0..<2 { resent.append(try await b.readSkippingEmptySlave(within: 5, "re-sent requests", skipped: &emptySlavesToB)) }
            #expect(WireShape.sameMultiset([reattach[1], asked], resent), "expected g_mon1 and \(asked), got \(resent)")
            #expect(await node.master() == "seedB")
            try await b.send(["", "g_reply", asked[3], ["recv#elsewhere"]])
            #expect(try await value(of: pendingQuery, within: 5, "the re-sent query") == ["recv#elsewhere"])
            #expect(emptySlavesToB > 0, "no empty g_slave reached the second seed")

            // seedB's full g_chg1: a replacement; the key only seedA had is deleted, once.
            let fromB = packets(toB, "s2c").filter { WireShape.tag($0) != "g_global" }
            #expect(fromB.first.map(WireShape.tag) == "g_chg1")
            var vanished = 0
            for packet in fromB {
                try await b.send(packet)
                let before = perl.db
                guard let expected = perl.apply(packet, family: "aemp_test_fam") else { continue }
                let got = try await next(&changes, within: 5, "db_mon after \(packet)")
                if got.deleted.contains("only_on_seedA") { vanished += 1 }
                if WireShape.tag(packet) == "g_chg1" {
                    #expect(got.values == expected.values && got.added == expected.added && got.deleted == expected.deleted,
                            "g_chg1 after failover: got \(got), Perl's db_mon: \(expected)")
                    #expect(got.deleted == ["only_on_seedA"])
                    // Deliberately not Perl's db_mon (which lists every key it already had as
                    // changed, K 895-900): FamilyChange reports only keys whose value differs.
                    let differing = expected.changed.filter { before[$0] != expected.values[$0] }
                    #expect(got.changed == differing.sorted())
                } else {
                    Self.check(got, expected, after: packet)
                }
            }
            #expect(vanished == 1, "the key only seedA had is reported deleted once")

            // recv's exit: db_mon ends (g_mon0), the db_reg'ed port dies (g_upd with the delete).
            let exit = fromRecvToB.filter { ["g_mon0", "g_upd"].contains(WireShape.tag($0)) }
            #expect(exit.map(WireShape.tag) == ["g_mon0", "g_upd"])
            watch.cancel()
            node.kil(port)
            try await Self.expectPackets(exit, from: b, "g_mon0 and g_upd at exit")
            try await Self.barrier(b, node: "seedB")
        }
    }

    // MARK: - Beyond the captures: the Perl global's rules the vectors do not exercise

    @Test("a slave deleting a key another global also holds: the other globals drop only its copy, watchers see the other value (g_upd, G 73-142)")
    func deleteWithAnotherGlobalsCopy() async throws {
        try await ScriptedResources.with { res in
            let (global, address) = try await Self.startGlobal(res)
            let other = try await Self.perlGlobal("seedB", dialing: address, global: global, res: res)
            // seedB's slaves hold k1 (same value as our slave will set) and k2 (another value).
            try await other.send(["", "g_upd", "fam", ["k1": "v", "k2": "w"], []])
            try await Self.barrier(other, node: "seedB")
            let slave = try await Self.perlSlave("slave", ["'l": ["slave": []], "fam": ["k1": "v", "k2": "v"]],
                                                 dialing: address, res: res)
            try await Self.expectPackets([
                ["", "g_upd", "'l", ["slave": []], []], ["", "g_upd", "fam", ["k1": "v", "k2": "v"], []],
            ], from: other, "the slave's g_slave, forwarded")
            let watcher = try await Self.perlSlave("watcher", ["'l": ["watcher": []]], dialing: address, res: res)
            try await Self.expectPackets([["", "g_upd", "'l", ["watcher": []], []]], from: other, "the watcher's g_slave")
            try await watcher.send(["", "g_mon1", "fam"])
            try await Self.expectPackets([["", "g_chg1", "fam", ["k1": "v", "k2": "v"]]], from: watcher, "g_chg1")

            try await slave.send(["", "g_upd", "fam", nil, ["k1", "k2"]])
            // Perl's g_upd: both in @del_global (only a global holds them now); k2's other value in %local_set.
            try await Self.expectPackets([["", "g_upd", "fam", [:], ["k1", "k2"]]], from: other, "forwarded delete")
            try await Self.expectPackets([["", "g_chg2", "fam", ["k2": "w"], []]], from: watcher, "g_chg2 with seedB's value")
            try await slave.send(["", "g_db_family", "fam", "q"])
            try await Self.expectPackets([["", "g_reply", "q", ["k1": "v", "k2": "w"]]], from: slave, "g_db_family")

            // seedB's slaves delete them too: gone; a global's write is not forwarded.
            try await other.send(["", "g_upd", "fam", [:], ["k1", "k2"]])
            try await Self.expectPackets([["", "g_chg2", "fam", [:], ["k1", "k2"]]], from: watcher, "deleted everywhere")
            for (peer, id) in [(other, "seedB"), (watcher, "watcher"), (slave, "slave")] {
                try await Self.barrier(peer, node: id)
            }
        }
    }

    @Test("a global that goes down: the others hear 'g and 'l deletions from us, not its slaves' keys (G 223-242)")
    func deadGlobalIsNotForwarded() async throws {
        try await ScriptedResources.with { res in
            let (global, address) = try await Self.startGlobal(res, grace: .zero)
            let dying = try await Self.perlGlobal("seedB", dialing: address, global: global, res: res,
                                                  slaves: ["fam": ["x": 1]])
            let staying = try await Self.perlGlobal("seedC", dialing: address, global: global, res: res)
            // seedB hears of seedC through our 'g (g_global_connect).
            try await Self.expectPackets([["", "g_upd", "'g", ["seedC": nil], []]], from: dying, "'g seedC")
            await dying.close()
            try await Self.expectPackets([
                ["", "g_upd", "'g", [:], ["seedB"]], ["", "g_upd", "'l", [:], ["seedB"]],
            ], from: staying, "seedB leaves our 'g and 'l")
            try await Self.barrier(staying, node: "seedC")
            #expect(try await global.dbFamily("fam").isEmpty, "seedB's slaves' key went with it")
        }
    }

    @Test("a node that becomes global through g_slave meets the globals it already knows: g_upd 'g and g_set (G 308-334)")
    func becomingGlobalMeetsKnownGlobals() async throws {
        try await ScriptedResources.with { res in
            let capture = try ReplayCapture.load("json", "conn02")
            let listener = res.listener(try await ScriptedListener.start())
            let node = res.node(try Node(configuration: scriptedNodeConfiguration(
                id: "gr-promoted-%u", binds: ["127.0.0.1:0"], seeds: [listener.address])))
            try await node.start()
            let address = try #require(await node.listenAddresses().first)
            let seed = try await Self.acceptPerlSeed(listener, capture, res)
            try await seed.send(["", "g_global"])
            let slave = try await seed.readSkippingEmptySlave(within: 5, "g_slave")
            #expect(slave == ["", "g_slave", ["'l": .object([node.id: [.string(address)]])]])

            // A Perl node that lists the Swift node as a seed: "make sure you run the global service".
            let perl = res.peer(try await ScriptedPeer.dial(address))
            _ = try await perl.handshake(ScriptedHandshakeOptions(
                greeting1: ScriptedPeer.perlGreeting(nodeID: "xnode", peerAddr: address), greeting2: ScriptedPeer.nonce()))
            try await perl.send(["", "g_slave"])
            try await Self.expectPackets([["", "g_global"]], from: perl, "g_global to every node")
            try await perl.send(["", "g_slave", ["'l": ["xnode": []]]])
            #expect(await node.master() == node.id)

            // Its own db (master_set to itself: g_upd per family), its 'g, then g_global …
            try await Self.expectPackets([
                ["", "g_upd", "'l", .object([node.id: [.string(address)]]), []], ["", "g_upd", "'g", .object([node.id: nil]), []],
            ], from: seed, "our own db, forwarded")
            try await Self.expectPackets([["", "g_global"]], from: seed, "g_global")
            // … and g_global_connect for the global it knew: 'g and g_set.
            try await Self.expectPackets([["", "g_upd", "'g", ["seed": nil], []]], from: seed, "'g seed")
            try await Self.expectPackets([
                ["", "g_set", .object(["'l": .object([node.id: [.string(address)]]), "'g": .object([node.id: nil, "seed": nil])])],
            ], from: seed, "g_set")
            // The new slave's db goes to the other globals.
            try await Self.expectPackets([["", "g_upd", "'l", ["xnode": []], []]], from: seed, "the slave's g_slave, forwarded")
            try await Self.barrier(seed, node: "seed")
            try await Self.barrier(perl, node: "xnode")
        }
    }

    @Test("a slave that turns global loses its g_mon1 subscriptions (g_disconnect on g_global, G 223-242, 292-297)")
    func slaveTurningGlobalLosesSubscriptions() async throws {
        try await ScriptedResources.with { res in
            let (global, address) = try await Self.startGlobal(res)
            let turning = try await Self.perlSlave("wnode", ["'l": ["wnode": []]], dialing: address, res: res)
            try await turning.send(["", "g_mon1", "fam"])
            try await Self.expectPackets([["", "g_chg1", "fam", nil]], from: turning, "g_chg1")
            try await turning.send(["", "g_global"])
            var got: [[Value]] = []
            for _ in 0..<2 { got.append(try await turning.readSkippingEmptySlave(within: 5, "meeting a new global")) }
            #expect(got.map(WireShape.tag) == ["g_upd", "g_set"], "\(got)")
            #expect(got.first == ["", "g_upd", "'g", ["wnode": nil], []])

            _ = try await Self.perlSlave("snode", ["'l": ["snode": []], "fam": ["k": 1]], dialing: address, res: res)
            // As a global it hears the new slave's writes as g_upd, and no more g_chg2.
            try await Self.expectPackets([
                ["", "g_upd", "'l", ["snode": []], []], ["", "g_upd", "fam", ["k": 1], []],
            ], from: turning, "forwarded to the new global")
            try await Self.barrier(turning, node: "wnode")
            #expect(try await global.dbFamily("fam") == ["k": 1])
        }
    }

    /// A Swift global (its seed list names itself) on a free port.
    static func startGlobal(_ res: ScriptedResources, grace: TimeAmount? = nil) async throws -> (Node, String) {
        let address = "127.0.0.1:\(try freePort())"
        var c = scriptedNodeConfiguration(id: "gr-global-%u", binds: [address], seeds: [address], framings: [.json])
        if let grace { c.globalLossGrace = grace }
        let node = res.node(try Node(configuration: c))
        try await node.start()
        #expect(try await node.waitForMaster(timeout: stretched(.seconds(5))) == node.id)
        return (node, address)
    }

    /// A scripted Perl global meshing with the Swift global: g_global, g_set with its own `'l`/`'g`
    /// (and `slaves`' data); the Swift global's answers (checked in detail against failover-json
    /// by `globalMeshLikePerlSeeds`) are consumed.
    static func perlGlobal(
        _ id: String, dialing address: String, global: Node, res: ScriptedResources,
        slaves: [String: Value] = [:]
    ) async throws -> ScriptedPeer {
        let peer = res.peer(try await ScriptedPeer.dial(address))
        _ = try await peer.handshake(ScriptedHandshakeOptions(
            greeting1: ScriptedPeer.perlGreeting(nodeID: id, peerAddr: address), greeting2: ScriptedPeer.nonce()))
        try await peer.send(["", "g_global"])
        var db = slaves
        db["'l"] = .object([id: [.string("127.0.0.1:\(try freePort())")]])  // nobody listens there
        db["'g"] = .object([id: nil, global.id: nil])
        try await peer.send(["", "g_set", .object(db)])
        var got: [[Value]] = []
        for _ in 0..<4 { got.append(try await peer.readSkippingEmptySlave(within: 5, "meeting \(id)")) }
        #expect(got.map(WireShape.tag) == ["g_global", "g_upd", "g_set", "g_upd"], "\(got)")
        try await barrier(peer, node: id)
        return peer
    }

    /// A scripted Perl non-global node attaching to the Swift global with `db` in its g_slave.
    static func perlSlave(
        _ id: String, _ db: Value, dialing address: String, res: ScriptedResources
    ) async throws -> ScriptedPeer {
        let peer = res.peer(try await ScriptedPeer.dial(address))
        _ = try await peer.handshake(ScriptedHandshakeOptions(
            greeting1: ScriptedPeer.perlGreeting(nodeID: id, peerAddr: address), greeting2: ScriptedPeer.nonce()))
        try await peer.send(["", "g_slave", db])
        try await expectPackets([["", "g_global"]], from: peer, "g_global")
        try await barrier(peer, node: id)
        return peer
    }

    // MARK: - Helpers for the node-side tests

    /// The port recv registered with db_reg, from its `g_slave` (random per capture run).
    static func registeredPort(in capture: ReplayCapture) throws -> String {
        let slave = try #require(capture.packets.first { p in
            p.dir == "c2s" && p.decoded.arrayValue.map { $0.count == 3 && WireShape.tag($0) == "g_slave" } == true
        })
        let keys = slave.decoded.arrayValue?[2].objectValue?["aemp_test_receivers"]?.objectValue?.keys
        return try #require(keys?.first)
    }

    /// Accepts the node's connection and plays the Perl seed's handshake of `capture` (server side).
    static func acceptPerlSeed(
        _ listener: ScriptedListener, _ capture: ReplayCapture, _ res: ScriptedResources
    ) async throws -> ScriptedPeer {
        let peer = res.peer(try await listener.accept(within: 10))
        let g1 = ScriptedPeer.rewritePeerAddr(try #require(capture.greeting1["s2c"]), to: peer.remoteAddress)
        let hs = try await peer.handshake(ScriptedHandshakeOptions(
            greeting1: g1, greeting2: try #require(capture.greeting2["s2c"])))
        #expect(hs.nodeTokenValid)
        return peer
    }

    /// Expects what a Perl node sent when it joined, in order, up to two things the Swift node may
    /// leave out: empty `g_slave`s ("run the global service", see the known issue in
    /// `nodeFailsOverLikeRecv`) and `g_find` of a seed it is already connected to (Perl's node object
    /// for a seed has no address when the greeting arrives, so it asks; the answer changes nothing).
    @discardableResult
    static func expectJoin(
        _ expected: [[Value]], from peer: ScriptedPeer, seedIDs: Set<String>,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> [[Value]] {
        var ids = CaptureRenaming([:])
        return try await expectJoin(expected, from: peer, seedIDs: seedIDs, requestIDs: &ids, sourceLocation: sourceLocation)
    }

    /// As above; request IDs of `g_db_*` (free-form, only echoed: aemp-protocol §11.3) are learnt into `requestIDs`.
    @discardableResult
    static func expectJoin(
        _ expected: [[Value]], from peer: ScriptedPeer, seedIDs: Set<String>, requestIDs: inout CaptureRenaming,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> [[Value]] {
        var got: [[Value]] = []
        for packet in expected {
            if WireShape.isEmptySlave(packet) { continue }
            if WireShape.tag(packet) == "g_find", packet.count == 3, let id = packet[2].stringValue, seedIDs.contains(id) {
                continue
            }
            let actual = try await peer.readSkippingEmptySlave(within: 5, "\(packet)")
            got.append(actual)
            if packet.count == 4, WireShape.tag(packet).hasPrefix("g_db_"), let captured = packet[3].stringValue {
                // Any string the node picks; it must be new, and everything else must match.
                #expect(actual.count == 4 && actual[3].stringValue != nil && Array(actual.prefix(3)) == Array(packet.prefix(3)),
                        "expected \(packet) with any request id, got \(actual)", sourceLocation: sourceLocation)
                if let id = actual[3].stringValue {
                    #expect(!requestIDs.strings.values.contains(id), "request id \(id) reused", sourceLocation: sourceLocation)
                    requestIDs.strings[captured] = id
                }
                continue
            }
            #expect(WireShape.same(packet, actual), "expected \(packet) got \(actual)", sourceLocation: sourceLocation)
        }
        return got
    }

    /// Expects exactly these packets next (as a multiset: Perl's order within them is hash order).
    static func expectPackets(
        _ expected: [[Value]], from peer: ScriptedPeer, _ what: String, sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        var got: [[Value]] = []
        for _ in expected { got.append(try await peer.readSkippingEmptySlave(within: 5, what)) }
        #expect(WireShape.sameMultiset(expected, got), "\(what): expected \(expected) got \(got)", sourceLocation: sourceLocation)
    }

    /// Nothing else is pending from the node on this connection: a `time` request is answered next.
    /// Returns how many empty `g_slave`s came before the answer.
    @discardableResult
    static func barrier(_ peer: ScriptedPeer, node: String, sourceLocation: SourceLocation = #_sourceLocation) async throws -> Int {
        try await peer.send(["", "time", .string("\(node)#barrier"), "barrier"])
        var skipped = 0
        let p = try await peer.readSkippingEmptySlave(within: 5, "the barrier's time reply", skipped: &skipped)
        #expect(p.count == 3 && p[0] == "barrier" && p[1] == "barrier" && p[2].numberValue != nil,
                "expected the time reply, got \(p)", sourceLocation: sourceLocation)
        return skipped
    }

    /// The API call that makes a Perl node send `update` (`db_set` for `{key: value}`, `db_del` for `null, [keys]`).
    static func perform(_ update: [Value], on node: Node) {
        guard update.count >= 4, let family = update[2].stringValue else { return }
        if update.count == 4, let set = update[3].objectValue {
            for (key, value) in set { node.dbSet(family, key, value) }
        } else if update.count == 5, update[3].isNull {
            node.dbDel(family, (update[4].arrayValue ?? []).compactMap(\.stringValue))
        }
    }

    /// The Swift watcher's delivery equals Perl's db_mon callback for the same packet.
    static func check(
        _ got: FamilyChange, _ expected: PerlFamilyMonitor.Call, after packet: [Value],
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        #expect(got.values == expected.values && got.added == expected.added && got.changed == expected.changed
                    && got.deleted == expected.deleted,
                "after \(packet): got \(got), Perl's db_mon: \(expected)", sourceLocation: sourceLocation)
    }
}

/// Waits for `task` at most `seconds`: records an issue and throws on timeout (or if the task
/// failed).
func value<T: Sendable, E: Error>(
    of task: Task<T, E>, within seconds: Double, _ what: String, sourceLocation: SourceLocation = #_sourceLocation
) async throws -> T {
    let once = ResumeOnce()
    let result: T? = await withCheckedContinuation { (c: CheckedContinuation<T?, Never>) in
        Task {
            let v = try? await task.value
            if once.claim() { c.resume(returning: v) }
        }
        Task {
            try? await Task.sleep(nanoseconds: UInt64(seconds * 1e9))
            if once.claim() { c.resume(returning: nil) }
        }
    }
    guard let result else {
        Issue.record("timed out after \(seconds) s waiting for \(what)", sourceLocation: sourceLocation)
        throw TestTimeout(what: what)
    }
    return result
}

/// True for the first caller only.
final class ResumeOnce: Sendable {
    private let done = Locked(false)

    func claim() -> Bool {
        done.withLock { d in
            defer { d = true }
            return !d
        }
    }
}

// MARK: - Comparing packets

/// Comparisons of packets up to what Perl leaves to chance: hash order of objects, of `g_db_keys` /
/// `g_db_values` results, of deletion lists, of bursts of updates; and the clock in `time` replies.
enum WireShape {
    /// The node-port request tag (`""` for other packets).
    static func tag(_ p: [Value]) -> String {
        p.count > 1 && p[0] == "" ? (p[1].stringValue ?? "") : ""
    }

    /// `["", "g_slave"]`: "make sure you run the global service" (K 486-505).
    static func isEmptySlave(_ p: [Value]) -> Bool {
        p.count == 2 && tag(p) == "g_slave"
    }

    /// Canonical text: object keys sorted.
    static func text(_ v: Value) -> String {
        switch v {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return "\(i)"
        case .double(let d): return "\(d)d"
        case .string(let s): return s.debugDescription
        case .bigInteger(let b): return "\(b)n"
        case .codePoints(let c): return "codepoints\(c)"
        case .array(let a): return "[" + a.map(text).joined(separator: ",") + "]"
        case .object(let o):
            return "{" + o.keys.sorted().map { "\($0.debugDescription):\(text(o[$0]!))" }.joined(separator: ",") + "}"
        }
    }

    /// The packet with hash-ordered lists sorted, and a Unix time at the end replaced by a marker.
    static func normalized(_ p: [Value]) -> [Value] {
        var p = p
        func sortList(at i: Int) {
            if i < p.count, case .array(let a) = p[i] { p[i] = .array(a.sorted { text($0) < text($1) }) }
        }
        switch tag(p) {
        case "g_reply": sortList(at: 3)
        case "g_chg2", "g_upd": sortList(at: 4)
        default: break
        }
        if case .double(let t)? = p.last, t > 1e9 {
            p[p.count - 1] = "<unix time>"  // a `time` reply: the clock of whoever answered
        }
        return p
    }

    static func same(_ expected: [Value], _ actual: [Value]) -> Bool {
        normalized(expected) == normalized(actual)
    }

    static func sameMultiset(_ expected: [[Value]], _ actual: [[Value]]) -> Bool {
        let e = expected.map { text(.array(normalized($0))) }.sorted()
        let a = actual.map { text(.array(normalized($0))) }.sorted()
        return e == a
    }
}

/// Renames a capture's node IDs, port IDs and addresses to those of the live test network: whole
/// strings (also object keys), and the node part of `node#port`.
struct CaptureRenaming: Sendable {
    var strings: [String: String]

    init(_ strings: [String: String]) { self.strings = strings }

    func string(_ s: String) -> String {
        if let r = strings[s] { return r }
        if let hash = s.firstIndex(of: "#"), let node = strings[String(s[..<hash])] { return node + s[hash...] }
        return s
    }

    func value(_ v: Value) -> Value {
        switch v {
        case .string(let s): return .string(string(s))
        case .array(let a): return .array(a.map(value))
        case .object(let o):
            var out: [String: Value] = [:]
            for (k, x) in o { out[string(k)] = value(x) }
            return .object(out)
        default: return v
        }
    }

    func packet(_ v: Value) -> [Value] {
        (v.arrayValue ?? []).map(value)
    }

    /// Greeting line 1 with the sender's node ID (field 3) renamed.
    func greeting(_ line: String) -> String {
        var fields = line.split(separator: ";", omittingEmptySubsequences: false).map(String.init)
        if fields.count > 2 { fields[2] = string(fields[2]) }
        return fields.joined(separator: ";")
    }
}

/// What Perl's db_mon callback receives on a non-global node (K 890-936), to compare the Swift
/// watcher with: `g_chg1` = replacement (keys it had: changed; missing: deleted), `g_chg2` = set
/// (had: changed, else added) and the deletion list as given.
struct PerlFamilyMonitor {
    struct Call: Equatable, CustomStringConvertible {
        var values: [String: Value]
        var added: [String]
        var changed: [String]
        var deleted: [String]

        var description: String { "values \(Value.object(values)) added \(added) changed \(changed) deleted \(deleted)" }
    }

    var db: [String: Value] = [:]

    /// The callback for `packet`, or nil if it is not a change feed of `family`.
    mutating func apply(_ packet: [Value], family: String) -> Call? {
        guard packet.count >= 3, packet[2] == .string(family) else { return nil }
        var a: [String] = [], c: [String] = [], d: [String] = []
        switch WireShape.tag(packet) {
        case "g_chg1":
            let new = packet.count > 3 ? (packet[3].objectValue ?? [:]) : [:]
            for (k, v) in new {
                if db[k] != nil { c.append(k) } else { a.append(k) }
                db[k] = v
            }
            for k in db.keys where new[k] == nil {
                db[k] = nil
                d.append(k)
            }
        case "g_chg2":
            for (k, v) in packet.count > 3 ? (packet[3].objectValue ?? [:]) : [:] {
                if db[k] != nil { c.append(k) } else { a.append(k) }
                db[k] = v
            }
            d = (packet.count > 4 ? (packet[4].arrayValue ?? []) : []).compactMap(\.stringValue)
            for k in d { db[k] = nil }
        default:
            return nil
        }
        return Call(values: db, added: a.sorted(), changed: c.sorted(), deleted: d.sorted())
    }
}

extension ScriptedPeer {
    /// The next packet from the node that is neither a no-op nor an empty `g_slave`; counts the latter.
    func readSkippingEmptySlave(within seconds: Double = 5, _ what: String, skipped: inout Int) async throws -> [Value] {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while true {
            let left = (deadline - ContinuousClock.now).components
            let p = try await readMeaningfulPacket(
                within: max(Double(left.seconds) + Double(left.attoseconds) / 1e18, 0.001), what)
            if WireShape.isEmptySlave(p) {
                skipped += 1
                continue
            }
            return p
        }
    }

    func readSkippingEmptySlave(within seconds: Double = 5, _ what: String) async throws -> [Value] {
        var skipped = 0
        return try await readSkippingEmptySlave(within: seconds, what, skipped: &skipped)
    }
}

// MARK: - The Perl non-global side of a capture, against a Swift global

/// Plays, against a live Swift global, the other end of every captured connection the Perl global
/// `global` had in a scenario, in capture time order across connections: packets the other end
/// sent are sent (renamed), packets the Perl global sent are expected from the Swift global
/// (renamed, up to hash order; adjacent ones with the same tag as a multiset, being one hash walk
/// in Perl), closes are replayed. Every other node's listen address is stood in for by a listener
/// of ours. Empty `g_slave`s the Perl global sent to its own seeds are not expected.
final class GlobalSideReplay {
    enum Outcome: Equatable {
        /// The capture ended with the global still running.
        case completed
        /// The Perl global went away mid-capture (closed connections nobody else closed).
        case globalStopped
    }

    let timeline: CaptureTimeline
    let global: String
    let node: Node
    let address: String
    let renaming: CaptureRenaming
    let res: ScriptedResources
    /// Connections replayed, each with the direction the scripted end sends in.
    let selected: [String: Transcript.Direction]
    private var peers: [String: ScriptedPeer] = [:]
    private var closedByUs: Set<String> = []
    private var standIns: [String: ScriptedListener]
    /// Packets of the Swift global compared with the capture / expected to be.
    private(set) var compared = 0
    let expectedCount: Int

    private init(
        timeline: CaptureTimeline, global: String, node: Node, address: String, renaming: CaptureRenaming,
        res: ScriptedResources, selected: [String: Transcript.Direction], standIns: [String: ScriptedListener]
    ) {
        self.timeline = timeline
        self.global = global
        self.node = node
        self.address = address
        self.renaming = renaming
        self.res = res
        self.selected = selected
        self.standIns = standIns
        // Everything the global sent on replayed connections until it stopped (if it did).
        var count = 0
        var stopped = false
        var closedByPeer: Set<String> = []
        for e in timeline.entries where !stopped {
            guard let side = selected[e.connection] else { continue }
            switch e.event {
            case .packet(let dir, _, _, let decoded):
                if dir != side, !WireShape.isEmptySlave(decoded.arrayValue ?? []) { count += 1 }
            case .closed(let dir, _):
                if dir == side { closedByPeer.insert(e.connection) } else if !closedByPeer.contains(e.connection) { stopped = true }
            }
        }
        expectedCount = count
    }

    /// Starts a Swift global configured like the Perl one (its framings; seeds = its own address)
    /// and stand-ins for the other nodes' listeners (`listeners`: capture node → captured address).
    static func start(
        scenario: String, global: String, listeners: [String: String], res: ScriptedResources
    ) async throws -> GlobalSideReplay {
        let timeline = try CaptureTimeline.load(scenario)
        var selected: [String: Transcript.Direction] = [:]
        var perlFramings: [String]?
        for (id, ends) in timeline.connections {
            guard let client = ends.clientNode, let server = ends.serverNode, client != server,
                client == global || server == global,
                ends.handshake[.c2s]?.auth != nil, ends.handshake[.s2c]?.auth != nil
            else { continue }
            let globalSends: Transcript.Direction = client == global ? .c2s : .s2c
            selected[id] = globalSends.opposite
            if perlFramings == nil, let g1 = ends.handshake[globalSends]?.greeting1 {
                perlFramings = Greeting(line: Substring(g1))?.framings
            }
        }
        let framings = (perlFramings ?? ["json"]).compactMap(Framing.init(rawValue:))
        let address = "127.0.0.1:\(try freePort())"
        let node = res.node(try Node(configuration: scriptedNodeConfiguration(
            id: "gr-\(global)-%u", binds: [address], seeds: [address], framings: framings)))
        try await node.start()
        #expect(try await node.waitForMaster(timeout: stretched(.seconds(5))) == node.id, "a seed listing itself is global")
        var names = [global: node.id]
        var standIns: [String: ScriptedListener] = [:]
        for (other, captured) in listeners {
            if other == global {
                names[captured] = address
            } else {
                let l = res.listener(try await ScriptedListener.start())
                standIns[other] = l
                names[captured] = l.address
            }
        }
        return GlobalSideReplay(
            timeline: timeline, global: global, node: node, address: address, renaming: CaptureRenaming(names),
            res: res, selected: selected, standIns: standIns)
    }

    /// Replays the timeline until it ends or the Perl global stopped.
    func run() async throws -> Outcome {
        let entries = timeline.entries.filter { selected[$0.connection] != nil }
        var i = 0
        while i < entries.count {
            let e = entries[i]
            let side = selected[e.connection]!
            switch e.event {
            case .packet(let dir, let framing, let raw, let decoded):
                let peer = try await establish(e.connection)
                let packet = decoded.arrayValue ?? []
                if dir == side {
                    let renamed = renaming.packet(decoded)
                    if renamed == packet, framing == peer.inbox.read({ $0.sendFraming?.rawValue }) {
                        try await peer.write(raw)  // the captured bytes themselves (CBOR text strings and all)
                    } else {
                        try await peer.send(renamed)
                    }
                    i += 1
                    continue
                }
                if WireShape.isEmptySlave(packet) {
                    i += 1
                    continue
                }
                var group = [packet]
                var j = i + 1
                while j < entries.count, entries[j].connection == e.connection,
                    case .packet(let d, _, _, let v) = entries[j].event, d != side,
                    let p = v.arrayValue, WireShape.tag(p) == WireShape.tag(packet), !WireShape.isEmptySlave(p)
                {
                    group.append(p)
                    j += 1
                }
                let expected = group.map { renaming.packet(.array($0)) }
                var got: [[Value]] = []
                for _ in expected {
                    got.append(try await peer.readSkippingEmptySlave(
                        within: 5, "\(e.connection) at \(e.t): \(expected)"))
                }
                compared += got.count
                #expect(WireShape.sameMultiset(expected, got),
                        "\(timeline.scenario) \(e.connection) at \(e.t): Perl's \(global) sent \(expected), the Swift global \(got)")
                i = j
            case .closed(let dir, _):
                i += 1
                guard let peer = peers[e.connection], !closedByUs.contains(e.connection) else { continue }
                if dir == side {
                    try await barrier(e.connection)
                    let who = timeline.connections[e.connection]?.node(sending: side) ?? ""
                    let stillOpen = peers.keys.contains { c in
                        c != e.connection && !closedByUs.contains(c) && timeline.connections[c]?.node(sending: selected[c]!) == who
                    }
                    if !stillOpen, let standIn = standIns.removeValue(forKey: who) { await standIn.close() }
                    await peer.close()
                    closedByUs.insert(e.connection)
                } else {
                    return .globalStopped
                }
            }
        }
        return .completed
    }

    /// Checks that nothing unexpected is pending on the open connections; when the Perl global had
    /// stopped, stops the Swift global and expects every connection to close.
    func finish(_ outcome: Outcome) async throws {
        for c in peers.keys.sorted() where !closedByUs.contains(c) { try await barrier(c) }
        guard outcome == .globalStopped else { return }
        await node.shutdown()
        for c in peers.keys.sorted() where !closedByUs.contains(c) {
            _ = try await peers[c]!.waitForClose(within: 5)
        }
    }

    /// A `time` request answered next: the Swift global sent nothing the capture does not have.
    private func barrier(_ connection: String) async throws {
        guard let peer = peers[connection], let who = timeline.connections[connection]?.node(sending: selected[connection]!)
        else { return }
        try await GlobalReplayTests.barrier(peer, node: who)
    }

    /// Dials the Swift global and runs the handshake with the captured lines of the scripted end.
    private func establish(_ connection: String) async throws -> ScriptedPeer {
        if let p = peers[connection] { return p }
        let ends = try #require(timeline.connections[connection])
        let side = try #require(selected[connection])
        let ours = try #require(ends.handshake[side])
        let theirs = try #require(ends.handshake[side.opposite])
        let peer = res.peer(try await ScriptedPeer.dial(address))
        let g1 = ScriptedPeer.rewritePeerAddr(renaming.greeting(try #require(ours.greeting1)), to: address)
        let hs = try await peer.handshake(ScriptedHandshakeOptions(greeting1: g1, greeting2: try #require(ours.greeting2)))
        #expect(hs.nodeTokenValid, "\(connection): the Swift global's token")
        // Configured with the Perl global's framings, the choices are those of the capture.
        #expect(hs.ourFraming == ours.sendFraming, "\(connection): what the Perl node sends in")
        #expect(hs.nodeFraming == theirs.sendFraming, "\(connection): what the global sends in")
        peers[connection] = peer
        return peer
    }
}
