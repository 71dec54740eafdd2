import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Rate limiting of repeated log lines, as systemd-journald's `RateLimitBurst`/`RateLimitIntervalSec`
/// do per service, but per kind of line: of the lines with the same key (message, level and call
/// site; never the metadata, which varies), the first `burst` in an interval are written, the rest
/// are counted, and one summary line per key says how many were left out once the interval ends.
///
/// Shared by every copy of `RateLimitedLogHandler` (swift-log copies handlers with each `Logger`):
/// one pthread mutex around a small table, taken only by lines that passed the level filter.
public final class LogRateLimiter: Sendable {
    /// Lines of one key written per interval; 0 = no limit.
    public let burst: Int
    /// The interval, in nanoseconds.
    public let intervalNanoseconds: UInt64
    /// Where summary lines go (not rate limited themselves).
    private let summaries: Logger
    private let state = Locked(State())
    private let suppressedTotal = Atomic<Int>(0)
    private let clock: @Sendable () -> UInt64

    /// A key: what makes two lines "the same line". The call site is the category: a message
    /// with interpolated values from one place still counts as one kind of line.
    struct Key: Hashable {
        var level: Logger.Level
        var message: String
        var file: String
        var line: UInt
    }

    struct Window {
        var start: UInt64
        var written = 0
        var suppressed = 0
        /// For the summary: the message, level and source of the suppressed lines.
        var message: String
        var level: Logger.Level
        var source: String
    }

    struct State {
        var windows: [Key: Window] = [:]
        /// When the next sweep for ended windows is due (a sweep is cheap, but not per line).
        var nextSweep: UInt64 = 0
    }

    /// Keys tracked at once; lines of further keys share one window (a flood of lines with ever
    /// new messages is still limited, and the table stays small).
    static let maxKeys = 1024

    /// A summary of one key's suppressed lines.
    public struct Summary: Sendable, Equatable {
        public var message: String
        public var level: Logger.Level
        public var source: String
        public var suppressed: Int
    }

    /// A limiter writing its summaries to `summaries` (give it the unlimited logger the limited
    /// lines go to, at a level that lets the summaries through).
    public init(
        burst: Int, interval: Duration, summaries: Logger,
        clock: @escaping @Sendable () -> UInt64 = LogRateLimiter.monotonicNanoseconds
    ) {
        self.burst = burst
        let (s, atto) = interval.components
        self.intervalNanoseconds = UInt64(max(0, s)) * 1_000_000_000 + UInt64(max(0, atto) / 1_000_000_000)
        self.summaries = summaries
        self.clock = clock
    }

    /// Lines left out since the limiter was made (for a metrics counter).
    public var suppressedLines: Int { suppressedTotal.load(ordering: .relaxed) }

    /// Whether the line may be written now; writes the summaries of ended windows first.
    func admit(level: Logger.Level, message: Logger.Message, source: @autoclosure () -> String, file: String, line: UInt) -> Bool {
        guard burst > 0 else { return true }
        let now = clock()
        let text = message.description
        var key = Key(level: level, message: text, file: file, line: line)
        let (allowed, due) = state.withLock { s -> (Bool, [Summary]) in
            let due = now >= s.nextSweep ? sweep(&s, now: now) : []
            if s.windows[key] == nil, s.windows.count >= Self.maxKeys {
                key = Key(level: level, message: "", file: "", line: 0)
            }
            if var w = s.windows[key] {
                if w.written < burst {
                    w.written += 1
                    s.windows[key] = w
                    return (true, due)
                }
                w.suppressed += 1
                s.windows[key] = w
                return (false, due)
            }
            let many = key.file.isEmpty
            s.windows[key] = Window(
                start: now, written: 1, message: many ? "(lines of many different kinds)" : text, level: level,
                source: many ? "" : source())
            return (true, due)
        }
        if !allowed { suppressedTotal.add(1, ordering: .relaxed) }
        write(due)
        return allowed
    }

    /// Writes the summaries of every window that has ended; call it every second or so (a line
    /// logged after a window ended writes them too, but a flood that stopped logs nothing more).
    public func flush() {
        guard burst > 0 else { return }
        let now = clock()
        write(state.withLock { sweep(&$0, now: now) })
    }

    /// Removes ended windows; returns the summaries of those that suppressed lines.
    private func sweep(_ s: inout State, now: UInt64) -> [Summary] {
        s.nextSweep = now + min(intervalNanoseconds, 1_000_000_000)
        var due: [Summary] = []
        for (key, w) in s.windows where now &- w.start >= intervalNanoseconds {
            s.windows[key] = nil
            if w.suppressed > 0 {
                due.append(Summary(message: w.message, level: w.level, source: w.source, suppressed: w.suppressed))
            }
        }
        return due
    }

    private func write(_ due: [Summary]) {
        for summary in due {
            summaries.log(
                level: summary.level,
                "suppressed \(summary.suppressed) similar lines in the last \(Self.seconds(intervalNanoseconds)) s: \(summary.message)",
                metadata: [
                    "suppressed": "\(summary.suppressed)", "like": "\(summary.message)",
                    "interval": "\(Self.seconds(intervalNanoseconds))",
                ],
                source: summary.source.isEmpty ? nil : summary.source)
        }
    }

    private static func seconds(_ ns: UInt64) -> String {
        ns % 1_000_000_000 == 0 ? "\(ns / 1_000_000_000)" : "\(Double(ns) / 1e9)"
    }

    /// CLOCK_MONOTONIC in nanoseconds.
    @Sendable public static func monotonicNanoseconds() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
    }
}

/// A `LogHandler` that passes lines to `inner` through a `LogRateLimiter` (see there). Level and
/// metadata are the inner handler's.
public struct RateLimitedLogHandler: LogHandler {
    public var inner: any LogHandler
    public let limiter: LogRateLimiter

    /// Wraps `inner`; every copy made by swift-log shares `limiter`.
    public init(wrapping inner: any LogHandler, limiter: LogRateLimiter) {
        self.inner = inner
        self.limiter = limiter
    }

    public var logLevel: Logger.Level {
        get { inner.logLevel }
        set { inner.logLevel = newValue }
    }

    public var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = newValue }
    }

    public var metadataProvider: Logger.MetadataProvider? {
        get { inner.metadataProvider }
        set { inner.metadataProvider = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue }
    }

    public func log(event: LogEvent) {
        guard limiter.admit(level: event.level, message: event.message, source: event.source, file: event.file, line: event.line)
        else { return }
        inner.log(event: event)
    }
}
