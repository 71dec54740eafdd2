import AEMP
import Foundation
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// An executable run as a child process by the tests and by `aemp-bench`: standard input from
/// /dev/null, standard output read line by line while it runs, standard error collected, dropped or
/// written to a file, signals, waits with deadlines, and a stop that always reaps it.
///
/// Not swift-subprocess (1.0.2, on this machine), although it has environment, stdin, signals,
/// process groups and teardown: its `run(…) { execution in … }` keeps a child only for the length
/// of one closure, and its `Execution` must not escape that closure. The harness keeps children
/// past the call that starts them (a test network's seed and gateway live in a struct, are stopped
/// by a cleanup list or a `defer` that cannot await, and the benchmark holds its gateway for the
/// whole run), so each child would need a detached task holding its closure open, and a `stop()`
/// that blocks until that task ends; this type would stay, on top of a new dependency that all three
/// builds of CI (plain, TSan, ASan) compile. Foundation's `Process`, which every caller used already
/// (under both sanitizers too), spawns and reaps here.
///
/// No process group of its own: a child stays in its parent's group, so that a Ctrl-C in the
/// terminal reaches it too; none of the children starts children of its own.
package final class ChildProcess: Sendable {
    /// Where the child's standard error goes.
    package enum ErrorOutput: Sendable {
        /// Read in the background: `errorText` (a child's log, for failure messages).
        case collect
        /// /dev/null.
        case discard
        /// A file, created or emptied first.
        case file(String)
    }

    /// Why the harness gave up on a child.
    package enum ChildError: Error, CustomStringConvertible {
        case notBuilt(String), noLine(String), stillRunning(String)

        package var description: String {
            switch self {
            case .notBuilt(let path): return "not built: \(path)"
            case .noLine(let why), .stillRunning(let why): return why
            }
        }
    }

    /// The name failures give (the executable's, unless another was given).
    package let name: String
    package let arguments: [String]
    /// Every wait of this child is stretched by this factor (tests under a sanitizer run slower).
    package let timeScale: Double
    private let process = Process()
    private let collected = Watched(ChildOutput())

    /// Starts the executable at `path` with `arguments`; `environment` adds or replaces variables,
    /// `unset` removes inherited ones.
    package init(
        executable path: String, _ arguments: [String], name: String? = nil, environment: [String: String] = [:],
        unset: [String] = [], errorOutput: ErrorOutput = .collect, timeScale: Double = 1
    ) throws {
        self.name = name ?? URL(fileURLWithPath: path).lastPathComponent
        self.arguments = arguments
        self.timeScale = timeScale
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        for k in unset { env[k] = nil }
        process.environment = env
        process.standardInput = FileHandle.nullDevice
        let output = Pipe()
        process.standardOutput = output
        var errors: Pipe?
        switch errorOutput {
        case .collect:
            let pipe = Pipe()
            errors = pipe
            process.standardError = pipe
        case .discard:
            process.standardError = FileHandle.nullDevice
            collected.update { $0.stderrClosed = true }
        case .file(let log):
            _ = FileManager.default.createFile(atPath: log, contents: nil)
            process.standardError = FileHandle(forWritingAtPath: log)
            collected.update { $0.stderrClosed = true }
        }
        let collected = self.collected
        process.terminationHandler = { p in
            let exit = ChildExit(status: p.terminationStatus, signalled: p.terminationReason == .uncaughtSignal)
            collected.update { $0.exit = exit }
        }
        try Self.withSignalsUnblocked { try process.run() }
        // One blocking reader thread per pipe: FileHandle.readabilityHandler sometimes never
        // reports the end of a pipe that closes right after its last data (seen on Linux).
        Self.drain(output.fileHandleForReading) { data in
            collected.update { if let data { $0.append(stdout: data) } else { $0.stdoutClosed = true } }
        }
        if let errors {
            Self.drain(errors.fileHandleForReading) { data in
                collected.update { if let data { $0.stderr += data } else { $0.stderrClosed = true } }
            }
        }
    }

    /// Runs `body` (the spawn) with no signal blocked in this thread. A child starts with the
    /// signal mask of the thread that spawns it, and Foundation's `Process` leaves it as it is: a
    /// thread of Swift's concurrency pool (a Dispatch worker) blocks nearly every signal, and its
    /// children would ignore SIGTERM for good (`sleep`, `wrk`, the C load clients) unless they
    /// install handlers of their own.
    private static func withSignalsUnblocked<R>(_ body: () throws -> R) rethrows -> R {
        var none = sigset_t(), previous = sigset_t()
        sigemptyset(&none)
        pthread_sigmask(SIG_SETMASK, &none, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        return try body()
    }

    /// A child whose handle goes away without `stop` (a test that failed before its cleanup ran)
    /// is killed and reaped, not left running.
    deinit {
        if process.processIdentifier != 0 { stop() }  // 0: never started (`run` threw)
    }

    /// Reads `handle` on a thread of its own until end of file: `deliver` gets each chunk, then nil.
    private static func drain(_ handle: FileHandle, _ deliver: @escaping @Sendable (Data?) -> Void) {
        Thread.detachNewThread {
            while true {
                let data = handle.availableData
                if data.isEmpty { break }
                deliver(data)
            }
            deliver(nil)
        }
    }

    package var pid: Int32 { process.processIdentifier }

    /// Whether the child still runs (it has not been seen to exit).
    package var isRunning: Bool { collected.read { $0.exit == nil } }

    // MARK: - Output

    /// The next line of standard output not yet taken, waiting at most `seconds`.
    package func readLine(within seconds: Double = 20) async throws -> String {
        let name = self.name
        let line = try await collected.wait(until: deadline(seconds)) { s -> String? in
            if s.taken < s.lines.count {
                defer { s.taken += 1 }
                return s.lines[s.taken]
            }
            if s.stdoutClosed {
                throw ChildError.noLine("\(name) closed its output; stderr: \(String(decoding: s.stderr, as: UTF8.self))")
            }
            return nil
        }
        guard let line else {
            throw ChildError.noLine("no output line from \(name) within \(seconds) s; stderr so far: \(errorText)")
        }
        return line
    }

    /// The first line of standard output starting with `prefix` (after the `skip` first such
    /// lines), whether `readLine` took it or not, waiting at most `seconds`; throws if the child
    /// ends its output first.
    package func line(startingWith prefix: String, skip: Int = 0, within seconds: Double) async throws -> String {
        let name = self.name
        let line = try await collected.wait(until: deadline(seconds)) { s -> String? in
            if let found = s.lines.lazy.filter({ $0.hasPrefix(prefix) }).dropFirst(skip).first { return found }
            if s.stdoutClosed {
                throw ChildError.noLine(
                    "\(name) ended its output (\(s.exit.map(\.description) ?? "still running")) before printing '\(prefix)'; "
                        + "output: \(s.lines.suffix(5))")
            }
            return nil
        }
        guard let line else {
            throw ChildError.noLine("\(name) did not print '\(prefix)' within \(seconds) s; output: \(lines.suffix(5))")
        }
        return line
    }

    /// Every complete line of standard output so far, taken by `readLine` or not.
    package var lines: [String] { collected.read { $0.lines } }

    /// Standard output not yet taken by `readLine`.
    package var outputText: String { collected.read { $0.untakenOutput } }

    /// Standard error so far (with `errorOutput: .collect`; else empty).
    package var errorText: String { collected.read { String(decoding: $0.stderr, as: UTF8.self) } }

    // MARK: - Signals and the exit

    /// Sends `signal` to the child if it still runs.
    package func signal(_ signal: Int32) {
        if process.isRunning { kill(process.processIdentifier, signal) }
    }

    /// Kills the child (SIGKILL) if it still runs, and reaps it.
    package func stop() {
        signal(SIGKILL)
        process.waitUntilExit()
    }

    /// Asks the child to end (SIGTERM), kills it (SIGKILL) if it still runs after `grace` seconds,
    /// and reaps it.
    package func stop(grace: Double) {
        signal(SIGTERM)
        let deadline = ContinuousClock.now + .milliseconds(Int(grace * timeScale * 1000))
        while process.isRunning, ContinuousClock.now < deadline { usleep(10_000) }
        stop()
    }

    /// Waits until the child exits, at most `seconds` (else it is killed and `ChildError.stillRunning`
    /// thrown, saying what it was doing), then until its output is read to the end. That second
    /// wait is capped at two seconds: a child spawned concurrently by another test may hold a copy
    /// of the pipe, and the reader threads have what the child wrote long before that.
    @discardableResult
    package func waitForExit(within seconds: Double = 20) async throws -> ChildExit {
        let exit = try await collected.wait(until: deadline(seconds)) { $0.exit }
        guard let exit else {
            let state = collected.read { s in
                "stdout \(s.stdoutClosed ? "closed" : "open"), stderr \(s.stderrClosed ? "closed" : "open")"
            }
            let why = "\(name) \(arguments) still running after \(seconds) s (\(state), pid \(pid) "
                + "\(kill(pid, 0) == 0 ? "alive" : "gone"), \(processDiagnosis(pid))); stderr: \(errorText)"
            stop()
            throw ChildError.stillRunning(why)
        }
        _ = try await collected.wait(until: deadline(2)) { s -> Bool? in s.stdoutClosed && s.stderrClosed ? true : nil }
        return exit
    }

    /// Runs the executable at `path` to its end (at most `seconds`, then it is killed and the call
    /// throws): how it exited and everything it wrote.
    package static func run(
        executable path: String, _ arguments: [String], environment: [String: String] = [:], unset: [String] = [],
        within seconds: Double = 30, timeScale: Double = 1
    ) async throws -> ChildResult {
        let child = try ChildProcess(
            executable: path, arguments, environment: environment, unset: unset, timeScale: timeScale)
        defer { child.stop() }
        let exit = try await child.waitForExit(within: seconds)
        return ChildResult(exit: exit, stdout: child.outputText, stderr: child.errorText)
    }

    private func deadline(_ seconds: Double) -> NIODeadline {
        .now() + .nanoseconds(Int64(seconds * timeScale * 1e9))
    }

    // MARK: - Built products

    /// The path of `product`, an executable of this package built next to the running one (the
    /// test bundle, the benchmark); throws `notBuilt` if there is none.
    package static func builtProduct(_ product: String) throws -> String {
        let dir = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
        let path = dir.appendingPathComponent(product).path
        guard FileManager.default.isExecutableFile(atPath: path) else { throw ChildError.notBuilt(path) }
        return path
    }
}

/// How a child process ended.
package struct ChildExit: Equatable, Sendable, CustomStringConvertible {
    /// The exit status, or the signal number if `signalled`.
    package var status: Int32
    /// Killed by a signal rather than exiting.
    package var signalled: Bool

    package init(status: Int32, signalled: Bool) {
        self.status = status
        self.signalled = signalled
    }

    /// A normal exit with `status`.
    package static func exited(_ status: Int32) -> ChildExit { ChildExit(status: status, signalled: false) }

    package var description: String { signalled ? "killed by signal \(status)" : "exit status \(status)" }
}

/// A finished child: its exit and everything it wrote.
package struct ChildResult: Sendable, CustomStringConvertible {
    package var exit: ChildExit
    package var stdout: String
    package var stderr: String

    /// Standard output split into lines (without empty ones).
    package var lines: [String] { stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init).filter { !$0.isEmpty } }

    package var description: String { "\(exit), stdout: \(stdout.debugDescription), stderr: \(stderr.debugDescription)" }
}

