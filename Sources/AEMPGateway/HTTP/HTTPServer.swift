import AEMP
import CMicroHTTPD
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What the server needs from the application: request handling and the answers it gives
/// on its own (body too large, shutting down).
public protocol HTTPHandler: Sendable {
    /// Handles a complete request on libmicrohttpd's thread. Must not block: answer through
    /// `exchange.respond` now, or later from any thread.
    func handle(_ request: HTTPRequest, _ exchange: Exchange)
    /// The answer to a request whose body exceeds the limit.
    func bodyTooLarge(_ request: HTTPRequest, limit: Int) -> HTTPResponse
    /// The answer to requests still waiting at shutdown.
    func shuttingDown(_ request: HTTPRequest) -> HTTPResponse
    /// The answer to a request on a connection beyond the connection limit (then closed).
    func tooManyConnections(_ request: HTTPRequest, limit: Int) -> HTTPResponse
    /// The answer to a request whose body boundary is ambiguous (then the connection is closed).
    func ambiguousFraming(_ request: HTTPRequest, _ why: String) -> HTTPResponse
    /// The answer recorded for a request whose client hung up before it (never sent).
    func clientClosed(_ request: HTTPRequest) -> HTTPResponse
    /// The answer to a request whose body comes in transfer codings besides chunked (`codings`;
    /// then the connection is closed, RFC 9112 6.1).
    func unsupportedTransferCoding(_ request: HTTPRequest, _ codings: String) -> HTTPResponse
    /// The answer to a request with `count` query arguments, more than `limit`.
    func tooManyArguments(_ request: HTTPRequest, count: Int, limit: Int) -> HTTPResponse
    /// Headers added to every response of this request (e.g. CORS), however it is answered.
    func commonHeaders(for request: HTTPRequest) -> [(String, String)]
    /// A response was queued for `exchange`, once per request, on libmicrohttpd's thread (metrics).
    func answered(_ exchange: Exchange, _ response: HTTPResponse)
    /// `bytes` of an event stream went to libmicrohttpd, on its thread (metrics).
    func streamed(bytes: Int)
    /// On the polling thread, before the request is built: the answer to a hot route's common
    /// case, given on the spot (its metrics recorded), or nil to take the general path through
    /// `handle`. Must have no effect when it returns nil. `header` looks a field up by name.
    func quickAnswer(method: String, path: UnsafePointer<CChar>, body: [UInt8], header: (String) -> String?) -> HTTPResponse?
}

extension HTTPHandler {
    public func quickAnswer(method: String, path: UnsafePointer<CChar>, body: [UInt8], header: (String) -> String?)
        -> HTTPResponse?
    { nil }
    public func answered(_ exchange: Exchange, _ response: HTTPResponse) {}
    public func streamed(bytes: Int) {}
}

/// Limits and socket of one HTTP server.
public struct HTTPServerSettings: Sendable {
    /// `host:port` (`[v6]:port`); port 0 picks a free one.
    public var address: String = "127.0.0.1:8080"
    /// Connections served; up to `refusedConnectionHeadroom` more are accepted only to be answered
    /// 503 and closed, beyond that libmicrohttpd refuses them. The process may hold 20,000
    /// descriptors here.
    public var maxConnections: Int = 16_000
    /// Connections accepted beyond `maxConnections` only to be answered 503 (libmicrohttpd's limit
    /// is the sum).
    public static let refusedConnectionHeadroom = 64
    /// Largest request body: a 1 MiB message plus 64 KiB for its envelope (port, batch, escapes).
    /// Not `--max-packet` (64 MiB): every upload is held whole, then parsed into a tree several
    /// times its size, on up to `maxConnections` connections at once.
    public var maxBodySize: Int = HTTPServerSettings.defaultMaxBodySize
    public static let defaultMaxBodySize = (1 << 20) + (64 << 10)
    /// Seconds a request may take to arrive completely (header and body; `RequestDeadlines`), and
    /// an idle keep-alive connection may stay open (suspended ones never time out).
    public var connectionTimeout: Int = 60
    /// libmicrohttpd's per-connection memory pool (8 KiB measured best, conventions).
    public var connectionMemory: Int = 8 * 1024
    /// Most query arguments a request may have (more: `tooManyArguments`). The server reads the
    /// query itself (`mhdRequestLine`), so this is the only bound besides the request line's size.
    public var maxQueryArguments: Int = 100
    public var logger = Logger(label: "aemp-gateway.http")
    /// PEM certificate (chain) and private key: with both, the server speaks HTTPS only
    /// (libmicrohttpd with GnuTLS).
    public var tlsCertificate: [UInt8]?
    public var tlsKey: [UInt8]?
    /// Wraps each pass of the polling thread (one wait for events and the handling of all of
    /// them): e.g. `Node.batch`, so that a pass's messages reach the mesh together.
    public var pass: @Sendable (() -> Void) -> Void = { $0() }

    public init() {}
}

/// Why the server did not start.
public enum HTTPServerError: Error, CustomStringConvertible, Sendable {
    case invalidAddress(String)
    case listenFailed(address: String, reason: String)
    case daemonFailed(address: String)
    case tlsIncomplete

