import Dispatch
import Foundation
import Synchronization

/// Runs a test's CPU-bound part (a fuzz loop of thousands of rounds) on a thread of its own, not
/// on Swift's cooperative pool.
///
/// The pool has one thread per core, two on the CI machine. A synchronous test body that computes
/// for seconds holds one of them that long; two such tests held both, and every other test's
/// continuations (a reply arrived, a timer fired) waited behind them: in the suite's first seconds a
/// lookup that does no I/O took 3 s, and "at once" bounds failed. On its own thread the work still
/// takes its share of the CPU, but the kernel time-slices it with the rest.
///
/// The body keeps its task (a task executor preference), so `#expect` and `Issue.record` inside it
/// are attributed to the running test as before.
public func computing(_ body: () throws -> Void) async throws {
    try await withTaskExecutorPreference(ComputeThread.shared) { try body() }
}

/// One thread, running the jobs of the tasks that prefer it, one after the other.
public final class ComputeThread: TaskExecutor, Sendable {
    public static let shared = ComputeThread(name: "test-compute")

    private let jobs = Mutex<[UnownedJob]>([])
    private let ready = DispatchSemaphore(value: 0)

    init(name: String) {
        let thread = Thread { [self] in run() }
        thread.name = name
        thread.stackSize = 8 << 20  // deep recursion in codec tests, as on the main thread
        thread.start()
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        jobs.withLock { $0.append(job) }
        ready.signal()
    }

    private func run() -> Never {
        while true {
            ready.wait()
            let job = jobs.withLock { $0.removeFirst() }
            job.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}
