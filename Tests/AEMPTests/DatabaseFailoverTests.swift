import AEMP
import Foundation
import Testing

/// Every delivery of a `db_mon` watcher, kept for checks over the whole history.
final class FeedLog: Sendable {
    private let changes = Locked<[FamilyChange]>([])

    func append(_ change: FamilyChange) { changes.withLock { $0.append(change) } }

    var all: [FamilyChange] { changes.withLock { $0 } }

    /// The family as the watcher sees it now (nil before the first delivery).
    var current: [String: Value]? { changes.withLock { $0.last?.values } }

    /// How often `key` was reported deleted since delivery number `start`.
    func deletions(of key: String, since start: Int = 0) -> Int {
        changes.withLock { $0.dropFirst(start).filter { $0.deleted.contains(key) }.count }
    }
}

/// Two `aemp seed` processes as globals, a public and a private node; one seed is killed for real.
@Suite("Database across a global failover", .timeLimit(.minutes(2)))
struct DatabaseFailoverTests {
    @Test("killing one global seed: nodes re-attach and re-register, nothing is lost, the dead global's keys are deleted once")
    func killGlobalSeed() async throws {
        let seeds = try await TwoSeeds.start("fdb")
        defer { seeds.stop() }
        let (a, b, seedA, seedB, idA, idB) = (seeds.a, seeds.b, seeds.seedA, seeds.seedB, seeds.idA, seeds.idB)

        // The public node knows both seeds; whichever is its master is the one that dies.
        let pub = try makeNode(id: "fdb-pub-%u", binds: ["127.0.0.1:0"], seeds: [a, b])
        try await pub.start()
        let dyingID = try await pub.waitForMaster(timeout: stretched(.seconds(10)))
        let (dying, survivorID, survivorAddress) = dyingID == idA ? (seedA, idB, b) : (seedB, idA, a)
        await eventually("the two globals meshed and pub reaches both") {
            let up = await pub.upNodes()
            return up.contains(idA) && up.contains(idB)
        }
        // The private node is a slave of the survivor: it watches through a global that stays.
        let priv = try makeNode(id: "fdb-priv-%u", seeds: [survivorAddress])
        try await priv.start()
        #expect(try await priv.waitForMaster(timeout: stretched(.seconds(10))) == survivorID)

        let pubFeed = FeedLog(), privFeed = FeedLog(), pubGlobals = FeedLog(), privGlobals = FeedLog()
        pub.dbMon("fdb") { pubFeed.append($0) }
        priv.dbMon("fdb") { privFeed.append($0) }
        pub.dbMon("'g") { pubGlobals.append($0) }
        priv.dbMon("'g") { privGlobals.append($0) }

        pub.dbSet("fdb", "p1", "from pub")
        priv.dbSet("fdb", "q1", ["n": 1])
        let before: [String: Value] = ["p1": "from pub", "q1": ["n": 1]]
        await eventually("both watchers see both keys") {
            pubFeed.current == before && privFeed.current == before
        }
        await eventually("both watchers see both globals in 'g") {
            pubGlobals.current?.keys.sorted() == [idA, idB].sorted()
                && privGlobals.current?.keys.sorted() == [idA, idB].sorted()
        }
        let mark = (pub: pubFeed.all.count, priv: privFeed.all.count)

        dying.signal(SIGKILL)
        pub.dbSet("fdb", "p-gap", "set while the master was dying")
        await eventually("pub re-attached to the surviving global") { await pub.master() == survivorID }
        pub.dbSet("fdb", "p2", 2)
        priv.dbSet("fdb", "q2", 2)

        let after: [String: Value] = [
            "p1": "from pub", "q1": ["n": 1], "p-gap": "set while the master was dying", "p2": 2, "q2": 2,
        ]
        await eventually("every key, old and new, is seen by both watchers") {
            pubFeed.current == after && privFeed.current == after
        }
        // The dead global's own entry goes, once, after the survivor's grace period.
        await eventually(within: 15, "the dead global leaves 'g on both watchers") {
            pubGlobals.current?.keys.sorted() == [survivorID] && privGlobals.current?.keys.sorted() == [survivorID]
        }
        #expect(pubGlobals.deletions(of: dyingID) == 1)
        #expect(privGlobals.deletions(of: dyingID) == 1)

        // Nothing the living nodes set ever vanished, on either side of the failover.
        for key in after.keys {
            #expect(pubFeed.deletions(of: key, since: mark.pub) == 0, "pub saw \(key) deleted")
            #expect(privFeed.deletions(of: key, since: mark.priv) == 0, "priv saw \(key) deleted")
        }
        #expect(try await pub.dbFamily("fdb") == after)
        #expect(try await priv.dbFamily("fdb") == after)

        // After the failover, a node that leaves still takes its keys with it, everywhere.
        await pub.shutdown()
        await eventually("pub's keys are removed from priv's view") {
            privFeed.current == ["q1": ["n": 1], "q2": 2]
        }
        #expect(try await priv.dbKeys("fdb") == ["q1", "q2"])
        await priv.shutdown()
    }
}

