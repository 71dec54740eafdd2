import AEMP

/// An RFC 9457 problem: every error the gateway answers, with a stable machine-readable `code`.
public struct Problem: Error, Sendable, Equatable {
    public let status: Int
    /// Stable identifier clients can branch on (also the last part of `type`).
    public let code: String
    public let title: String
    public let detail: String
    /// Additional members (e.g. `reason` of a dead port, `limit`).
    public var extra: [String: Value] = [:]
    /// Extra response headers (e.g. `Retry-After`).
    public var headers: [String: String] = [:]

    public init(_ status: Int, _ code: String, _ title: String, _ detail: String, extra: [String: Value] = [:]) {
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.extra = extra
    }

    public static func == (a: Problem, b: Problem) -> Bool {
        a.status == b.status && a.code == b.code && a.detail == b.detail && a.extra == b.extra
    }

    /// The `application/problem+json` response for a request.
    func response(requestID: String) -> HTTPResponse {
        var body = extra
        body["type"] = .string("urn:aemp-gateway:problem:\(code)")
        body["title"] = .string(title)
        body["status"] = .int(Int64(status))
        body["detail"] = .string(detail)
        body["code"] = .string(code)
        body["request_id"] = .string(requestID)
        var headers = [("Content-Type", "application/problem+json")]
        for (k, v) in self.headers.sorted(by: { $0.key < $1.key }) { headers.append((k, v)) }
        return HTTPResponse(status: status, headers: headers, body: JSONBody.encode(.object(body)))
    }
}

