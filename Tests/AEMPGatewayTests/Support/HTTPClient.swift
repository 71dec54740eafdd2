import AEMP
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

// A real HTTP/1.1 client for the gateway tests, over TCP on 127.0.0.1 (SwiftNIO + NIOHTTP1):
// `HTTPTestClient` (one keep-alive connection, requests in sequence), `SSEStream` (an event
// stream, parsed) and `rawExchange` (bytes in, bytes out, for malformed requests).

/// Why a test HTTP exchange failed.
enum HTTPTestError: Error, CustomStringConvertible {
    case timeout(String)
    case connectionClosed(String)
    /// The connection ended before any byte of the response arrived.
    case closedUnanswered(String)
    case streamEnded(String)

    var description: String {
        switch self {
        case .timeout(let s), .connectionClosed(let s), .closedUnanswered(let s), .streamEnded(let s): return s
        }
    }
}

/// A complete HTTP response.
struct HTTPTestResponse: Sendable, CustomStringConvertible {
    let status: Int
    let headers: [(String, String)]
    let body: [UInt8]

    /// The first value of a header field (name in any case).
    func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }

    /// Every value of a header field (name in any case).
    func headerValues(_ name: String) -> [String] {
        headers.filter { $0.0.lowercased() == name.lowercased() }.map(\.1)
    }

    /// The body decoded as JSON (jansson, like the gateway); nil if it is not JSON.
    var json: Value? {
        guard !body.isEmpty else { return nil }
        return try? JSONCodec.decode(body)
    }

    /// The body as text (invalid UTF-8 repaired).
    var text: String { String(decoding: body, as: UTF8.self) }

    var description: String {
        let shown = body.count > 2000 ? String(decoding: body.prefix(2000), as: UTF8.self) + "…" : text
        return "HTTP \(status) \(headers.map { "\($0.0): \($0.1)" }.joined(separator: "; ")) \(shown)"
    }

    /// Whether `raw` holds a complete first response: its head and a body of its `Content-Length`
    /// (or a chunked body to its last chunk). A response without either ends with the connection.
    static func isComplete(_ raw: [UInt8]) -> Bool {
        guard let end = raw.firstRange(of: [13, 10, 13, 10]) else { return false }
        let head = String(decoding: raw[..<end.lowerBound], as: UTF8.self).lowercased()
        for line in head.split(separator: "\r\n") where line.hasPrefix("content-length:") {
            guard let length = Int(String(line.dropFirst(15).filter { $0 != " " && $0 != "\t" })) else { return false }
            return raw.count - end.upperBound >= length
        }
        if head.contains("transfer-encoding: chunked") { return raw[end.upperBound...].firstRange(of: Array("0\r\n\r\n".utf8)) != nil }
        return false
    }

    /// Parses the first response in raw bytes (status line, headers, a `Content-Length` or chunked
    /// body, or everything up to the end for a response that ends with the connection).
    static func parse(_ raw: [UInt8]) -> HTTPTestResponse? {
        let crlfcrlf: [UInt8] = [13, 10, 13, 10]
        guard let end = raw.firstRange(of: crlfcrlf) else { return nil }
        let headText = String(decoding: raw[..<end.lowerBound], as: UTF8.self)
        var lines = headText.split(separator: "\r\n", omittingEmptySubsequences: false).map(String.init)
        guard !lines.isEmpty else { return nil }
        let statusLine = lines.removeFirst().split(separator: " ")
        guard statusLine.count >= 2, statusLine[0].hasPrefix("HTTP/1."), let status = Int(statusLine[1]) else { return nil }
        var headers: [(String, String)] = []
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let value = line[line.index(after: colon)...].drop(while: { $0 == " " || $0 == "\t" })
            headers.append((String(line[..<colon]), String(value)))
        }
        var rest = raw[end.upperBound...]
        let find = { (name: String) in headers.first { $0.0.lowercased() == name }?.1.lowercased() }
        var body: [UInt8] = []
        if let length = find("content-length").flatMap({ Int($0) }) {
            body = Array(rest.prefix(length))
        } else if find("transfer-encoding")?.contains("chunked") == true {
            while let lineEnd = rest.firstRange(of: [13, 10]) {
                let sizeText = String(decoding: rest[..<lineEnd.lowerBound], as: UTF8.self)
                guard let size = Int(sizeText.split(separator: ";").first ?? "", radix: 16), size > 0 else { break }
                rest = rest[lineEnd.upperBound...]
                body += rest.prefix(size)
                rest = rest.dropFirst(size + 2)
            }
        } else {
            body = Array(rest)
        }
        return HTTPTestResponse(status: status, headers: headers, body: body)
    }
}

