import AEMP
import CMicroHTTPD
import CoreMetrics
import Logging
import NIOCore
import NIOPosix
import Prometheus
import Synchronization

/// The HTTP/JSON gateway: an AEMP node (private, or standalone seed) plus libmicrohttpd servers,
/// wiring the services to the routes.
///
/// The parts, each the one owner of its state:
/// - services that speak the domain: `Mailboxes`, `Feeds`, `Calls`, `OwnedKeys`, `MeshView`,
///   `MemoryKeeper`; the route files (`Routes/`) turn HTTP into their calls and their results
///   into responses, and `Gateway.routes` is the only place a route exists;
/// - cross-cutting concerns, one place each (`Middleware/`): `Authentication`, `CORSPolicy`,
///   `RequestLog`, request metrics (`answered`), request IDs (`HTTPServer`); the quick path of
///   `POST /v1/send` passes through the same checks (`quickAnswer`);
/// - the servers (`Servers`).
///
/// Threads: libmicrohttpd calls `handle` on its polling thread; the node runs on its event loop;
/// timers (long-poll deadlines, heartbeats, expiry) run on `timers`. State shared between them
/// lives in small lock-protected objects, and every hand-off is a message: nothing here blocks
/// libmicrohttpd's thread on the network.
public final class Gateway: HTTPHandler, Sendable {
    public let configuration: GatewayConfiguration
    public let node: Node
    let logger: Logger
    let timers: any EventLoop
    /// Long-poll, call and query deadlines (on `timers`).
    let timeouts: Timeouts

    // Services.
    let mailboxes: Mailboxes
    let feeds: Feeds
    let calls: Calls
    let ownedKeys = OwnedKeys()
    let mesh = MeshView()
    let memory = MemoryKeeper()

    // Cross-cutting concerns.
    let authentication: Authentication
    let cors: CORSPolicy
    let browser: BrowserSafety
    let requestLog: RequestLog
    let metrics = GatewayMetrics()

    /// The libmicrohttpd daemons.
    struct Servers {
        var main: HTTPServer?
        var extra: [HTTPServer] = []
        /// The admin listener (`--admin-http`), apart from `all`: its connections count against
        /// no client limit and in no client gauge.
        var admin: HTTPServer?

        var all: [HTTPServer] { (main.map { [$0] } ?? []) + extra }
    }
    let servers = Locked(Servers())
    /// The unsent bytes of all event streams together (`--max-stream-bytes`).
    let streamBudget: ByteBudget
    let isStopping = Atomic<Bool>(false)
    private let tokens = Atomic<UInt64>(0)
    let openAPI: [UInt8]

    /// Creates the gateway (nothing runs until `start`).
    public init(configuration: GatewayConfiguration, openAPIDocument: [UInt8] = Array(OpenAPIDocument.json.utf8)) throws {
        var c = configuration
        if c.isStandalone {
            c.node.binds = [c.standaloneBind]
            c.node.seeds = [c.standaloneBind]
        }
        self.configuration = c
        self.streamBudget = ByteBudget(limit: c.maxStreamBytes)
        self.authentication = Authentication(tokens: c.tokens)
        self.cors = CORSPolicy(origins: c.corsOrigins)
        self.browser = BrowserSafety(
            allowedHosts: c.allowedHosts, listenAddresses: [c.http.address] + c.additionalHTTPAddresses + (c.adminHTTPAddress.map { [$0] } ?? []),
            cors: cors, anyContentType: c.allowAnyContentType)
        self.requestLog = RequestLog(logger: c.logger)
        self.logger = c.logger
        JSONBody.conversionLog.use(c.logger)
        let node = try Node(configuration: c.node)
        self.node = node
        self.timers = MultiThreadedEventLoopGroup.singleton.next()
        self.timeouts = Timeouts(loop: timers)
        // A mailbox's db_reg keys go with its port: forget them when it closes.
        let owned = ownedKeys
        self.mailboxes = Mailboxes(configuration: c, node: node, metrics: metrics) { owned.forget(subkey: $0.description) }
        self.feeds = Feeds(configuration: c, node: node)
        self.calls = Calls(node: node, limit: c.maxPendingCalls)
        self.openAPI = openAPIDocument
    }

