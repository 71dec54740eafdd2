import AEMP
import Foundation
import Testing

/// `Node.batch` and the hand-off of calls from other threads to the node's loop.
@Suite("node: calls from other threads")
struct BatchTests {
    @Test("calls made inside batch reach the loop only when it returns, all of them, in order")
    func batchHoldsAndKeepsOrder() async throws {
        let node = try makeNode(id: "t-batch-%u")
        try await node.start()
        defer { Task { await node.shutdown() } }
        let received = Watched<[Int]>([])
        let port = node.port { message in
            if let n = message.first?.integerValue { received.update { $0.append(Int(n)) } }
        }
        // From a thread that is not the node's loop, as the HTTP poller is.
        let thread = Thread {
            node.batch {
                for i in 0..<1000 { node.snd(port, [.int(Int64(i))]) }
                usleep(200_000)
                // Still held: nothing ran on the loop while the batch is open.
                #expect(received.read { $0.isEmpty })
            }
        }
        thread.start()
        await eventually("all 1000 messages delivered") { received.read { $0.count } == 1000 }
        #expect(received.read { $0 } == Array(0..<1000))
    }

    @Test("snd(batch:) delivers every message in order, local and remote")
    func sndBatch() async throws {
        let seed = try makeNode(id: "t-bseed-%u", binds: ["127.0.0.1:0"])
        try await seed.start()
        let address = try #require(await seed.listenAddresses().first)
        let client = try makeNode(id: "t-bclient-%u", seeds: [address])
        try await client.start()
        defer { Task { await client.shutdown(); await seed.shutdown() } }
        #expect(try await client.waitForMaster(timeout: stretched(.seconds(10))) == seed.id)
        let received = Watched<[String: [Int]]>([:])
        let remote = seed.port { m in received.update { $0["remote", default: []].append(Int(m[0].integerValue!)) } }
        let local = client.port { m in received.update { $0["local", default: []].append(Int(m[0].integerValue!)) } }
        client.snd(batch: (0..<500).flatMap { i in [(remote, [Value.int(Int64(i))]), (local, [Value.int(Int64(i))])] })
        await eventually("1000 messages") { received.read { ($0["remote"]?.count ?? 0) + ($0["local"]?.count ?? 0) } == 1000 }
        #expect(received.read { $0["remote"] } == Array(0..<500))
        #expect(received.read { $0["local"] } == Array(0..<500))
    }

    @Test("calls from several threads at once are all delivered, each thread's in its order")
    func manyThreads() async throws {
        let node = try makeNode(id: "t-threads-%u")
        try await node.start()
        defer { Task { await node.shutdown() } }
        let received = Watched<[[Int]]>(Array(repeating: [], count: 4))
        let port = node.port { message in
            guard let t = message.first?.integerValue, let i = message.last?.integerValue else { return }
            received.update { $0[Int(t)].append(Int(i)) }
        }
        for t in 0..<4 {
            Thread {
                for i in 0..<5000 {
                    if i % 100 == 0 {
                        node.batch { for j in i..<(i + 100) { node.snd(port, [.int(Int64(t)), .int(Int64(j))]) } }
                    }
                }
            }.start()
        }
        await eventually("20,000 messages delivered") { received.read { $0.map(\.count).reduce(0, +) } == 20_000 }
        for t in 0..<4 { #expect(received.read { $0[t] } == Array(0..<5000)) }
    }
}