extension Problem {
    static func malformedJSON(_ why: String) -> Problem {
        Problem(400, "malformed_json", "Malformed JSON", "The request body is not valid JSON: \(why)")
    }
    static func invalidRequest(_ detail: String) -> Problem {
        Problem(422, "invalid_request", "Invalid request", detail)
    }
    /// A request member its schema does not list (`field` names it).
    static func unknownField(_ name: String, allowed: [String]) -> Problem {
        Problem(
            422, "unknown_field", "Unknown member",
            "the member \(name.debugDescription) is not one this request takes (\(allowed.map(\.debugDescription).joined(separator: ", "))); nothing was done",
            extra: ["field": .string(name)])
    }
    /// `GET /v1/db/{family}/{subkey}` of a subkey the family does not have.
    static func unknownKey(family: String, subkey: String) -> Problem {
        Problem(
            404, "unknown_key", "Unknown key",
            "the family \(family.debugDescription) has no subkey \(subkey.debugDescription) now (a key vanishes with the node that set it)")
    }
    static func invalidPort(_ detail: String) -> Problem {
        Problem(422, "invalid_port", "Invalid port ID", detail)
    }
    /// `port` (as given) names a node port; `node` is its node when the text has no `#` at all,
    /// which is most often a port ID missing its `#name`.
    static func nodePortForbidden(_ port: String, bareNode node: String? = nil) -> Problem {
        let what =
            node.map { "\(port.debugDescription) has no '#', so it names the node port of node \($0.debugDescription) (a port ID is node#name: did you mean \("\($0)#<port name>".debugDescription)?)" }
            ?? "\(port.debugDescription) names a node port (empty port name)"
        return Problem(
            403, "node_port_forbidden", "Node ports cannot be addressed",
            "\(what); node ports run requests such as eval, so the gateway never sends to them")
    }
    static func unknownMailbox(_ name: String) -> Problem {
        Problem(404, "unknown_mailbox", "Unknown mailbox", "No mailbox named \(name.debugDescription) exists on this gateway")
    }
    static func mailboxGone(_ name: String, _ why: String, reason: Value? = nil) -> Problem {
        var p = Problem(410, "mailbox_gone", "Mailbox gone", "Mailbox \(name.debugDescription) \(why)")
        if let reason { p.extra["reason"] = reason }
        return p
    }
    static func notFound(_ path: String) -> Problem {
        Problem(404, "route_not_found", "Not found", "No route matches \(path.debugDescription)")
    }
    static func methodNotAllowed(_ method: String, allowed: [String]) -> Problem {
        var p = Problem(
            405, "method_not_allowed", "Method not allowed",
            "\(method) is not allowed here; use \(allowed.joined(separator: ", "))")
        p.headers["Allow"] = allowed.joined(separator: ", ")
        return p
    }
    static func tooLarge(limit: Int) -> Problem {
        Problem(
            413, "body_too_large", "Request body too large", "The request body exceeds the limit of \(limit) bytes",
            extra: ["limit": .int(Int64(limit))])
    }
    /// More query arguments than `HTTPServerSettings.maxQueryArguments` (the query is part of the URI).
    static func tooManyArguments(_ count: Int, limit: Int) -> Problem {
        Problem(
            414, "too_many_arguments", "Too many query arguments",
            "The URL has \(count) query arguments; the gateway takes at most \(limit)", extra: ["limit": .int(Int64(limit))])
    }
    /// A body in transfer codings besides chunked (RFC 9112 6.1); the connection is closed.
    static func unsupportedTransferCoding(_ codings: String) -> Problem {
        Problem(
            501, "unsupported_transfer_coding", "Transfer coding not supported",
            "The body is sent in the transfer coding \(codings.debugDescription) besides chunked; the gateway takes chunked alone (or a Content-Length); the connection is closed")
    }
    /// A message or database value nested deeper than Perl decodes in the packet that carries it
    /// (`MeshLimits`): refused before anything is sent. `depth` and `limit` count `what`'s levels.
    static func tooDeep(_ what: String, depth: Int, limit: Int) -> Problem {
        Problem(
            422, "too_deep", "Nested too deep for the network",
            "\(what) nests \(depth) levels deep; the network carries at most \(limit) (Perl's decoders stop at "
                + "\(MeshLimits.maxDepth) levels per packet and lose everything after such a packet); nothing was sent",
            extra: ["depth": .int(Int64(depth)), "limit": .int(Int64(limit))])
    }
    /// A message or database value whose packet would exceed `--max-packet` bytes: a Swift peer
    /// cuts off a connection that sends it. Refused before anything is sent.
    static func messageTooLarge(_ what: String, size: Int, limit: Int) -> Problem {
        Problem(
            413, "message_too_large", "Message too large for the network",
            "\(what) makes a \(size)-byte packet; nodes accept at most \(limit) bytes (--max-packet); nothing was sent",
            extra: ["size": .int(Int64(size)), "limit": .int(Int64(limit))])
    }
    static func overloaded(_ what: String, retryAfter: Int = 1) -> Problem {
        var p = Problem(503, "over_capacity", "Over capacity", what)
        p.headers["Retry-After"] = String(retryAfter)
        return p
    }
    static func meshUnavailable(_ detail: String = "The gateway is not attached to a master node of the AEMP network") -> Problem {
        var p = Problem(503, "mesh_unavailable", "AEMP network not reachable", detail)
        p.headers["Retry-After"] = "1"
        return p
    }
    static func peerBacklogged(_ nodeID: String, bytes: Int, limit: Int) -> Problem {
        var p = Problem(
            503, "peer_backlogged", "Destination node is not keeping up",
            "node \(nodeID) has \(bytes) bytes sent to it that it has not read yet (limit \(limit)); "
                + "nothing of this request was sent, retry later",
            extra: ["node": .string(nodeID)])
        p.headers["Retry-After"] = "1"
        return p
    }
    /// A destination node the gateway knows it cannot reach (`Reachability.knownUnreachable`).
    static func nodeUnreachable(_ nodeID: String) -> Problem {
        Problem(
            502, "node_unreachable", "Target node unreachable",
            "node \(nodeID) is not connected to this gateway and the network's directory ('l) has no address for it: "
                + "it is down, it never joined, or it is a private node connected elsewhere; nothing of this request was sent",
            extra: ["node": .string(nodeID), "reason": ["transport_error", .string(nodeID), "no known address"]])
    }
    static func timeout(_ detail: String) -> Problem {
        Problem(504, "timeout", "Timed out", detail)
    }
    static func shuttingDown() -> Problem {
        var p = Problem(503, "shutting_down", "Shutting down", "The gateway is shutting down")
        p.headers["Retry-After"] = "1"
        return p
    }
}

/// The services' errors, as HTTP problems: the one place a domain error gets its status and code.
extension Problem {
    init(_ error: MailboxError) {
        switch error {
        case .invalidName(let name):
            self.init(
                422, "invalid_mailbox_name", "Invalid mailbox name",
                "\(name.debugDescription) is not a mailbox name (letters, digits, '.', '_', '-')")
        case .unknown(let name): self = .unknownMailbox(name)
        case .gone(let name, let why, let reason): self = .mailboxGone(name, why, reason: reason)
        case .full(let limit): self = .overloaded("the gateway holds its maximum of \(limit) mailboxes")
        case .portRefused: self.init(500, "internal_error", "Internal error", "could not create a port for the mailbox")
        }
    }

    init(_ error: FeedError) {
        switch error {
        case .full(let family, let limit):
            self = .overloaded("family \(family.debugDescription) has its maximum of \(limit) subscribers")
        }
    }

    init(_ error: CallError) {
        switch error {
        case .tooMany(let limit): self = .overloaded("too many calls in flight (\(limit))")
        case .portRefused: self.init(500, "internal_error", "Internal error", "could not create a reply port for the call")
        }
    }
}