    public var description: String {
        switch self {
        case .invalidAddress(let a): return "invalid HTTP listen address \(a.debugDescription): expected host:port"
        case .listenFailed(let a, let r): return "cannot listen on \(a): \(r)"
        case .daemonFailed(let a):
            return "libmicrohttpd refused to start on \(a) (with TLS: is the certificate/key pair valid PEM and matching?)"
        case .tlsIncomplete: return "TLS needs both a certificate and a private key"
        }
    }
}

/// One HTTP exchange: its answer may come from any thread, once. libmicrohttpd's connection is
/// suspended until then and resumed by `respond` (suspend and resume under one lock).
public final class Exchange: Sendable {
    struct State {
        var response: HTTPResponse?
        var suspended = false
        var queued = false
        var completed = false
        /// What the owner of the pending answer releases if the client hangs up first.
        var onHangup: [@Sendable () -> Void] = []
        /// The client hung up first: the 499 is recorded at once (libmicrohttpd, resumed, may
        /// close the connection without queueing it).
        var hungUp = false
    }

    let connection: ConnectionRef
    let request: HTTPRequest
    let commonHeaders: [(String, String)]
    /// When the request was complete (the latency of its answer counts from here).
    let received = ContinuousClock.now
    /// The route the handler matched, as the handler numbers them (-1 until it says), for metrics.
    let route = Atomic<Int>(-1)
    private let state = Locked(State())
    private unowned let server: HTTPServer

    init(connection: ConnectionRef, request: HTTPRequest, server: HTTPServer) {
        self.connection = connection
        self.request = request
        self.server = server
        self.commonHeaders = server.handler.commonHeaders(for: request)
    }

    /// Answers the request (later calls are ignored).
    public func respond(_ response: HTTPResponse) {
        let waited = state.withLock { s -> Bool in
            guard s.response == nil, !s.completed else { return false }
            s.response = response
            guard s.suspended else { return false }
            s.suspended = false
            connection.resume()
            return true
        }
        if waited { server.pending.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(self)) } }
    }

    /// Runs `action` if the client hangs up before the answer (a parked long-poll's waiter, a
    /// call's reply port): the owner releases what the request held. At once if it already did.
    public func onHangup(_ action: @escaping @Sendable () -> Void) {
        state.withLock { $0.onHangup.append(action) }
    }

    /// The client hung up while the answer was pending (polling thread): the owners release what
    /// the request held, and the answer `499 client_closed` (recorded, never read) resumes the
    /// connection so that libmicrohttpd closes it.
    func hungUp() {
        let actions = state.withLock { s -> [@Sendable () -> Void]? in
            defer { s.onHangup = [] }
            guard s.response == nil else { return nil }
            s.hungUp = true
            return s.onHangup
        }
        guard let actions else { return }
        for action in actions { action() }
        let answer = server.handler.clientClosed(request)
        respond(answer)
        server.handler.answered(self, answer)
    }

    /// Whether the client hung up before the answer (which is then recorded already).
    var wasHungUp: Bool { state.withLock { $0.hungUp } }

    /// On libmicrohttpd's thread: the answer if there is one (once), else suspends the connection.
    func takeOrSuspend() -> HTTPResponse? {
        state.withLock { s in
            if s.queued { return nil }
            if let r = s.response {
                s.queued = true
                return r
            }
            if !s.suspended {
                s.suspended = true
                MHD_suspend_connection(connection.pointer)
                connection.watchHangup { [self] in hungUp() }
                // Waiting for an answer: `stop` answers it if none comes first (`respond` and
                // `complete` take it out; answers given at once never enter the table).
                server.pending.withLock { $0[ObjectIdentifier(self)] = self }
            }
            return nil
        }
    }

    func complete() {
        state.withLock { $0.onHangup = [] }
        let waiting = state.withLock { s -> Bool in
            s.completed = true
            return s.suspended
        }
        if waiting { server.pending.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(self)) } }
    }
}

/// Per-request state on libmicrohttpd's thread (stored in its `req_cls`, created with the request
/// line by `mhdRequestLine`).
final class RequestContext {
    /// The raw query (after `?`), taken from the request line; libmicrohttpd keeps none of it.
    var query: [UInt8] = []
    /// How many query arguments there are, when more than the limit (the request is refused).
    var tooManyArguments: Int?
    /// Whether the access handler has seen the header (its first call is over).
    var headerSeen = false
    var body: [UInt8] = []
    var tooLarge = false
    /// The 413 went out on the socket before the (chunked) body ended; the connection is closing.
    var answeredEarly = false
    var overCapacity = false
    /// Why the request's framing is ambiguous (it is refused unread).
    var ambiguousFraming: String?
    /// Transfer codings other than chunked (the request is refused unread).
    var unsupportedCodings: String?
    var exchange: Exchange?
}

