import AEMP
import NIOCore
import Testing

/// Swift nodes talking to each other over real TCP on 127.0.0.1.
@Suite("Swift node network")
struct NodeNetworkTests {
    @Test("a private node attaches to a seed; snd works both ways; tagged rcv")
    func privateNodeAndSeed() async throws {
        let seed = try makeNode(id: "t-seed-%u", binds: ["127.0.0.1:0"])
        try await seed.start()
        let seedAddress = try #require(await seed.listenAddresses().first)
        let client = try makeNode(id: "t-priv-%u", seeds: [seedAddress])
        try await client.start()
        defer { Task { await client.shutdown(); await seed.shutdown() } }

        let master = await client.waitForMaster(timeout: .seconds(10))
        #expect(master == seed.id)

        let (seedPort, seedInbox) = seed.mailbox()
        var seedMessages = seedInbox.makeAsyncIterator()
        let (clientPort, clientInbox) = client.mailbox()
        var clientMessages = clientInbox.makeAsyncIterator()

        client.snd(seedPort, ["hello", 42, -7, 1.5, "ünïcödé ✓", [1, 2, 3], ["a": 1], nil, .string(clientPort.description)])
        let got = try await next(&seedMessages)
        #expect(got == ["hello", 42, -7, 1.5, "ünïcödé ✓", [1, 2, 3], ["a": 1], nil, .string(clientPort.description)])

        // The seed answers over the connection the private node opened.
        seed.snd(clientPort, ["pong"])
        #expect(try await next(&clientMessages) == ["pong"])

        // Tagged handler receives the message without its tag.
        let (taggedStream, taggedCont) = AsyncStream<[Value]>.makeStream()
        var tagged = taggedStream.makeAsyncIterator()
        let tport = seed.port { _ in taggedCont.yield(["default"]) }
        seed.rcv(tport, tag: "ping") { msg in taggedCont.yield(msg) }
        client.snd(tport, ["ping", "x", 1])
        #expect(try await next(&tagged) == ["x", 1])
        client.snd(tport, ["other"])
        #expect(try await next(&tagged) == ["default"])
    }
}
