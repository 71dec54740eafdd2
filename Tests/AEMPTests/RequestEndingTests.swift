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

    /// A masterless node with a query and a waitForMaster waiting in it (each for 10 minutes).
    static func twoWaiting() async throws -> (Node, Task<[String: Value], any Error>, Task<String, any Error>) {
        let node = try await masterless()
        let query = Task<[String: Value], any Error> { try await node.dbFamily("f", timeout: .seconds(600)) }
        let master = Task<String, any Error> { try await node.waitForMaster(timeout: stretched(.seconds(600))) }
        await eventually("both wait in the node") { await waiting(node) == (2, 1) }
        return (node, query, master)
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
        let (node, query, master) = try await Self.twoWaiting()
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
        let (node, query, master) = try await Self.twoWaiting()
        await node.shutdown()
        await #expect(throws: RequestError.shutDown) { try await query.value }
        await #expect(throws: RequestError.shutDown) { try await master.value }
        await #expect(throws: RequestError.shutDown) { try await node.dbFamily("f", timeout: .seconds(600)) }
        await #expect(throws: RequestError.shutDown) { try await node.waitForMaster(timeout: stretched(.seconds(600))) }
    }

    @Test("waitForMaster answers at once when attached, throws timedOut when no master comes")
    func waitForMaster() async throws {
        let seed = try makeNode(id: "rq-seed-%u", binds: ["127.0.0.1:0"])
        try await seed.start()
        let address = try #require(await seed.listenAddresses().first)
        let node = try makeNode(id: "rq-node-%u", seeds: [address])
        try await node.start()
        #expect(try await node.waitForMaster(timeout: stretched(.seconds(10))) == seed.id)
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

/// Issue 16: `cal` in the library (Perl's `cal`), used by the gateway and the aemp tool: it ends
/// once, however it ends, and releases its reply port, monitor and timer.
@Suite("cal", .timeLimit(.minutes(1)))
struct CalTests {
    /// A seed with an echo port (answers every message to the port ID in its last element) and
    /// a silent port, and a private node attached to it.
    static func network() async throws -> (seed: Node, node: Node, echo: PortID, silent: PortID) {
        let seed = try makeNode(id: "cal-seed-%u", binds: ["127.0.0.1:0"])
        try await seed.start()
        let echo = seed.port { message in
            if let reply = message.last?.stringValue.flatMap(PortID.init) { seed.snd(reply, Array(message.dropLast())) }
        }
        let silent = seed.port { _ in }
        let node = try makeNode(id: "cal-node-%u", seeds: [try #require(await seed.listenAddresses().first)])
        try await node.start()
        _ = try await node.waitForMaster(timeout: stretched(.seconds(10)))
        return (seed, node, echo, silent)
    }

    /// Monitors this node holds on ports of `peer` (not on the node itself, which the node may
    /// watch for its own reasons), and calls still alive.
    static func held(_ node: Node, on peer: String) async -> (monitors: Int, calls: Int) {
        let monitors = await node.withKernel { k in
            k.peers[peer]?.monitors.filter { !$0.key.isEmpty }.values.reduce(0) { $0 + $1.count } ?? 0
        } ?? -1
        return (monitors, node.liveCalls.withLock { $0.count })
    }

    @Test("the first reply answers; a dead target is portDied with its reason; silence is timedOut; each leaves no monitor and no call behind")
    func endings() async throws {
        let (seed, node, echo, silent) = try await Self.network()
        #expect(try await node.cal(echo, ["hello", 42]) == ["hello", 42])
        #expect(try await node.cal(echo, []) == [])

        let gone = PortID(node: seed.id, name: "no-such-port")
        do {
            _ = try await node.cal(gone, ["x"], timeout: .seconds(10))
            Issue.record("a call to a port that does not exist answered")
        } catch {
            guard case .portDied = error else { Issue.record("expected portDied, got \(error)"); return }
        }
        await #expect(throws: RequestError.timedOut(seconds: 0.3)) { try await node.cal(silent, ["x"], timeout: .milliseconds(300)) }
        await eventually("the monitors are gone") { await Self.held(node, on: seed.id) == (0, 0) }
        let held = await Self.held(node, on: seed.id)
        #expect(held == (0, 0), "monitors and calls still held: \(held)")

        // The reply port is gone too: a late answer to it is a message to a dead port.
        let late = Locked<PortID?>(nil)
        let watcher = seed.port { message in late.withLock { $0 = message.last?.stringValue.flatMap(PortID.init) } }
        await #expect(throws: RequestError.timedOut(seconds: 0.2)) { try await node.cal(watcher, ["x"], timeout: .milliseconds(200)) }
        await eventually("the call reached the seed") { late.withLock { $0 } != nil }
        let reply = try #require(late.withLock { $0 })
        let died = Locked<[Value]?>(nil)
        seed.mon(reply) { reason in died.withLock { $0 = reason } }
        await eventually("the reply port of an ended call is dead") { died.withLock { $0 } != nil }
        #expect(reply.name.hasPrefix("cal-") && reply.name.count >= 30, "an unguessable reply port: \(reply)")

        await node.shutdown()
        await seed.shutdown()
    }

    @Test("cancelling the waiting task or shutting the node down ends a call at once and releases it")
    func cancelAndShutdown() async throws {
        let (seed, node, _, silent) = try await Self.network()
        let cancelled = Task { try await node.cal(silent, ["x"], timeout: .seconds(600)) }
        await eventually("the call is in flight") { await Self.held(node, on: seed.id) == (1, 1) }
        cancelled.cancel()
        await #expect(throws: RequestError.cancelled) { try await cancelled.value }
        await eventually("nothing held") { await Self.held(node, on: seed.id) == (0, 0) }

        let ended = Locked<Result<[Value], RequestError>?>(nil)
        let call = try #require(node.cal(silent, ["y"], timeout: .seconds(600)) { r in ended.withLock { $0 = r } })
        #expect(node.cal(silent, ["z"], replyName: call.replyPort.name) { _ in } == nil, "a reply name in use is refused")
        await node.shutdown()
        #expect(ended.withLock { $0 } == .failure(.shutDown))
        await #expect(throws: RequestError.shutDown) { try await node.cal(silent, ["w"]) }
        await seed.shutdown()
    }
}