/// An HTTP server on libmicrohttpd: epoll, one polling thread of its own that runs
/// `MHD_run_wait` in passes (each wrapped by `settings.pass`), suspend/resume for long-polls and
/// event streams (conventions: libmicrohttpd notes).
public final class HTTPServer: Sendable {
    /// Exchanges not yet answered (answered with `shuttingDown` at stop).
    let pending = Locked<[ObjectIdentifier: Exchange]>([:])
    /// Event streams still open (ended at stop).
    let streams = Locked<[ObjectIdentifier: EventStream]>([:])
    let handler: any HTTPHandler
    let settings: HTTPServerSettings
    private let daemon = Locked<DaemonRef?>(nil)
    private let poller = Locked<pthread_t?>(nil)
    private let stopping = Atomic<Bool>(false)
    /// Resumes connections for other threads, on the polling thread.
    let resumer: Resumer
    private let counter = Atomic<UInt64>(0)
    /// Suspended connections whose client hung up (a parked request answered early, an idle
    /// stream ended), since the start.
    private let hangupCount = Atomic<Int>(0)
    public var hangups: Int { hangupCount.load(ordering: .relaxed) }
    /// Connections open now.
    let openConnections = Atomic<Int>(0)
    /// Connections that arrived beyond the limit: each of their requests is answered 503 (decided
    /// once per connection, so a connection within the limit is never refused later).
    let refusedConnections = Locked<Set<UInt>>([])
    /// Connections open now (for metrics and tests).
    public var connectionCount: Int { openConnections.load(ordering: .relaxed) }
    /// Connections whose request is still arriving, cut off when it takes too long.
    let deadlines: RequestDeadlines
    /// The bound address, with the real port.
    public let boundAddress: String
    private let listenFD: Int32

    /// Binds the listening socket and starts libmicrohttpd's thread.
    public init(settings: HTTPServerSettings, handler: any HTTPHandler) throws {
        self.settings = settings
        self.handler = handler
        self.resumer = try Resumer()
        self.deadlines = RequestDeadlines(seconds: settings.connectionTimeout)
        if (settings.tlsCertificate == nil) != (settings.tlsKey == nil) { throw HTTPServerError.tlsIncomplete }
        let (fd, bound) = try Self.listen(settings.address)
        self.listenFD = fd
        self.boundAddress = bound
        try start()
    }

    private func start() throws {
        let me = Unmanaged.passUnretained(self).toOpaque()
        var callbacks = aemp_mhd_callbacks(
            cls: me, access: mhdAccess, log: mhdLog, connection: mhdConnection, completed: mhdCompleted,
            // Keep the URL and query raw: the router decodes each path segment itself, so that an
            // encoded '/' (%2F) in a subkey stays inside its segment.
            request_line: mhdRequestLine, unescape: mhdNoUnescape)
        // Converted as libmicrohttpd converts an option's value (the settings' ranges keep them exact).
        var options = aemp_mhd_settings(
            listen_fd: listenFD,
            connection_limit: UInt32(truncatingIfNeeded: settings.maxConnections + HTTPServerSettings.refusedConnectionHeadroom),
            connection_timeout: UInt32(truncatingIfNeeded: settings.connectionTimeout),
            connection_memory_limit: settings.connectionMemory,
            tls_certificate: nil, tls_key: nil)
        // NUL-terminated PEM copies; GnuTLS parses them while the daemon starts (with both: HTTPS).
        let cert = settings.tlsCertificate.map { $0 + [0] }
        let key = settings.tlsKey.map { $0 + [0] }
        let d = cert.withOptionalCChars { certPointer in
            key.withOptionalCChars { keyPointer -> OpaquePointer? in
                options.tls_certificate = certPointer
                options.tls_key = keyPointer
                return aemp_mhd_start(&options, &callbacks)
            }
        }
        guard let d else {
            close(listenFD)
            throw HTTPServerError.daemonFailed(address: settings.address)
        }
        daemon.withLock { $0 = DaemonRef(pointer: d) }
        var thread = pthread_t()
        let context = Unmanaged.passRetained(PollContext(server: self, daemon: DaemonRef(pointer: d))).toOpaque()
        guard pthread_create(&thread, nil, pollThreadMain, context) == 0 else {
            Unmanaged<PollContext>.fromOpaque(context).release()
            daemon.withLock { $0 = nil }
            MHD_stop_daemon(d)
            close(listenFD)
            throw HTTPServerError.daemonFailed(address: settings.address)
        }
        poller.withLock { $0 = thread }
        settings.logger.info(
            "HTTP listening", metadata: ["address": "\(boundAddress)", "tls": "\(settings.tlsCertificate != nil)"])
    }

    /// Stops accepting, answers every waiting request, ends every event stream (with
    /// `finalEvent`), waits up to `grace` seconds for them to drain, then stops the daemon.
    public func stop(finalEvent: [UInt8]? = nil, grace: Double = 2) {
        guard let d = daemon.withLock({ $0 }) else { return }
        _ = MHD_quiesce_daemon(d.pointer)
        for exchange in pending.withLock({ Array($0.values) }) {
            exchange.respond(handler.shuttingDown(exchange.request))
        }
        for stream in streams.withLock({ Array($0.values) }) { stream.finish(with: finalEvent) }
        var waited = 0.0
        while waited < grace, !(streams.withLock { $0.isEmpty } && pending.withLock { $0.isEmpty }) {
            usleep(10_000)
            waited += 0.01
        }
        stopping.store(true, ordering: .releasing)
        resumer.signal()
        if let thread = poller.withLock({ p in defer { p = nil }; return p }) { pthread_join(thread, nil) }
        // libmicrohttpd must not be stopped holding connections suspended: resume what is queued
        // and let one last pass take them (the poller has ended, so this thread may run it).
        resumer.drain()
        _ = MHD_run(d.pointer)
        daemon.withLock { $0 = nil }
        MHD_stop_daemon(d.pointer)
        close(listenFD)
    }

