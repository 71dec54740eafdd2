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
    /// Connections served; up to 64 more are accepted only to be answered 503 and closed, beyond
    /// that libmicrohttpd refuses them. The process may hold 20,000 descriptors here.
    public var maxConnections: Int = 16_000
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

    /// Whether an answer was given.
    public var isAnswered: Bool { state.withLock { $0.response != nil } }

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
                // Waiting for an answer: `stop` answers it if none comes first (`respond` and
                // `complete` take it out; answers given at once never enter the table).
                server.pending.withLock { $0[ObjectIdentifier(self)] = self }
            }
            return nil
        }
    }

    func complete() {
        let waiting = state.withLock { s -> Bool in
            s.completed = true
            return s.suspended
        }
        if waiting { server.pending.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(self)) } }
    }
}

/// Per-request state on libmicrohttpd's thread (stored in its `req_cls`).
final class RequestContext {
    var body: [UInt8] = []
    var tooLarge = false
    var overCapacity = false
    /// Why the request's framing is ambiguous (it is refused unread).
    var ambiguousFraming: String?
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
        var options: [MHD_OptionItem] = [
            MHD_OptionItem(option: .EXTERNAL_LOGGER, value: unsafeBitCast(mhdLog, to: Int.self), ptr_value: me),
            MHD_OptionItem(option: .LISTEN_SOCKET, value: Int(listenFD), ptr_value: nil),
            // Keep the URL and query raw: the router decodes each path segment itself, so that an
            // encoded '/' (%2F) in a subkey stays inside its segment.
            MHD_OptionItem(option: .UNESCAPE_CALLBACK, value: unsafeBitCast(mhdNoUnescape, to: Int.self), ptr_value: nil),
            MHD_OptionItem(option: .CONNECTION_LIMIT, value: settings.maxConnections + 64, ptr_value: nil),
            MHD_OptionItem(
                option: .NOTIFY_CONNECTION, value: unsafeBitCast(mhdConnection, to: Int.self), ptr_value: me),
            MHD_OptionItem(option: .CONNECTION_TIMEOUT, value: settings.connectionTimeout, ptr_value: nil),
            MHD_OptionItem(option: .CONNECTION_MEMORY_LIMIT, value: settings.connectionMemory, ptr_value: nil),
            MHD_OptionItem(
                option: .NOTIFY_COMPLETED, value: unsafeBitCast(mhdCompleted, to: Int.self), ptr_value: me),
            MHD_OptionItem(option: .END, value: 0, ptr_value: nil),
        ]
        // MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME (incl. MHD_USE_ITC, which also wakes the poller
        // for resumes from other threads) | MHD_USE_ERROR_LOG | MHD_USE_TURBO; a closed flag enum in
        // Swift, so by value (microhttpd.h). The polling thread is ours (see `poll`).
        var flags: UInt32 = 512 | (8192 | 1024) | 1 | 4096
        // NUL-terminated PEM copies; GnuTLS parses them while the daemon starts.
        let cert = settings.tlsCertificate.map { $0 + [0] }
        let key = settings.tlsKey.map { $0 + [0] }
        let d = cert.withOptionalBytes { certPointer in
            key.withOptionalBytes { keyPointer -> OpaquePointer? in
                if let certPointer, let keyPointer {
                    flags |= 2  // MHD_USE_TLS
                    options.insert(MHD_OptionItem(option: .HTTPS_MEM_KEY, value: 0, ptr_value: keyPointer), at: 0)
                    options.insert(MHD_OptionItem(option: .HTTPS_MEM_CERT, value: 0, ptr_value: certPointer), at: 0)
                }
                return options.withUnsafeMutableBufferPointer { items -> OpaquePointer? in
                    withVaList([Int32(MHD_OPTION.ARRAY.rawValue), items.baseAddress!, Int32(MHD_OPTION.END.rawValue)]) {
                        MHD_start_daemon_va(flags, 0, nil, nil, mhdAccess, me, $0)
                    }
                }
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

    /// The polling thread, until `stop`: polls libmicrohttpd's epoll descriptor and the resumer
    /// (at most until libmicrohttpd's next timeout), resumes what other threads queued, then runs
    /// one pass of `MHD_run`, wrapped in `settings.pass`.
    fileprivate func poll(_ d: DaemonRef) {
        var fds = [
            pollfd(fd: aemp_mhd_epoll_fd(d.pointer), events: Int16(POLLIN), revents: 0),
            pollfd(fd: resumer.fd, events: Int16(POLLIN), revents: 0),
        ]
        while !stopping.load(ordering: .acquiring) {
            var timeout: UInt64 = 0
            let wait = MHD_get_timeout(d.pointer, &timeout) == .YES ? Int32(min(timeout, 1000)) : 1000
            if Glibc.poll(&fds, 2, wait) > 0, fds[1].revents != 0 { resumer.drain() }
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
        guard bind(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0, Glibc.listen(fd, 4096) == 0 else {
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
    /// Runs `body` with a pointer to the bytes (nil when there are none).
    fileprivate func withOptionalBytes<R>(_ body: (UnsafeMutableRawPointer?) -> R) -> R {
        guard var bytes = self else { return body(nil) }
        return bytes.withUnsafeMutableBytes { body($0.baseAddress) }
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

    guard let raw = reqCls.pointee else {
        // First call: headers only. Answer on a later call (keep-alive stays on, conventions).
        let context = RequestContext()
        reqCls.pointee = Unmanaged.passRetained(context).toOpaque()
        // Refused from the header alone: answered at once, the body (if any) never read.
        if server.refusedConnections.withLock({ $0.contains(connectionKey(connection)) }) {
            context.overCapacity = true
        } else if let why = ambiguousFraming(connection) {
            // Where the body ends depends on which field one believes: a proxy in front may believe
            // another than libmicrohttpd (request smuggling). Refused, and the connection closed
            // (RFC 9112 6.1 and 6.3).
            context.ambiguousFraming = why
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
    let context = Unmanaged<RequestContext>.fromOpaque(raw).takeUnretainedValue()

    if uploadSize.pointee > 0 {
        let n = uploadSize.pointee
        if !context.tooLarge {
            if context.body.count + n > server.settings.maxBodySize {
                context.tooLarge = true
                context.body = []
            } else if let uploadData {
                uploadData.withMemoryRebound(to: UInt8.self, capacity: n) {
                    context.body.append(contentsOf: UnsafeBufferPointer(start: $0, count: n))
                }
            }
        }
        // Consumed, or dropped once the body outgrew the limit (a chunked body has no length to
        // refuse up front): the 413 can only be queued when the upload is complete.
        uploadSize.pointee = 0
        return .YES
    }
    // The request is complete (a later call of a suspended exchange changes nothing).
    server.deadlines.arrived(connectionKey(connection))

    if context.exchange == nil, !context.tooLarge, !context.overCapacity, context.ambiguousFraming == nil, let url, let method,
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

/// Builds the request once its body is complete (or refused) and hands it to the handler.
private func makeExchange(
    _ connection: ConnectionRef, url: UnsafePointer<CChar>?, method: UnsafePointer<CChar>?, context: RequestContext,
    server: HTTPServer
) -> Exchange {
    let request = HTTPRequest(
        method: method.map { String(cString: $0) } ?? "GET",
        path: url.map(requestPath) ?? "/",
        query: queryArguments(connection.pointer),
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
        server: server)
    server.handler.answered(exchange, response)
    return queued
}

/// Queues `response` (a complete body, or an event stream) with its headers and `extra` ones.
private func queue(
    _ response: HTTPResponse, adding extra: [(String, String)], on connection: ConnectionRef, server: HTTPServer
) -> MHD_Result {
    let r: OpaquePointer?
    if let stream = response.stream {
        stream.attach(connection)
        stream.boundKernelBuffer(fd: aemp_mhd_connection_fd(connection.pointer))
        server.streams.withLock { $0[ObjectIdentifier(stream)] = stream }
        let box = Unmanaged.passRetained(StreamBox(stream: stream, server: server)).toOpaque()
        r = MHD_create_response_from_callback(UInt64.max, 4096, mhdRead, box, mhdFreeStream)
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
    guard let cls, let buffer else { return -2 }
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

private let mhdNoUnescape: @convention(c) (UnsafeMutableRawPointer?, OpaquePointer?, UnsafeMutablePointer<CChar>?) -> Int = {
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

/// Why the end of the request's body is ambiguous, if it is: `Content-Length` given more than
/// once with different values (libmicrohttpd 0.9.75 silently takes the first), or together with
/// `Transfer-Encoding`. Nil for the common case, also without looking at every field.
private func ambiguousFraming(_ connection: OpaquePointer) -> String? {
    guard lookup(connection, .HEADER_KIND, "Content-Length") != nil else { return nil }
    if lookup(connection, .HEADER_KIND, "Transfer-Encoding") != nil {
        return "the request has both Content-Length and Transfer-Encoding"
    }
    let lengths = Set(values(connection, .HEADER_KIND).filter { asciiCaseInsensitiveEqual($0.name, "Content-Length") }.map(\.value))
    return lengths.count > 1 ? "the request has several different Content-Length fields" : nil
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

/// The query arguments, decoded as form values (raw, see UNESCAPE_CALLBACK; undecodable stays
/// raw); a repeated name keeps its first value.
private func queryArguments(_ connection: OpaquePointer) -> [String: String] {
    var out: [String: String] = [:]
    for (name, value) in values(connection, .GET_ARGUMENT_KIND) {
        let key = Destination.percentDecoded(name.replacingPlus()) ?? name
        if out[key] == nil { out[key] = Destination.percentDecoded(value.replacingPlus()) ?? value }
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
