import AEMP
import NIOCore

/// `POST /v1/send` and `POST /v1/call`.
extension Gateway {

    /// `snd` of one message or a batch; everything is validated before anything is sent.
    func send(_ request: HTTPRequest) throws(Problem) -> HTTPResponse {
        Self.accepted(try send(body: try jsonBody(request, carrying: .send), bodyBytes: request.body.count))
    }

    /// The quick answer to `POST /v1/send` (see `Gateway.quickAnswer`, which checked access): the
    /// same work as `send` without the request object; nil whenever the general path must answer
    /// (any invalid or refused body: it answers them with a problem).
    func quickSend(body bytes: [UInt8]) -> HTTPResponse? {
        guard !bytes.isEmpty else { return nil }
        // A refusal is not counted here: the general path answers it, and counts it, again.
        guard let body = try? JSONCodec.decode(bytes), let count = try? send(body: body, bodyBytes: bytes.count, countingRefusals: false) else { return nil }
        return Self.accepted(count)
    }

    /// `{"accepted": n}`, written directly: the hottest answer of the gateway.
    static func accepted(_ count: Int) -> HTTPResponse {
        HTTPResponse(status: 202, headers: [("Content-Type", "application/json")], body: Array("{\"accepted\":\(count)}".utf8))
    }

    /// Validates a send body (one envelope or a batch) and sends it; returns how many were sent.
    private func send(body: Value, bodyBytes: Int, countingRefusals: Bool = true) throws(Problem) -> Int {
        let items: [Value]
        let batch: Bool
        switch body {
        case .array(let list):
            guard !list.isEmpty else { throw .invalidRequest("the batch is empty") }
            guard list.count <= configuration.maxBatch else {
                throw .invalidRequest("a batch holds at most \(configuration.maxBatch) messages, got \(list.count)")
            }
            items = list
            batch = true
        case .object:
            items = [body]
            batch = false
        default:
            throw .invalidRequest("the body must be {\"port\": \"node#name\", \"message\": [...]} or an array of them")
        }
        var sends: [(port: PortID, message: [Value])] = []
        sends.reserveCapacity(items.count)
        for (i, item) in items.enumerated() {
            do {
                let (port, message) = try envelope(item)
                try requireCarriable(message: message, to: port, bodyBytes: bodyBytes, counting: countingRefusals)
                sends.append((port, message))
            } catch {
                throw batch ? error.at(index: i) : error
            }
        }
        if master == nil, sends.contains(where: { $0.0.node != node.id }) { throw .meshUnavailable() }
        try refuseIfUnreachable(sends.lazy.map(\.port.node), batch: batch, counting: countingRefusals)
        try refuseIfBacklogged(sends.lazy.map(\.port.node), counting: countingRefusals)
        node.snd(batch: sends, bytes: bodyBytes)
        metrics.messagesSent.increment(by: Int64(sends.count))
        return sends.count
    }

    /// `{"port": …, "message": […]}` → destination and message. Members besides `port`, `message`
    /// and `also` are refused (422 unknown_field).
    func envelope(_ item: Value, also: [String] = []) throws(Problem) -> (PortID, [Value]) {
        guard case .object(let o) = item else {
            throw .invalidRequest("each message must be an object {\"port\": \"node#name\", \"message\": [...]}")
        }
        guard let port = o["port"] else { throw .invalidRequest("\"port\" is missing") }
        guard let given = o["message"] else {
            throw .invalidRequest("\"message\" is missing: an AEMP message is a JSON array, such as [\"ping\", 1]")
        }
        guard case .array(let message) = given else {
            throw .invalidRequest("\"message\" must be a JSON array (an AEMP message is a list), got \(given.kindDescription)")
        }
        // Both required members are there: any further one must be in `also`.
        if o.count > 2 { try refuseUnknownMembers(o, allowed: ["port", "message"] + also) }
        let destination = try Destination.parse(port, message: message, allowedTags: configuration.allowedNodePortTags)
        return (destination, message)
    }

    /// Backpressure: a destination node whose connection holds more than `peerBacklog` bytes
    /// unsent is reading slower than clients send. Taking more would only grow the backlog until
    /// the node cuts the peer off and loses all of it, so the whole request is refused (503,
    /// Retry-After) before anything of it is sent.
    func refuseIfBacklogged<S: Sequence<String>>(_ nodes: S, counting: Bool = true) throws(Problem) {
        let limit = configuration.peerBacklog
        var last: String?
        for id in nodes where id != node.id && id != last {
            last = id  // batches usually go to one node: ask once per run of the same node
            let bytes = node.unsentBytes(to: id)
            if bytes > limit {
                if counting { metrics.sendsRefusedBacklog.increment() }
                throw .peerBacklogged(id, bytes: bytes, limit: limit)
            }
        }
    }

