import AEMP
import NIOCore

/// `/v1/ports`: mailboxes, ports owned by the gateway that web clients read.
extension Gateway {

    /// `POST /v1/ports` (optional body `{"ttl": s, "max_queue": n}`).
    func createMailbox(_ request: HTTPRequest) throws(Problem) -> HTTPResponse {
        var ttl = configuration.mailboxTTL
        var maxQueue = configuration.mailboxQueue
        if !request.body.isEmpty {
            guard case .object(let o) = try jsonBody(request) else {
                throw .invalidRequest("the body must be an object {\"ttl\": seconds, \"max_queue\": n} (or empty)")
            }
            try refuseUnknownMembers(o, allowed: ["ttl", "max_queue"])
            if let t = o["ttl"] {
                guard let n = t.strictInteger, n >= 1, n <= configuration.maxMailboxTTL else {
                    throw .invalidRequest("\"ttl\" must be an integer number of seconds in 1...\(configuration.maxMailboxTTL)")
                }
                ttl = Int(n)
            }
            if let q = o["max_queue"] {
                guard let n = q.strictInteger, n >= 1, n <= configuration.maxMailboxQueue else {
                    throw .invalidRequest("\"max_queue\" must be an integer in 1...\(configuration.maxMailboxQueue)")
                }
                maxQueue = Int(n)
            }
        }
        let name = mailboxes.newName()
        let mailbox = Mailbox(
            name: name, port: PortID(node: node.id, name: name), maxQueue: maxQueue, ttl: .seconds(Int64(ttl)), metrics: metrics,
            budget: mailboxBudget)
        guard mailboxes.add(mailbox) else {
            throw .overloaded("the gateway holds its maximum of \(configuration.maxMailboxes) mailboxes")
        }
        // A kil from anywhere (or our own DELETE) closes the mailbox.
        let port = node.port(
            named: name,
            { message in mailbox.deliver(["type": "message", "message": .array(message)]) },
            onDeath: { [self] reason in
                let why = reason.isEmpty ? "was killed" : "was killed: \(reason.map(\.description).joined(separator: " "))"
                closeMailbox(name, why, killReason: .array(reason))
            })
        guard let port else {
            _ = mailboxes.remove(name, reason: "could not be created")
            throw Problem(500, "internal_error", "Internal error", "could not create a port for the mailbox")
        }
        logger.info("mailbox created", metadata: ["mailbox": "\(name)", "request": "\(request.requestID)"])
        return .json(
            201,
            [
                "name": .string(name), "port": .string(port.description), "ttl": .int(Int64(ttl)),
                "max_queue": .int(Int64(maxQueue)),
            ], headers: [("Location", "/v1/ports/\(name)")])
    }

    /// `GET /v1/ports/{name}`: the mailbox's settings and queue state.
    func mailboxInfo(_ name: String) throws(Problem) -> HTTPResponse {
        .json(200, try mailboxes.lookup(name).info)
    }

    /// `DELETE /v1/ports/{name}`: `kil` of the mailbox's port.
    func deleteMailbox(_ name: String, _ request: HTTPRequest) throws(Problem) -> HTTPResponse {
        let mailbox = try mailboxes.lookup(name)
        closeMailbox(name, "was deleted", killReason: nil)
        node.kil(mailbox.port)
        return .json(200, ["name": .string(name), "deleted": true])
    }

    /// Removes a mailbox (deleted, expired or killed): clients get 410 from now on.
    func closeMailbox(_ name: String, _ why: String, killReason: Value?) {
        guard let mailbox = mailboxes.remove(name, reason: why, killReason: killReason) else { return }
        // Its db_reg keys go with its port (the node's monitor deletes them); forget them here too.
        let key = mailbox.port.description
        ownedKeys.withLock { keys in
            for family in keys.keys where keys[family]?.remove(key) != nil && keys[family]?.isEmpty == true {
                keys[family] = nil
            }
        }
        let problem = Problem.mailboxGone(name, why, reason: killReason)
        for monitor in mailbox.close(reason: why, killReason: killReason, gone: { problem.response(requestID: $0) }) {
            monitor.cancel()
        }
        logger.info("mailbox closed", metadata: ["mailbox": "\(name)", "why": "\(why)"])
    }

