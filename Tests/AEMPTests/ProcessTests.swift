import AEMP
import Foundation
import Testing

/// Nodes in separate processes: the `aemp` executable as a seed, killed for real.
@Suite("Separate processes")
struct ProcessTests {
    @Test("killing a node's process fires monitors with transport_error and a node-down event")
    func killedProcess() async throws {
        let child = try ChildProcess(
            "aemp", ["seed", "--bind", "127.0.0.1:0", "--secret", testSecret, "--node-id", "proc-seed-%u"])
        defer { child.stop() }
        let banner = try await child.readLine()
        // "node <id> listening on <addr>"
        let words = banner.split(separator: " ")
        try #require(words.count == 5 && words[0] == "node", "unexpected banner \(banner)")
        let seedID = String(words[1])
        let address = String(words[4])

        let node = try makeNode(id: "proc-client-%u", seeds: [address])
        try await node.start()
        #expect(try await node.waitForMaster(timeout: stretched(.seconds(10))) == seedID)

        let events = Events<String>()
        node.monNodes { id, up in events.yield("\(up ? "up" : "down") \(id)") }
        let monitor = Events<[Value]>()
        node.mon(PortID(node: seedID, name: "")) { monitor.yield($0) }
        // The node port answers `time`: proves the connection carries traffic before the kill.
        let (reply, inbox) = node.mailbox()
        var replies = inbox.makeAsyncIterator()
        node.snd(PortID(node: seedID, name: ""), ["time", .string(reply.description), "t"])
        let t = try await next(&replies, "time reply")
        #expect(t.first == "t")
        #expect((t.last?.numberValue ?? 0) > 1_700_000_000)

        child.signal(SIGKILL)
        var m = monitor.stream.makeAsyncIterator()
        let reason = try await next(&m, "monitor after SIGKILL")
        #expect(reason.first == "transport_error")
        #expect(reason.dropFirst().first == .string(seedID))
        var e = events.stream.makeAsyncIterator()
        while true {
            let ev = try await next(&e, "node down event")
            if ev == "down \(seedID)" { break }
        }
        await node.shutdown()
    }
}
