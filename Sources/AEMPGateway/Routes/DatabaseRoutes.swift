import AEMP
import NIOCore

/// `/v1/db`: the distributed database (aemp-protocol §11) and its change feeds.
extension Gateway {

    func checkFamily(_ family: String) throws(Problem) {
        guard !family.isEmpty, family.utf8.count <= 1024,
            !family.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F })
        else {
            throw Problem(422, "invalid_family", "Invalid family", "\(family.debugDescription) is not a usable family name")
        }
    }

    /// Families starting with `'` belong to AnyEvent::MP itself (`'l` = node addresses, `'g` =
    /// global nodes): HTTP clients may read them, never write them.
    func checkWritable(_ family: String) throws(Problem) {
        try checkFamily(family)
        if family.hasPrefix("'") {
            throw Problem(
                403, "reserved_family", "Reserved family",
                "\(family.debugDescription) is reserved for AnyEvent::MP itself (families starting with ')")
        }
    }

    /// `GET /v1/db/{family}[/keys|/values]`: answered by the master (`g_db_*`).
    func query(_ tag: String, family: String, _ request: HTTPRequest, _ exchange: Exchange) throws(Problem) -> HTTPResponse? {
        try checkFamily(family)
        guard master != nil else { throw .meshUnavailable() }
        let node = self.node
        let timeout = queryTimeAmount
        // The node ends the query at its timeout, or when the client hangs up (the task is
        // cancelled): nothing is left waiting either way.
        let task = Task { [self] in
            do throws(RequestError) {
                let answer: Value
                switch tag {
                case "g_db_keys": answer = ["family": .string(family), "keys": .array(try await node.dbKeys(family, timeout: timeout).map { .string($0) })]
                case "g_db_values": answer = ["family": .string(family), "values": .array(try await node.dbValues(family, timeout: timeout))]
                default: answer = ["family": .string(family), "values": .object(try await node.dbFamily(family, timeout: timeout))]
                }
                exchange.respond(.json(200, answer))
            } catch {
                answerQueryFailure(error, exchange)
            }
        }
        exchange.onHangup { task.cancel() }
        return nil
    }

    /// `--query-timeout` as the node takes it: the node ends a query that waits longer.
    var queryTimeAmount: TimeAmount { .nanoseconds(Int64(configuration.queryTimeout * 1e9)) }

    /// The answer to a query the node ended without a reply (a cancelled one is the client's
    /// hang-up, already answered).
    func answerQueryFailure(_ error: RequestError, _ exchange: Exchange) {
        switch error {
        case .timedOut: fail(exchange, .timeout("the master did not answer within \(configuration.queryTimeout) s"))
        case .shutDown: fail(exchange, .shuttingDown())
        case .cancelled, .portDied: break
        }
    }

    /// `GET /v1/db/{family}/{subkey}`: one key's value. AEMP has no query for one key, so the master
    /// is asked for the family (`g_db_family`) and the key picked from it; 404 unknown_key without it.
    func getKey(family: String, subkey: String, _ request: HTTPRequest, _ exchange: Exchange) throws(Problem) -> HTTPResponse? {
        try checkFamily(family)
        guard master != nil else { throw .meshUnavailable() }
        let node = self.node
        let timeout = queryTimeAmount
        let task = Task { [self] in
            let values: [String: Value]
            do throws(RequestError) {
                values = try await node.dbFamily(family, timeout: timeout)
            } catch {
                return answerQueryFailure(error, exchange)
            }
            guard let value = values[subkey] else {
                fail(exchange, .unknownKey(family: family, subkey: subkey))
                return
            }
            exchange.respond(.json(200, ["family": .string(family), "subkey": .string(subkey), "value": value]))
        }
        exchange.onHangup { task.cancel() }
        return nil
    }

    /// `PUT /v1/db/{family}/{subkey}` (body: any JSON value): `db_set`, owned by the gateway.
    func put(family: String, subkey: String, _ request: HTTPRequest) throws(Problem) -> HTTPResponse {
        try checkWritable(family)
        guard !subkey.isEmpty else { throw .invalidRequest("the subkey is empty") }
        let value = try jsonBody(request, carrying: .databaseValue)
        try requireCarriable(databaseValue: value, family: family, subkey: subkey, bodyBytes: request.body.count)
        ownedKeys.insert(family, subkey)
        node.dbSet(family, subkey, value)
        return .json(200, ["family": .string(family), "subkey": .string(subkey), "value": value])
    }

    /// `DELETE /v1/db/{family}/{subkey}`: `db_del` of a key this gateway set.
    func delete(family: String, subkey: String, _ request: HTTPRequest) throws(Problem) -> HTTPResponse {
        try checkWritable(family)
        guard ownedKeys.remove(family, subkey) else {
            throw Problem(
                404, "key_not_owned", "Key not set by this gateway",
                "\(family)/\(subkey) was not set through this gateway; only the node that set a key can delete it (db_del)")
        }
        node.dbDel(family, [subkey])
        return .json(200, ["family": .string(family), "subkey": .string(subkey), "deleted": true])
    }

    /// `POST /v1/db/{family}/reg {"port": <mailbox name>, "value": …}`: `db_reg`, removed when the
    /// mailbox dies.
    func register(family: String, _ request: HTTPRequest) throws(Problem) -> HTTPResponse {
        try checkWritable(family)
        guard case .object(let o) = try jsonBody(request, carrying: .registration), case .string(let name)? = o["port"] else {
            throw .invalidRequest("the body must be {\"port\": \"<mailbox name>\", \"value\": ...}")
        }
        try refuseUnknownMembers(o, allowed: ["port", "value"])
        let mailbox = try mailbox(name)
        let value = o["value"] ?? .null
        try requireCarriable(databaseValue: value, family: family, subkey: mailbox.port.description, bodyBytes: request.body.count)
        node.dbReg(family, port: mailbox.port, value)
        ownedKeys.insert(family, mailbox.port.description)
        return .json(201, ["family": .string(family), "subkey": .string(mailbox.port.description), "value": value])
    }

    /// A long-poll's answer: the snapshot or changes, with `X-AEMP-Index`.
    static func response(_ state: FeedState) -> HTTPResponse {
        .json(200, state.body, headers: [("X-AEMP-Index", state.index)])
    }

    /// `GET /v1/db/{family}/watch`: SSE (`Accept: text/event-stream`) or long-poll (`index`, `wait`).
    func watch(family: String, _ request: HTTPRequest, _ exchange: Exchange) throws(Problem) -> HTTPResponse? {
        try checkFamily(family)
        let lastEventID = request.header("last-event-id") ?? request.query["last_event_id"]
        let feed: FamilyFeed
        do { feed = try feeds.feed(family) } catch { throw Problem(error) }
        let token = nextToken()
        if wantsEventStream(request) {
            // HEAD: the stream's header block, nothing subscribed.
            if isHead(request) { return .eventStream(EventStream(limit: 0)) }
            let stream = EventStream(limit: configuration.streamBacklog, budget: streamBudget)
            stream.onClose { feed.unsubscribe(token) }
            feed.whenSynced(token) { feed.subscribe(token, stream: stream, lastEventID: lastEventID) }
            return .eventStream(stream)
        }
        let wait = try waitArgument(request)
        // HEAD answers what is there now, never parked.
        let parks = wait > 0 && !isHead(request)
        let index = request.query["index"] ?? lastEventID
        // Until the first snapshot arrives (the master answers g_mon1), the request waits, bounded.
        let syncTimer = after(configuration.queryTimeout) { [self] in
            feed.unsubscribe(token)
            fail(exchange, .meshUnavailable("no snapshot of \(family.debugDescription) from the master within \(configuration.queryTimeout) s"))
        }
        exchange.onHangup {
            syncTimer.cancel()
            feed.unsubscribe(token)
            feed.forget(token)
        }
        feed.whenSynced(token) { [self] in
            syncTimer.cancel()
            let now = feed.poll(token, indexID: index, park: parks, timer: { self.after(Double(wait)) { feed.expire(token) } }) { answer in
                switch answer {
                case .state(let state): exchange.respond(Self.response(state))
                case .closed: exchange.respond(Problem.shuttingDown().response(requestID: exchange.request.requestID))
                }
            }
            if let now { exchange.respond(Self.response(now)) }
        }
        return nil
    }
}
