import AEMP
import NIOCore

/// `/v1/ports`: mailboxes, ports owned by the gateway that web clients read.
extension Gateway {

    /// `POST /v1/ports` (optional body `{"ttl": s, "max_queue": n}`).
    func createMailbox(_ request: HTTPRequest) throws(Problem) -> HTTPResponse {
        let limits = mailboxes.limits
        var ttl = limits.ttl
        var maxQueue = limits.queue
        if !request.body.isEmpty {
            guard case .object(let o) = try jsonBody(request) else {
                throw .invalidRequest("the body must be an object {\"ttl\": seconds, \"max_queue\": n} (or empty)")
            }
            try refuseUnknownMembers(o, allowed: ["ttl", "max_queue"])
            if let t = o["ttl"] {
                guard let n = t.strictInteger, n >= 1, n <= limits.maxTTL else {
                    throw .invalidRequest("\"ttl\" must be an integer number of seconds in 1...\(limits.maxTTL)")
                }
                ttl = Int(n)
            }
            if let q = o["max_queue"] {
                guard let n = q.strictInteger, n >= 1, n <= limits.maxQueue else {
                    throw .invalidRequest("\"max_queue\" must be an integer in 1...\(limits.maxQueue)")
                }
                maxQueue = Int(n)
            }
        }
        let mailbox: Mailbox
        do { mailbox = try mailboxes.create(ttl: ttl, maxQueue: maxQueue) } catch { throw Problem(error) }
        logger.info("mailbox created", metadata: ["mailbox": "\(mailbox.name)", "request": "\(request.requestID)"])
        return .json(
            201,
            [
                "name": .string(mailbox.name), "port": .string(mailbox.port.description), "ttl": .int(Int64(ttl)),
                "max_queue": .int(Int64(maxQueue)),
            ], headers: [("Location", "/v1/ports/\(mailbox.name)")])
    }

    /// The live mailbox of that name, or the problem to answer (422, 404 or 410).
    func mailbox(_ name: String) throws(Problem) -> Mailbox {
        do { return try mailboxes.lookup(name) } catch { throw Problem(error) }
    }

    /// `GET /v1/ports/{name}`: the mailbox's settings and queue state.
    func mailboxInfo(_ name: String) throws(Problem) -> HTTPResponse {
        .json(200, try mailbox(name).info)
    }

    /// `DELETE /v1/ports/{name}`: `kil` of the mailbox's port.
    func deleteMailbox(_ name: String, _ request: HTTPRequest) throws(Problem) -> HTTPResponse {
        do { try mailboxes.delete(name) } catch { throw Problem(error) }
        return .json(200, ["name": .string(name), "deleted": true])
    }

    /// A long-poll's answer: the batch, with `X-AEMP-Last`.
    static func response(_ batch: MailboxBatch) -> HTTPResponse {
        .json(
            200, ["messages": .array(batch.events), "last": .int(Int64(batch.last)), "dropped": .int(Int64(batch.dropped))],
            headers: [("X-AEMP-Last", String(batch.last))])
    }

    /// `GET /v1/ports/{name}/messages`: long-poll (`after`, `max`, `wait`) or SSE.
    func readMailbox(_ name: String, _ request: HTTPRequest, _ exchange: Exchange) throws(Problem) -> HTTPResponse? {
        let mailbox = try mailbox(name)
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
            return Self.response(mailbox.peek(after: after, max: max))
        }
        let token = nextToken()
        if wantsEventStream(request) {
            let stream = EventStream(limit: configuration.streamBacklog, budget: streamBudget)
            guard mailbox.subscribe(token, stream: stream, after: after) else { throw Problem(Mailboxes.gone(mailbox)) }
            stream.onClose { mailbox.unsubscribe(token) }
            return .eventStream(stream)
        }
        let max = try intArgument(request, "max", default: 100, range: 1...1000)
        let wait = try waitArgument(request)
        if let batch = mailbox.poll(after: after, max: max) { return Self.response(batch) }
        guard wait > 0 else { return Self.response(mailbox.emptyBatch()) }
        let timer = self.after(Double(wait)) {
            if let waiter = mailbox.unpark(token) { waiter.answer(.batch(mailbox.emptyBatch())) }
        }
        // A client that hangs up while parked leaves nothing behind (its slot, its waiter, its timer).
        exchange.onHangup { mailbox.unpark(token)?.timer?.cancel() }
        let parked = mailbox.park(token, after: after, max: max, timer: timer) { answer in
            switch answer {
            case .batch(let batch): exchange.respond(Self.response(batch))
            case .gone(let why, let reason):
                exchange.respond(Problem.mailboxGone(mailbox.name, why, reason: reason).response(requestID: exchange.request.requestID))
            }
        }
        if parked { return nil }
        timer.cancel()
        if let batch = mailbox.poll(after: after, max: max) { return Self.response(batch) }
        throw Problem(Mailboxes.gone(mailbox))
    }

    /// `POST /v1/ports/{name}/monitor {"port": …}`: the port's death arrives as an event.
    func monitorFromMailbox(_ name: String, _ request: HTTPRequest) throws(Problem) -> HTTPResponse {
        let mailbox = try mailbox(name)
        guard case .object(let o) = try jsonBody(request), let raw = o["port"] else {
            throw .invalidRequest("the body must be {\"port\": \"node#name\"}")
        }
        try refuseUnknownMembers(o, allowed: ["port"])
        let target = try Destination.parse(raw)
        do { try mailboxes.monitor(target, from: mailbox) } catch { throw Problem(error) }
        return .json(200, ["name": .string(name), "monitoring": .string(target.description)])
    }
}