/// A request handed to `HTTPTestClientHandler`, with the promise its response completes.
struct HTTPTestRequest: Sendable {
    var head: HTTPRequestHead
    var body: [UInt8]?
    var promise: EventLoopPromise<HTTPTestResponse>
}

/// Writes requests and matches responses to them in order (HTTP/1.1 keep-alive).
final class HTTPTestClientHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPTestRequest
    typealias OutboundOut = HTTPClientRequestPart

    private var waiting = CircularBuffer<EventLoopPromise<HTTPTestResponse>>()
    private var head: HTTPResponseHead?
    private var body: [UInt8] = []

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = unwrapOutboundIn(data)
        waiting.append(request.promise)
        context.write(wrapOutboundOut(.head(request.head)), promise: nil)
        if let bytes = request.body, !bytes.isEmpty {
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: bytes)))), promise: nil)
        }
        context.write(wrapOutboundOut(.end(nil)), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            // 1xx interim responses (100 Continue) are not the answer.
            if h.status.code >= 100 && h.status.code < 200 { return }
            head = h
            body = []
        case .body(var b):
            if head != nil { body += b.readBytes(length: b.readableBytes) ?? [] }
        case .end:
            guard let h = head else { return }
            head = nil
            let response = HTTPTestResponse(
                status: Int(h.status.code), headers: h.headers.map { ($0.name, $0.value) }, body: body)
            body = []
            waiting.popFirst()?.succeed(response)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll(
            head == nil
                ? HTTPTestError.closedUnanswered("the server closed the connection before answering")
                : HTTPTestError.connectionClosed("the server closed the connection in the middle of its answer"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        failAll(error)
        context.close(promise: nil)
    }

    private func failAll(_ error: any Error) {
        while let p = waiting.popFirst() { p.fail(error) }
    }
}

/// An HTTP/1.1 client on one keep-alive connection; requests run one after the other. When the
/// server closed the connection (or a request timed out), the next request opens a new one.
final class HTTPTestClient: Sendable {
    let host: String
    let port: Int
    private let channel: Locked<(any Channel)?>
    private let sequence = AsyncLock()
    /// Connections opened so far (1 after `init`): tells whether keep-alive held.
    var connectionsOpened: Int { opened.load(ordering: .relaxed) }
    private let opened = Atomic<Int>(0)

    init(host: String = "127.0.0.1", port: Int) async throws {
        self.host = host
        self.port = port
        self.channel = Locked(nil)
        let c = try await Self.connect(host: host, port: port)
        opened.add(1, ordering: .relaxed)
        channel.withLock { $0 = c }
    }

    private static func connect(host: String, port: Int) async throws -> any Channel {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.milliseconds(Int64(5000 * sanitizerSlowdown)))  // slower under a sanitizer
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // No outbound header validation: tests send odd headers on purpose.
                    try channel.pipeline.syncOperations.addHTTPClientHandlers(
                        leftOverBytesStrategy: .dropBytes, enableOutboundHeaderValidation: false)
                    try channel.pipeline.syncOperations.addHandler(HTTPTestClientHandler())
                }
            }
            .connect(host: host, port: port).get()
    }

    /// The open connection (reused), or a new one if the server closed the last.
    private func currentChannel() async throws -> (channel: any Channel, reused: Bool) {
        if let c = channel.withLock({ $0 }), c.isActive { return (c, true) }
        return (try await newChannel(), false)
    }

    private func newChannel() async throws -> any Channel {
        let c = try await Self.connect(host: host, port: port)
        opened.add(1, ordering: .relaxed)
        channel.withLock { $0 = c }
        return c
    }

    /// Whether `error` says a reused connection was already closing when the request went out:
    /// closed before any byte of an answer, or the write failed.
    private static func isStale(_ error: any Error) -> Bool {
        switch error {
        case HTTPTestError.closedUnanswered: return true
        case ChannelError.ioOnClosedChannel, ChannelError.alreadyClosed, ChannelError.outputClosed: return true
        case let e as IOError: return [ECONNRESET, EPIPE].contains(e.errnoCode)
        default: return false
        }
    }

    /// Closes the connection.
    func close() async {
        let c = channel.withLock { c -> (any Channel)? in
            defer { c = nil }
            return c
        }
        try? await c?.close()
    }

    /// Whether the current connection is still open.
    var isConnected: Bool { channel.withLock { $0?.isActive ?? false } }

    /// Sends a request and waits up to `timeout` seconds for its complete response. `body` may be
    /// any bytes; `Host` and `Content-Length` are added unless given in `headers`.
    func request(
        _ method: String, _ path: String, headers: [(String, String)] = [], body: [UInt8]? = nil,
        timeout: Double = 10
    ) async throws -> HTTPTestResponse {
        // An answer may take longer under a sanitizer (the gateway and this process both run slower).
        let timeout = timeout * sanitizerSlowdown
        return try await sequence.withLock {
            let (channel, reused) = try await currentChannel()
            do {
                return try await exchange(on: channel, method, path, headers: headers, body: body, timeout: timeout)
            } catch where reused && ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"].contains(method) && Self.isStale(error) {
                // An idle keep-alive connection the server closed (its timeout) just as this
                // request went out: an idempotent request is retried once on a new connection,
                // as curl, browsers and RFC 9112 section 9.3.1 do.
                self.channel.withLock { if $0 === channel { $0 = nil } }
                return try await exchange(on: try await newChannel(), method, path, headers: headers, body: body, timeout: timeout)
            }
        }
    }

    private func exchange(
        on channel: any Channel, _ method: String, _ path: String, headers: [(String, String)], body: [UInt8]?, timeout: Double
    ) async throws -> HTTPTestResponse {
        var h = HTTPHeaders(headers)
        if !h.contains(name: "Host") { h.add(name: "Host", value: "\(host):\(port)") }
        if !h.contains(name: "Content-Length") && !h.contains(name: "Transfer-Encoding") {
            if let body {
                h.add(name: "Content-Length", value: String(body.count))
            } else if ["POST", "PUT", "PATCH"].contains(method) {
                h.add(name: "Content-Length", value: "0")
            }
        }
        let head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: method), uri: path, headers: h)
        // Whatever happens, `promise` completes: with the response, with the connection's end
        // (the handler), with a failed write (a closed channel never hands the request to the
        // handler), or with the timeout. Later completions are ignored.
        let promise = channel.eventLoop.makePromise(of: HTTPTestResponse.self)
        let written = channel.eventLoop.makePromise(of: Void.self)
        written.futureResult.whenFailure { promise.fail($0) }
        let timer = channel.eventLoop.scheduleTask(in: .nanoseconds(Int64(timeout * 1e9))) {
            promise.fail(HTTPTestError.timeout("no response to \(method) \(path) within \(timeout) s"))
            channel.close(promise: nil)  // the connection is out of step now
        }
        defer { timer.cancel() }
        channel.writeAndFlush(HTTPTestRequest(head: head, body: body, promise: promise), promise: written)
        let response = try await promise.futureResult.get()
        if response.header("Connection")?.lowercased().contains("close") == true {
            // The server ends this connection: the next request opens a new one.
            self.channel.withLock { if $0 === channel { $0 = nil } }
            channel.close(promise: nil)
        }
        return response
    }

    /// Sends `json` (encoded with jansson) with `Content-Type: application/json`.
    func request(
        _ method: String, _ path: String, json: Value, headers: [(String, String)] = [], timeout: Double = 10
    ) async throws -> HTTPTestResponse {
        let body = JSONCodec.encodeBytes(json)
        return try await request(
            method, path, headers: [("Content-Type", "application/json")] + headers, body: body, timeout: timeout)
    }

    /// Sends `bytes` as they are on a new connection to the same server; see `rawExchange(host:port:…)`.
    func rawExchange(
        _ bytes: [UInt8], timeout: Double = 10, until complete: (@Sendable ([UInt8]) -> Bool)? = nil
    ) async throws -> [UInt8] {
        try await Self.rawExchange(host: host, port: port, bytes, timeout: timeout, until: complete)
    }

    /// Opens a new connection, writes `bytes` and hangs up at once (a client that goes away mid-request).
    func rawSendAndHangUp(_ bytes: [UInt8]) async throws {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.milliseconds(Int64(5000 * sanitizerSlowdown)))  // slower under a sanitizer
            .connect(host: host, port: port).get()
        try? await channel.writeAndFlush(ByteBuffer(bytes: bytes)).get()
        try? await channel.close()
    }

    /// Sends `bytes` as they are on a new connection and returns everything the server sent until it
    /// closed the connection (or until `complete` says the bytes so far are enough). Throws on
    /// timeout.
    static func rawExchange(
        host: String = "127.0.0.1", port: Int, _ bytes: [UInt8], timeout: Double = 10,
        until complete: (@Sendable ([UInt8]) -> Bool)? = nil
    ) async throws -> [UInt8] {
        let connection = try await RawConnection(host: host, port: port)
        defer { connection.close() }
        // A server that answers early and closes may reset the rest of a large write: what it
        // answered still counts, so a failed write is not an error here.
        await connection.send(bytes)
        guard let result = try await connection.wait(within: timeout, until: complete) else {
            throw HTTPTestError.timeout(
                "raw exchange: the server neither closed the connection nor completed an answer within \(timeout) s; got \(String(decoding: connection.received, as: UTF8.self).debugDescription)"
            )
        }
        return result
    }
}