    func expireMailboxes() {
        let now = NIODeadline.now()
        for mailbox in mailboxes.all where mailbox.isExpired(now: now) {
            closeMailbox(mailbox.name, "expired after \(mailbox.ttl.nanoseconds / 1_000_000_000) s without a client", killReason: nil)
            node.kil(mailbox.port)
        }
    }

    /// `GET /v1/ports/{name}/messages`: long-poll (`after`, `max`, `wait`) or SSE.
    func readMailbox(_ name: String, _ request: HTTPRequest, _ exchange: Exchange) throws(Problem) -> HTTPResponse? {
        let mailbox = try mailboxes.lookup(name)
        let lastEventID = request.header("last-event-id") ?? request.query["last_event_id"]
        var acknowledged: UInt64?
        if let raw = request.query["after"] ?? lastEventID {
            guard let n = UInt64(Destination.trimmed(raw)) else {
                throw .invalidRequest("\"after\" / Last-Event-ID must be a message sequence number, got \(raw.debugDescription)")
            }
            acknowledged = n
        }
        let after = acknowledged
        if isHead(request) {
            // The header block of what GET would answer now, without subscribing, waiting or
            // acknowledging anything.
            if wantsEventStream(request) { return .eventStream(EventStream(limit: 0)) }
            let max = try intArgument(request, "max", default: 100, range: 1...1000)
            _ = try waitArgument(request)
            return mailbox.peek(after: after, max: max)
        }
        let token = nextToken()
        if wantsEventStream(request) {
            let stream = EventStream(limit: configuration.streamBacklog, budget: streamBudget)
            guard mailbox.subscribe(token, stream: stream, after: after) else { throw gone(mailbox) }
            stream.onClose { mailbox.unsubscribe(token) }
            return .eventStream(stream)
        }
        let max = try intArgument(request, "max", default: 100, range: 1...1000)
        let wait = try waitArgument(request)
        if let (events, last) = mailbox.poll(after: after, max: max) {
            return Mailbox.pollResponse(events: events, last: last, dropped: mailbox.state.withLock { $0.droppedTotal })
        }
        let empty: @Sendable () -> HTTPResponse = {
            let s = mailbox.state.withLock { ($0.acked, $0.droppedTotal) }
            // `last` is what the client may acknowledge next: never beyond what it was given.
            return Mailbox.pollResponse(events: [], last: s.0, dropped: s.1)
        }
        guard wait > 0 else { return empty() }
        let timer = self.after(Double(wait)) {
            if let waiter = mailbox.unpark(token) { waiter.exchange.respond(empty()) }
        }
        // A client that hangs up while parked leaves nothing behind (its slot, its waiter, its timer).
        exchange.onHangup { mailbox.unpark(token)?.timer?.cancel() }
        if mailbox.park(token, exchange: exchange, after: after, max: max, timer: timer) { return nil }
        timer.cancel()
        if let (events, last) = mailbox.poll(after: after, max: max) {
            return Mailbox.pollResponse(events: events, last: last, dropped: mailbox.state.withLock { $0.droppedTotal })
        }
        throw gone(mailbox)
    }

    private func gone(_ mailbox: Mailbox) -> Problem {
        let (why, reason) = mailbox.closedReason ?? ("is gone", nil)
        return .mailboxGone(mailbox.name, why, reason: reason)
    }

    /// `POST /v1/ports/{name}/monitor {"port": …}`: the port's death arrives as an event.
    func monitorFromMailbox(_ name: String, _ request: HTTPRequest) throws(Problem) -> HTTPResponse {
        let mailbox = try mailboxes.lookup(name)
        guard case .object(let o) = try jsonBody(request), let raw = o["port"] else {
            throw .invalidRequest("the body must be {\"port\": \"node#name\"}")
        }
        try refuseUnknownMembers(o, allowed: ["port"])
        let target = try Destination.parse(raw)
        let monitor = node.mon(target) { reason in
            mailbox.deliver(["type": "monitor", "port": .string(target.description), "reason": .array(reason)])
        }
        guard mailbox.addMonitor(monitor) else {
            monitor.cancel()
            throw gone(mailbox)
        }
        return .json(200, ["name": .string(name), "monitoring": .string(target.description)])
    }
}