    /// The longest the polling thread waits for events, in milliseconds: it checks for `stop` and
    /// sweeps `deadlines` at least this often.
    private static let longestWait: UInt64 = 1000

    /// The polling thread, until `stop`: polls libmicrohttpd's epoll descriptor and the resumer
    /// (at most until libmicrohttpd's next timeout), resumes what other threads queued, then runs
    /// one pass of `MHD_run`, wrapped in `settings.pass`.
    fileprivate func poll(_ d: DaemonRef) {
        var fds = [
            pollfd(fd: aemp_mhd_epoll_fd(d.pointer), events: Int16(POLLIN), revents: 0),
            pollfd(fd: resumer.fd, events: Int16(POLLIN), revents: 0),
            pollfd(fd: resumer.hangups.fd, events: Int16(POLLIN), revents: 0),
        ]
        while !stopping.load(ordering: .acquiring) {
            var timeout: UInt64 = 0
            let wait = Int32(MHD_get_timeout(d.pointer, &timeout) == .YES ? min(timeout, Self.longestWait) : Self.longestWait)
            if Glibc.poll(&fds, nfds_t(fds.count), wait) > 0 {
                // Hang-ups first: their answers queue resumptions, which the drain below takes.
                if fds[2].revents != 0 { hangupCount.wrappingAdd(resumer.hangups.drain(), ordering: .relaxed) }
                if fds[1].revents != 0 || fds[2].revents != 0 { resumer.drain() }
            }
            settings.pass {
                _ = MHD_run(d.pointer)
            }
            let cut = deadlines.sweep()
            if cut > 0 {
                settings.logger.notice(
                    "closed connections whose request did not arrive in time",
                    metadata: ["connections": "\(cut)", "seconds": "\(settings.connectionTimeout)"])
            }
        }
    }

    func nextRequestID() -> String {
        let n = counter.wrappingAdd(1, ordering: .relaxed).newValue
        return String(n, radix: 36)
    }

    // MARK: - Socket

    /// Connections the kernel queues for `accept` (capped by net.core.somaxconn).
    private static let listenBacklog: Int32 = 4096

    private static func listen(_ address: String) throws -> (Int32, String) {
        guard let colon = address.lastIndex(of: ":"), let port = UInt16(address[address.index(after: colon)...]) else {
            throw HTTPServerError.invalidAddress(address)
        }
        var host = String(address[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        var hints = addrinfo()
        hints.ai_flags = AI_NUMERICHOST | AI_PASSIVE
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var info: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &info) == 0, let ai = info else {
            throw HTTPServerError.invalidAddress(address)
        }
        defer { freeaddrinfo(info) }
        let fd = socket(ai.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw HTTPServerError.listenFailed(address: address, reason: String(cString: strerror(errno))) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard bind(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0, Glibc.listen(fd, listenBacklog) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw HTTPServerError.listenFailed(address: address, reason: reason)
        }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        let family = Int32(storage.ss_family)
        let boundPort = withUnsafePointer(to: &storage) { p -> UInt16 in
            if family == AF_INET6 {
                return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) }
            }
            return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
        }
        let shown = host.contains(":") ? "[\(host)]" : host
        return (fd, "\(shown):\(boundPort)")
    }
}

extension Optional where Wrapped == [UInt8] {
    /// Runs `body` with a pointer to the bytes as C characters (nil when there are none).
    fileprivate func withOptionalCChars<R>(_ body: (UnsafePointer<CChar>?) -> R) -> R {
        guard let bytes = self else { return body(nil) }
        return bytes.withUnsafeBufferPointer { $0.withMemoryRebound(to: CChar.self) { body($0.baseAddress) } }
    }
}

/// The daemon pointer; `@unchecked Sendable` because it crosses threads in two ways only: the
/// polling thread runs `MHD_run_wait` with it until it is joined, and `stop` calls
/// `MHD_quiesce_daemon` (callable while the daemon runs, with MHD_USE_ITC) and, after the join,
/// `MHD_stop_daemon`, once, under `daemon`'s lock.
struct DaemonRef: @unchecked Sendable {
    let pointer: OpaquePointer
}

/// What the polling thread starts with.
private final class PollContext {
    let server: HTTPServer
    let daemon: DaemonRef
    init(server: HTTPServer, daemon: DaemonRef) {
        self.server = server
        self.daemon = daemon
    }
}