/// A TCP connection that writes bytes as they are and collects what comes back: for malformed,
/// slow and flooding clients (`HTTPTestClient.rawExchange` is one request on one of them).
final class RawConnection: Sendable {
    private let channel: any Channel
    private let inbox = Watched(RawInbox())

    /// Connects to `host:port` (failing after `connectTimeout` seconds).
    init(host: String = "127.0.0.1", port: Int, connectTimeout: Int64 = 5) async throws {
        let inbox = self.inbox
        channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.milliseconds(Int64(Double(connectTimeout) * 1000 * sanitizerSlowdown)))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(RawCollector(inbox: inbox))
                }
            }
            .connect(host: host, port: port).get()
    }

    /// Writes `bytes`; false if the write failed (the server closed or reset the connection).
    @discardableResult
    func send(_ bytes: [UInt8]) async -> Bool {
        (try? await channel.writeAndFlush(ByteBuffer(bytes: bytes)).get()) != nil
    }

    /// Everything received so far.
    var received: [UInt8] { inbox.read { $0.bytes } }

    /// Whether the server closed the connection (or it failed).
    var isClosed: Bool { inbox.read { $0.closed } }

    /// Waits until the server closed the connection, or until `complete` says the bytes received
    /// are enough; returns them; nil after `seconds`.
    func wait(within seconds: Double, until complete: (@Sendable ([UInt8]) -> Bool)? = nil) async throws -> [UInt8]? {
        try await inbox.wait(within: seconds) { s -> [UInt8]? in
            if s.closed { return s.bytes }
            if let complete, complete(s.bytes) { return s.bytes }
            return nil
        }
    }

    /// Waits until the server closed the connection; false after `seconds`.
    func waitForClose(within seconds: Double) async throws -> Bool {
        try await inbox.wait(within: seconds) { s in s.closed ? true : nil } ?? false
    }

    /// Closes the connection (from this side).
    func close() {
        channel.close(promise: nil)
    }
}

