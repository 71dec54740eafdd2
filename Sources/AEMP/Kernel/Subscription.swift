/// A standing registration on a node — a monitor (`mon`), a node or master watcher (`monNodes`,
/// `monMaster`), a node-port observer, a family watcher (`dbMon`) — with one way to end it:
/// `cancel()`. Any thread; cancelling twice, or after the node shut down, does nothing.
///
/// Perl ends each kind its own way (`unmon`, undef'ing a guard, `db_mon`'s guard); here they are
/// one type, so code that keeps several (the gateway's mailboxes and feeds) keeps one list.
/// Dropping a handle does not cancel it (as Perl's `mon` without a guard): call `cancel()`.
public struct Subscription: Hashable, Sendable {
    /// What is watched.
    public enum Kind: Hashable, Sendable {
        /// A monitor on a port, or on a node when the port name is empty (`mon`).
        case monitor(PortID)
        /// Connections coming up and going down (`monNodes`).
        case nodes
        /// Master changes (`monMaster`).
        case master
        /// Requests at this node's node port (`observeNodePort`).
        case nodePort
        /// A family of the database (`dbMon`).
        case family(String)
    }

    public let kind: Kind
    let token: UInt64
    /// Weak: a handle kept by whatever the handler feeds (a mailbox, say) must not keep the node
    /// alive; cancelling after the node is gone does nothing.
    private weak let node: Node?

    init(_ kind: Kind, token: UInt64, node: Node) {
        self.kind = kind
        self.token = token
        self.node = node
    }

    /// Ends the subscription: its handler is not called again once the node's loop has run the
    /// cancellation (a call already under way on the loop finishes). A monitor's last `mon0` and
    /// a family's last `g_mon0` go out as Perl's would.
    public func cancel() {
        let token = token
        let kind = kind
        node?.onLoop { k in
            k.streamEnds[token] = nil
            switch kind {
            case .monitor(let target): k.unmonitor(target, token: token)
            case .nodes: k.nodeWatchers[token] = nil
            case .master: k.masterWatchers[token] = nil
            case .nodePort: k.nodePortObservers[token] = nil
            case .family(let family): k.dbUnmon(family, token: token)
            }
        }
    }

    public static func == (a: Subscription, b: Subscription) -> Bool { a.token == b.token && a.node === b.node }
    public func hash(into hasher: inout Hasher) { hasher.combine(token) }
}

/// A connection to a node came up or went down (`Node.nodeEvents()`).
public struct NodeEvent: Hashable, Sendable {
    public let node: String
    public let isUp: Bool
}

// MARK: - AsyncSequence forms

extension Node {
    /// Connections coming up and going down, as an async sequence (`monNodes`); ends when the
    /// iterating task stops iterating or is cancelled (the watcher is cancelled with it), and when
    /// the node shuts down. Events are buffered without limit, none is dropped: iterate promptly.
    public func nodeEvents() -> AsyncStream<NodeEvent> {
        let (stream, continuation) = AsyncStream<NodeEvent>.makeStream()
        endsAtShutdown(monNodes { node, up in continuation.yield(NodeEvent(node: node, isUp: up)) }, continuation)
        return stream
    }

    /// Ties an async form's continuation to its subscription: the loop's end cancels the
    /// subscription; the node's shutdown finishes the loop.
    private func endsAtShutdown<T>(_ subscription: Subscription, _ continuation: AsyncStream<T>.Continuation) {
        let token = subscription.token
        onLoop { k in
            if k.isShutDown { return continuation.finish() }
            k.streamEnds[token] = { continuation.finish() }
        }
        continuation.onTermination = { _ in subscription.cancel() }
    }

    /// The master now (nil: none), then every change, as an async sequence (`monMaster`); as
    /// `nodeEvents()`.
    public func masterChanges() -> AsyncStream<String?> {
        let (stream, continuation) = AsyncStream<String?>.makeStream()
        endsAtShutdown(monMaster { continuation.yield($0) }, continuation)
        return stream
    }

    /// A family's content once synced, then every change, as an async sequence (`dbMon`); as
    /// `nodeEvents()`. Each element carries the whole family after the change (`values`), so a
    /// reader that falls behind still sees every key's latest value in the last element it reads.
    public func familyChanges(_ family: String) -> AsyncStream<FamilyChange> {
        let (stream, continuation) = AsyncStream<FamilyChange>.makeStream()
        endsAtShutdown(dbMon(family) { continuation.yield($0) }, continuation)
        return stream
    }

    /// Waits until `port` (or the node, with an empty port name) dies and returns the kill reason
    /// (`[]`: a normal exit; `["transport_error", node, why]` when the connection failed). A
    /// cancelled waiting task cancels the monitor and gets `RequestError.cancelled`.
    public func death(of port: PortID) async throws(RequestError) -> [Value] {
        try await request(
            start: { k, token, end in
                guard !k.isShutDown else { return end(.failure(.shutDown)) }
                k.deathWaits[token] = end
                // The action runs on the loop; it ends the wait unless a cancellation came first.
                k.monitor(port, token: token) { [weak self] reason in
                    self?.onLoop { $0.deathWaits.removeValue(forKey: token)?(.success(reason)) }
                }
            },
            cancel: { k, token in
                k.unmonitor(port, token: token)
                k.deathWaits.removeValue(forKey: token)?(.failure(.cancelled))
            })
    }
}
