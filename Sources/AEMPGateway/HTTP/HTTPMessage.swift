import AEMP
import Logging

/// An HTTP request as the router sees it: read on libmicrohttpd's thread, body complete.
public struct HTTPRequest: Sendable {
    /// `GET`, `POST`, …
    public var method: String
    /// The path, percent-decoded by libmicrohttpd, without the query.
    public var path: String
    /// Query arguments (decoded); repeated names keep the first value.
    public var query: [String: String]
    /// Header fields as received (name, value), in order; `header(_:)` looks them up.
    public var headers: [(name: String, value: String)]
    /// The request body.
    public var body: [UInt8]
    /// A short ID for log lines and problem details.
    public var requestID: String

    /// The value of a header (name in any case); the first wins when a field is repeated.
    /// A linear search: requests carry a handful of fields, and most are never asked for.
    public func header(_ name: String) -> String? {
        headers.first { asciiCaseInsensitiveEqual($0.name, name) }?.value
    }
}

/// An HTTP response: a complete body, or an event stream (SSE) fed later from any thread.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: [UInt8]
    /// When set, the body is this stream (chunked, until the stream ends).
    public var stream: EventStream?

    public init(status: Int, headers: [(String, String)] = [], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
        self.stream = nil
    }

    /// A JSON response (encoded with jansson).
    public static func json(_ status: Int, _ value: Value, headers: [(String, String)] = []) -> HTTPResponse {
        HTTPResponse(
            status: status, headers: [("Content-Type", "application/json")] + headers,
            body: JSONBody.encode(value))
    }

    /// A `text/event-stream` response whose body is `stream`.
    public static func eventStream(_ stream: EventStream, headers: [(String, String)] = []) -> HTTPResponse {
        var r = HTTPResponse(
            status: 200,
            headers: [
                ("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"),
                ("X-Accel-Buffering", "no"),
            ] + headers)
        r.stream = stream
        return r
    }
}

/// JSON bodies (the AEMP codec's HTTP dialect), with the gateway's conventions.
enum JSONBody {
    /// Encodes a value, converting per value what JSON cannot say (see `JSONWriter`; counted in `ValueEvents`).
    static func encode(_ value: Value) -> [UInt8] {
        var conversions = JSONConversions()
        let bytes = JSONWriter.httpBytes(value, conversions: &conversions)
        if !conversions.isEmpty {
            ValueEvents.record(conversions)
            conversionLog.note(conversions)
        }
        return bytes
    }

    /// Process-wide, as JSON bodies are encoded by static code; it logs through the logger of the
    /// last gateway started (one per process in practice).
    static let conversionLog = ConversionLog()
}

/// A notice when a response carried values JSON cannot say directly (at most 5 lines per 10 s;
/// `/metrics` counts every one).
final class ConversionLog: Sendable {
    private let logger = Locked<Logger>(Logger(label: "aemp-gateway"))
    private let window = Locked<(start: ContinuousClock.Instant, lines: Int)>((.now, 0))

    /// Logs through `logger` (the gateway's, with its format and level) from now on.
    func use(_ logger: Logger) {
        self.logger.withLock { $0 = logger }
    }

    func note(_ conversions: JSONConversions) {
        let allowed = window.withLock { w -> Bool in
            let now = ContinuousClock.now
            if now - w.start > .seconds(10) { w = (now, 0) }
            w.lines += 1
            return w.lines <= 5
        }
        guard allowed else { return }
        logger.withLock { $0 }.notice(
            "a response carried values JSON cannot hold as they are: NaN/Inf as strings, invalid code points as U+FFFD",
            metadata: ["non_finite": "\(conversions.nonFinite)", "invalid_code_points": "\(conversions.invalidCodePoints)"])
    }
}

/// Compares two header names, ignoring ASCII case (field names are ASCII tokens).
func asciiCaseInsensitiveEqual(_ a: String, _ b: String) -> Bool {
    guard a.utf8.count == b.utf8.count else { return false }
    for (x, y) in zip(a.utf8, b.utf8) where x != y {
        guard x | 0x20 == y | 0x20, (x | 0x20) >= UInt8(ascii: "a"), (x | 0x20) <= UInt8(ascii: "z") else { return false }
    }
    return true
}