/// Bytes received on a raw connection.
struct RawInbox: Sendable {
    var bytes: [UInt8] = []
    var closed = false
}

/// Collects every byte of a raw connection.
final class RawCollector: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let inbox: Watched<RawInbox>

    init(inbox: Watched<RawInbox>) { self.inbox = inbox }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var b = unwrapInboundIn(data)
        let bytes = b.readBytes(length: b.readableBytes) ?? []
        inbox.update { $0.bytes += bytes }
    }

    func channelInactive(context: ChannelHandlerContext) {
        inbox.update { $0.closed = true }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        inbox.update { $0.closed = true }
        context.close(promise: nil)
    }
}

// MARK: - Server-Sent Events

/// One dispatched Server-Sent Event.
struct SSEEvent: Sendable, Equatable, CustomStringConvertible {
    /// The `id` field of this event's block (nil if it had none).
    var id: String?
    /// The event type (`message` when the block named none).
    var event: String
    /// The data lines joined with newlines.
    var data: String

    /// `data` decoded as JSON; nil if it is not JSON.
    var json: Value? { try? JSONCodec.decode(data) }

    var description: String { "[\(id ?? "-")] \(event): \(data)" }
}

/// What an event stream has received so far.
struct SSEState: Sendable {
    var status: Int?
    var headers: [(String, String)] = []
    var events: [SSEEvent] = []
    /// Comment lines seen (heartbeats).
    var comments: [String] = []
    /// `retry:` values seen.
    var retries: [Int] = []
    /// The body of a response that is not an event stream (e.g. a problem).
    var otherBody: [UInt8] = []
    var ended = false
}

