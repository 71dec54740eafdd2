import AEMP
import Foundation
import Testing

/// `POST /v1/send` and `POST /v1/call` against a real network: an `aemp seed` child, an in-process
/// public node with ports, and the `aemp-gateway` binary.
@Suite("gateway: send and call", .serialized, .timeLimit(.minutes(3)))
struct SendTests {

    /// Every kind of value a message can hold.
    static let values: [Value] = [
        "ping", 0, 42, -7, 9_007_199_254_740_993, .int(Int64.max), .int(Int64.min), 1.5, -0.25, 1e300,
        "ünïcödé ✓ 日本語 🎉", "", "with \"quotes\", \\ and\nnewline", true, false, nil,
        ["nested": [1, [2, [3, ["deep": nil]]]], "a": ["b": "c"], "empty": [:], "list": []],
        [1, "two", 3.5, nil, [true]],
    ]

    @Test("a message POSTed to /v1/send arrives at the node's port with the same values, and keep-alive holds")
    func sendArrives() async throws {
        try await GatewayNetwork.with { net in
            let (port, inbox) = net.node.mailbox()
            var messages = inbox.makeAsyncIterator()
            let r = try await net.post("/v1/send", json: ["port": .string(port.description), "message": .array(Self.values)])
            #expect(r.status == 202, "\(r)")
            #expect(r.header("Content-Type") == "application/json")
            #expect(r.json == ["accepted": 1])
            let m = try await next(&messages, "the message sent through the gateway")
            #expect(m == Self.values)

            // The same raw body, typed by hand as with curl.
            let body = #"{"port": "\#(port)", "message": ["curl", 1, 2.5, "é", {"k": [null]}]}"#
            let c = try await net.http.request(
                "POST", "/v1/send", headers: [("Content-Type", "application/json")], body: Array(body.utf8))
            #expect(c.status == 202, "\(c)")
            #expect(try await next(&messages, "the curl-style message") == ["curl", 1, 2.5, "é", ["k": [nil]]])
            #expect(net.http.connectionsOpened == 1, "the client needed a new connection: keep-alive was not kept")
        }
    }

    @Test("a batch is sent in order, to several ports; an invalid item refuses the whole batch")
    func batchSend() async throws {
        try await GatewayNetwork.with { net in
            let (a, inboxA) = net.node.mailbox()
            let (b, inboxB) = net.node.mailbox()
            var messagesA = inboxA.makeAsyncIterator()
            var messagesB = inboxB.makeAsyncIterator()
            let batch: Value = [
                ["port": .string(a.description), "message": ["first", 1]],
                ["port": .string(b.description), "message": ["to b"]],
                ["port": .string(a.description), "message": ["second", 2]],
                ["port": .string(a.description), "message": ["third", 3]],
            ]
            let r = try await net.post("/v1/send", json: batch)
            #expect(r.status == 202, "\(r)")
            #expect(r.json == ["accepted": 4])
            #expect(try await next(&messagesA) == ["first", 1])
            #expect(try await next(&messagesA) == ["second", 2])
            #expect(try await next(&messagesA) == ["third", 3])
            #expect(try await next(&messagesB) == ["to b"])

            // Item 1 is invalid: nothing is sent, not even item 0.
            let bad: Value = [
                ["port": .string(a.description), "message": ["must not arrive"]],
                ["port": .string(a.description), "message": "not a list"],
            ]
            let refused = try await net.post("/v1/send", json: bad)
            let problem = expectProblem(refused, 422, "invalid_request")
            #expect(problem["index"] == 1, "\(refused)")
            let empty = try await net.post("/v1/send", json: [])
            expectProblem(empty, 422, "invalid_request")
            // Messages from one node to a port arrive in order: the next one proves the refused
            // batch sent nothing.
            #expect(try await net.post("/v1/send", json: ["port": .string(a.description), "message": ["after"]]).status == 202)
            #expect(try await next(&messagesA) == ["after"])
        }
    }