private let pollThreadMain: @convention(c) (UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? = { raw in
    let context = Unmanaged<PollContext>.fromOpaque(raw!).takeRetainedValue()
    context.server.poll(context.daemon)
    return nil
}

// MARK: - libmicrohttpd callbacks (the polling thread)

private let mhdAccess: MHD_AccessHandlerCallback = {
    cls, connection, url, method, _, uploadData, uploadSize, reqCls in
    guard let cls, let connection, let reqCls, let uploadSize else { return .NO }
    let server = Unmanaged<HTTPServer>.fromOpaque(cls).takeUnretainedValue()
    let connectionRef = ConnectionRef(pointer: connection, resumer: server.resumer)
    let context: RequestContext
    if let raw = reqCls.pointee {
        context = Unmanaged<RequestContext>.fromOpaque(raw).takeUnretainedValue()
    } else {
        // `mhdRequestLine` makes it; only in case libmicrohttpd ever skipped that.
        context = RequestContext()
        reqCls.pointee = Unmanaged.passRetained(context).toOpaque()
    }

    if !context.headerSeen {
        // First call: headers only. Answer on a later call (keep-alive stays on, conventions).
        context.headerSeen = true
        // Refused from the header alone: answered at once, the body (if any) never read.
        if server.refusedConnections.withLock({ $0.contains(connectionKey(connection)) }) {
            context.overCapacity = true
        } else if context.tooManyArguments != nil {
            // Counted from the request line (`mhdRequestLine`).
        } else if let fault = framingFault(connection) {
            // Where the body ends depends on which field one believes: a proxy in front may believe
            // another than libmicrohttpd (request smuggling); or it is in a coding we cannot undo,
            // which libmicrohttpd would read until the client closes. Refused, and the connection
            // closed (RFC 9112 6.1 and 6.3).
            switch fault {
            case .ambiguous(let why): context.ambiguousFraming = why
            case .unsupported(let codings): context.unsupportedCodings = codings
            }
        } else if let length = lookup(connection, .HEADER_KIND, "Content-Length").flatMap({ Int($0) }),
            length > server.settings.maxBodySize
        {
            // Refuse now, without reading the body: libmicrohttpd (0.9.75) takes a response only
            // before the upload starts or after it ended, and closes the connection after this one.
            context.tooLarge = true
        } else {
            return .YES
        }
        server.deadlines.arrived(connectionKey(connection))
        let exchange = makeExchange(connectionRef, url: url, method: method, context: context, server: server)
        guard let response = exchange.takeOrSuspend() else { return .YES }
        return queue(response, on: connectionRef, exchange: exchange, server: server)
    }

    if uploadSize.pointee > 0 {
        let n = uploadSize.pointee
        if !context.tooLarge {
            if context.body.count + n > server.settings.maxBodySize {
                context.tooLarge = true
                context.body = []
                // A chunked body (a Content-Length over the limit was refused up front), possibly of
                // a chunk of 2^64 - 1 bytes: its end may never come, and libmicrohttpd takes no
                // response before it. Answered on the socket now.
                answerEarly(connectionRef, url: url, method: method, context: context, server: server)
            } else if let uploadData {
                uploadData.withMemoryRebound(to: UInt8.self, capacity: n) {
                    context.body.append(contentsOf: UnsafeBufferPointer(start: $0, count: n))
                }
            }
        }
        // Consumed, or dropped once the body outgrew the limit.
        uploadSize.pointee = 0
        return .YES
    }
    // The 413 is on the wire already: the body ended after all, nothing more to answer; close.
    if context.answeredEarly { return .NO }
    // The request is complete (a later call of a suspended exchange changes nothing).
    server.deadlines.arrived(connectionKey(connection))

    if context.exchange == nil, !context.tooLarge, let url, let method,
        let response = server.handler.quickAnswer(
            method: String(cString: method), path: url, body: context.body,
            header: { lookup(connection, .HEADER_KIND, $0) })
    {
        return queue(response, adding: [("X-Request-ID", server.nextRequestID())], on: connectionRef, server: server)
    }
    let exchange = context.exchange ?? makeExchange(connectionRef, url: url, method: method, context: context, server: server)
    guard let response = exchange.takeOrSuspend() else { return .YES }
    return queue(response, on: connectionRef, exchange: exchange, server: server)
}

/// Answers a request whose chunked body outgrew the limit before the body ended, by writing the
/// 413 on the socket itself: libmicrohttpd 0.9.75 queues no response in the middle of an upload.
/// The write side is then shut down and the connection closed a moment later (`RequestDeadlines.
/// linger`), so that the client reads the answer rather than a reset; what it still sends is read
/// and dropped until then. With TLS the socket carries records, not bytes: there the body is read
/// to its end and answered then, as before.
private func answerEarly(
    _ connection: ConnectionRef, url: UnsafePointer<CChar>?, method: UnsafePointer<CChar>?, context: RequestContext,
    server: HTTPServer
) {
    guard server.settings.tlsCertificate == nil else { return }
    let fd = aemp_mhd_connection_fd(connection.pointer)
    guard fd >= 0 else { return }
    let exchange = makeExchange(connection, url: url, method: method, context: context, server: server)
    guard let response = exchange.takeOrSuspend() else { return }
    var headers = response.headers + exchange.commonHeaders
    headers += [("X-Request-ID", exchange.request.requestID), ("Connection", "close"), ("Date", httpDate())]
    var head = "HTTP/1.1 \(response.status) \(reasonPhrase(response.status))\r\n"
    for (name, value) in headers { head += "\(name): \(value)\r\n" }
    head += "Content-Length: \(response.body.count)\r\n\r\n"
    let bytes = Array(head.utf8) + response.body
    // Nothing else was written on this connection since its previous answer went out completely:
    // a few hundred bytes fit the empty socket buffer (a short write just cuts the answer).
    _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    shutdown(fd, Int32(SHUT_WR))
    context.answeredEarly = true
    server.deadlines.linger(connectionKey(connection.pointer), seconds: 2)
    server.handler.answered(exchange, response)
}

/// The reason phrases of the statuses `answerEarly` sends.
private func reasonPhrase(_ status: Int) -> String {
    switch status {
    case 413: return "Content Too Large"
    case 503: return "Service Unavailable"
    default: return "Error"
    }
}

/// The current time as an HTTP date (RFC 9110 5.6.7).
private func httpDate() -> String {
    var now = time(nil)
    var parts = tm()
    gmtime_r(&now, &parts)
    var buffer = [CChar](repeating: 0, count: 64)
    let n = strftime(&buffer, buffer.count, "%a, %d %b %Y %H:%M:%S GMT", &parts)
    return String(decoding: buffer.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// Builds the request once its body is complete (or refused) and hands it to the handler.
private func makeExchange(
    _ connection: ConnectionRef, url: UnsafePointer<CChar>?, method: UnsafePointer<CChar>?, context: RequestContext,
    server: HTTPServer
) -> Exchange {
    let request = HTTPRequest(
        method: method.map { String(cString: $0) } ?? "GET",
        path: url.map(requestPath) ?? "/",
        query: context.tooManyArguments == nil ? queryArguments(context.query) : [:],
        headers: values(connection.pointer, .HEADER_KIND),
        body: context.body,
        requestID: server.nextRequestID())
    context.body = []
    let exchange = Exchange(connection: connection, request: request, server: server)
    context.exchange = exchange
    if context.overCapacity {
        var response = server.handler.tooManyConnections(request, limit: server.settings.maxConnections)
        response.headers.append(("Connection", "close"))
        exchange.respond(response)
    } else if let why = context.ambiguousFraming {
        var response = server.handler.ambiguousFraming(request, why)
        response.headers.append(("Connection", "close"))
        exchange.respond(response)
    } else if let codings = context.unsupportedCodings {
        var response = server.handler.unsupportedTransferCoding(request, codings)
        response.headers.append(("Connection", "close"))
        exchange.respond(response)
    } else if let count = context.tooManyArguments {
        exchange.respond(server.handler.tooManyArguments(request, count: count, limit: server.settings.maxQueryArguments))
    } else if context.tooLarge {
        exchange.respond(server.handler.bodyTooLarge(request, limit: server.settings.maxBodySize))
    } else {
        server.handler.handle(request, exchange)
    }
    return exchange
}

private func queue(_ response: HTTPResponse, on connection: ConnectionRef, exchange: Exchange, server: HTTPServer)
    -> MHD_Result
{
    let queued = queue(
        response, adding: exchange.commonHeaders + [("X-Request-ID", exchange.request.requestID)], on: connection,
        server: server, head: exchange.request.method == "HEAD")
    if !exchange.wasHungUp { server.handler.answered(exchange, response) }
    return queued
}

/// Queues `response` (a complete body, or an event stream) with its headers and `extra` ones. For
/// `head` (a HEAD request) libmicrohttpd sends the header block alone, and an event stream is not
/// started.
private func queue(
    _ response: HTTPResponse, adding extra: [(String, String)], on connection: ConnectionRef, server: HTTPServer,
    head: Bool = false
) -> MHD_Result {
    let r: OpaquePointer?
    if let stream = response.stream, head {
        // HEAD: the stream's header block alone, and the stream itself ends here. Not chunked:
        // libmicrohttpd 0.9.75 would send the last chunk (`0\r\n\r\n`) after a HEAD's header
        // block. Unchunked, it sends neither a length nor a body, asks the reader once, which ends
        // the stream, and closes the connection (as a GET of the stream would hold it).
        stream.closed()
        r = MHD_create_response_from_callback(
            AEMP_MHD_SIZE_UNKNOWN, streamBlockSize, { _, _, _, _ in AEMP_MHD_CONTENT_READER_END_OF_STREAM }, nil, nil)
        if let r { _ = aemp_mhd_response_unchunked(r) }
    } else if let stream = response.stream {
        stream.attach(connection)
        stream.boundKernelBuffer(fd: aemp_mhd_connection_fd(connection.pointer))
        server.streams.withLock { $0[ObjectIdentifier(stream)] = stream }
        let box = Unmanaged.passRetained(StreamBox(stream: stream, server: server)).toOpaque()
        r = MHD_create_response_from_callback(AEMP_MHD_SIZE_UNKNOWN, streamBlockSize, mhdRead, box, mhdFreeStream)
    } else {
        r = response.body.withUnsafeBytes { body in
            MHD_create_response_from_buffer(
                body.count, UnsafeMutableRawPointer(mutating: body.baseAddress), .RESPMEM_MUST_COPY)
        }
    }
    guard let r else { return .NO }
    defer { MHD_destroy_response(r) }
    for (name, value) in response.headers { _ = MHD_add_response_header(r, name, value) }
    for (name, value) in extra { _ = MHD_add_response_header(r, name, value) }
    return MHD_queue_response(connection.pointer, UInt32(response.status), r)
}

/// The most bytes libmicrohttpd asks an event stream's reader for at once (its block size).
private let streamBlockSize = 4096

/// What the stream reader callbacks get as `cls`.
private final class StreamBox {
    let stream: EventStream
    unowned let server: HTTPServer
    init(stream: EventStream, server: HTTPServer) {
        self.stream = stream
        self.server = server
    }
}

private let mhdRead: MHD_ContentReaderCallback = { cls, _, buffer, max in
    guard let cls, let buffer else { return AEMP_MHD_CONTENT_READER_END_WITH_ERROR }
    let box = Unmanaged<StreamBox>.fromOpaque(cls).takeUnretainedValue()
    let n = box.stream.read(into: buffer, max: max)
    if n > 0 { box.server.handler.streamed(bytes: n) }
    return n
}

private let mhdFreeStream: MHD_ContentReaderFreeCallback = { cls in
    guard let cls else { return }
    let box = Unmanaged<StreamBox>.fromOpaque(cls).takeRetainedValue()
    box.server.streams.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(box.stream)) }
    box.stream.closed()
}

private let mhdConnection: MHD_NotifyConnectionCallback = { cls, connection, _, code in
    guard let cls, let connection else { return }
    let server = Unmanaged<HTTPServer>.fromOpaque(cls).takeUnretainedValue()
    let key = connectionKey(connection)
    if code == .CONNECTION_NOTIFY_STARTED {
        let open = server.openConnections.wrappingAdd(1, ordering: .relaxed).newValue
        if open > server.settings.maxConnections { server.refusedConnections.withLock { _ = $0.insert(key) } }
        server.deadlines.opened(key, fd: aemp_mhd_connection_fd(connection))
    } else {
        server.openConnections.wrappingSubtract(1, ordering: .relaxed)
        server.refusedConnections.withLock { _ = $0.remove(key) }
        server.deadlines.closed(key)
    }
}

private let mhdCompleted: MHD_RequestCompletedCallback = { cls, connection, reqCls, _ in
    if let cls, let connection {
        // The next request on this connection (keep-alive) has as long to arrive as the first.
        Unmanaged<HTTPServer>.fromOpaque(cls).takeUnretainedValue().deadlines.answered(connectionKey(connection))
    }
    guard let reqCls, let raw = reqCls.pointee else { return }
    let context = Unmanaged<RequestContext>.fromOpaque(raw).takeRetainedValue()
    context.exchange?.complete()
    reqCls.pointee = nil
}

/// The request line has arrived (MHD_OPTION_URI_LOG_CALLBACK): makes the request's context, with
/// its raw query. libmicrohttpd 0.9.75 would store every query argument in the connection's memory
/// pool (about 50 bytes each, where the URL spends 2), and when the pool runs out it builds a 431
/// and then loses it, closing the connection without an answer (150 short arguments did, with the
/// 8 KiB pool). So the query is copied here and ended at its first byte: libmicrohttpd splits the
/// arguments off after this call, at the `?` it found before it, and now finds none. `uri` is the
/// request line in libmicrohttpd's read buffer, writable (const only in the callback's type); the
/// path before the `?` is left as it is.
private let mhdRequestLine: aemp_mhd_request_line_callback = {
    cls, uri, _ in
    let context = RequestContext()
    if let cls, let uri, let mark = strchr(uri, Int32(UInt8(ascii: "?"))) {
        let limit = Unmanaged<HTTPServer>.fromOpaque(cls).takeUnretainedValue().settings.maxQueryArguments
        let start = UnsafeMutableRawPointer(mutating: mark + 1).assumingMemoryBound(to: UInt8.self)
        let query = UnsafeBufferPointer(start: start, count: strlen(mark + 1))
        let count = query.isEmpty ? 0 : query.count(where: { $0 == UInt8(ascii: "&") }) + 1
        if count > limit { context.tooManyArguments = count } else { context.query = Array(query) }
        start.pointee = 0
    }
    return Unmanaged.passRetained(context).toOpaque()
}

private let mhdLog: MHD_LogCallback = {
    cls, format, args in
    guard let cls, let format, let args else { return }
    let server = Unmanaged<HTTPServer>.fromOpaque(cls).takeUnretainedValue()
    var buffer = [CChar](repeating: 0, count: 512)
    _ = vsnprintf(&buffer, buffer.count, format, args)
    let message = String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        .trimmingTrailingNewlines()
    // A client that hangs up (routine for SSE) is not worth a notice.
    let routine = message.contains("no longer available") || message.contains("closed by remote")
    server.settings.logger.log(level: routine ? .debug : .notice, "libmicrohttpd: \(message)")
}

private let mhdNoUnescape: aemp_mhd_unescape_callback = {
    _, _, s in
    s.map { strlen($0) } ?? 0
}

/// The key of a connection in the server's tables.
private func connectionKey(_ connection: OpaquePointer) -> UInt {
    UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(connection)))
}