/// Parses a `text/event-stream` body incrementally (WHATWG HTML §9.2.6).
struct SSEParser {
    private var buffer: [UInt8] = []
    private var id: String?
    private var event: String?
    private var data: String?

    /// Feeds bytes; dispatches complete events, comments and retry values into `state`.
    mutating func feed(_ bytes: [UInt8], into state: inout SSEState) {
        buffer += bytes
        var start = 0
        var i = 0
        while i < buffer.count {
            let c = buffer[i]
            if c == 0x0A || c == 0x0D {
                let line = String(decoding: buffer[start..<i], as: UTF8.self)
                // CRLF counts as one line end.
                if c == 0x0D && i + 1 < buffer.count && buffer[i + 1] == 0x0A { i += 1 }
                else if c == 0x0D && i + 1 == buffer.count { break }  // wait: an LF may follow
                process(line, into: &state)
                start = i + 1
            }
            i += 1
        }
        buffer.removeFirst(start)
    }

    private mutating func process(_ line: String, into state: inout SSEState) {
        if line.isEmpty {
            // Blocks without data (retry-only blocks, heartbeats) dispatch nothing.
            if let data {
                state.events.append(SSEEvent(id: id, event: event ?? "message", data: data))
            }
            id = nil
            event = nil
            data = nil
            return
        }
        if line.hasPrefix(":") {
            state.comments.append(String(line.dropFirst()))
            return
        }
        let field: Substring, value: Substring
        if let colon = line.firstIndex(of: ":") {
            field = line[..<colon]
            var v = line[line.index(after: colon)...]
            if v.first == " " { v = v.dropFirst() }
            value = v
        } else {
            field = Substring(line)
            value = ""
        }
        switch field {
        case "event": event = String(value)
        case "data": data = data.map { $0 + "\n" + value } ?? String(value)
        case "id": if !value.contains("\0") { id = String(value) }
        case "retry": if let n = Int(value) { state.retries.append(n) }
        default: break
        }
    }
}

/// Feeds an event-stream response into `SSEState`.
final class SSEHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    let state: Watched<SSEState>
    private var parser = SSEParser()
    private var isEventStream = false

    init(state: Watched<SSEState>) { self.state = state }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            if h.status.code >= 100 && h.status.code < 200 { return }
            isEventStream = h.headers["Content-Type"].first?.lowercased().hasPrefix("text/event-stream") == true
            state.update { s in
                s.status = Int(h.status.code)
                s.headers = h.headers.map { ($0.name, $0.value) }
            }
        case .body(var b):
            let bytes = b.readBytes(length: b.readableBytes) ?? []
            state.update { s in
                if isEventStream { parser.feed(bytes, into: &s) } else { s.otherBody += bytes }
            }
        case .end:
            state.update { $0.ended = true }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        state.update { $0.ended = true }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        state.update { $0.ended = true }
        context.close(promise: nil)
    }
}

