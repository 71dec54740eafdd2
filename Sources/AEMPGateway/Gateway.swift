import AEMP
import CMicroHTTPD
import CoreMetrics
import Logging
import NIOCore
import NIOPosix
import Prometheus
import Synchronization

/// The HTTP/JSON gateway: an AEMP node (private, or standalone seed) plus a libmicrohttpd server.
///
/// Threads: libmicrohttpd calls `handle` on its polling thread; the node runs on its event loop;
/// timers (long-poll deadlines, heartbeats, expiry) run on `timers`. State shared between them
/// lives in small lock-protected objects (`Mailbox`, `FamilyFeed`, `Exchange`), and every
/// hand-off is a message: nothing here blocks libmicrohttpd's thread on the network.
public final class Gateway: HTTPHandler, Sendable {
    public let configuration: GatewayConfiguration
    /// The configured bearer tokens, reduced once for `ConstantTime` comparison (`lookupToken`).
    let tokenDigests: [(digest: ConstantTime.Digest, scope: TokenScope)]
    public let node: Node
    let logger: Logger
    let timers: any EventLoop
    /// Long-poll, call and query deadlines (on `timers`).
    let timeouts: Timeouts
    let mailboxes: MailboxRegistry
    let feeds = Locked<FeedRegistry>(FeedRegistry())
    let nodeStreams = Locked<[UInt64: EventStream]>([:])
    let masterState = Locked<String?>(nil)
    /// Which nodes a message can reach now: those connected to the gateway's node, and those the
    /// network's directory (`'l`) has an address for (followed from start; `synced` after its
    /// first snapshot). Read by every send, written on the node's loop.
    let reachability = Locked<Reachability>(Reachability())
    /// Keys this gateway set (family → subkeys): only those can be deleted through it.
    let ownedKeys = Locked<[String: Set<String>]>([:])
    let pendingCalls = Atomic<Int>(0)
    let tokens = Atomic<UInt64>(0)
    let server = Locked<HTTPServer?>(nil)
    let extraServers = Locked<[HTTPServer]>([])
    /// The admin listener (`--admin-http`), apart from `allServers`: its connections count
    /// against no client limit and in no client gauge.
    let adminServer = Locked<HTTPServer?>(nil)
    /// The bytes all mailboxes hold together (`--max-mailbox-bytes`).
    let mailboxBudget: ByteBudget
    /// The unsent bytes of all event streams together (`--max-stream-bytes`).
    let streamBudget: ByteBudget
    let isStopping = Atomic<Bool>(false)
    /// The highest load (connections + mailboxes) since memory was last returned, the load a second
    /// ago, and for how many seconds it has not grown (`returnFreedMemory`).
    let loadMark = Locked<(high: Int, last: Int, quietSeconds: Int)>((0, 0, 0))
    /// Seconds since the heap's free space was last looked at (`returnFreedMemory`).
    let heapCheckClock = Atomic<Int>(0)
    let openAPI: [UInt8]
    let metrics = GatewayMetrics()

