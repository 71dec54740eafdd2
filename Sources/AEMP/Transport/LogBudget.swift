import NIOCore

/// At most `lines` log lines per `interval`, so that a peer repeating one odd value cannot flood
/// the log; what is left out is still counted by the caller's metrics.
struct LogBudget {
    let lines: Int
    let interval: TimeAmount
    private var windowStart = NIODeadline.uptimeNanoseconds(0)
    private var used = 0

    init(lines: Int = 5, per interval: TimeAmount = .seconds(10)) {
        self.lines = lines
        self.interval = interval
    }

    /// Whether one more line may be written now.
    mutating func allow() -> Bool {
        let now = NIODeadline.now()
        if now - windowStart >= interval {
            windowStart = now
            used = 0
        }
        guard used < lines else { return false }
        used += 1
        return true
    }
}