/// The raw path as text. Bytes that are not UTF-8 are kept percent-encoded (`%FF`) rather than
/// replaced with U+FFFD: the router then refuses the path (400 invalid_path) instead of, say,
/// writing a key of a family named "\u{FFFD}".
private func requestPath(_ url: UnsafePointer<CChar>) -> String {
    if let valid = String(validatingCString: url) { return valid }
    var out = ""
    var p = UnsafeRawPointer(url).assumingMemoryBound(to: UInt8.self)
    while p.pointee != 0 {
        let b = p.pointee
        if b < 0x80 { out.unicodeScalars.append(Unicode.Scalar(b)) } else { out += "%" + String(b, radix: 16, uppercase: true) }
        p += 1
    }
    return out
}

/// What is wrong with where the request's body ends, if anything.
private enum FramingFault {
    /// The end is ambiguous or cannot be found: 400, RFC 9112 6.3.
    case ambiguous(String)
    /// Transfer codings besides chunked (listed), which the server does not undo: 501, RFC 9112 6.1.
    case unsupported(String)
}

/// Nil for the common case (neither field, or one `Content-Length`, or `Transfer-Encoding:
/// chunked`), also without looking at every field. Ambiguous: `Content-Length` given more than once
/// with different values (libmicrohttpd 0.9.75 silently takes the first), or together with
/// `Transfer-Encoding`; a `Transfer-Encoding` whose codings (of all its fields) do not end with one
/// chunked, or whose first field is not exactly `chunked` although its codings are (libmicrohttpd
/// decodes chunked only then, and would read anything else until the client closes).
private func framingFault(_ connection: OpaquePointer) -> FramingFault? {
    let length = lookup(connection, .HEADER_KIND, "Content-Length")
    let coding = lookup(connection, .HEADER_KIND, "Transfer-Encoding")
    if let coding {
        if length != nil { return .ambiguous("the request has both Content-Length and Transfer-Encoding") }
        if asciiCaseInsensitiveEqual(coding, "chunked"), values(connection, .HEADER_KIND).count(where: { asciiCaseInsensitiveEqual($0.name, "Transfer-Encoding") }) == 1 {
            return nil
        }
        let fields = values(connection, .HEADER_KIND).filter { asciiCaseInsensitiveEqual($0.name, "Transfer-Encoding") }.map(\.value)
        let codings = fields.flatMap { $0.split(separator: ",") }.map { element in
            // A coding's name, without parameters (`;q=…`) and blanks.
            String(element.prefix { $0 != ";" }.filter { $0 != " " && $0 != "\t" }).lowercased()
        }.filter { !$0.isEmpty }
        let listed = fields.joined(separator: ", ").debugDescription
        guard codings.last == "chunked", codings.firstIndex(of: "chunked") == codings.count - 1 else {
            return .ambiguous("Transfer-Encoding \(listed) does not end with chunked, once, so where the body ends is unknown")
        }
        guard codings.count == 1 else { return .unsupported(codings.dropLast().joined(separator: ", ")) }
        return .ambiguous("Transfer-Encoding \(listed) is not written as plain chunked in its first field")
    }
    guard length != nil else { return nil }
    let lengths = Set(values(connection, .HEADER_KIND).filter { asciiCaseInsensitiveEqual($0.name, "Content-Length") }.map(\.value))
    return lengths.count > 1 ? .ambiguous("the request has several different Content-Length fields") : nil
}

