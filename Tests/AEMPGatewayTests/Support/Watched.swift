import NIOCore
import NIOPosix
import Synchronization

/// State shared between NIO handlers (or reader threads) and a test, with a way to wait until
/// it satisfies a condition, bounded by a deadline (never a bare sleep).
///
/// The same shape as `ScriptedWatched` in AEMPTests (test targets cannot share code).
final class Watched<State: Sendable>: Sendable {
    private struct Box {
        var state: State
        var version: UInt64 = 0
        var nextWaiter: UInt64 = 0
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
    }

    private let box: Mutex<Box>
    private let timerLoop: any EventLoop

    init(_ state: State) {
        box = Mutex(Box(state: state))
        timerLoop = MultiThreadedEventLoopGroup.singleton.next()
    }

    /// Changes the state and wakes all waiters.
    func update(_ body: (inout State) -> Void) {
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
    func read<R: Sendable>(_ body: (State) -> R) -> R {
        box.withLock { b in body(b.state) }
    }

    /// Runs `check` (under the lock, may consume from the state) until it returns a value; nil when
    /// `seconds` pass first. Errors thrown by `check` end the wait.
    func wait<R: Sendable>(within seconds: Double, _ check: (inout State) throws -> R?) async throws -> R? {
        let deadline = NIODeadline.now() + .nanoseconds(Int64(seconds * 1e9))
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

/// A lock for async code: one holder at a time, waiters served in order.
final class AsyncLock: Sendable {
    private struct State {
        var locked = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())

    /// Runs `body` while holding the lock.
    func withLock<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        await lock()
        defer { unlock() }
        return try await body()
    }

    private func lock() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let acquired = state.withLock { s -> Bool in
                if !s.locked {
                    s.locked = true
                    return true
                }
                s.waiters.append(c)
                return false
            }
            if acquired { c.resume() }
        }
    }

    private func unlock() {
        let next = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if s.waiters.isEmpty {
                s.locked = false
                return nil
            }
            return s.waiters.removeFirst()  // stays locked: ownership passes to the next waiter
        }
        next?.resume()
    }
}

/// Runs `body` for at most `seconds`; throws `TestTimeout` after that. `body` runs in a task of
/// its own that is left to finish alone on timeout (for calls that cannot be cancelled, such as a
/// database query waiting for a master), so a lost answer fails the test instead of hanging it.
func bounded<T: Sendable>(
    _ seconds: Double, _ what: String, _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    let once = Mutex(false)
    return try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
        let finish: @Sendable (Result<T, any Error>) -> Void = { result in
            let first = once.withLock { done -> Bool in
                defer { done = true }
                return !done
            }
            if first { c.resume(with: result) }
        }
        let timer = Task {
            try? await Task.sleep(nanoseconds: UInt64(max(0, seconds) * 1e9))
            finish(.failure(TestTimeout(what: "\(what) (not within \(seconds) s)")))
        }
        Task {
            do { finish(.success(try await body())) } catch { finish(.failure(error)) }
            timer.cancel()
        }
    }
}
