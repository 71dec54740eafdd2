import AEMP

/// The gateway's routes: the only place one exists (openapi/openapi.yaml is the contract, and
/// `RouteTableTests` holds the two equal, every path and method both ways).
extension Gateway {
    static let routes = RouteTable([
        Route("GET", "/healthz", .open) { _, _, _, _ in .json(200, ["status": "ok"]) },
        Route("GET", "/readyz", .open) { g, _, _, _ throws(Problem) in try g.readiness() },
        Route("GET", "/metrics", .metrics) { g, _, e, _ in g.metricsResponse(e) },
        Route("GET", "/openapi.json", .open) { g, _, _, _ in g.openAPIResponse() },
        Route("POST", "/v1/send", .write, quick: { g, body in g.quickSend(body: body) }) {
            g, r, _, _ throws(Problem) in try g.send(r)
        },
        Route("POST", "/v1/call", .write) { g, r, e, _ throws(Problem) in try g.call(r, e) },
        Route("POST", "/v1/ports", .write) { g, r, _, _ throws(Problem) in try g.createMailbox(r) },
        Route("GET", "/v1/ports/{name}", .read) { g, _, _, p throws(Problem) in try g.mailboxInfo(p[0]) },
        Route("DELETE", "/v1/ports/{name}", .write) { g, r, _, p throws(Problem) in try g.deleteMailbox(p[0], r) },
        Route("GET", "/v1/ports/{name}/messages", .read) { g, r, e, p throws(Problem) in try g.readMailbox(p[0], r, e) },
        Route("POST", "/v1/ports/{name}/monitor", .write) { g, r, _, p throws(Problem) in try g.monitorFromMailbox(p[0], r) },
        Route("GET", "/v1/db/{family}", .read) { g, r, e, p throws(Problem) in try g.query("g_db_family", family: p[0], r, e) },
        Route("GET", "/v1/db/{family}/keys", .read) { g, r, e, p throws(Problem) in try g.query("g_db_keys", family: p[0], r, e) },
        Route("GET", "/v1/db/{family}/values", .read) { g, r, e, p throws(Problem) in try g.query("g_db_values", family: p[0], r, e) },
        Route("GET", "/v1/db/{family}/watch", .read) { g, r, e, p throws(Problem) in try g.watch(family: p[0], r, e) },
        Route("POST", "/v1/db/{family}/reg", .write) { g, r, _, p throws(Problem) in try g.register(family: p[0], r) },
        Route("GET", "/v1/db/{family}/{subkey}", .read) { g, r, e, p throws(Problem) in try g.getKey(family: p[0], subkey: p[1], r, e) },
        Route("PUT", "/v1/db/{family}/{subkey}", .write) { g, r, _, p throws(Problem) in try g.put(family: p[0], subkey: p[1], r) },
        Route("DELETE", "/v1/db/{family}/{subkey}", .write) { g, r, _, p throws(Problem) in try g.delete(family: p[0], subkey: p[1], r) },
        Route("GET", "/v1/node", .read) { g, r, e, _ in g.nodeInfo(r, e) },
        Route("GET", "/v1/nodes", .read) { g, r, e, _ in g.nodeList(r, e) },
        Route("GET", "/v1/nodes/events", .read) { g, r, _, _ in g.nodeEvents(r) },
    ])

    /// Routes a request; returns the response, or nil when the answer comes later. HEAD is routed
    /// as GET (RFC 9110 9.3.2: the server sends GET's header block alone); the routes that wait or
    /// stream answer it at once, changing nothing (`isHead`). `OPTIONS` on any path is the CORS
    /// preflight. A request for a path that is not open needs a token before it learns whether
    /// the path exists (401 before 404 and 405).
    func route(_ request: HTTPRequest, _ exchange: Exchange) throws(Problem) -> HTTPResponse? {
        let segments = try pathSegments(request.path)
        let method = isHead(request) ? "GET" : request.method
        do { try browser.checkHost(request.header("host")) } catch {
            metrics.refusedHost.increment()
            throw error
        }
        if method == "OPTIONS" {
            exchange.route.store(Self.routes.label(method: "GET", segments: segments), ordering: .relaxed)
            return cors.preflight()
        }
        let match = Self.routes.match(method: method, segments: segments)
        let access: RouteAccess
        switch match {
        case .route(let route, let path, _):
            exchange.route.store(path, ordering: .relaxed)
            access = route.access
        case .methodNotAllowed(let path, _):
            exchange.route.store(path, ordering: .relaxed)
            access = Self.routes.access(ofPath: path)  // a health check's 405 needs no token
        case .notFound:
            exchange.route.store(Self.routes.paths.count, ordering: .relaxed)
            access = method == "GET" ? .read : .write
        }
        do { try browser.checkOrigin(method: request.method, origin: request.header("origin"), host: request.header("host")) } catch {
            metrics.refusedOrigin.increment()
            throw error
        }
        try checkAccess(access, method: request.method, authorization: request.header("authorization"))
        switch match {
        case .route(let route, _, let parameters):
            return try route.handler(self, request, exchange, parameters)
        case .methodNotAllowed(_, let allowed):
            throw .methodNotAllowed(request.method, allowed: allowed.flatMap { $0 == "GET" ? ["GET", "HEAD"] : [$0] })
        case .notFound:
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

    /// Who may use a route (`RouteAccess`), checked the same way on the general and the quick
    /// path: bearer tokens, when configured, for every route but health checks (and `/metrics`
    /// when `--metrics-public`); read-only tokens may only read.
    func checkAccess(_ access: RouteAccess, method: String, authorization: @autoclosure () -> String?) throws(Problem) {
        switch access {
        case .open: return
        case .metrics: if configuration.metricsPublic { return }
        case .read, .write: break
        }
        try authentication.authorize(method: method, authorization: authorization())
    }

    private func openAPIResponse() -> HTTPResponse {
        HTTPResponse(status: 200, headers: [("Content-Type", "application/json")], body: openAPI)
    }

    // MARK: - Request helpers

    /// Refuses a request object with a member its schema does not list (422 unknown_field, naming
    /// the first such member in key order): a misspelt option must not be silently ignored.
    func refuseUnknownMembers(_ object: [String: Value], allowed: [String]) throws(Problem) {
        guard object.keys.contains(where: { !allowed.contains($0) }) else { return }
        let unknown = object.keys.filter { !allowed.contains($0) }.sorted()
        throw .unknownField(unknown[0], allowed: allowed)
    }

    /// Parses the body as JSON (jansson). A body that puts what it `carries` on the mesh and nests
    /// deeper than the parser goes is 422 too_deep (the mesh carries far less), else 400.
    func jsonBody(_ request: HTTPRequest, carrying carries: MeshInput? = nil) throws(Problem) -> Value {
        do { try browser.checkContentType(request.header("content-type")) } catch {
            metrics.refusedContentType.increment()
            throw error
        }
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
