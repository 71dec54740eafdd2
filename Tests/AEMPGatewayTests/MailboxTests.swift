import AEMP
import Foundation
import Testing

/// `/v1/ports`: mailboxes that mesh nodes send to and web clients read by long-poll or SSE.
@Suite("gateway: mailboxes", .serialized, .timeLimit(.minutes(3)))
struct MailboxTests {

    @Test("POST /v1/ports creates a mailbox on the gateway's node, with defaults or the given ttl and max_queue")
    func create() async throws {
        try await GatewayNetwork.with { net in
            let r = try await net.http.request("POST", "/v1/ports")
            #expect(r.status == 201, "\(r)")
            let o = try #require(r.json?.objectValue)
            let name = try #require(o["name"]?.stringValue)
            #expect(o["port"] == .string("\(net.gateway.nodeID)#\(name)"))
            #expect(o["ttl"] == 300 && o["max_queue"] == 1000, "\(r)")
            #expect(r.header("Location") == "/v1/ports/\(name)")
            #expect(name.count >= 22, "mailbox names must be unguessable: \(name)")

            let other = try await net.createMailbox()
            #expect(other.name != name)

            let info = try await net.get("/v1/ports/\(name)")
            #expect(info.status == 200, "\(info)")
            #expect(info.json?.objectValue?["port"] == o["port"] && info.json?.objectValue?["max_queue"] == 1000, "\(info)")

            let custom = try await net.post("/v1/ports", json: ["ttl": 5, "max_queue": 3])
            #expect(custom.status == 201, "\(custom)")
            #expect(custom.json?.objectValue?["ttl"] == 5 && custom.json?.objectValue?["max_queue"] == 3, "\(custom)")

            for bad: Value in [["ttl": 0], ["ttl": 86_401], ["ttl": "5"], ["ttl": 1.5], ["max_queue": 0], ["max_queue": "many"], [1], "x"] {
                expectProblem(try await net.post("/v1/ports", json: bad), 422, "invalid_request")
            }
            let broken = try await net.http.request("POST", "/v1/ports", headers: [("Content-Type", "application/json")], body: Array("{\"ttl\":".utf8))
            expectProblem(broken, 400, "malformed_json")
        }
    }

    @Test("a node's snd reaches a waiting long-poll and an SSE client of the mailbox")
    func nodeSendReachesClients() async throws {
        try await GatewayNetwork.with { net in
            let box = try await net.createMailbox()
            let sse = try await net.sse("/v1/ports/\(box.name)/messages")
            #expect(sse.status == 200)
            #expect(sse.header("Content-Type")?.hasPrefix("text/event-stream") == true)

            // Nothing there: a long-poll waits its time and answers empty.
            let started = ContinuousClock.now
            let idle = try await net.poll(box.name, query: "wait=1")
            #expect(ContinuousClock.now - started >= .milliseconds(900), "an empty long-poll must wait")
            #expect(idle.status == 200 && GatewayNetwork.messages(idle).isEmpty, "\(idle)")

            // A long-poll parked on a second connection is answered by the node's message.
            let poller = try await net.client()
            let waiting = Task { try await poller.request("GET", "/v1/ports/\(box.name)/messages?wait=20", timeout: 25) }
            try await Task.sleep(nanoseconds: 300_000_000)  // lets the poll park first (either order is correct)
            let sentAt = ContinuousClock.now
            net.node.snd(box.port, ["hello", 1, ["k": "v"], 2.5, nil])
            let r = try await waiting.value
            #expect(ContinuousClock.now - sentAt < .seconds(10), "the parked poll was not woken by the message")
            #expect(r.status == 200, "\(r)")
            let first = try #require(r.json?.objectValue?["messages"]?.arrayValue?.first?.objectValue, "\(r)")
            #expect(first["type"] == "message" && first["seq"] == 1, "\(r)")
            #expect(first["message"] == ["hello", 1, ["k": "v"], 2.5, nil])
            #expect(r.json?.objectValue?["last"] == 1 && r.header("X-AEMP-Last") == "1", "\(r)")

            let e = try await sse.next()
            #expect(e.event == "message" && e.id == "1", "\(e)")
            #expect(e.json?.objectValue?["message"] == ["hello", 1, ["k": "v"], 2.5, nil], "\(e)")

            net.node.snd(box.port, ["second"])
            let e2 = try await sse.next()
            #expect(e2.id == "2" && e2.json?.objectValue?["message"] == ["second"], "\(e2)")
        }
    }

