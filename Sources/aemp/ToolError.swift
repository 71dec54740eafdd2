import AEMP

/// Why an `aemp` command failed; printed as one `aemp: error: …` line (see `AEMPCommand.main`).
enum ToolError: Error, CustomStringConvertible {
    /// A command-line argument is unusable (bad JSON, bad port ID). Exit status 64.
    case badArgument(String)
    /// The node cannot be set up as asked (no secret, no seeds, bad address or node ID). Exit status 64.
    case configuration(String)
    /// No master within the connect timeout; `problem` is what the connection attempts reported.
    case noMaster(seconds: Double, seeds: [String], problem: String?)
    /// Every seed refused the handshake (a wrong shared secret), so no master will come.
    case joinRefused(seeds: [String], problem: String)
    /// The expected answer did not come in time.
    case timedOut(String)
    /// The target port was killed, does not exist, or its node cannot be reached.
    case portDied(PortID, reason: [Value], while: String)
    /// `db del` asked, but keys are still there when the timeout passed.
    case notDeleted(family: String, keys: [String], seconds: Double)
    /// Something else went wrong at run time (e.g. a seed cannot listen).
    case failed(String)

    /// 64 (EX_USAGE, like ArgumentParser's own errors) for what the caller must fix, 1 otherwise.
    var exitStatus: Int32 {
        switch self {
        case .badArgument, .configuration: return 64
        default: return 1
        }
    }

    var description: String {
        switch self {
        case .badArgument(let text), .configuration(let text), .failed(let text):
            return text
        case .noMaster(let seconds, let seeds, let problem):
            let base = "no master within \(formatSeconds(seconds)) s (seeds \(seeds.joined(separator: ",")))"
            return problem.map { "\(base): \($0)" } ?? base
        case .joinRefused(let seeds, let problem):
            return "no seed accepts this node (seeds \(seeds.joined(separator: ","))): \(problem)"
        case .timedOut(let what):
            return "timed out: \(what)"
        case .portDied(let port, let reason, let during):
            return "\(during): \(Self.explain(port: port, reason: reason))"
        case .notDeleted(let family, let keys, let seconds):
            let names = keys.map { "\(family)/\($0)" }.joined(separator: ", ")
            return "\(names) still present after \(formatSeconds(seconds)) s: a key belongs to the node that set it "
                + "and only that node can delete it; `aemp db del` reaches only keys held by `aemp db set`"
        }
    }

    /// A kill reason in words: `transport_error` and `no_such_port` spelled out, anything else as JSON.
    static func explain(port: PortID, reason: [Value]) -> String {
        switch reason.first?.stringValue {
        case "transport_error":
            let node = reason.count > 1 ? (reason[1].stringValue ?? renderJSON(reason[1])) : port.node
            let why = reason.count > 2 ? (reason[2].stringValue ?? renderJSON(reason[2])) : "unknown"
            return "cannot reach node \(node): \(why)"
        case "no_such_port":
            return "port \(port) does not exist (no_such_port)"
        default:
            if reason.isEmpty { return "port \(port) was killed (normal exit, no reason)" }
            return "port \(port) was killed: \(renderJSON(.array(reason)))"
        }
    }
}

/// `10`, `1.5`: seconds without a pointless `.0`.
func formatSeconds(_ seconds: Double) -> String {
    seconds == seconds.rounded() && abs(seconds) < 1e15 ? String(Int64(seconds)) : String(seconds)
}
