import Synchronization
#if canImport(Darwin)
import Darwin
#elseif canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A value guarded by a pthread mutex, with the `withLock` shape of `Synchronization.Mutex`.
/// ThreadSanitizer understands pthread mutexes; on Linux the futex-based `Mutex` is invisible to it,
/// so every access under one looks like a race. Two allocations when made, none per `withLock`.
public struct Locked<Value>: ~Copyable {
    @usableFromInline let storage: LockedStorage<Value>

    /// A lock guarding `initialValue`.
    public init(_ initialValue: consuming sending Value) {
        storage = LockedStorage(initialValue)
    }

    /// Runs `body` with exclusive access to the value; the same contract as `Mutex.withLock`.
    @inlinable
    public borrowing func withLock<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        try storage.withLock(body)
    }
}

// Sound for any Value, as for `Mutex`: the value comes in as `sending`, is reached only inside
// `withLock` with the mutex held, and leaves only as a `sending` result.
extension Locked: @unchecked Sendable {}

/// The value and its mutex; the mutex has its own allocation because pthread needs a fixed address.
@usableFromInline
final class LockedStorage<Value>: @unchecked Sendable {  // Sendable: `value` is only touched under `mutex`.
    @usableFromInline let mutex: UnsafeMutablePointer<pthread_mutex_t>
    // nonisolated(unsafe): guarded by `mutex`; exclusivity(unchecked): the mutex already excludes.
    @usableFromInline @exclusivity(unchecked) nonisolated(unsafe) var value: Value

    init(_ value: consuming Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        let rc = pthread_mutex_init(mutex, nil)
        precondition(rc == 0, "pthread_mutex_init failed: \(rc)")
    }

    @inlinable
    func withLock<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }
}

/// A counter shared between threads (one owner adds, anyone reads).
final class SharedCounter: Sendable {
    private let count = Atomic<Int>(0)
    func add(_ n: Int) { count.wrappingAdd(n, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}