    @Test("a node that joined after the gateway reaches a mailbox: the gateway connects to every public node")
    func lateNodeReachesMailbox() async throws {
        try await GatewayNetwork.with { net in
            let box = try await net.createMailbox()
            let sse = try await net.sse("/v1/ports/\(box.name)/messages")
            let late = try await net.startNode(id: "gw-latecomer-%u")
            try await net.gateway.waitForConnection(to: late.id)
            late.snd(box.port, ["from the latecomer", .string(late.id)])
            let e = try await sse.next()
            #expect(e.json?.objectValue?["message"] == ["from the latecomer", .string(late.id)], "\(e)")
            let r = try await net.poll(box.name, query: "wait=10")
            #expect(GatewayNetwork.messages(r) == [["from the latecomer", .string(late.id)]], "\(r)")
        }
    }

    @Test("after= acknowledges: a poll retried without acknowledgement loses nothing, acknowledged messages are gone")
    func acknowledgement() async throws {
        try await GatewayNetwork.with { net in
            let box = try await net.createMailbox()
            for i in 1...3 { net.node.snd(box.port, ["m", .int(Int64(i))]) }
            try await waitForMessages(net, box.name, count: 3)

            let page = try await net.poll(box.name, query: "wait=0&max=2")
            #expect(GatewayNetwork.messages(page) == [["m", 1], ["m", 2]], "\(page)")
            #expect(page.json?.objectValue?["last"] == 2)
            // The answer was "lost": asking again without acknowledging gets the same messages.
            let retry = try await net.poll(box.name, query: "wait=0&max=2")
            #expect(GatewayNetwork.messages(retry) == [["m", 1], ["m", 2]], "\(retry)")
            // Acknowledging 2 gets the rest.
            let rest = try await net.poll(box.name, query: "after=2&wait=0")
            #expect(GatewayNetwork.messages(rest) == [["m", 3]], "\(rest)")
            #expect(rest.json?.objectValue?["messages"]?.arrayValue?.first?.objectValue?["seq"] == 3)
            // Now 1 and 2 are gone for good; 3 stays until acknowledged.
            let again = try await net.poll(box.name, query: "wait=0")
            #expect(GatewayNetwork.messages(again) == [["m", 3]], "\(again)")
            let done = try await net.poll(box.name, query: "after=3&wait=0")
            #expect(GatewayNetwork.messages(done).isEmpty && done.json?.objectValue?["last"] == 3, "\(done)")
            // A parked poll after=3 is answered by message 4.
            let waiting = Task { try await net.poll(box.name, query: "after=3&wait=20", timeout: 25) }
            net.node.snd(box.port, ["m", 4])
            #expect(GatewayNetwork.messages(try await waiting.value) == [["m", 4]])

            for bad in ["after=x", "after=-1", "after=1.5", "wait=x", "wait=-1", "wait=1.5", "max=0", "max=1001"] {
                expectProblem(try await net.poll(box.name, query: bad), 422, "invalid_request")
            }
            // A wait above the cap is lowered to it, not refused (answered at once: 4 is there).
            let capped = try await net.poll(box.name, query: "after=3&wait=100000")
            #expect(GatewayNetwork.messages(capped) == [["m", 4]], "\(capped)")

            // Acknowledging beyond what was handed out loses nothing that was not seen.
            try await sendAndWait(net, box, ["m", 5])
            let bogus = try await net.poll(box.name, query: "after=99&wait=0")
            #expect(GatewayNetwork.messages(bogus).isEmpty && bogus.json?.objectValue?["last"] == 4, "\(bogus)")
            let kept = try await net.poll(box.name, query: "after=4&wait=0")
            #expect(GatewayNetwork.messages(kept) == [["m", 5]], "\(kept)")
        }
    }