/// What a process that should have exited is doing, from /proc: its state (Z = exited, not yet
/// reaped) and each thread's state, kernel wait channel and name. Put in failure messages, so a
/// hang seen once in CI says whether the child was stuck, and where, or had exited unnoticed.
package func processDiagnosis(_ pid: Int32) -> String {
    func read(_ path: String) -> String? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
    guard let status = read("/proc/\(pid)/status") else { return "no /proc entry (reaped)" }
    let state = status.split(separator: "\n").first { $0.hasPrefix("State:") }.map { $0.dropFirst(6).trimmingCharacters(in: .whitespaces) } ?? "?"
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
    let threads = tasks.sorted().prefix(40).map { tid -> String in
        let comm = read("/proc/\(pid)/task/\(tid)/comm") ?? "?"
        let wchan = read("/proc/\(pid)/task/\(tid)/wchan") ?? "?"
        // The state letter follows the parenthesised name in stat.
        let stat = read("/proc/\(pid)/task/\(tid)/stat") ?? ""
        let letter = stat.range(of: ") ").map { String(stat[$0.upperBound...].prefix(1)) } ?? "?"
        return "\(comm)[\(letter) \(wchan)]"
    }
    return "state \(state); \(tasks.count) thread(s): \(threads.joined(separator: " "))"
}

/// What a child has written so far, and how it ended.
struct ChildOutput: Sendable {
    /// Complete lines of standard output, without their newline.
    var lines: [String] = []
    /// How many of `lines` `readLine` took.
    var taken = 0
    /// Standard output after the last newline.
    var partial: [UInt8] = []
    var stderr: [UInt8] = []
    var stdoutClosed = false
    var stderrClosed = false
    var exit: ChildExit?

    mutating func append(stdout data: Data) {
        partial += data
        var start = partial.startIndex
        while let nl = partial[start...].firstIndex(of: 0x0A) {
            lines.append(String(decoding: partial[start..<nl], as: UTF8.self))
            start = nl + 1
        }
        partial.removeSubrange(..<start)
    }

    /// Standard output after the lines `readLine` took.
    var untakenOutput: String {
        lines[taken...].map { $0 + "\n" }.joined() + String(decoding: partial, as: UTF8.self)
    }
}