    /// Starts the node, then the HTTP server. Returns the HTTP address (with the real port).
    @discardableResult
    public func start() async throws -> String {
        if let certificate = configuration.node.certificate {
            // Notice, like "gateway ready": an operator who turned TLS on sees it at the default level.
            logger.notice(
                "mesh TLS on",
                metadata: [
                    "certificate": "\(certificate.source)", "subject": "\(certificate.subject)",
                    "fingerprint": "\(certificate.fingerprint)", "valid_until": "\(MeshCertificate.format(certificate.notValidAfter))",
                    "secret": "\(configuration.node.secret.isEmpty ? "none (TLS only)" : "set (peers without the certificate may use it)")",
                ])
            if let problem = certificate.validityProblem() {
                logger.warning("mesh certificate not valid now", metadata: ["problem": "\(problem)"])
            }
        }
        try await node.start()
        mesh.follow(node, metrics: metrics, logger: logger)
        if !configuration.isStandalone {
            // A private node is reachable only over connections it opened (aemp-protocol §9).
            node.keepConnectedToPublicNodes()
        }
        var http = configuration.http
        http.logger = logger
        // The node calls of a polling pass (its sends, above all) reach the node's loop together.
        http.pass = { [node] body in node.batch(body) }
        let s = try HTTPServer(settings: http, handler: self)
        servers.withLock { $0.main = s }
        do {
            for address in configuration.additionalHTTPAddresses {
                var more = http
                more.address = address
                let extra = try HTTPServer(settings: more, handler: self)
                servers.withLock { $0.extra.append(extra) }
            }
            if let address = configuration.adminHTTPAddress {
                var admin = http
                admin.address = address
                admin.maxConnections = configuration.adminMaxConnections
                let a = try HTTPServer(settings: admin, handler: AdminHandler(gateway: self))
                servers.withLock { $0.admin = a }
            }
        } catch {
            for server in allServers { server.stop() }
            servers.withLock { $0 = Servers() }
            throw error
        }
        scheduleHousekeeping()
        logger.notice(
            "gateway ready",
            metadata: [
                "node": "\(node.id)", "http": "\(s.boundAddress)",
                "mode": "\(configuration.isStandalone ? "standalone seed on \(configuration.standaloneBind)" : "private node")",
            ])
        return s.boundAddress
    }

    /// The HTTP address, once started.
    public var httpAddress: String? { servers.withLock { $0.main?.boundAddress } }

    /// Every HTTP address served (the first is `httpAddress`).
    public var httpAddresses: [String] { allServers.map(\.boundAddress) }

    /// Where the admin listener listens (with its real port), if there is one.
    public var adminHTTPAddress: String? { servers.withLock { $0.admin?.boundAddress } }

    /// The client-facing libmicrohttpd daemons, one per listen address.
    var allServers: [HTTPServer] { servers.withLock { $0.all } }

    /// Stops accepting, answers parked requests, ends streams with a final event, leaves the mesh.
    public func shutdown() async {
        guard !isStopping.exchange(true, ordering: .relaxed) else { return }
        let final = ServerSentEvent.encode(id: nil, event: "shutdown", data: ["detail": "the gateway is shutting down"])
        feeds.close(final: final)
        mesh.close(final: final)
        // The servers hold this gateway as their handler: let go of them, or neither is ever freed.
        let stopping = servers.withLock { s in
            defer { s = Servers() }
            return s
        }
        for s in stopping.all { s.stop(finalEvent: final) }
        stopping.admin?.stop(finalEvent: final)
        await node.shutdown()
    }

    func nextToken() -> UInt64 { tokens.wrappingAdd(1, ordering: .relaxed).newValue }

    var master: String? { mesh.master }

    /// The gateway's own metrics registry (served at `/metrics`); an embedding program may add
    /// its own metrics to it.
    public var metricsRegistry: PrometheusCollectorRegistry { metrics.registry }

    /// A swift-metrics factory writing into `metricsRegistry`: pass it to `MetricsSystem.bootstrap`
    /// (once per process) to have swift-metrics users export through this gateway's `/metrics`.
    public var metricsFactory: any MetricsFactory { PrometheusMetricsFactory(registry: metrics.registry) }

    // MARK: - HTTPHandler

    public func bodyTooLarge(_ request: HTTPRequest, limit: Int) -> HTTPResponse {
        requestLog.tooLarge(request)
        return Problem.tooLarge(limit: limit).response(requestID: request.requestID)
    }

    public func tooManyConnections(_ request: HTTPRequest, limit: Int) -> HTTPResponse {
        let problem = Problem.overloaded("the gateway serves at most \(limit) connections; try again shortly")
        log(request, problem)
        return problem.response(requestID: request.requestID)
    }

    public func ambiguousFraming(_ request: HTTPRequest, _ why: String) -> HTTPResponse {
        let problem = Problem(
            400, "malformed_request", "Malformed request", "Where the body ends is ambiguous: \(why); the connection is closed")
        log(request, problem)
        return problem.response(requestID: request.requestID)
    }

    public func clientClosed(_ request: HTTPRequest) -> HTTPResponse {
        Problem(499, "client_closed", "Client closed the connection", "The client hung up before the answer").response(
            requestID: request.requestID)
    }