    @Test("SSE resumes after Last-Event-ID (header or query) without losing or repeating messages")
    func lastEventIDResume() async throws {
        try await GatewayNetwork.with { net in
            let box = try await net.createMailbox()
            let sse = try await net.sse("/v1/ports/\(box.name)/messages")
            for i in 1...3 { net.node.snd(box.port, [.int(Int64(i))]) }
            let first = try await sse.next(3)
            #expect(first.map(\.id) == ["1", "2", "3"], "\(first)")
            await sse.close()

            // The client saw only event 1 before it lost the connection.
            let resumed = try await net.sse("/v1/ports/\(box.name)/messages", headers: [("Last-Event-ID", "1")])
            let replay = try await resumed.next(2)
            #expect(replay.map(\.id) == ["2", "3"], "\(replay)")
            #expect(replay.compactMap { $0.json?.objectValue?["message"] } == [[2], [3]])
            net.node.snd(box.port, [4])
            #expect(try await resumed.next().id == "4")
            await resumed.close()

            // The query form, from the newest event: only new messages follow.
            let tail = try await net.sse("/v1/ports/\(box.name)/messages?last_event_id=4")
            net.node.snd(box.port, [5])
            let e = try await tail.next()
            #expect(e.id == "5" && e.json?.objectValue?["message"] == [5], "\(e)")
        }
    }

    @Test("a full queue drops the oldest messages and says so (dropped event and counter)")
    func overflow() async throws {
        try await GatewayNetwork.with { net in
            let box = try await net.createMailbox(["max_queue": 3])
            let marker = try await net.createMailbox()
            for i in 1...5 { net.node.snd(box.port, ["n", .int(Int64(i))]) }
            // Messages from one node arrive in order: once the marker is there, all 5 were delivered.
            net.node.snd(marker.port, ["sent"])
            let m = try await net.poll(marker.name, query: "wait=10")
            #expect(GatewayNetwork.messages(m) == [["sent"]], "\(m)")

            let r = try await net.poll(box.name)
            let events = try #require(r.json?.objectValue?["messages"]?.arrayValue, "\(r)")
            #expect(GatewayNetwork.messages(r) == [["n", 3], ["n", 4], ["n", 5]], "\(r)")
            let dropped = events.compactMap(\.objectValue).filter { $0["type"] == "dropped" }
            #expect(dropped.count == 1 && dropped.first?["count"] == 2 && dropped.first?["total"] == 2, "\(r)")
            #expect(r.json?.objectValue?["dropped"] == 2, "\(r)")

            // An SSE client gets the same as a `dropped` event.
            let sse = try await net.sse("/v1/ports/\(box.name)/messages")
            var seen: [SSEEvent] = []
            for _ in 0..<events.count { seen.append(try await sse.next()) }
            #expect(seen.contains { $0.event == "dropped" && $0.json?.objectValue?["count"] == 2 }, "\(seen)")
        }
    }

