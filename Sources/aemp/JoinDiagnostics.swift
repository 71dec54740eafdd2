import AEMP
import Logging

/// Why a node could not join, as far as its log tells: the latest handshake failure (a wrong
/// shared secret shows up here) and the latest seed that could not be reached. The library has no
/// API for these, so `DiagnosingLogHandler` reads them from its log events.
final class JoinDiagnostics: Sendable {
    private struct State {
        var handshake: String?
        var unreachable: String?
        var authFailedAddresses: Set<String> = []
    }

    private let state = Locked(State())
    private let seedCount: Int
    /// Fires once authentication failed with as many distinct addresses as there are seeds: no
    /// seed will ever take us, so there is no point waiting out the connect timeout.
    let refusedEverywhere = OneShot<Void>()

    init(seedCount: Int) {
        self.seedCount = seedCount
    }

    /// What went wrong, best explanation first, or nil if nothing was seen.
    var problem: String? {
        state.withLock { s in
            if let h = s.handshake {
                return h
            }
            return s.unreachable
        }
    }

    /// Looks at one log event of the node.
    func inspect(_ event: LogEvent, handlerMetadata: Logger.Metadata) {
        let message = event.message.description
        guard message == "handshake failed" || message == "seed unreachable" else { return }
        let metadata = handlerMetadata.merging(event.metadata ?? [:]) { _, new in new }
        switch message {
        case "handshake failed":
            let reason = metadata["reason"]?.description ?? "unknown reason"
            let peer = metadata["peer_addr"]?.description ?? "?"
            var text = "handshake with \(peer) failed: \(reason)"
            let authFailed = reason.contains("authentication failure")
            if authFailed {
                text += " (check the shared secret)"
            }
            let everywhere = state.withLock { s -> Bool in
                s.handshake = text
                if authFailed { s.authFailedAddresses.insert(peer) }
                return s.authFailedAddresses.count >= seedCount
            }
            if everywhere { refusedEverywhere.resolve(()) }
        case "seed unreachable":
            let seed = metadata["seed"]?.description ?? "?"
            let error = metadata["error"]?.description ?? "unknown error"
            state.withLock { $0.unreachable = "cannot connect to seed \(seed): \(Self.shorten(error))" }
        default:
            break
        }
    }

    /// NIO's connect errors are long structure dumps; keep the part a user can act on.
    static func shorten(_ error: String) -> String {
        let lower = error.lowercased()
        if lower.contains("connection refused") { return "connection refused (nothing listens there)" }
        if lower.contains("connecttimeout") || lower.contains("timed out") { return "connect timeout" }
        if lower.contains("no route") { return "no route to host" }
        if lower.contains("name or service not known") || lower.contains("nodename nor servname") {
            return "unknown host"
        }
        return error.count > 200 ? String(error.prefix(200)) + "..." : error
    }
}

/// A log handler that shows the node's log on standard error from `printLevel` up, and hands
/// every event (down to debug) to `JoinDiagnostics`.
struct DiagnosingLogHandler: LogHandler {
    private var output: StreamLogHandler
    private let diagnostics: JoinDiagnostics
    private let printLevel: Logger.Level

    init(label: String, printLevel: Logger.Level, diagnostics: JoinDiagnostics) {
        output = StreamLogHandler.standardError(label: label)
        output.logLevel = printLevel
        self.printLevel = printLevel
        self.diagnostics = diagnostics
    }

    /// Debug, so the diagnostics see seed connect failures; printing filters by `printLevel`.
    var logLevel: Logger.Level {
        get { min(.debug, printLevel) }
        set {}
    }

    var metadata: Logger.Metadata {
        get { output.metadata }
        set { output.metadata = newValue }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { output[metadataKey: key] }
        set { output[metadataKey: key] = newValue }
    }

    func log(event: LogEvent) {
        diagnostics.inspect(event, handlerMetadata: output.metadata)
        if event.level >= printLevel { output.log(event: event) }
    }
}