    /// Creates the gateway (nothing runs until `start`).
    public init(configuration: GatewayConfiguration, openAPIDocument: [UInt8] = Array(OpenAPIDocument.json.utf8)) throws {
        var c = configuration
        if c.isStandalone {
            c.node.binds = [c.standaloneBind]
            c.node.seeds = [c.standaloneBind]
        }
        self.configuration = c
        self.mailboxBudget = ByteBudget(limit: c.maxMailboxBytes)
        self.streamBudget = ByteBudget(limit: c.maxStreamBytes)
        self.tokenDigests = c.tokens.map { (ConstantTime.digest($0.key.utf8), $0.value) }
        self.logger = c.logger
        JSONBody.conversionLog.use(c.logger)
        self.node = try Node(configuration: c.node)
        self.timers = MultiThreadedEventLoopGroup.singleton.next()
        self.timeouts = Timeouts(loop: timers)
        self.mailboxes = MailboxRegistry(limit: c.maxMailboxes, remembered: c.rememberedMailboxes)
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
        node.monMaster { [self] master in
            let previous = masterState.withLock { m in
                defer { m = master }
                return m
            }
            if previous != master {
                metrics.masterChanges.increment()
                logger.notice("master changed", metadata: ["master": "\(master ?? "none")"])
            }
        }
        node.dbMon("'l") { [self] change in
            let listed = Set(change.values.lazy.filter { !($0.value.arrayValue ?? []).isEmpty }.map(\.key))
            reachability.withLock { r in
                r.listed = listed
                r.synced = true
            }
        }
        node.monNodes { [self] id, up in
            reachability.withLock { r in
                if up { r.connected.insert(id) } else { r.connected.remove(id) }
            }
            let event = ServerSentEvent.encode(
                id: nil, event: up ? "up" : "down", data: ["node": .string(id), "up": .bool(up)])
            for (token, stream) in nodeStreams.withLock({ $0 }) where !stream.send(event, orEndWith: FamilyFeed.overflowEvent) {
                nodeStreams.withLock { _ = $0.removeValue(forKey: token) }
            }
        }
        if !configuration.isStandalone {
            // A private node is reachable only over connections it opened (aemp-protocol §9).
            node.keepConnectedToPublicNodes()
        }
        var http = configuration.http
        http.logger = logger
        // The node calls of a polling pass (its sends, above all) reach the node's loop together.
        http.pass = { [node] body in node.batch(body) }
        let s = try HTTPServer(settings: http, handler: self)
        server.withLock { $0 = s }
        for address in configuration.additionalHTTPAddresses {
            var more = http
            more.address = address
            do {
                let extra = try HTTPServer(settings: more, handler: self)
                extraServers.withLock { $0.append(extra) }
            } catch {
                s.stop()
                for extra in extraServers.withLock({ $0 }) { extra.stop() }
                throw error
            }
        }
        if let address = configuration.adminHTTPAddress {
            var admin = http
            admin.address = address
            admin.maxConnections = configuration.adminMaxConnections
            do {
                let a = try HTTPServer(settings: admin, handler: AdminHandler(gateway: self))
                adminServer.withLock { $0 = a }
            } catch {
                s.stop()
                for extra in extraServers.withLock({ $0 }) { extra.stop() }
                throw error
            }
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
    public var httpAddress: String? { server.withLock { $0?.boundAddress } }

    /// Every HTTP address served (the first is `httpAddress`).
    public var httpAddresses: [String] { allServers.map(\.boundAddress) }

    /// Where the admin listener listens (with its real port), if there is one.
    public var adminHTTPAddress: String? { adminServer.withLock { $0?.boundAddress } }

    /// The libmicrohttpd daemons, one per listen address.
    var allServers: [HTTPServer] { (server.withLock { $0 }.map { [$0] } ?? []) + extraServers.withLock { $0 } }

    /// Stops accepting, answers parked requests, ends streams with a final event, leaves the mesh.
    public func shutdown() async {
        guard !isStopping.exchange(true, ordering: .relaxed) else { return }
        let final = ServerSentEvent.encode(id: nil, event: "shutdown", data: ["detail": "the gateway is shutting down"])
        let gone = Problem.shuttingDown()
        for feed in feeds.withLock({ Array($0.active.values) }) {
            feed.close(final: final, gone: { gone.response(requestID: $0) })
        }
        for (_, stream) in nodeStreams.withLock({ $0 }) { stream.finish(with: final) }
        for s in allServers { s.stop(finalEvent: final) }
        adminServer.withLock { $0 }?.stop(finalEvent: final)
        // The servers hold this gateway as their handler: let go of them, or neither is ever freed.
        server.withLock { $0 = nil }
        extraServers.withLock { $0 = [] }
        adminServer.withLock { $0 = nil }
        await node.shutdown()
    }

    func nextToken() -> UInt64 { tokens.wrappingAdd(1, ordering: .relaxed).newValue }

    var master: String? { masterState.withLock { $0 } }

    /// The gateway's own metrics registry (served at `/metrics`); an embedding program may add
    /// its own metrics to it.
    public var metricsRegistry: PrometheusCollectorRegistry { metrics.registry }

    /// A swift-metrics factory writing into `metricsRegistry`: pass it to `MetricsSystem.bootstrap`
    /// (once per process) to have swift-metrics users export through this gateway's `/metrics`.
    public var metricsFactory: any MetricsFactory { PrometheusMetricsFactory(registry: metrics.registry) }

    // MARK: - HTTPHandler

    public func bodyTooLarge(_ request: HTTPRequest, limit: Int) -> HTTPResponse {
        logger.notice(
            "request body too large", metadata: ["request": "\(request.requestID)", "path": "\(request.path)"])
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
        guard !configuration.corsOrigins.isEmpty, let origin = request.header("origin") else { return [] }
        let any = configuration.corsOrigins.contains("*")
        guard any || configuration.corsOrigins.contains(origin) else { return [] }
        return [
            ("Access-Control-Allow-Origin", any ? "*" : origin),
            ("Access-Control-Expose-Headers", "X-Request-ID, X-AEMP-Index, X-AEMP-Last, Retry-After"),
            ("Vary", "Origin"),
        ]
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

    public func quickAnswer(method: String, path: UnsafePointer<CChar>, body: [UInt8], header: (String) -> String?)
        -> HTTPResponse?
    {
        guard let (route, label) = Self.routes.quickRoute(method: method, path: path), let quick = route.quick else { return nil }
        let start = ContinuousClock.now
        guard let response = quick(self, body, { header("Authorization") }) else { return nil }
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

    /// One log line per refused request (never the body, which may hold secrets).
    func log(_ request: HTTPRequest, _ problem: Problem) {
        let level: Logger.Level = problem.status >= 500 ? .warning : .info
        logger.log(
            level: level, "request refused",
            metadata: [
                "request": "\(request.requestID)", "method": "\(request.method)", "path": "\(request.path)",
                "status": "\(problem.status)", "code": "\(problem.code)", "detail": "\(problem.detail)",
            ])
    }

    // MARK: - Timers

    /// Mailbox expiry and idle feeds, once a second; SSE heartbeats.
    private func scheduleHousekeeping() {
        timers.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [self] task in
            if isStopping.load(ordering: .relaxed) { return task.cancel() }
            expireMailboxes()
            dropIdleFeeds()
            configuration.logRateLimiter?.flush()
            returnFreedMemory()
        }
        let beat = TimeAmount.nanoseconds(Int64(configuration.heartbeatInterval * 1e9))
        timers.scheduleRepeatedTask(initialDelay: beat, delay: beat) { [self] task in
            if isStopping.load(ordering: .relaxed) { return task.cancel() }
            for s in allServers {
                s.streams.withLock { Array($0.values) }.forEach { $0.heartbeat() }
            }
        }
    }

    /// After a burst (a thousand connections or mailboxes or more gone since the high mark), once
    /// the load has not grown for 5 s, hands freed heap pages back to the system: glibc keeps them
    /// otherwise, and the RSS of a gateway that once held 10,000 streams would stay at its peak.
    /// Trimming a large heap holds malloc's locks for a while, so it waits for a quiet spell rather
    /// than running while a new burst starts. Called every second.
    private func returnFreedMemory() {
        let load = allServers.reduce(0) { $0 + $1.connectionCount } + mailboxes.count
        let trim = loadMark.withLock { m -> Bool in
            m.quietSeconds = load > m.last ? 0 : m.quietSeconds + 1
            m.last = load
            m.high = max(m.high, load)
            guard m.high - load >= 1000, m.quietSeconds >= 5 else { return false }
            m.high = load
            return true
        }
        // Bursts that hold no connections or mailboxes leave freed heap too (a peer's backlog, a
        // stream that fell behind, big bodies): every 10 s, trim when more than 8 MiB lie free.
        var heapCheck = false
        if heapCheckClock.wrappingAdd(1, ordering: .relaxed).newValue >= 10 {
            heapCheckClock.store(0, ordering: .relaxed)
            heapCheck = mallinfo2().fordblks > 8 << 20
        }
        if trim || heapCheck { _ = malloc_trim(0) }
    }

    /// Two malloc arenas, unless `MALLOC_ARENA_MAX` says otherwise; call before other threads start.
    /// A soak with MALLOC_ARENA_MAX=2 in the environment kept a flat RSS where glibc's default (8
    /// arenas per core) climbed in steps; called from `run()`, after the runtime's threads exist, it
    /// did not help as much, so the environment variable is the surer setting (README, Memory).
    public static func limitMallocArenas() {
        if getenv("MALLOC_ARENA_MAX") == nil { _ = mallopt(M_ARENA_MAX, 2) }
    }

    private func dropIdleFeeds() {
        let cutoff = NIODeadline.now() - .nanoseconds(Int64(configuration.feedIdle * 1e9))
        let idle = feeds.withLock { f -> [FamilyFeed] in
            let idle = f.active.values.filter { $0.isIdle(since: cutoff) }
            for feed in idle {
                f.active[feed.family] = nil
                f.remember(feed.family, feed.memory, capacity: configuration.feedMemory)
            }
            return idle
        }
        for feed in idle {
            feed.state.withLock({ $0.watch })?.cancel()
        }
    }

    /// Runs `body` on the timer loop after `seconds` (within 10 ms), unless cancelled.
    func after(_ seconds: Double, _ body: @escaping @Sendable () -> Void) -> Timeouts.Handle {
        timeouts.after(seconds, body)
    }
}

/// What the gateway knows about reaching other nodes (see `Gateway.reachability`).
struct Reachability: Sendable {
    var connected: Set<String> = []
    /// Nodes with at least one address in `'l`.
    var listed: Set<String> = []
    var synced = false

    /// Whether a message to `node` is known to be undeliverable: not connected, and the synced
    /// directory has no address to dial (it left, it is private and not connected here, or it
    /// never was). Before the directory is synced nothing is known.
    func knownUnreachable(_ node: String) -> Bool {
        synced && !connected.contains(node) && !listed.contains(node)
    }
}
