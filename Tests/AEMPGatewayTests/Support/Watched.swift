import AEMP
import AEMPTestSupport
import NIOCore
import NIOPosix

/// A lock for async code: one holder at a time, waiters served in order.
final class AsyncLock: Sendable {
    private struct State {
        var locked = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Locked(State())

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
    let once = Locked(false)
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
