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
    private let node: Node

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
        switch kind {
        case .monitor(let target): node.onLoop { $0.unmonitor(target, token: token) }
        case .nodes: node.onLoop { $0.nodeWatchers[token] = nil }
        case .master: node.onLoop { $0.masterWatchers[token] = nil }
        case .nodePort: node.onLoop { $0.nodePortObservers[token] = nil }
        case .family(let family): node.onLoop { $0.dbUnmon(family, token: token) }
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
    /// iterating task stops iterating or is cancelled (the watcher is cancelled with it). Events
    /// are buffered without limit, none is dropped: iterate promptly.
    public func nodeEvents() -> AsyncStream<NodeEvent> {
        let (stream, continuation) = AsyncStream<NodeEvent>.makeStream()
        let watch = monNodes { node, up in continuation.yield(NodeEvent(node: node, isUp: up)) }
        continuation.onTermination = { _ in watch.cancel() }
        return stream
    }

    /// The master now (nil: none), then every change, as an async sequence (`monMaster`); as
    /// `nodeEvents()`.
    public func masterChanges() -> AsyncStream<String?> {
        let (stream, continuation) = AsyncStream<String?>.makeStream()
        let watch = monMaster { continuation.yield($0) }
        continuation.onTermination = { _ in watch.cancel() }
        return stream
    }

    /// A family's content once synced, then every change, as an async sequence (`dbMon`); as
    /// `nodeEvents()`. Each element carries the whole family after the change (`values`), so a
    /// reader that falls behind still sees every key's latest value in the last element it reads.
    public func familyChanges(_ family: String) -> AsyncStream<FamilyChange> {
        let (stream, continuation) = AsyncStream<FamilyChange>.makeStream()
        let watch = dbMon(family) { continuation.yield($0) }
        continuation.onTermination = { _ in watch.cancel() }
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
                k.monitor(port, token: token) { [self] reason in
                    self.onLoop { $0.deathWaits.removeValue(forKey: token)?(.success(reason)) }
                }
            },
            cancel: { k, token in
                k.unmonitor(port, token: token)
                k.deathWaits.removeValue(forKey: token)?(.failure(.cancelled))
            })
    }
}
