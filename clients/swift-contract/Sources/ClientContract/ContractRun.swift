import Foundation
import OpenAPIRuntime

typealias Schemas = Components.Schemas

/// The checks of `scripts/client-contract.py`, through the generated Swift client: send, call
/// (a mailbox this run answers itself, and the gateway node's own node port), mailboxes (created,
/// read by long-poll, parked), the database (set, read the family and one key, watch by
/// long-poll) and problems decoded into the generated `Problem`.
final class ContractRun {
    let client: Client
    /// The same server, through a middleware that adds the member `priorty` to `send` bodies.
    let sendingUnknownMember: Client
    let checks = Checks()

    /// Long-polls ask for this much at most, seconds.
    static let longPoll = 10
    /// Only JSON answers: a long-poll whose `Accept` lists `text/event-stream` (the generated
    /// default lists every content type the contract has) gets an event stream instead.
    static let json = [AcceptHeaderContentType(contentType: Operations.readMailbox.AcceptableContentType.json)]
    static let feedJSON = [AcceptHeaderContentType(contentType: Operations.watchFamily.AcceptableContentType.json)]

    init(client: Client, sendingUnknownMember: Client) {
        self.client = client
        self.sendingUnknownMember = sendingUnknownMember
    }

    /// Every part; a part that fails is counted and the next runs when it can.
    func all() async {
        guard let node = await checks.part("GET /v1/node", { try await self.node() }) else { return }
        guard let box = await checks.part("POST /v1/ports", { try await self.mailbox(node) }) else { return }
        let after = await checks.part("send and read by long-poll", { try await self.sendAndRead(box) })
        if let after {
            _ = await checks.part("call a mailbox", { try await self.callMailbox(box, after: after) })
        }
        _ = await checks.part("call the node port", { try await self.callNodePort(node) })
        let family = "client-contract-swift-\(Int(Date().timeIntervalSince1970 * 1000))"
        _ = await checks.part("the database", { try await self.database(family) })
        _ = await checks.part("problems", { try await self.problems(box, family: family) })
    }

    // MARK: - The parts

    func node() async throws -> Schemas.NodeInfo {
        let node = try await client.getNode().ok.body.json
        checks.check(
            node.standalone && node.master == node.node,
            "a standalone gateway is its own master: \(node.node), master \(node.master ?? "null")"
        )
        return node
    }

    func mailbox(_ node: Schemas.NodeInfo) async throws -> Schemas.Mailbox {
        let created = try await client.createMailbox(body: .json(.init(ttl: 120, max_queue: 50))).created
        let box = try created.body.json
        checks.check(
            box.ttl == 120 && box.max_queue == 50 && box.port == "\(node.node)#\(box.name)",
            "the mailbox: \(box)"
        )
        checks.check(created.headers.Location == "/v1/ports/\(box.name)", "Location: \(created.headers.Location)")
        let info = try await client.getMailbox(path: .init(name: box.name)).ok.body.json
        checks.check(info.last == 0 && info.queued == 0, "a new mailbox is empty: \(info)")
        return box
    }