    @Test("call returns the first reply of the port (the reply port is appended to the message)")
    func callReplies() async throws {
        try await GatewayNetwork.with { net in
            let node = net.node
            let echo = node.port { message in
                guard let reply = message.last?.stringValue else { return }
                node.snd(reply, ["pong"] + message.dropLast())
                node.snd(reply, ["a second reply, ignored"])
            }
            let r = try await net.post(
                "/v1/call", json: ["port": .string(echo.description), "message": ["ping", 1, ["x": 2.5]], "timeout": 5])
            #expect(r.status == 200, "\(r)")
            #expect(r.json == ["reply": ["pong", "ping", 1, ["x": 2.5]]])

            // The reply port is the gateway's, and is gone after the call.
            let (probe, probeInbox) = node.mailbox()
            var probes = probeInbox.makeAsyncIterator()
            let recorder = node.port { message in node.snd(probe, message) }
            let second = try await net.post(
                "/v1/call", json: ["port": .string(recorder.description), "message": ["who"], "timeout": 0.5])
            expectProblem(second, 504, "timeout")
            let seen = try await next(&probes, "the message with the reply port")
            #expect(seen.count == 2 && seen[0] == "who")
            let replyPort = try #require(seen.last?.stringValue.flatMap(PortID.init))
            #expect(replyPort.node == net.gateway.nodeID, "reply port \(replyPort)")
            #expect(!replyPort.isNodePort)
        }
    }

    @Test("call answers 504 when no reply comes within the timeout")
    func callTimeout() async throws {
        try await GatewayNetwork.with { net in
            let silent = net.node.port { _ in }
            let started = ContinuousClock.now
            let r = try await net.post("/v1/call", json: ["port": .string(silent.description), "message": ["anyone?"], "timeout": 0.5])
            let elapsed = ContinuousClock.now - started
            let problem = expectProblem(r, 504, "timeout")
            #expect(problem["detail"]?.stringValue?.contains(silent.description) == true, "\(r)")
            #expect(elapsed >= .milliseconds(450) && elapsed < promptly(.seconds(5)), "answered after \(elapsed)")
            for bad: Value in [0, -1, 121, "soon"] {
                let refused = try await net.post("/v1/call", json: ["port": .string(silent.description), "message": [], "timeout": bad])
                expectProblem(refused, 422, "invalid_request")
            }
        }
    }

    @Test("call answers 502 with the kill reason when the target port dies, and when it does not exist")
    func callTargetDies() async throws {
        try await GatewayNetwork.with { net in
            let node = net.node
            let doomed = Locked<PortID?>(nil)
            let port = node.port { _ in
                if let me = doomed.withLock({ $0 }) { node.kil(me, reason: ["boom", "no reply for you", 42]) }
            }
            doomed.withLock { $0 = port }
            let r = try await net.post("/v1/call", json: ["port": .string(port.description), "message": ["die"], "timeout": 5])
            let problem = expectProblem(r, 502, "port_died")
            #expect(problem["reason"] == ["boom", "no reply for you", 42], "\(r)")

            let missing = "\(node.id)#no-such-port"
            let m = try await net.post("/v1/call", json: ["port": .string(missing), "message": ["hello?"], "timeout": 5])
            let p2 = expectProblem(m, 502, "port_died")
            #expect(p2["reason"]?.arrayValue?.first == "no_such_port", "\(m)")
        }
    }

    @Test("a node-port tag the operator allowed (time) may be called; others stay forbidden")
    func allowedNodePortTag() async throws {
        try await GatewayNetwork.with(gatewayArguments: ["--allow-node-port-tag", "time"]) { net in
            let r = try await net.post("/v1/call", json: ["port": .string(net.node.id), "message": ["time"], "timeout": 5])
            #expect(r.status == 200, "\(r)")
            let now = Date().timeIntervalSince1970
            let t = try #require(r.json?.objectValue?["reply"]?.arrayValue?.first?.numberValue, "\(r)")
            #expect(abs(t - now) < 120, "time reply \(t), now \(now)")
            for message: Value in [["eval", "1"], ["devnull"], ["AnyEvent::MP::Kernel::snd", "x"], []] {
                let refused = try await net.post("/v1/send", json: ["port": .string("\(net.node.id)#"), "message": message])
                expectProblem(refused, 403, "node_port_forbidden")
            }
        }
    }
}