    /// A message to a node the gateway knows it cannot reach would be dropped after the `202`:
    /// the whole request is refused instead (502 node_unreachable, naming the node and, in a
    /// batch, the first message to it), before anything of it is sent.
    func refuseIfUnreachable<S: Sequence<String>>(_ nodes: S, batch: Bool = false, counting: Bool = true) throws(Problem) {
        guard let (index, id) = mesh.firstUnreachable(nodes, me: node.id) else { return }
        if counting { metrics.sendsRefusedUnreachable.increment() }
        let problem = Problem.nodeUnreachable(id)
        throw batch ? problem.at(index: index) : problem
    }

    /// Messages to other nodes need the network: without a master they would be lost.
    func requireMesh(for ports: [PortID]) throws(Problem) {
        guard master == nil, ports.contains(where: { $0.node != node.id }) else { return }
        throw .meshUnavailable()
    }

    /// `cal`: a temporary reply port appended to the message; the first reply answers, a death
    /// of the target port (monitor) or the timeout ends the call.
    func call(_ request: HTTPRequest, _ exchange: Exchange) throws(Problem) -> HTTPResponse? {
        let body = try jsonBody(request, carrying: .call)
        let (target, message) = try envelope(body, also: ["timeout"])
        // The reply port's name is unguessable, like a mailbox's: a counter name (`node.port()`)
        // would let any client send to it and forge the answer to another client's call.
        let replyName = "call-\(randomToken(bytes: 17))"
        // The reply port is appended to the message: a string, so the packet nests no deeper.
        try requireCarriable(
            message: message, to: target, appended: [.string("\(node.id)#\(replyName)")], bodyBytes: request.body.count)
        var timeout = configuration.defaultCallTimeout
        if let t = body.objectValue?["timeout"] {
            guard let seconds = t.strictNumber, seconds > 0, seconds <= configuration.maxCallTimeout else {
                throw .invalidRequest("\"timeout\" must be a number of seconds in (0, \(configuration.maxCallTimeout)]")
            }
            timeout = seconds
        }
        try requireMesh(for: [target])
        try refuseIfUnreachable(CollectionOfOne(target.node))
        try refuseIfBacklogged(CollectionOfOne(target.node))
        let seconds = timeout
        // The node's cal: the reply port, the monitor on the target and the timer are released
        // by whichever ending comes first (a hang-up cancels it).
        let ended: @Sendable (Result<[Value], RequestError>) -> Void = { [self] result in
            let p: Problem
            switch result {
            case .success(let reply):
                return exchange.respond(.json(200, ["reply": .array(reply)]))
            case .failure(.portDied(let reason)):
                p =
                    reason.first == "transport_error"
                    ? Problem(
                        502, "node_unreachable", "Target node unreachable",
                        "\(target) died before it replied: \(reason.map(\.description).joined(separator: " "))", extra: ["reason": .array(reason)])
                    : Problem(
                        502, "port_died", "Target port died",
                        "\(target) died before it replied: \(reason.map(\.description).joined(separator: " "))", extra: ["reason": .array(reason)])
            case .failure(.timedOut):
                p = .timeout("no reply from \(target) within \(seconds) s")
            case .failure(.shutDown):
                p = .shuttingDown()
            case .failure(.cancelled):
                return  // the client hung up: answered 499 by the hang-up itself
            }
            log(request, p)
            exchange.respond(p.response(requestID: request.requestID))
        }
        let call: Call
        do { call = try calls.start(target, message, timeout: seconds, replyName: replyName, ended: ended) } catch { throw Problem(error) }
        // A client that hangs up before the reply frees its call slot, reply port and monitor.
        exchange.onHangup { call.cancel() }
        metrics.messagesSent.increment()
        return nil
    }
}


extension Problem {
    /// The same problem, naming the batch item it is about.
    func at(index: Int) -> Problem {
        var p = Problem(status, code, title, "message \(index): \(detail)", extra: extra)
        p.extra["index"] = .int(Int64(index))
        p.headers = headers
        return p
    }
}
