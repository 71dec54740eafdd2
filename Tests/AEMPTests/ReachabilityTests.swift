import AEMP
import Testing

/// A private node cannot be dialed; it stays reachable by keeping connections to public nodes.
@Suite("Reachability of a private node", .timeLimit(.minutes(1)))
struct ReachabilityTests {
    @Test("keepConnectedToPublicNodes: public nodes, also ones that join later, can snd to the private node; reconnects after a drop")
    func publicNodesReachPrivateNode() async throws {
        let seed = try makeNode(id: "rc-seed-%u", binds: ["127.0.0.1:0"])
        try await seed.start()
        let address = try #require(await seed.listenAddresses().first)
        let early = try makeNode(id: "rc-early-%u", binds: ["127.0.0.1:0"], seeds: [address])
        try await early.start()
        #expect(try await early.waitForMaster(timeout: stretched(.seconds(10))) == seed.id)

        let priv = try makeNode(id: "rc-priv-%u", seeds: [address])
        try await priv.start()
        #expect(try await priv.waitForMaster(timeout: stretched(.seconds(10))) == seed.id)
        priv.keepConnectedToPublicNodes()
        let (inbox, messages) = priv.mailbox()
        var received = messages.makeAsyncIterator()

        await eventually("the private node connected to the public node that was already there") {
            await priv.upNodes().contains(early.id)
        }
        early.snd(inbox, ["from early"])
        #expect(try await next(&received, "message from the early node") == ["from early"])

        let late = try makeNode(id: "rc-late-%u", binds: ["127.0.0.1:0"], seeds: [address])
        try await late.start()
        await eventually("the private node connected to a public node that joined later") {
            await priv.upNodes().contains(late.id)
        }
        late.snd(inbox, ["from late"])
        #expect(try await next(&received, "message from the late node") == ["from late"])

        // The late node restarts under the same ID at a new address: the private node reconnects.
        let lateID = late.id
        await late.shutdown()
        await eventually("the private node noticed the late node leave") { await !priv.upNodes().contains(lateID) }
        let again = try makeNode(id: lateID, binds: ["127.0.0.1:0"], seeds: [address])
        try await again.start()
        await eventually("the private node reconnected to the restarted node") {
            await priv.upNodes().contains(lateID)
        }
        again.snd(inbox, ["from the restarted node"])
        #expect(try await next(&received, "message after the restart") == ["from the restarted node"])

        for n in [again, priv, early, seed] { await n.shutdown() }
    }
}
