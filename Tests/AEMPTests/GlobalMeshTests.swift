import AEMP
import Foundation
import Testing

@Suite("Two global seeds")
struct GlobalMeshTests {
    @Test("keys set through one global are seen through the other, and vanish there when their owner leaves")
    func meshAndFailover() async throws {
        let a = "127.0.0.1:\(try freePort())"
        let b = "127.0.0.1:\(try freePort())"
        let seedA = try makeNode(id: "gm-a-%u", binds: [a], seeds: [a, b])
        let seedB = try makeNode(id: "gm-b-%u", binds: [b], seeds: [a, b])
        try await seedA.start()
        try await seedB.start()
        await eventually("globals meshed") { await seedA.upNodes().contains(seedB.id) }

        let setter = try makeNode(id: "gm-setter-%u", seeds: [a])
        let watcher = try makeNode(id: "gm-watch-%u", seeds: [b])
        try await setter.start()
        try await watcher.start()
        #expect(try await setter.waitForMaster(timeout: stretched(.seconds(10))) == seedA.id)
        #expect(try await watcher.waitForMaster(timeout: stretched(.seconds(10))) == seedB.id)

        let feed = Events<FamilyChange>()
        watcher.dbMon("mesh") { feed.yield($0) }
        var changes = feed.stream.makeAsyncIterator()
        _ = try await next(&changes, "snapshot")
        setter.dbSet("mesh", "k", "v")
        let c = try await next(&changes, "key set via the other global")
        #expect(c.added == ["k"] && c.values == ["k": "v"])
        #expect(try await watcher.dbFamily("mesh") == ["k": "v"])
        await setter.shutdown()
        let gone = try await next(&changes, "setter's key removed when it leaves")
        #expect(gone.deleted == ["k"])

        await watcher.shutdown()
        await seedB.shutdown()
        await seedA.shutdown()
    }

    @Test("globals that only know a common seed find each other through 'g and mesh; writes cross the mesh")
    func meshThroughG() async throws {
        let a = "127.0.0.1:\(try freePort())"
        let b = "127.0.0.1:\(try freePort())"
        let c = "127.0.0.1:\(try freePort())"
        let seedA = try makeNode(id: "gg-a-%u", binds: [a], seeds: [a])
        let seedB = try makeNode(id: "gg-b-%u", binds: [b], seeds: [b, a])
        let seedC = try makeNode(id: "gg-c-%u", binds: [c], seeds: [c, a])
        for n in [seedA, seedB, seedC] { try await n.start() }
        await eventually("B and C connected although neither names the other") {
            await seedB.upNodes().contains(seedC.id)
        }
        // Each global sees all three in 'g.
        for n in [seedA, seedB, seedC] {
            #expect(Set(try await n.dbKeys("'g")) == [seedA.id, seedB.id, seedC.id])
        }

        let setter = try makeNode(id: "gg-set-%u", seeds: [b])
        let watcher = try makeNode(id: "gg-watch-%u", seeds: [c])
        try await setter.start()
        try await watcher.start()
        #expect(try await setter.waitForMaster(timeout: stretched(.seconds(10))) == seedB.id)
        #expect(try await watcher.waitForMaster(timeout: stretched(.seconds(10))) == seedC.id)
        let feed = Events<FamilyChange>()
        watcher.dbMon("gg") { feed.yield($0) }
        var changes = feed.stream.makeAsyncIterator()
        _ = try await next(&changes, "snapshot")
        setter.dbSet("gg", "k", 1)
        #expect(try await next(&changes, "write through B seen through C").values == ["k": 1])

        // If the B-C connection breaks, the keepalive brings it back.
        await seedC.shutdown()
        let seedC2 = try await startTakingOver(c) { try makeNode(id: "gg-c2-%u", binds: [c], seeds: [c, a]) }
        await eventually("B reconnects to the restarted global it learnt from 'g") {
            await seedB.upNodes().contains(seedC2.id)
        }
        for n in [setter, watcher, seedC2, seedB, seedA] { await n.shutdown() }
    }
}
