import Foundation
import Testing

/// A built executable of this package (next to the test bundle), run as a child process.
final class ChildProcess: @unchecked Sendable {
    // Mutable state is touched only by the test that owns the child, one call at a time.
    let process = Process()
    private let output = Pipe()
    private var buffer = Data()

    init(_ product: String, _ arguments: [String], environment: [String: String] = [:]) throws {
        let dir = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
        let url = dir.appendingPathComponent(product)
        guard FileManager.default.isExecutableFile(atPath: url.path) else {
            throw ChildError.notBuilt(url.path)
        }
        process.executableURL = url
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        process.environment = env
        process.standardOutput = output
        try process.run()
    }

    enum ChildError: Error { case notBuilt(String), noLine(String) }

    /// The next line of standard output, waiting at most `seconds`.
    func readLine(within seconds: Double = 20) async throws -> String {
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
}