    @Test("a monitor set through the mailbox reports the port's death with the kill reason")
    func monitorEvent() async throws {
        try await GatewayNetwork.with { net in
            let box = try await net.createMailbox()
            let sse = try await net.sse("/v1/ports/\(box.name)/messages")
            let watched = net.node.port { _ in }
            let r = try await net.post("/v1/ports/\(box.name)/monitor", json: ["port": .string(watched.description)])
            #expect(r.status == 200, "\(r)")
            #expect(r.json?.objectValue?["monitoring"] == .string(watched.description), "\(r)")
            // The monitor request is on the node once a message the gateway sent after it arrived
            // (one connection, in order); a kil before that would read as no_such_port.
            try await net.syncGatewayToNode()
            net.node.kil(watched, reason: ["shutdown", "bye", 42])
            let e = try await sse.next()
            #expect(e.event == "monitor", "\(e)")
            #expect(e.json?.objectValue?["port"] == .string(watched.description), "\(e)")
            #expect(e.json?.objectValue?["reason"] == ["shutdown", "bye", 42], "\(e)")
            let polled = try await net.poll(box.name)
            let entry = polled.json?.objectValue?["messages"]?.arrayValue?.first?.objectValue
            #expect(entry?["type"] == "monitor" && entry?["reason"] == ["shutdown", "bye", 42], "\(polled)")

            // A port that does not exist is reported dead at once.
            let ghost = "\(net.node.id)#no-such-port"
            #expect(try await net.post("/v1/ports/\(box.name)/monitor", json: ["port": .string(ghost)]).status == 200)
            let g = try await sse.next()
            #expect(g.event == "monitor" && g.json?.objectValue?["reason"]?.arrayValue?.first == "no_such_port", "\(g)")

            expectProblem(try await net.post("/v1/ports/\(box.name)/monitor", json: ["port": 5]), 422, "invalid_port")
            expectProblem(try await net.post("/v1/ports/\(box.name)/monitor", json: ["nope": 5]), 422, "invalid_request")
            expectProblem(try await net.post("/v1/ports/no-such-box/monitor", json: ["port": .string(ghost)]), 404, "unknown_mailbox")
        }
    }

    @Test("DELETE kills the mailbox: waiting clients are told, then 410; a node monitoring its port sees it die")
    func deleteThenGone() async throws {
        try await GatewayNetwork.with { net in
            let box = try await net.createMailbox()
            let sse = try await net.sse("/v1/ports/\(box.name)/messages")
            let (deaths, continuation) = AsyncStream<[Value]>.makeStream()
            var reasons = deaths.makeAsyncIterator()
            net.node.mon(PortID(box.port)!) { continuation.yield($0) }
            let poller = try await net.client()
            let waiting = Task { try await poller.request("GET", "/v1/ports/\(box.name)/messages?wait=20", timeout: 25) }
            try await Task.sleep(nanoseconds: 300_000_000)  // lets the poll park (a 410 either way)

            let d = try await net.http.request("DELETE", "/v1/ports/\(box.name)")
            #expect(d.status == 200 && d.json == ["name": .string(box.name), "deleted": true], "\(d)")
            expectProblem(try await waiting.value, 410, "mailbox_gone")
            let closed = try await sse.next()
            #expect(closed.event == "closed", "\(closed)")
            #expect(try await sse.waitForEnd(), "the stream of a deleted mailbox must end")
            _ = try await next(&reasons, "the death of the mailbox port")

            expectProblem(try await net.poll(box.name), 410, "mailbox_gone")
            expectProblem(try await net.http.request("DELETE", "/v1/ports/\(box.name)"), 410, "mailbox_gone")
            expectProblem(
                try await net.post("/v1/ports/\(box.name)/monitor", json: ["port": .string("\(net.node.id)#x")]), 410, "mailbox_gone")
            let late = try await net.sse("/v1/ports/\(box.name)/messages")
            #expect(late.status == 410, "SSE on a deleted mailbox")

            // A mailbox killed from the mesh is gone too, with the kill reason.
            let other = try await net.createMailbox()
            net.node.kil(PortID(other.port)!, reason: ["evicted", "by the node"])
            let gone = try await waitFor("the killed mailbox answers 410") { () async throws -> HTTPTestResponse? in
                let r = try await net.poll(other.name)
                return r.status == 410 ? r : nil
            }
            let p = expectProblem(gone, 410, "mailbox_gone")
            #expect(p["reason"] == ["evicted", "by the node"], "\(gone)")
        }
    }