    public func unsupportedTransferCoding(_ request: HTTPRequest, _ codings: String) -> HTTPResponse {
        let problem = Problem.unsupportedTransferCoding(codings)
        log(request, problem)
        return problem.response(requestID: request.requestID)
    }

    public func tooManyArguments(_ request: HTTPRequest, count: Int, limit: Int) -> HTTPResponse {
        let problem = Problem.tooManyArguments(count, limit: limit)
        log(request, problem)
        return problem.response(requestID: request.requestID)
    }

    public func shuttingDown(_ request: HTTPRequest) -> HTTPResponse {
        Problem.shuttingDown().response(requestID: request.requestID)
    }

    public func commonHeaders(for request: HTTPRequest) -> [(String, String)] {
        cors.isOff ? [] : cors.headers(origin: request.header("origin"))
    }

    public func answered(_ exchange: Exchange, _ response: HTTPResponse) {
        var label = exchange.route.load(ordering: .relaxed)
        if label < 0 {
            // Answers given before routing (413, over capacity, shutting down) are matched here, once.
            let segments = (try? pathSegments(exchange.request.path)) ?? []
            label = segments.isEmpty ? Self.routes.paths.count : Self.routes.label(method: exchange.request.method, segments: segments)
        }
        metrics.requestAnswered(
            label, status: response.status, elapsed: ContinuousClock.now - exchange.received,
            bodyBytesIn: exchange.request.body.count, bodyBytesOut: response.body.count)
    }

    public func streamed(bytes: Int) {
        metrics.responseBytes.increment(by: Int64(bytes))
    }

    /// The quick path (`Route.quick`): the same access check as the general path
    /// (`checkAccess`); whenever CORS headers could be due, or anything is refused, the general
    /// path answers instead, so the two cannot disagree.
    public func quickAnswer(method: String, path: UnsafePointer<CChar>, body: [UInt8], header: (String) -> String?)
        -> HTTPResponse?
    {
        guard cors.isOff, let (route, label) = Self.routes.quickRoute(method: method, path: path), let quick = route.quick else { return nil }
        let start = ContinuousClock.now
        // The browser checks (any page's Origin on this write goes the general way, which decides).
        guard header("Origin") == nil, browser.anyHost || (try? browser.checkHost(header("Host"))) != nil,
            browser.anyContentType || BrowserSafety.isJSON(header("Content-Type"))
        else { return nil }
        if !authentication.isOff {
            guard (try? checkAccess(route.access, method: method, authorization: header("Authorization"))) != nil else { return nil }
        }
        guard let response = quick(self, body) else { return nil }
        metrics.requestAnswered(
            label, status: response.status, elapsed: ContinuousClock.now - start, bodyBytesIn: body.count, bodyBytesOut: response.body.count)
        return response
    }

        public func handle(_ request: HTTPRequest, _ exchange: Exchange) {
        do {
            if let response = try route(request, exchange) { exchange.respond(response) }
        } catch {
            fail(exchange, error)
        }
    }

    /// Answers with a problem and logs it.
    func fail(_ exchange: Exchange, _ problem: Problem) {
        log(exchange.request, problem)
        exchange.respond(problem.response(requestID: exchange.request.requestID))
    }

    /// One log line per refused request (`RequestLog`).
    func log(_ request: HTTPRequest, _ problem: Problem) {
        requestLog.refused(request, problem)
    }

    // MARK: - Timers

    /// Mailbox expiry and idle feeds, once a second; SSE heartbeats.
    private func scheduleHousekeeping() {
        timers.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [self] task in
            if isStopping.load(ordering: .relaxed) { return task.cancel() }
            mailboxes.expire()
            feeds.dropIdle()
            configuration.logRateLimiter?.flush()
            memory.tick(load: allServers.reduce(0) { $0 + $1.connectionCount } + mailboxes.count)
        }
        let beat = TimeAmount.nanoseconds(Int64(configuration.heartbeatInterval * 1e9))
        timers.scheduleRepeatedTask(initialDelay: beat, delay: beat) { [self] task in
            if isStopping.load(ordering: .relaxed) { return task.cancel() }
            for s in allServers {
                s.streams.withLock { Array($0.values) }.forEach { $0.heartbeat() }
            }
        }
    }

    /// Two malloc arenas, unless `MALLOC_ARENA_MAX` says otherwise (`MemoryKeeper.limitArenas`);
    /// call before other threads start.
    public static func limitMallocArenas() { MemoryKeeper.limitArenas() }

    /// Runs `body` on the timer loop after `seconds` (within 10 ms), unless cancelled.
    func after(_ seconds: Double, _ body: @escaping @Sendable () -> Void) -> Timeouts.Handle {
        timeouts.after(seconds, body)
    }
}
