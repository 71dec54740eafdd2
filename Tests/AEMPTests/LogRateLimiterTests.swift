import Foundation
import Logging
import Synchronization
import Testing

@testable import AEMP

/// `LogRateLimiter` on a clock of its own (issue 15, item 11; the gateway process is tested in
/// `LogFloodTests`).
@Suite("Log rate limiting")
struct LogRateLimiterTests {
    /// A clock the test moves.
    final class FakeClock: Sendable {
        let now = Atomic<UInt64>(1_000_000_000)
        func advance(seconds: Double) { now.add(UInt64(seconds * 1e9), ordering: .relaxed) }
    }

    static func make(burst: Int, clock: FakeClock) -> (LogRateLimiter, Logger, CapturedLog) {
        let out = CapturedLog()
        let limiter = LogRateLimiter(burst: burst, interval: .seconds(10), summaries: out.logger()) {
            clock.now.load(ordering: .relaxed)
        }
        var logger = Logger(label: "t") { _ in RateLimitedLogHandler(wrapping: CapturedLog.Handler(log: out), limiter: limiter) }
        logger.logLevel = .trace
        return (limiter, logger, out)
    }

    @Test("per kind of line (message, level, call site; not metadata): the first burst per window, then one summary with the count")
    func burstThenSummary() {
        let clock = FakeClock()
        let (limiter, logger, out) = Self.make(burst: 3, clock: clock)
        for i in 0..<10 { logger.notice("handshake failed", metadata: ["peer": "\(i)"]) }
        for _ in 0..<2 { logger.warning("handshake failed") }  // another level: another kind
        for _ in 0..<2 { logger.notice("other") }
        #expect(out.records.withLock { $0.count } == 3 + 2 + 2)
        #expect(limiter.suppressedLines == 7)
        clock.advance(seconds: 5)
        limiter.flush()
        #expect(out.records.withLock { $0.count } == 7, "no summary before the window ends")
        clock.advance(seconds: 5)
        limiter.flush()
        let summaries = out.records.withLock { $0.filter { $0.metadata["like"] != nil } }
        #expect(summaries.count == 1)
        #expect(summaries.first?.level == .notice)
        #expect(summaries.first?.metadata["suppressed"] == "7" && summaries.first?.metadata["like"] == "handshake failed")
        #expect(summaries.first?.message == "suppressed 7 similar lines in the last 10 s: handshake failed")
        // A new window: lines are written again.
        logger.notice("handshake failed")
        #expect(out.records.withLock { $0.last?.message } == "handshake failed")
    }

    @Test("burst 0 writes everything; many distinct messages share one bounded window")
    func unlimitedAndManyKinds() {
        let clock = FakeClock()
        let (none, free, freeOut) = Self.make(burst: 0, clock: clock)
        for _ in 0..<100 { free.notice("x") }
        #expect(freeOut.records.withLock { $0.count } == 100 && none.suppressedLines == 0)

        let (limiter, logger, out) = Self.make(burst: 1, clock: clock)
        let kinds = LogRateLimiter.maxKeys + 500
        for i in 0..<kinds { logger.notice("line \(i)") }
        // Every message here comes from one call site, but messages differ: one kind each, up to
        // the table's size; the rest share one window (one of them written).
        #expect(out.records.withLock { $0.count } == LogRateLimiter.maxKeys + 1)
        #expect(limiter.suppressedLines == 499)
    }

    @Test("threads logging at once: every line is written or counted, once")
    func concurrent() async {
        let clock = FakeClock()
        let (limiter, logger, out) = Self.make(burst: 50, clock: clock)
        await withTaskGroup(of: Void.self) { group in
            for t in 0..<4 {
                group.addTask {
                    for i in 0..<5_000 { logger.notice(i % 2 == 0 ? "even" : "odd", metadata: ["t": "\(t)"]) }
                }
            }
        }
        #expect(out.records.withLock { $0.count } == 100)
        #expect(limiter.suppressedLines == 20_000 - 100)
        clock.advance(seconds: 10)
        limiter.flush()
        let total = out.records.withLock { $0.compactMap { $0.metadata["suppressed"].flatMap { Int($0) } }.reduce(0, +) }
        #expect(total == 20_000 - 100)
    }
}
