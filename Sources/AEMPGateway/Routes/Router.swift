import AEMP

/// Maps method and path onto the route handlers (openapi/openapi.yaml is the contract).
extension Gateway {

    /// Routes a request; returns the response, or nil when the answer comes later. HEAD is routed
    /// as GET (RFC 9110 9.3.2: the server sends GET's header block alone); the routes that wait or
    /// stream answer it at once, changing nothing (`isHead`).
    func route(_ request: HTTPRequest, _ exchange: Exchange) throws(Problem) -> HTTPResponse? {
        let segments = try pathSegments(request.path)
        let method = isHead(request) ? "GET" : request.method
        exchange.route.store(RouteTemplate(method: method, segments: segments).rawValue, ordering: .relaxed)

        if method == "OPTIONS" { return preflight(request) }
        switch segments {
        case ["healthz"], ["readyz"], ["openapi.json"]:
            try allow(request, ["GET"])
            if segments == ["healthz"] { return .json(200, ["status": "ok"]) }
            if segments == ["readyz"] { return try readiness() }
            return openAPIResponse()
        case ["metrics"]:
            // Scraped without a token only when the operator says so (`metricsPublic`).
            if !configuration.metricsPublic { try authorize(request) }
            try allow(request, ["GET"])
            return metricsResponse(exchange)
        default:
            break
        }
        try authorize(request)

        switch segments.first == "v1" ? Array(segments.dropFirst()) : nil {
        case ["send"]?:
            try allow(request, ["POST"])
            return try send(request)
        case ["call"]?:
            try allow(request, ["POST"])
            return try call(request, exchange)
        case ["ports"]?:
            try allow(request, ["POST"])
            return try createMailbox(request)
        case let s? where s.count == 2 && s[0] == "ports":
            try allow(request, ["GET", "DELETE"])
            return method == "GET" ? try mailboxInfo(s[1]) : try deleteMailbox(s[1], request)
        case let s? where s.count == 3 && s[0] == "ports" && s[2] == "messages":
            try allow(request, ["GET"])
            return try readMailbox(s[1], request, exchange)
        case let s? where s.count == 3 && s[0] == "ports" && s[2] == "monitor":
            try allow(request, ["POST"])
            return try monitorFromMailbox(s[1], request)
        case let s? where s.count == 2 && s[0] == "db":
            try allow(request, ["GET"])
            return try query("g_db_family", family: s[1], request, exchange)
        case let s? where s.count == 3 && s[0] == "db" && (s[2] == "keys" || s[2] == "values") && method == "GET":
            return try query(s[2] == "keys" ? "g_db_keys" : "g_db_values", family: s[1], request, exchange)
        case let s? where s.count == 3 && s[0] == "db" && s[2] == "watch" && method == "GET":
            return try watch(family: s[1], request, exchange)
        case let s? where s.count == 3 && s[0] == "db" && s[2] == "reg" && method == "POST":
            return try register(family: s[1], request)
        case let s? where s.count == 3 && s[0] == "db":
            // keys/values/watch also answer GET, reg also POST (matched above): Allow says so.
            let also = ["keys", "values", "watch"].contains(s[2]) ? ["GET"] : s[2] == "reg" ? ["POST"] : []
            try allow(request, also + ["PUT", "DELETE"])
            return method == "PUT" ? try put(family: s[1], subkey: s[2], request) : try delete(family: s[1], subkey: s[2], request)
        case ["node"]?:
            try allow(request, ["GET"])
            return nodeInfo(request, exchange)
        case ["nodes"]?:
            try allow(request, ["GET"])
            return nodeList(request, exchange)
        case ["nodes", "events"]?:
            try allow(request, ["GET"])
            return nodeEvents(request)
        default:
            throw .notFound(request.path)
        }
    }

    /// Splits the raw path and percent-decodes each segment (so `%2F` stays inside a subkey).
    func pathSegments(_ raw: String) throws(Problem) -> [String] {
        if !raw.utf8.contains(UInt8(ascii: "%")) {
            // Nothing encoded (the common case): the segments are the text between slashes.
            return raw.utf8.split(separator: UInt8(ascii: "/")).map { String(Substring($0)) }
        }
        var out: [String] = []
        for part in raw.split(separator: "/", omittingEmptySubsequences: true) {
            guard let decoded = Destination.percentDecoded(String(part)) else {
                throw Problem(400, "invalid_path", "Invalid path", "The path segment \(String(part).debugDescription) is not valid percent-encoded UTF-8")
            }
            out.append(decoded)
        }
        return out
    }

