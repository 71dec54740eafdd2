import Foundation
import Testing

/// The child-process harness itself (Sources/ChildProcesses), on small system programs: what the
/// tests and aemp-bench rely on.
@Suite("child-process harness", .timeLimit(.minutes(1)))
struct ChildProcessTests {
    @Test("standard input is /dev/null; the environment is added to and taken from; both outputs and the status come back")
    func runToTheEnd() async throws {
        let cat = try await ChildProcess.run(executable: "/bin/cat", [])
        #expect(cat.exit == .exited(0) && cat.stdout.isEmpty, "\(cat)")
        #expect(ProcessInfo.processInfo.environment["PATH"] != nil)
        let env = try await ChildProcess.run(executable: "/usr/bin/env", [], environment: ["AEMP_HARNESS_ADDED": "added"], unset: ["PATH"])
        #expect(env.lines.contains("AEMP_HARNESS_ADDED=added") && !env.lines.contains { $0.hasPrefix("PATH=") }, "\(env)")
        let sh = try await ChildProcess.run(executable: "/bin/sh", ["-c", "echo out; echo err >&2; exit 3"])
        #expect(sh.exit == .exited(3) && sh.stdout == "out\n" && sh.stderr == "err\n", "\(sh)")
    }

    @Test("lines are read while the child runs; SIGTERM ends a child that has no handler of its own")
    func linesAndSignals() async throws {
        let child = try ChildProcess(executable: "/bin/sh", ["-c", "echo one; echo two; exec sleep 100"])
        defer { child.stop() }
        #expect(try await child.readLine() == "one")
        #expect(try await child.line(startingWith: "tw", within: 5) == "two")
        #expect(child.lines == ["one", "two"] && child.outputText == "two\n")
        // Spawned from a thread of the concurrency pool, which blocks nearly every signal.
        child.signal(SIGTERM)
        #expect(try await child.waitForExit(within: 5) == ChildExit(status: SIGTERM, signalled: true))
    }

    @Test("a wait that times out, a stop, a stop with grace and a dropped handle each leave no process behind")
    func nothingLeftBehind() async throws {
        func gone(_ pid: Int32) -> Bool { !FileManager.default.fileExists(atPath: "/proc/\(pid)") }
        let stuck = try ChildProcess(executable: "/bin/sleep", ["100"])
        await #expect(throws: ChildProcess.ChildError.self) { try await stuck.waitForExit(within: 0.3) }
        #expect(gone(stuck.pid), "\(processDiagnosis(stuck.pid))")

        let stopped = try ChildProcess(executable: "/bin/sleep", ["100"])
        stopped.stop()
        #expect(gone(stopped.pid))

        let stubborn = try ChildProcess(executable: "/bin/sh", ["-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"])
        _ = try await stubborn.readLine()
        stubborn.stop(grace: 0.5)
        #expect(gone(stubborn.pid))

        var dropped: ChildProcess? = try ChildProcess(executable: "/bin/sleep", ["100"])
        let pid = dropped!.pid
        dropped = nil
        #expect(dropped == nil && gone(pid))
    }

    @Test("standard error to a file; a built product of this package by name")
    func logFileAndProducts() async throws {
        let log = NSTemporaryDirectory() + "aemp-harness-\(getpid()).log"
        defer { try? FileManager.default.removeItem(atPath: log) }
        let filed = try ChildProcess(executable: "/bin/sh", ["-c", "echo to-the-file >&2"], errorOutput: .file(log))
        #expect(try await filed.waitForExit() == .exited(0))
        #expect(try String(contentsOfFile: log, encoding: .utf8) == "to-the-file\n" && filed.errorText.isEmpty)

        let help = try await ChildProcess.run("aemp", ["--help"])
        #expect(help.exit == .exited(0) && help.stdout.contains("USAGE"), "\(help)")
    }
}
