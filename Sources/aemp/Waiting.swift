import AEMP
import NIOCore
import Dispatch

#if canImport(Glibc)
import Glibc
#endif

/// A result that is set once, from any thread (node handlers, signal handlers, timers), and
/// awaited by the command. The first `resolve` wins; later ones are ignored.
final class OneShot<T: Sendable>: Sendable {
    private struct State {
        var value: T?
        var waiters: [CheckedContinuation<T, Never>] = []
        var actions: [@Sendable (T) -> Void] = []
    }

    private let state = Locked(State())

    /// Sets the value unless one is set already; returns whether this call set it.
    @discardableResult
    func resolve(_ value: T) -> Bool {
        let waiting = state.withLock { s -> ([CheckedContinuation<T, Never>], [@Sendable (T) -> Void])? in
            guard s.value == nil else { return nil }
            s.value = value
            defer {
                s.waiters.removeAll()
                s.actions.removeAll()
            }
            return (s.waiters, s.actions)
        }
        guard let (waiters, actions) = waiting else { return false }
        for w in waiters { w.resume(returning: value) }
        for a in actions { a(value) }
        return true
    }

    /// Runs `action` with the value once it is set (now, if it is). Unlike a task awaiting
    /// `value()`, nothing is left suspended forever when the value never comes.
    func whenResolved(_ action: @escaping @Sendable (T) -> Void) {
        let ready = state.withLock { s -> T? in
            if let v = s.value { return v }
            s.actions.append(action)
            return nil
        }
        if let ready { action(ready) }
    }

    /// Resolves with `value` after `seconds`, unless something resolved it first.
    func resolve(after seconds: Double, with value: T) {
        Task {
            try? await Task.sleep(nanoseconds: UInt64(max(0, seconds) * 1e9))
            resolve(value)
        }
    }

    /// Whether a value is set.
    var isResolved: Bool { state.withLock { $0.value != nil } }

    /// Waits for the value.
    func value() async -> T {
        await withCheckedContinuation { (c: CheckedContinuation<T, Never>) in
            let ready = state.withLock { s -> T? in
                if let v = s.value { return v }
                s.waiters.append(c)
                return nil
            }
            if let ready { c.resume(returning: ready) }
        }
    }
}

/// Runs `body` and returns its result, or throws `ToolError.timedOut(what)` after `seconds`.
/// The body is not cancelled (node queries cannot be); the process exits soon after anyway.
/// A request of the library with the tool's timeout: the library ends it (nothing is left waiting),
/// and a timeout says what was awaited.
func asking<T: Sendable>(
    _ seconds: Double, _ what: String, _ body: (TimeAmount) async throws(RequestError) -> T
) async throws -> T {
    do {
        return try await body(.nanoseconds(Int64(seconds * 1e9)))
    } catch .timedOut {
        throw ToolError.timedOut("\(what) (waited \(formatSeconds(seconds)) s)")
    } catch {
        throw ToolError.failed("\(what): \(error)")
    }
}

func withTimeout<T: Sendable>(
    _ seconds: Double, _ what: String, _ body: @escaping @Sendable () async -> T
) async throws -> T {
    let result = OneShot<T?>()
    Task { result.resolve(await body()) }
    result.resolve(after: seconds, with: nil)
    guard let value = await result.value() else {
        throw ToolError.timedOut("\(what) (waited \(formatSeconds(seconds)) s)")
    }
    return value
}

/// SIGINT and SIGTERM as a one-shot event carrying the signal number. Installed when called, so
/// a signal that comes while the command is still joining is not lost; call it once per process.
func terminationSignal() -> OneShot<Int32> {
    let received = OneShot<Int32>()
    for sig in [SIGINT, SIGTERM] {
        signal(sig, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
        source.setEventHandler {
            _ = source  // the handler keeps its source alive for the life of the process
            received.resolve(sig)
        }
        source.resume()
    }
    return received
}
