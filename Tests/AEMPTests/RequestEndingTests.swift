@testable import AEMP
import AEMPTestSupport
import NIOCore
import Testing

/// Issue 16: database queries and `waitForMaster` end, always: with the answer, at their timeout,
/// when the waiting task is cancelled, or when the node shuts down, and leave nothing waiting in
/// the node. (Before, a query without a master waited forever, even after its task was
/// cancelled, and `waitForMaster` could only time out.)
@Suite("Requests that end", .timeLimit(.minutes(1)))
struct RequestEndingTests {
    /// A node whose only seed never answers (nothing listens there): it never has a master.
    static func masterless() async throws -> Node {
        let node = try makeNode(id: "masterless-%u", seeds: ["127.0.0.1:\(try freePort())"])
        try await node.start()
        return node
    }

    static func waiting(_ node: Node) async -> (queries: Int, masterWaits: Int) {
        await node.withKernel { k in (k.pendingQueries.count + k.queryIDs.count, k.masterWaits.count) } ?? (-1, -1)
    }

    @Test("a query without a master throws timedOut at its timeout and leaves nothing waiting")
    func queryTimesOut() async throws {
        let node = try await Self.masterless()
        let started = ContinuousClock.now
        await #expect(throws: RequestError.timedOut(seconds: 0.3)) { try await node.dbFamily("f", timeout: .milliseconds(300)) }
        await #expect(throws: RequestError.timedOut(seconds: 0.2)) { try await node.dbKeys("f", timeout: .milliseconds(200)) }
        await #expect(throws: RequestError.timedOut(seconds: 0.2)) { try await node.dbValues("f", timeout: .milliseconds(200)) }
        #expect(ContinuousClock.now - started >= .milliseconds(700))
        #expect(await Self.waiting(node) == (0, 0))
        await node.shutdown()
    }

    @Test("cancelling the task of a waiting query or waitForMaster ends it at once with cancelled, before or after it reached the node")
    func cancellation() async throws {
        let node = try await Self.masterless()
        let query = Task { try await node.dbFamily("f", timeout: .seconds(600)) }
        let master = Task { try await node.waitForMaster(timeout: .seconds(600)) }
        await eventually("both wait in the node") { await Self.waiting(node) == (2, 1) }
        query.cancel()
        master.cancel()
        // (A request that did not end would hold the test until the suite's time limit.)
        await #expect(throws: RequestError.cancelled) { try await query.value }
        await #expect(throws: RequestError.cancelled) { try await master.value }
        #expect(await Self.waiting(node) == (0, 0))

        // Cancelled before it was handed to the node's loop.
        let early = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await node.dbKeys("f", timeout: .seconds(600))
        }
        await #expect(throws: RequestError.cancelled) { try await early.value }
        #expect(await Self.waiting(node) == (0, 0))
        await node.shutdown()
    }

    @Test("shutting the node down ends waiting queries and waitForMaster with shutDown; later ones fail at once")
    func shutdown() async throws {
        let node = try await Self.masterless()
        let query = Task { try await node.dbKeys("f", timeout: .seconds(600)) }
        let master = Task { try await node.waitForMaster(timeout: .seconds(600)) }
        await eventually("both wait in the node") { await Self.waiting(node) == (2, 1) }
        await node.shutdown()
        await #expect(throws: RequestError.shutDown) { try await query.value }
        await #expect(throws: RequestError.shutDown) { try await master.value }
        await #expect(throws: RequestError.shutDown) { try await node.dbFamily("f", timeout: .seconds(600)) }
        await #expect(throws: RequestError.shutDown) { try await node.waitForMaster(timeout: .seconds(600)) }
    }

    @Test("waitForMaster answers at once when attached, throws timedOut when no master comes")
    func waitForMaster() async throws {
        let seed = try makeNode(id: "rq-seed-%u", binds: ["127.0.0.1:0"])
        try await seed.start()
        let address = try #require(await seed.listenAddresses().first)
        let node = try makeNode(id: "rq-node-%u", seeds: [address])
        try await node.start()
        #expect(try await node.waitForMaster(timeout: .seconds(10)) == seed.id)
        #expect(try await node.waitForMaster(timeout: .milliseconds(1)) == seed.id)
        #expect(try await node.dbKeys("nothing-here") == [])

        let lonely = try await Self.masterless()
        await #expect(throws: RequestError.timedOut(seconds: 0.2)) { try await lonely.waitForMaster(timeout: .milliseconds(200)) }
        #expect(await Self.waiting(lonely) == (0, 0))
        await lonely.shutdown()
        await node.shutdown()
        await seed.shutdown()
    }
}