    @Test("unknown names are 404, names of another gateway process 410, malformed names 422")
    func names() async throws {
        try await GatewayNetwork.with { net in
            let box = try await net.createMailbox()
            let instance = String(box.name.split(separator: ".").first!)
            for unknown in ["nosuchmailbox", "\(instance).AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
                expectProblem(try await net.poll(unknown), 404, "unknown_mailbox")
                expectProblem(try await net.http.request("DELETE", "/v1/ports/\(unknown)"), 404, "unknown_mailbox")
            }
            let foreign = instance == "zzzzzzzz" ? "yyyyyyyy.AAAA" : "zzzzzzzz.AAAA"
            expectProblem(try await net.poll(foreign), 410, "mailbox_gone")
            for malformed in ["bad!name", "a%23b", "a%00b", "%C3%A9t%C3%A9", String(repeating: "a", count: 129)] {
                expectProblem(try await net.poll(malformed), 422, "invalid_mailbox_name")
            }
            let sse = try await net.sse("/v1/ports/nosuchmailbox/messages")
            #expect(sse.status == 404)
        }
    }

    @Test("--remembered-mailboxes bounds the names kept for 410: the oldest deleted names fall back to 404")
    func rememberedNames() async throws {
        try await GatewayNetwork.with(gatewayArguments: ["--remembered-mailboxes", "3"]) { net in
            var names: [String] = []
            for _ in 0..<5 { names.append(try await net.createMailbox().name) }
            for name in names { #expect(try await net.http.request("DELETE", "/v1/ports/\(name)").status == 200) }
            for name in names.prefix(2) { expectProblem(try await net.poll(name), 404, "unknown_mailbox") }
            for name in names.suffix(3) { expectProblem(try await net.poll(name), 410, "mailbox_gone") }
        }
    }

    @Test("an idle mailbox expires after its ttl: 410, and its port dies")
    func expiry() async throws {
        try await GatewayNetwork.with { net in
            let box = try await net.createMailbox(["ttl": 1])
            let kept = try await net.createMailbox(["ttl": 1])
            let sse = try await net.sse("/v1/ports/\(kept.name)/messages")  // an attached client keeps it
            let (deaths, continuation) = AsyncStream<[Value]>.makeStream()
            var reasons = deaths.makeAsyncIterator()
            net.node.mon(PortID(box.port)!) { continuation.yield($0) }
            // The port dies once the gateway expires the mailbox (housekeeping runs every second).
            _ = try await next(&reasons, within: 10, "the expiry of the idle mailbox")
            let r = try await net.poll(box.name)
            let p = expectProblem(r, 410, "mailbox_gone")
            #expect(p["detail"]?.stringValue?.contains("expired") == true, "\(r)")
            // The mailbox with a client stayed.
            net.node.snd(kept.port, ["still here"])
            #expect(try await sse.next().json?.objectValue?["message"] == ["still here"])
        }
    }

    /// Sends `message` from the node to a mailbox and waits until the gateway has it (the node's
    /// messages arrive in order, so a marker sent after it to a second mailbox proves it).
    func sendAndWait(_ net: GatewayNetwork, _ box: (name: String, port: String), _ message: [Value]) async throws {
        let marker = try await net.createMailbox()
        net.node.snd(box.port, message)
        net.node.snd(marker.port, ["marker"])
        let r = try await net.poll(marker.name, query: "wait=10")
        try #require(GatewayNetwork.messages(r) == [["marker"]], "\(r)")
        _ = try await net.http.request("DELETE", "/v1/ports/\(marker.name)")
    }

    /// Polls (without acknowledging) until `count` entries are queued.
    func waitForMessages(_ net: GatewayNetwork, _ name: String, count: Int) async throws {
        try await eventually("\(count) messages in mailbox \(name)") {
            GatewayNetwork.messages(try await net.poll(name, query: "wait=0&max=1000")).count >= count
        }
    }
}