/// A `GET` with `Accept: text/event-stream`, its events parsed as they arrive.
final class SSEStream: Sendable {
    let path: String
    private let channel: any Channel
    private let state: Watched<SSEState>
    /// The response status (available once `init` returns).
    let status: Int
    /// The response header fields.
    let responseHeaders: [(String, String)]

    /// Connects, sends the request and waits (up to `timeout`) for the response head.
    init(
        host: String = "127.0.0.1", port: Int, path: String, headers: [(String, String)] = [],
        timeout: Double = 10
    ) async throws {
        self.path = path
        let state = Watched(SSEState())
        self.state = state
        channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.milliseconds(Int64(5000 * sanitizerSlowdown)))  // slower under a sanitizer
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers(
                        leftOverBytesStrategy: .dropBytes, enableOutboundHeaderValidation: false)
                    try channel.pipeline.syncOperations.addHandler(SSEHandler(state: state))
                }
            }
            .connect(host: host, port: port).get()
        var h = HTTPHeaders(headers)
        if !h.contains(name: "Host") { h.add(name: "Host", value: "\(host):\(port)") }
        if !h.contains(name: "Accept") { h.add(name: "Accept", value: "text/event-stream") }
        h.add(name: "Cache-Control", value: "no-cache")
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: h)
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        let timeout = timeout * sanitizerSlowdown  // the head may take longer under a sanitizer
        let got = try await state.wait(within: timeout) { s -> (Int, [(String, String)])? in
            if let status = s.status { return (status, s.headers) }
            if s.ended { throw HTTPTestError.connectionClosed("GET \(path): the connection closed before a response") }
            return nil
        }
        guard let got else {
            channel.close(promise: nil)
            throw HTTPTestError.timeout("GET \(path): no response head within \(timeout) s")
        }
        status = got.0
        responseHeaders = got.1
    }

    /// A response header (name in any case).
    func header(_ name: String) -> String? {
        responseHeaders.first { $0.0.lowercased() == name.lowercased() }?.1
    }

    /// The next event with data (comments, heartbeats and retry-only blocks are skipped); throws
    /// when none arrives within `seconds` or when the stream has ended.
    func next(within seconds: Double = 10) async throws -> SSEEvent {
        let event = try await state.wait(within: seconds) { s -> SSEEvent? in
            if !s.events.isEmpty { return s.events.removeFirst() }
            if s.ended {
                throw HTTPTestError.streamEnded(
                    "GET \(path): the stream ended (status \(s.status ?? 0)) \(String(decoding: s.otherBody, as: UTF8.self))")
            }
            return nil
        }
        guard let event else { throw HTTPTestError.timeout("GET \(path): no event within \(seconds) s") }
        return event
    }

    /// The next `count` events.
    func next(_ count: Int, within seconds: Double = 10) async throws -> [SSEEvent] {
        var out: [SSEEvent] = []
        for _ in 0..<count { out.append(try await next(within: seconds)) }
        return out
    }

    /// Waits until the server ends the stream (after the events already queued); false on timeout.
    func waitForEnd(within seconds: Double = 10) async throws -> Bool {
        try await state.wait(within: seconds) { s in s.ended ? true : nil } ?? false
    }

    /// Events received and not yet taken by `next`.
    var pendingEvents: [SSEEvent] { state.read { $0.events } }
    /// Comment lines received so far (heartbeats).
    var comments: [String] { state.read { $0.comments } }
    /// `retry:` values received so far.
    var retries: [Int] { state.read { $0.retries } }
    /// Whether the stream has ended.
    var isEnded: Bool { state.read { $0.ended } }
    /// The body of a response that is not an event stream.
    var otherBody: [UInt8] { state.read { $0.otherBody } }

    /// Waits until a comment line arrives (a heartbeat), at most `seconds`.
    func waitForComment(within seconds: Double) async throws -> String? {
        let seen = state.read { $0.comments.count }
        return try await state.wait(within: seconds) { s in s.comments.count > seen ? s.comments.last : nil }
    }

    /// Closes the connection.
    func close() async {
        try? await channel.close()
    }
}