    /// Refuses `method` unless `allowed` lists it; GET allows HEAD too (routed as GET), and `Allow`
    /// lists it after GET.
    func allow(_ request: HTTPRequest, _ allowed: [String]) throws(Problem) {
        guard !allowed.contains(isHead(request) ? "GET" : request.method) else { return }
        throw .methodNotAllowed(request.method, allowed: allowed.flatMap { $0 == "GET" ? ["GET", "HEAD"] : [$0] })
    }

    /// Whether the request is a HEAD: answered as GET would be, without the body, and never waiting
    /// (long-polls answer what is there now, without taking it; streams send their header block).
    func isHead(_ request: HTTPRequest) -> Bool { request.method == "HEAD" }

    /// Bearer tokens, when configured: every route but health checks needs one; read-only
    /// tokens may only read.
    func authorize(_ request: HTTPRequest) throws(Problem) {
        try authorize(method: request.method, authorization: request.header("authorization"))
    }

    func authorize(method: String, authorization: String?) throws(Problem) {
        guard !configuration.tokens.isEmpty else { return }
        guard let header = authorization, header.lowercased().hasPrefix("bearer "),
            let scope = lookupToken(String(header.dropFirst(7)))  // constant time, see lookupToken
        else {
            var p = Problem(401, "unauthorized", "Unauthorized", "A valid bearer token is required (Authorization: Bearer <token>)")
            p.headers["WWW-Authenticate"] = "Bearer realm=\"aemp-gateway\""
            throw p
        }
        if scope == .readOnly && method != "GET" && method != "HEAD" {
            throw Problem(403, "read_only_token", "Read-only token", "This token may only read (GET)")
        }
    }

    /// Compares the presented token with every configured one, always all of them, each with
    /// `ConstantTime.equal` (never String equality or a dictionary lookup): the time taken tells
    /// neither which token matched nor where, or by how many characters, a wrong one differs. The
    /// configured tokens are reduced once (`tokenDigests`), the presented one once per request.
    private func lookupToken(_ presented: String) -> TokenScope? {
        let given = ConstantTime.digest(Destination.trimmed(presented).utf8)
        var found: TokenScope?
        for (token, scope) in tokenDigests where ConstantTime.equal(token, given) {
            found = scope
        }
        return found
    }

    private func preflight(_ request: HTTPRequest) -> HTTPResponse {
        var headers = [("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS")]
        headers.append(("Access-Control-Allow-Headers", "Authorization, Content-Type, Last-Event-ID"))
        headers.append(("Access-Control-Max-Age", "600"))
        return HTTPResponse(status: 204, headers: headers)
    }

    private func openAPIResponse() -> HTTPResponse {
        HTTPResponse(status: 200, headers: [("Content-Type", "application/json")], body: openAPI)
    }

    // MARK: - Request helpers

    /// Parses the body as JSON (jansson). A body that puts what it `carries` on the mesh and nests
    /// deeper than the parser goes is 422 too_deep (the mesh carries far less), else 400.
    func jsonBody(_ request: HTTPRequest, carrying carries: MeshInput? = nil) throws(Problem) -> Value {
        guard !request.body.isEmpty else { throw .malformedJSON("the body is empty") }
        do {
            return try JSONCodec.decode(request.body)
        } catch {
            if let carries, case .tooDeep = error {
                metrics.refusedTooDeep.increment()
                throw carries.tooDeep(body: request.body)
            }
            throw .malformedJSON("\(error)")
        }
    }

    /// An integer query argument within bounds (absent = `default`).
    func intArgument(_ request: HTTPRequest, _ name: String, default value: Int, range: ClosedRange<Int>) throws(Problem) -> Int {
        guard let raw = request.query[name] else { return value }
        guard let n = Int(raw), range.contains(n) else {
            throw .invalidRequest("query argument \(name) must be an integer in \(range.lowerBound)...\(range.upperBound), got \(raw.debugDescription)")
        }
        return n
    }

    /// The long-poll `wait` in seconds: default `defaultWait`, capped at `maxWait` (larger values
    /// are lowered, not refused).
    func waitArgument(_ request: HTTPRequest) throws(Problem) -> Int {
        let wait = try intArgument(request, "wait", default: configuration.defaultWait, range: 0...Int(Int32.max))
        return min(wait, configuration.maxWait)
    }

    /// Whether the client asked for an event stream.
    func wantsEventStream(_ request: HTTPRequest) -> Bool {
        request.header("accept")?.contains("text/event-stream") == true
    }
}
