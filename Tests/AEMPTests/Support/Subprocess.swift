import Foundation
import NIOCore
import Testing

/// A built executable of this package (next to the test bundle), run as a child process.
final class ChildProcess: @unchecked Sendable {
    // Mutable state is touched only by the test that owns the child, one call at a time; `collected`
    // is filled from Foundation's handler threads and is itself thread-safe.
    let process = Process()
    private let output = Pipe()
    private var buffer = Data()
    private let errorOutput: Pipe?
    /// Both output streams and the exit status, when the child was started with `collectOutput`.
    private let collected: Watched<ChildOutput>?

    /// Starts `product` with `arguments`. `environment` adds or replaces variables, `unsetEnvironment`
    /// removes inherited ones. With `collectOutput`, standard output and standard error are read in
    /// the background (see `readLine`, `waitForExit`, `errorText`), so the child never blocks on a
    /// full pipe and a read that times out does not hang; without it standard error is inherited.
    init(
        _ product: String, _ arguments: [String], environment: [String: String] = [:],
        unsetEnvironment: [String] = [], collectOutput: Bool = false
    ) throws {
        let dir = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
        let url = dir.appendingPathComponent(product)
        guard FileManager.default.isExecutableFile(atPath: url.path) else {
            throw ChildError.notBuilt(url.path)
        }
        process.executableURL = url
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        for k in unsetEnvironment { env[k] = nil }
        process.environment = env
        process.standardOutput = output
        if collectOutput {
            let errorOutput = Pipe()
            let collected = Watched(ChildOutput())
            process.standardError = errorOutput
            process.terminationHandler = { p in
                let exit = ChildExit(status: p.terminationStatus, signalled: p.terminationReason == .uncaughtSignal)
                collected.update { $0.exit = exit }
            }
            self.errorOutput = errorOutput
            self.collected = collected
        } else {
            errorOutput = nil
            collected = nil
        }
        try process.run()
        if let collected, let errorOutput {
            // One blocking reader thread per pipe: FileHandle.readabilityHandler sometimes never
            // reports the end of a pipe that closes right after its last data (seen on Linux).
            Self.drain(output.fileHandleForReading) { data in
                collected.update { if let data { $0.stdout.append(data) } else { $0.stdoutClosed = true } }
            }
            Self.drain(errorOutput.fileHandleForReading) { data in
                collected.update { if let data { $0.stderr.append(data) } else { $0.stderrClosed = true } }
            }
        }
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

    enum ChildError: Error, CustomStringConvertible {
        case notBuilt(String), noLine(String), stillRunning(String)

        var description: String {
            switch self {
            case .notBuilt(let path): return "not built: \(path)"
            case .noLine(let why), .stillRunning(let why): return why
            }
        }
    }

    private var name: String { process.executableURL?.lastPathComponent ?? "?" }

    /// The next line of standard output, waiting at most `seconds`.
    func readLine(within seconds: Double = 20) async throws -> String {
        if let collected {
            let line = try await collected.wait(until: Self.deadline(seconds)) { s -> String? in
                if let nl = s.stdout.firstIndex(of: 0x0A) {
                    let line = String(decoding: s.stdout[s.stdout.startIndex..<nl], as: UTF8.self)
                    s.stdout.removeSubrange(s.stdout.startIndex...nl)
                    return line
                }
                if s.stdoutClosed {
                    throw ChildError.noLine("\(self.name) closed its output; stderr: \(String(decoding: s.stderr, as: UTF8.self))")
                }
                return nil
            }
            guard let line else {
                throw ChildError.noLine("no output line from \(name) within \(seconds) s; stderr so far: \(errorText())")
            }
            return line
        }
        let deadline = Date().addingTimeInterval(seconds)
        let handle = output.fileHandleForReading
        while Date() < deadline {
            if let nl = buffer.firstIndex(of: 0x0A) {
                let line = String(decoding: buffer[buffer.startIndex..<nl], as: UTF8.self)
                buffer.removeSubrange(buffer.startIndex...nl)
                return line
            }
            let chunk: Data = try await withThrowingTaskGroup(of: Data?.self) { group in
                group.addTask { handle.availableData }
                group.addTask {
                    try await Task.sleep(nanoseconds: UInt64(max(0, deadline.timeIntervalSinceNow) * 1e9))
                    return nil
                }
                let first = try await group.next()!
                group.cancelAll()
                return first ?? Data()
            }
            if chunk.isEmpty { break }
            buffer.append(chunk)
        }
        throw ChildError.noLine("no output line from \(process.executableURL?.lastPathComponent ?? "?") within \(seconds) s")
    }

    /// Sends `signal` to the child.
    func signal(_ signal: Int32) {
        if process.isRunning { kill(process.processIdentifier, signal) }
    }

    /// Kills the child (SIGKILL) if it still runs, and reaps it.
    func stop() {
        signal(SIGKILL)
        process.waitUntilExit()
    }

    // MARK: - Collected output (children started with `collectOutput`)

    /// Waits until the child exits, at most `seconds` (else it is killed and `ChildError.stillRunning`
    /// thrown), then until both its output streams are at end of file. That second wait is capped
    /// at two seconds: a child spawned concurrently by another test may hold a copy of the pipe,
    /// and the reader threads have what the child wrote long before that.
    func waitForExit(within seconds: Double = 20) async throws -> ChildExit {
        guard let collected else { preconditionFailure("waitForExit needs collectOutput: true") }
        let exit = try await collected.wait(until: Self.deadline(seconds)) { $0.exit }
        if exit != nil {
            _ = try await collected.wait(until: Self.deadline(2)) { s -> Bool? in
                s.stdoutClosed && s.stderrClosed ? true : nil
            }
        }
        guard let exit else {
            let state = collected.read { s in
                "exit: \(s.exit.map(\.description) ?? "none"), stdout \(s.stdoutClosed ? "closed" : "open"), "
                    + "stderr \(s.stderrClosed ? "closed" : "open")"
            }
            let why = "\(name) \(process.arguments ?? []) still running after \(seconds) s (\(state), "
                + "pid \(process.processIdentifier) \(kill(process.processIdentifier, 0) == 0 ? "alive" : "gone"), "
                + "\(processDiagnosis(process.processIdentifier))); "
                + "stderr: \(errorText())"
            stop()
            throw ChildError.stillRunning(why)
        }
        return exit
    }

    /// Standard output not yet consumed by `readLine`.
    func outputText() -> String {
        collected?.read { String(decoding: $0.stdout, as: UTF8.self) } ?? ""
    }

    /// Standard error so far.
    func errorText() -> String {
        collected?.read { String(decoding: $0.stderr, as: UTF8.self) } ?? ""
    }

    /// Runs `product` to completion (at most `seconds`, then it is killed and the call throws) and
    /// returns its exit status and output.
    static func run(
        _ product: String, _ arguments: [String], environment: [String: String] = [:],
        unsetEnvironment: [String] = [], within seconds: Double = 30
    ) async throws -> ChildResult {
        let child = try ChildProcess(
            product, arguments, environment: environment, unsetEnvironment: unsetEnvironment, collectOutput: true)
        defer { child.stop() }
        let exit = try await child.waitForExit(within: seconds)
        return ChildResult(exit: exit, stdout: child.outputText(), stderr: child.errorText())
    }

    /// Stretched under a sanitizer: every wait here is for something that must happen.
    private static func deadline(_ seconds: Double) -> NIODeadline {
        .now() + .nanoseconds(Int64(seconds * sanitizerSlowdown * 1e9))
    }
}

/// How a child process ended.
struct ChildExit: Equatable, Sendable, CustomStringConvertible {
    /// The exit status, or the signal number if `signalled`.
    var status: Int32
    /// Killed by a signal rather than exiting.
    var signalled: Bool

    /// A normal exit with `status`.
    static func exited(_ status: Int32) -> ChildExit { ChildExit(status: status, signalled: false) }

    var description: String { signalled ? "killed by signal \(status)" : "exit status \(status)" }
}

/// A finished child: its exit and everything it wrote.
struct ChildResult: Sendable, CustomStringConvertible {
    var exit: ChildExit
    var stdout: String
    var stderr: String

    /// Standard output split into lines (without the trailing empty one).
    var lines: [String] { stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init).filter { !$0.isEmpty } }

    var description: String { "\(exit), stdout: \(stdout.debugDescription), stderr: \(stderr.debugDescription)" }
}

/// What a child with collected output has written so far, and how it ended.
struct ChildOutput: Sendable {
    var stdout = Data()
    var stderr = Data()
    var stdoutClosed = false
    var stderrClosed = false
    var exit: ChildExit?
}