private func lookup(_ connection: OpaquePointer, _ kind: MHD_ValueKind, _ key: String) -> String? {
    MHD_lookup_connection_value(connection, kind, key).map { String(cString: $0) }
}

/// Collects header fields or query arguments, as received.
private func values(_ connection: OpaquePointer, _ kind: MHD_ValueKind) -> [(name: String, value: String)] {
    final class Collector {
        var values: [(name: String, value: String)] = []
    }
    // With no callback libmicrohttpd only counts: most requests have no query at all.
    let count = Int(MHD_get_connection_values(connection, kind, nil, nil))
    guard count > 0 else { return [] }
    let collector = Collector()
    collector.values.reserveCapacity(count)
    withExtendedLifetime(collector) {
        _ = MHD_get_connection_values(
            connection, kind,
            { cls, _, key, value in
                guard let cls, let key else { return .YES }
                let c = Unmanaged<Collector>.fromOpaque(cls).takeUnretainedValue()
                c.values.append((String(cString: key), value.map { String(cString: $0) } ?? ""))
                return .YES
            }, Unmanaged.passUnretained(collector).toOpaque())
    }
    return collector.values
}

/// The query arguments of the raw query, decoded as form values (`+` is a blank; undecodable
/// stays raw); a repeated name keeps its first value.
func queryArguments(_ query: [UInt8]) -> [String: String] {
    guard !query.isEmpty else { return [:] }
    var out: [String: String] = [:]
    for argument in query.split(separator: UInt8(ascii: "&"), omittingEmptySubsequences: true) {
        let equals = argument.firstIndex(of: UInt8(ascii: "="))
        let name = String(decoding: argument[..<(equals ?? argument.endIndex)], as: UTF8.self).replacingPlus()
        let value = equals.map { String(decoding: argument[argument.index(after: $0)...], as: UTF8.self).replacingPlus() } ?? ""
        let key = Destination.percentDecoded(name) ?? name
        if out[key] == nil { out[key] = Destination.percentDecoded(value) ?? value }
    }
    return out
}

extension String {
    fileprivate func replacingPlus() -> String {
        String(decoding: utf8.map { $0 == UInt8(ascii: "+") ? UInt8(ascii: " ") : $0 }, as: UTF8.self)
    }

    fileprivate func trimmingTrailingNewlines() -> String {
        var s = Substring(self)
        while s.last == "\n" || s.last == "\r" { s.removeLast() }
        return String(s)
    }
}
