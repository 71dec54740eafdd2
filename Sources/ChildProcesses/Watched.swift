import AEMP
import NIOCore
import NIOPosix

/// State shared between NIO handlers (or reader threads) and a test, with a way to wait until it
/// satisfies a condition, bounded by a deadline (an NIO timer, never polling or a bare sleep).
/// Here, beside `ChildProcess` (which keeps a child's output in one), for the tests and aemp-bench.
public final class Watched<State: Sendable>: Sendable {
    private struct Box {
        var state: State
        var version: UInt64 = 0
        var nextWaiter: UInt64 = 0
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
    }

    private let box: Locked<Box>
    private let timerLoop: any EventLoop

    public init(_ state: State) {
        box = Locked(Box(state: state))
        timerLoop = MultiThreadedEventLoopGroup.singleton.next()
    }

    /// Changes the state and wakes all waiters.
    public func update(_ body: (inout State) -> Void) {
        let woken = box.withLock { b -> [CheckedContinuation<Void, Never>] in
            body(&b.state)
            b.version &+= 1
            let w = Array(b.waiters.values)
            b.waiters.removeAll()
            return w
        }
        for w in woken { w.resume() }
    }

    /// Reads the state.
    public func read<R: Sendable>(_ body: (State) -> R) -> R {
        box.withLock { b in body(b.state) }
    }

    /// Runs `check` (under the lock, may consume from the state) until it returns a value; nil when
    /// `seconds` pass first. Errors thrown by `check` end the wait.
    public func wait<R: Sendable>(within seconds: Double, _ check: (inout State) throws -> R?) async throws -> R? {
        try await wait(until: .now() + .nanoseconds(Int64(seconds * 1e9)), check)
    }

    /// The same, with an absolute deadline.
    public func wait<R: Sendable>(until deadline: NIODeadline, _ check: (inout State) throws -> R?) async throws -> R? {
        while true {
            let (result, version) = try box.withLock { b throws -> (R?, UInt64) in
                (try check(&b.state), b.version)
            }
            if let result { return result }
            if NIODeadline.now() >= deadline { return nil }
            let id = box.withLock { b -> UInt64 in
                b.nextWaiter += 1
                return b.nextWaiter
            }
            let timer = timerLoop.scheduleTask(deadline: deadline) { [self] in wake(id) }
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let resumeNow = box.withLock { b -> Bool in
                    // Changed since the check, or the timer may already have fired: look again.
                    if b.version != version || NIODeadline.now() >= deadline { return true }
                    b.waiters[id] = c
                    return false
                }
                if resumeNow { c.resume() }
            }
            timer.cancel()
        }
    }

    private func wake(_ id: UInt64) {
        let waiter = box.withLock { $0.waiters.removeValue(forKey: id) }
        waiter?.resume()
    }
}
