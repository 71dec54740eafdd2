import NIOCore

/// One `cal` in flight (Perl's `cal`, MP.pm): its reply port, the monitor on the target and its
/// timer, released exactly once by whichever ending comes first — the reply, the target's death,
/// the timeout, or `cancel()`.
public final class Call: Sendable {
    /// The reply port appended to the message.
    public let replyPort: PortID

    private struct State {
        var monitor: Subscription?
        var timer: Scheduled<Void>?
        var completion: (@Sendable (Result<[Value], RequestError>) -> Void)?
    }

    private let node: Node
    private let state: Locked<State>

    init(node: Node, replyPort: PortID, completion: @escaping @Sendable (Result<[Value], RequestError>) -> Void) {
        self.node = node
        self.replyPort = replyPort
        self.state = Locked(State(completion: completion))
    }

    /// Ends the call with `cancelled` (nothing if it has ended); the reply port, monitor and
    /// timer are released.
    public func cancel() {
        finish(.failure(.cancelled))
    }

    /// Whether the call has ended.
    public var isFinished: Bool { state.withLock { $0.completion == nil } }

    /// Hands over the monitor and timer; releases them at once if the call already ended.
    func start(monitor: Subscription?, timer: Scheduled<Void>) {
        let ended = state.withLock { s -> Bool in
            guard s.completion != nil else { return true }
            s.monitor = monitor
            s.timer = timer
            return false
        }
        if ended {
            timer.cancel()
            monitor?.cancel()
        }
    }

    func finish(_ result: Result<[Value], RequestError>) {
        guard let (completion, monitor, timer) = state.withLock({ s -> (@Sendable (Result<[Value], RequestError>) -> Void, Subscription?, Scheduled<Void>?)? in
            guard let c = s.completion else { return nil }
            defer { s = State() }
            return (c, s.monitor, s.timer)
        }) else { return }
        timer?.cancel()
        monitor?.cancel()
        node.kil(replyPort)
        node.liveCalls.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(self)) }
        completion(result)
    }
}

extension Node {
    /// Perl's `cal`: sends `message` with the ID of a fresh reply port appended (as a string) and
    /// calls `completion` once — with the first reply; `portDied` with the kill reason if the
    /// target dies first (`["transport_error", node, why]` when its node cannot be reached);
    /// `timedOut`; or `cancelled` (`Call.cancel()`). Whichever comes first releases the reply
    /// port, the monitor and the timer. (Perl monitors the target only without a timeout; this
    /// does both.) `replyName` names the reply port (default: `cal-` and 22 random characters, as
    /// unguessable as a mailbox, so nobody else can answer); nil if that name is taken (then
    /// `completion` is never called). On a node that has been shut down it ends at once with
    /// `shutDown`, and a shutdown ends every call in flight so.
    /// `completion` runs on the node's loop (or the thread that cancels) and must not block.
    @discardableResult
    public func cal(
        _ target: PortID, _ message: [Value], timeout: TimeAmount = .seconds(30), replyName: String? = nil,
        _ completion: @escaping @Sendable (Result<[Value], RequestError>) -> Void
    ) -> Call? {
        let name = replyName ?? "cal-" + NodeIDTemplate.randomSuffix() + NodeIDTemplate.randomSuffix() + NodeIDTemplate.randomSuffix()
        let call = Call(node: self, replyPort: PortID(node: id, name: name), completion: completion)
        guard port(named: name, { message in call.finish(.success(message)) }) != nil else { return nil }
        liveCalls.withLock { $0[ObjectIdentifier(call)] = call }
        if isShutDown.load(ordering: .acquiring) {
            call.finish(.failure(.shutDown))
            return call
        }
        // The target is monitored, except this node's own node port (an `aemp cal <self> time`, a
        // gateway's allowed tag): it lives as long as the node, and a `mon` of it would fire at
        // once (there is no such port in the port table).
        let ownNodePort = target.node == id && target.name.isEmpty
        let monitor = ownNodePort ? nil : mon(target) { reason in call.finish(.failure(.portDied(reason: reason))) }
        let timer = eventLoop.scheduleTask(in: timeout) { call.finish(.failure(RequestError(timeout: timeout))) }
        call.start(monitor: monitor, timer: timer)
        if !call.isFinished { snd(target, message + [.string(call.replyPort.description)]) }
        return call
    }

    /// Ends every call in flight with `shutDown` (the node is shutting down).
    func endCalls() {
        for call in liveCalls.withLock({ calls in defer { calls = [:] }; return Array(calls.values) }) {
            call.finish(.failure(.shutDown))
        }
    }

    /// `cal` awaited: the first reply, or throws `portDied`, `timedOut`, `cancelled` (the task
    /// was) or `shutDown`. Nothing is left behind however it ends.
    public func cal(_ target: PortID, _ message: [Value], timeout: TimeAmount = .seconds(30)) async throws(RequestError) -> [Value] {
        let pending = Locked<Call?>(nil)
        let result: Result<[Value], RequestError> = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Result<[Value], RequestError>, Never>) in
                guard let call = cal(target, message, timeout: timeout, { continuation.resume(returning: $0) }) else {
                    return continuation.resume(returning: .failure(.shutDown))
                }
                pending.withLock { $0 = call }
                if Task.isCancelled { call.cancel() }
            }
        } onCancel: {
            pending.withLock { $0 }?.cancel()
        }
        return try result.get()
    }
}