    /// Sends one message and a batch, reads them back by long-poll, then parks a long-poll that
    /// the next message answers. Returns the mailbox's acknowledged position.
    func sendAndRead(_ box: Schemas.Mailbox) async throws -> Int {
        let one = try await client.send(body: .json(.Envelope(.init(
            port: box.port,
            message: JSONText.values(#"["hello", 1, {"k": [null, 2.5]}]"#)
        )))).accepted.body.json
        checks.check(one.accepted == 1, "POST /v1/send (one): accepted \(one.accepted)")
        let batch = try await client.send(body: .json(.case2([
            .init(port: box.port, message: ["b1"]),
            .init(port: box.port, message: ["b2"]),
        ]))).accepted.body.json
        checks.check(batch.accepted == 2, "POST /v1/send (batch): accepted \(batch.accepted)")

        var got: [[OpenAPIValueContainer]] = []
        var after = 0
        let until = ContinuousClock.now + .seconds(15)
        while got.count < 3, ContinuousClock.now < until {
            let poll = try await readMailbox(box, after: after, wait: 5)
            for entry in poll.messages {
                guard case .MailboxMessage(let message) = entry else {
                    checks.check(false, "a mailbox entry of another type: \(entry)")
                    continue
                }
                checks.check(message._type == .message, "entry type \(message._type)")
                got.append(message.message)
            }
            after = poll.last
        }
        checks.check(
            JSONText.of(got) == #"[["hello",1,{"k":[null,2.5]}],["b1"],["b2"]]"#,
            "the messages, in order: \(JSONText.of(got))"
        )
        let acknowledged = try await readMailbox(box, after: after, wait: 0)
        checks.check(
            acknowledged.messages.isEmpty && acknowledged.last == after,
            "acknowledged: \(acknowledged)"
        )

        // A parked long-poll is answered by the next message.
        let client = self.client
        async let parked = Self.readMailbox(client, box, after: after, wait: Self.longPoll)
        try await Task.sleep(for: .milliseconds(300))
        _ = try await client.send(body: .json(.Envelope(.init(port: box.port, message: ["wake"])))).accepted
        let woken = try await parked
        checks.check(JSONText.of(messages(woken)) == #"[["wake"]]"#, "the parked poll: \(woken)")
        return woken.last
    }

    /// A call to the mailbox, whose request this run reads there and answers at the reply port
    /// the gateway appended.
    func callMailbox(_ box: Schemas.Mailbox, after: Int) async throws {
        let client = self.client
        async let pending = client.call(body: .json(.init(port: box.port, message: ["ping", 7], timeout: 10)))
        let request = try await readMailbox(box, after: after, wait: Self.longPoll)
        let entries = messages(request)
        checks.check(
            entries.count == 1 && JSONText.of(Array(entries[0].prefix(2))) == #"["ping",7]"#,
            "the call's request in the mailbox: \(JSONText.of(entries))"
        )
        if let replyPort = entries.first?.last?.value as? String {
            let answered = try await client.send(body: .json(.Envelope(.init(port: replyPort, message: ["pong", 7]))))
            checks.check((try? answered.accepted) != nil, "POST /v1/send to the reply port: \(answered)")
        } else {
            checks.check(false, "the call's request ends with its reply port: \(JSONText.of(entries))")
        }
        let reply = try await pending.ok.body.json
        checks.check(JSONText.of(reply.reply) == #"["pong",7]"#, "the reply: \(JSONText.of(reply.reply))")
    }

    /// The gateway's own node port, with the tag the gateway allows (`--allow-node-port-tag time`).
    func callNodePort(_ node: Schemas.NodeInfo) async throws {
        let clock = try await client.call(body: .json(.init(port: node.node, message: ["time"], timeout: 5))).ok.body.json
        let now = Date().timeIntervalSince1970
        let time = clock.reply.first.flatMap { ($0.value as? Double) ?? ($0.value as? Int).map(Double.init) }
        checks.check(
            clock.reply.count == 1 && time.map { abs($0 - now) < 60 } == true,
            "the node's time: \(JSONText.of(clock.reply))"
        )
    }

    /// Sets a key, reads the family and the key, then watches the family: a snapshot, and a
    /// long-poll that the next change answers.
    func database(_ family: String) async throws {
        let value = try JSONText.value(#"{"url": "http://10.0.0.5", "weight": 3}"#)
        let put = try await client.setKey(path: .init(family: family, subkey: "web1"), body: .json(value)).ok.body.json
        checks.check(
            put.family == family && put.subkey == "web1" && JSONText.of(put.value) == JSONText.of(value),
            "the set key: \(put)"
        )

        var values = "{}"
        let until = ContinuousClock.now + .seconds(10)
        while values == "{}", ContinuousClock.now < until {
            let whole = try await client.getFamily(path: .init(family: family)).ok.body.json
            values = JSONText.of(whole.values.additionalProperties)
            if values == "{}" { try await Task.sleep(for: .milliseconds(50)) }
        }
        let expected = #"{"web1":{"url":"http://10.0.0.5","weight":3}}"#
        checks.check(values == expected, "GET /v1/db/{family}: \(values)")
        let key = try await client.getKey(path: .init(family: family, subkey: "web1")).ok.body.json
        checks.check(
            key.family == family && key.subkey == "web1" && JSONText.of(key.value) == JSONText.of(value),
            "GET /v1/db/{family}/{subkey}: \(key)"
        )

        guard case .FeedSnapshot(let snapshot) = try await watch(family, index: nil, wait: 0) else {
            checks.check(false, "GET /v1/db/{family}/watch without index is a snapshot")
            return
        }
        checks.check(snapshot._type == .snapshot && !snapshot.reset, "the snapshot: \(snapshot)")
        checks.check(
            JSONText.of(snapshot.values.additionalProperties) == expected,
            "the snapshot's values: \(JSONText.of(snapshot.values.additionalProperties))"
        )
        let client = self.client
        async let watching = Self.watch(client, family, index: snapshot.id, wait: Self.longPoll)
        try await Task.sleep(for: .milliseconds(300))
        _ = try await client.setKey(path: .init(family: family, subkey: "web2"), body: .json(JSONText.value("[1, 2]"))).ok
        guard case .FeedChanges(let changes) = try await watching else {
            checks.check(false, "GET /v1/db/{family}/watch with index is the changes")
            return
        }
        checks.check(changes._type == .changes && changes.id != snapshot.id, "the changes: \(changes)")
        checks.check(
            changes.changes.count == 1 && changes.changes[0]._type == .change,
            "one change: \(changes.changes)"
        )
        if let change = changes.changes.first {
            checks.check(
                JSONText.of(change.added.additionalProperties) == #"{"web2":[1,2]}"#,
                "added: \(JSONText.of(change.added.additionalProperties))"
            )
        }
    }

    /// Errors, each decoded into the generated `Problem` of the response the contract names.
    func problems(_ box: Schemas.Mailbox, family: String) async throws {
        let instance = box.name.split(separator: ".").first.map(String.init) ?? box.name
        let unknownBox = try await client.getMailbox(path: .init(name: "\(instance).nosuchbox")).notFound
        expectProblem(
            try unknownBox.body.application_problem_plus_json,
            requestID: unknownBox.headers.X_hyphen_Request_hyphen_ID,
            404, .unknown_mailbox, "an unknown mailbox"
        )

        let absent = try await client.getKey(path: .init(family: family, subkey: "nope")).notFound
        expectProblem(
            try absent.body.application_problem_plus_json,
            requestID: absent.headers.X_hyphen_Request_hyphen_ID,
            404, .unknown_key, "an absent key"
        )

        let zeroTTL = try await client.createMailbox(body: .json(.init(ttl: 0))).unprocessableContent
        expectProblem(
            try zeroTTL.body.application_problem_plus_json,
            requestID: zeroTTL.headers.X_hyphen_Request_hyphen_ID,
            422, .invalid_request, "ttl 0"
        )

        let bare = try await client.send(body: .json(.Envelope(.init(port: "justname", message: ["x"])))).forbidden
        let bareProblem = try bare.body.application_problem_plus_json
        expectProblem(bareProblem, requestID: bare.headers.X_hyphen_Request_hyphen_ID, 403, .node_port_forbidden, "a port without '#'")
        checks.check(bareProblem.detail.contains("justname#"), "the detail suggests a port name: \(bareProblem.detail)")

        // A member the request schema does not know (added by the ExtraMember middleware).
        let unknown = try await sendingUnknownMember.send(body: .json(.Envelope(.init(port: box.port, message: ["x"]))))
            .unprocessableContent
        let unknownProblem = try unknown.body.application_problem_plus_json
        expectProblem(unknownProblem, requestID: unknown.headers.X_hyphen_Request_hyphen_ID, 422, .unknown_field, "an unknown member")
        checks.check(unknownProblem.field == "priorty", "the problem names the member: \(unknownProblem)")
        checks.check(unknownProblem.index == nil, "no index for a single envelope: \(unknownProblem)")
    }

    // MARK: - Helpers

    /// A long-poll of the mailbox that asks for JSON.
    func readMailbox(_ box: Schemas.Mailbox, after: Int, wait: Int) async throws -> Schemas.MailboxPoll {
        try await Self.readMailbox(client, box, after: after, wait: wait)
    }

    /// The same, for a child task (which must not capture this run).
    static func readMailbox(_ client: Client, _ box: Schemas.Mailbox, after: Int, wait: Int) async throws
        -> Schemas.MailboxPoll
    {
        try await client.readMailbox(
            path: .init(name: box.name),
            query: .init(after: after, wait: wait),
            headers: .init(accept: Self.json)
        ).ok.body.json
    }

    /// A long-poll of the family's feed that asks for JSON.
    func watch(_ family: String, index: String?, wait: Int) async throws
        -> Operations.watchFamily.Output.Ok.Body.jsonPayload
    {
        try await Self.watch(client, family, index: index, wait: wait)
    }

    /// The same, for a child task.
    static func watch(_ client: Client, _ family: String, index: String?, wait: Int) async throws
        -> Operations.watchFamily.Output.Ok.Body.jsonPayload
    {
        try await client.watchFamily(
            path: .init(family: family),
            query: .init(index: index, wait: wait),
            headers: .init(accept: Self.feedJSON)
        ).ok.body.json
    }

    /// The messages of a poll's entries (other entries count as failed checks).
    func messages(_ poll: Schemas.MailboxPoll) -> [[OpenAPIValueContainer]] {
        poll.messages.compactMap { entry in
            guard case .MailboxMessage(let message) = entry else {
                checks.check(false, "a mailbox entry of another type: \(entry)")
                return nil
            }
            return message.message
        }
    }

    /// A problem+json answer, decoded into the generated `Problem`: its status and code, its
    /// `type` URN, a detail, and the request ID of the `X-Request-ID` header.
    func expectProblem(
        _ problem: Schemas.Problem,
        requestID: String,
        _ status: Int,
        _ code: Schemas.ProblemCode,
        _ what: String
    ) {
        checks.check(
            problem.status == status && Schemas.ProblemCode(rawValue: problem.code) == code,
            "\(what): expected \(status) \(code.rawValue), got \(problem.status) \(problem.code)"
        )
        checks.check(problem._type == "urn:aemp-gateway:problem:\(code.rawValue)", "\(what): type \(problem._type)")
        checks.check(
            !problem.detail.isEmpty && !problem.request_id.isEmpty && problem.request_id == requestID,
            "\(what): detail, and request_id \(problem.request_id) = X-Request-ID \(requestID): \(problem)"
        )
    }
}
