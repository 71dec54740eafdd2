import AEMP
import NIOCore
import Synchronization

/// Why a call could not start (`SendRoutes` answers it with its problem).
enum CallError: Error, Equatable {
    /// `--max-pending-calls` calls are waiting for their replies.
    case tooMany(limit: Int)
    /// The node refused the reply port (its name is taken: never for a fresh random name).
    case portRefused
}

/// The gateway's calls in flight (`POST /v1/call`), as a service: the library's `cal` under the
/// gateway's limit on calls in flight (`--max-pending-calls`). `SendRoutes` turns a request into a
/// call and its ending into a response. Any thread.
final class Calls: Sendable {
    private let node: Node
    private let limit: Int
    private let pending = Atomic<Int>(0)

    init(node: Node, limit: Int) {
        self.node = node
        self.limit = limit
    }

    /// Calls in flight now.
    var inFlight: Int { pending.load(ordering: .relaxed) }

    /// Starts a call: `ended` runs once, with the reply or why there is none. `tooMany` at the limit.
    /// The reply port is named `replyName` (unguessable: see `SendRoutes.call`).
    func start(
        _ target: PortID, _ message: [Value], timeout seconds: Double, replyName: String,
        ended: @escaping @Sendable (Result<[Value], RequestError>) -> Void
    ) throws(CallError) -> Call {
        guard pending.wrappingAdd(1, ordering: .relaxed).newValue <= limit else {
            pending.wrappingSubtract(1, ordering: .relaxed)
            throw .tooMany(limit: limit)
        }
        let call = node.cal(target, message, timeout: .nanoseconds(Int64(seconds * 1e9)), replyName: replyName) { [self] result in
            pending.wrappingSubtract(1, ordering: .relaxed)
            ended(result)
        }
        guard let call else {
            pending.wrappingSubtract(1, ordering: .relaxed)
            throw .portRefused
        }
        return call
    }
}
