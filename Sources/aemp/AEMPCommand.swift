import AEMP
import ArgumentParser
import Logging
import Dispatch
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `aemp`: a command-line AnyEvent::MP node for operators and tests (in the spirit of Perl's `bin/aemp`).
@main
struct AEMPCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "aemp",
        abstract: "A command-line AnyEvent::MP node.",
        subcommands: [Seed.self]
    )
}

/// Options every subcommand shares.
struct NodeOptions: ParsableArguments {
    @Option(help: "Shared secret (or use --secret-file or AEMP_SECRET).")
    var secret: String?

    @Option(help: "File holding the shared secret (trailing newline ignored).")
    var secretFile: String?

    @Option(help: "Comma-separated seed addresses host:port.")
    var seeds: String?

    @Option(help: "Node ID (%n = host name, %u or trailing / = random suffix).")
    var nodeID: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "notice"

    func configuration() throws -> NodeConfiguration {
        let secretText: String
        if let secret {
            secretText = secret
        } else if let secretFile {
            guard let f = fopen(secretFile, "r") else {
                throw ValidationError("cannot read secret file \(secretFile)")
            }
            defer { fclose(f) }
            var bytes: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = fread(&buffer, 1, buffer.count, f)
                if n <= 0 { break }
                bytes += buffer[0..<n]
            }
            while let last = bytes.last, last == 0x0A || last == 0x0D { bytes.removeLast() }
            secretText = String(decoding: bytes, as: UTF8.self)
        } else if let env = getenv("AEMP_SECRET") {
            secretText = String(cString: env)
        } else {
            throw ValidationError("no shared secret: pass --secret, --secret-file or set AEMP_SECRET")
        }
        guard !secretText.isEmpty else { throw ValidationError("the shared secret is empty") }
        var c = NodeConfiguration(secret: secretText)
        if let nodeID { c.nodeID = nodeID }
        c.seeds = (seeds ?? "").split(separator: ",").map { String($0).trimmingCharacters(in: " ") }.filter { !$0.isEmpty }
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("unknown log level \(logLevel)")
        }
        var logger = Logger(label: "aemp")
        logger.logLevel = level
        c.logger = logger
        return c
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: Character) -> String {
        var s = Substring(self)
        while s.first == set { s.removeFirst() }
        while s.last == set { s.removeLast() }
        return String(s)
    }
}

/// `aemp seed --bind 127.0.0.1:4040`: runs a seed (global) node until interrupted.
struct Seed: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a seed/global node until interrupted.")

    @OptionGroup var options: NodeOptions

    @Option(help: "Listen address host:port (port 0 picks a free port); repeatable.")
    var bind: [String] = ["127.0.0.1:4040"]

    func run() async throws {
        var c = try options.configuration()
        c.binds = bind
        // A seed lists itself among the seeds, which makes it global (aemp-protocol §10.3).
        c.seeds = bind + c.seeds.filter { !bind.contains($0) }
        let node = try Node(configuration: c)
        try await node.start()
        let addresses = await node.listenAddresses()
        writeLine("node \(node.id) listening on \(addresses.joined(separator: ","))")
        await waitForTermination()
        await node.shutdown()
    }
}

/// Writes a line to standard output at once (no buffering: tests and scripts read it live).
func writeLine(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    var offset = 0
    while offset < bytes.count {
        let n = bytes[offset...].withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
        if n <= 0 { return }
        offset += n
    }
}

/// Suspends until SIGINT or SIGTERM.
func waitForTermination() async {
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        let resumed = Mutex(false)
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler {
                _ = source  // the handler keeps its source alive for the life of the process
                let first = resumed.withLock { r in
                    defer { r = true }
                    return !r
                }
                if first { continuation.resume() }
            }
            source.resume()
        }
    }
}