/// Two `aemp seed` globals, a public node (slave of one), a private node (slave of the other) and
/// a node in its own process (`aemp db set`), killed with SIGKILL.
@Suite("Database on two global seeds", .timeLimit(.minutes(2)))
struct TwoGlobalDatabaseTests {
    @Test("db_set/db_del/db_reg+kil cross the two globals; a killed node process's keys leave every view")
    func acrossGlobals() async throws {
        let seeds = try await TwoSeeds.start("tg")
        defer { seeds.stop() }
        let (a, b, idA, idB) = (seeds.a, seeds.b, seeds.idA, seeds.idB)

        let pub = try makeNode(id: "tg-pub-%u", binds: ["127.0.0.1:0"], seeds: [a])
        let priv = try makeNode(id: "tg-priv-%u", seeds: [b])
        try await pub.start()
        try await priv.start()
        #expect(try await pub.waitForMaster(timeout: stretched(.seconds(10))) == idA)
        #expect(try await priv.waitForMaster(timeout: stretched(.seconds(10))) == idB)
        let pubFeed = FeedLog(), privFeed = FeedLog()
        pub.dbMon("tg") { pubFeed.append($0) }
        priv.dbMon("tg") { privFeed.append($0) }
        await eventually("both watchers have their first snapshot") { pubFeed.current != nil && privFeed.current != nil }

        // db_set through A is seen on B's side, by db_mon and by db_family; db_del likewise.
        pub.dbSet("tg", "k", ["set": "by pub"])
        await eventually("priv watches pub's key arrive") { privFeed.current == ["k": ["set": "by pub"]] }
        #expect(try await priv.dbFamily("tg") == ["k": ["set": "by pub"]])
        pub.dbDel("tg", ["k"])
        await eventually("priv watches pub's key go") { privFeed.current == [:] }
        #expect(privFeed.deletions(of: "k") == 1)
        #expect(try await priv.dbKeys("tg") == [])

        // db_reg through B, kil of the port: gone on A's side too.
        let port = priv.port { _ in }
        priv.dbReg("tg", port: port, "registered")
        await eventually("pub watches the registration arrive") { pubFeed.current == [port.description: "registered"] }
        priv.kil(port)
        await eventually("pub watches the registration go") { pubFeed.current == [:] }
        #expect(try await pub.dbFamily("tg") == [:])

        // A node in its own process sets a key through A, and is killed.
        let holder = try ChildProcess(
            "aemp", ["db", "set", "--seeds", a, "--secret", testSecret, "tg", "held", #"{"by":"a process"}"#])
        defer { holder.stop() }
        let confirmation = try JSONCodec.decode(try await holder.readLine(within: 20))
        #expect(confirmation.objectValue?["key"] == "held")
        await eventually("both watchers see the process's key") {
            pubFeed.current == ["held": ["by": "a process"]] && privFeed.current == ["held": ["by": "a process"]]
        }
        holder.signal(SIGKILL)
        await eventually("the killed process's key leaves both views") { pubFeed.current == [:] && privFeed.current == [:] }
        #expect(pubFeed.deletions(of: "held") == 1 && privFeed.deletions(of: "held") == 1)
        #expect(try await pub.dbFamily("tg") == [:])
        #expect(try await priv.dbFamily("tg") == [:])

        await priv.shutdown()
        await pub.shutdown()
    }
}

/// Two `aemp seed` processes on fixed loopback ports, each the other's seed: two meshed globals.
struct TwoSeeds {
    let a: String, b: String
    let seedA: ChildProcess, seedB: ChildProcess
    let idA: String, idB: String

    static func start(_ prefix: String) async throws -> TwoSeeds {
        let a = "127.0.0.1:\(try freePort())"
        let b = "127.0.0.1:\(try freePort())"
        let seedA = try ChildProcess(
            "aemp", ["seed", "--bind", a, "--seeds", b, "--secret", testSecret, "--node-id", "\(prefix)-a-%u"])
        let seedB: ChildProcess
        do {
            seedB = try ChildProcess(
                "aemp", ["seed", "--bind", b, "--seeds", a, "--secret", testSecret, "--node-id", "\(prefix)-b-%u"])
        } catch {
            seedA.stop()
            throw error
        }
        do {
            let idA = try bannerNodeID(try await seedA.readLine())
            let idB = try bannerNodeID(try await seedB.readLine())
            return TwoSeeds(a: a, b: b, seedA: seedA, seedB: seedB, idA: idA, idB: idB)
        } catch {
            seedA.stop()
            seedB.stop()
            throw error
        }
    }

    func stop() {
        seedA.stop()
        seedB.stop()
    }
}

/// The node ID from `aemp seed`'s banner `node <id> listening on <addresses>`.
func bannerNodeID(_ banner: String) throws -> String {
    let words = banner.split(separator: " ")
    guard words.count == 5, words[0] == "node", words[2] == "listening" else {
        throw BannerError(line: banner)
    }
    return String(words[1])
}

struct BannerError: Error, CustomStringConvertible {
    let line: String
    var description: String { "unexpected banner line: \(line)" }
}
