import NIOCore
import Synchronization

/// Why a request to the network ended without its answer: a database query (`dbFamily`,
/// `dbKeys`, `dbValues`), `cal`, or `waitForMaster`.
public enum RequestError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No answer within the timeout (in seconds): no master, or the master or port never answered.
    case timedOut(seconds: Double)
    /// The waiting task was cancelled; everything the request held is released.
    case cancelled
    /// The node was shut down (before or while the request waited).
    case shutDown
    /// The called port died before it replied, with the `kil` reason (`transport_error …` when
    /// its node became unreachable; empty for a normal exit).
    case portDied(reason: [Value])

    public var description: String {
        switch self {
        case .timedOut(let s): return "no answer within \(s) s"
        case .cancelled: return "cancelled"
        case .shutDown: return "the node has been shut down"
        case .portDied(let reason):
            return reason.isEmpty ? "the port exited before it replied" : "the port died before it replied: \(reason.map(\.description).joined(separator: " "))"
        }
    }

    init(timeout: TimeAmount) {
        self = .timedOut(seconds: Double(timeout.nanoseconds) / 1e9)
    }
}

/// Set once by a task's cancellation handler, read on the node's loop when the request is
/// registered there: a cancellation that comes first still ends the request.
final class CancellationFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    func set() { flag.store(true, ordering: .releasing) }
    var isSet: Bool { flag.load(ordering: .acquiring) }
}
