import Logging
import NIOCore
import Synchronization
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Bytes handed to the node's loop for other nodes and not yet written into their connections
/// (`Node.snd(batch:bytes:)`), by node ID; any thread.
final class HandedOverBytes: Sendable {
    private let byNode = Locked<[String: Int]>([:])

    func add(_ nodes: [String], _ bytes: Int) {
        byNode.withLock { table in
            for node in nodes {
                let now = table[node, default: 0] + bytes
                table[node] = now == 0 ? nil : now
            }
        }
    }

    func bytes(_ node: String) -> Int {
        byNode.withLock { $0[node] ?? 0 }
    }
}

/// An AnyEvent::MP node: ports, `snd`/`rcv`/`kil`/`mon`, seeds and the node port.
///
/// Thread-safe: every call hands its work to the node's event loop, where all state lives
/// (one loop per node, like the single AnyEvent loop of a Perl node). Handlers and monitor
/// actions run on that loop and must not block.
public final class Node: Sendable {
    /// This node's ID.
    public let id: String
    /// The event loop that owns the node's state.
    public let eventLoop: any EventLoop
    let kernel: NIOLoopBoundBox<Kernel>
    private let configuration: NodeConfiguration
    let ids: IDGenerator
    private let ports: PortTable
    private let backlogs: PeerBacklogs
    private let refusedHandshakes: SharedCounter
    private let problems: SeedProblemTable
    /// Work handed over from other threads, run on the loop in arrival order; one loop wake-up
    /// serves everything queued until it runs (a burst of `snd`s costs one hop, not one each).
    private let inbox = Locked(Inbox())
    /// Bytes of `snd(batch:bytes:)` batches not yet taken by the loop, by destination node.
    private let handedOver = HandedOverBytes()
    /// `cal`s in flight, ended by `shutdown()`.
    let liveCalls = Locked<[ObjectIdentifier: Call]>([:])
    /// Set when `shutdown()` begins; readable from any thread.
    let isShutDown = Atomic<Bool>(false)

    struct Inbox {
        var work: [@Sendable (Kernel) -> Void] = []
        /// A drain is scheduled on the loop.
        var scheduled = false
        /// Threads inside `batch`: their calls queue without waking the loop.
        var batching: [pthread_t] = []
    }

    /// Creates a node (not yet listening or connected; call `start()`).
    public init(
        configuration: NodeConfiguration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) throws {
        guard !configuration.secret.isEmpty || configuration.certificate != nil else { throw NodeError.missingSecret }
        let tls: MeshTLSContexts?
        do {
            tls = try configuration.certificate?.makeContexts()
        } catch {
            throw NodeError.invalidCertificate(error.description)
        }
        let (id, randomised) = NodeIDTemplate.expand(configuration.nodeID)
        if let problem = NodeIDTemplate.problem(with: id) { throw NodeError.invalidNodeID(problem) }
        for address in configuration.binds + configuration.seeds where splitHostPort(address) == nil {
            throw NodeError.invalidAddress(address)
        }
        self.id = id
        self.configuration = configuration
        let loop = eventLoopGroup.next()
        self.eventLoop = loop
        let ports = PortTable()
        let k = Kernel(configuration: configuration, nodeID: id, randomisedID: randomised, loop: loop, ports: ports, tls: tls)
        self.ports = ports
        self.ids = k.ids
        self.backlogs = k.backlogs
        self.refusedHandshakes = k.handshakesRefused
        self.problems = k.seedProblems
        self.kernel = NIOLoopBoundBox.makeBoxSendingValue(k, as: Kernel.self, eventLoop: loop)
    }

    /// Binds the listeners, then starts connecting to the seeds (aemp-protocol §10.1). Seeds that
    /// are this node are found from the listeners' addresses first (`OwnAddresses`; host names are
    /// resolved off the node's loop) and never dialed.
    public func start() async throws {
        let binds = configuration.binds
        let listening = try await eventLoop.flatSubmit { [kernel] () -> EventLoopFuture<[SocketAddress]> in
            let k = kernel.value
            guard !k.isShutDown else { return k.loop.makeFailedFuture(NodeError.shutDown) }
            var future = k.loop.makeSucceededVoidFuture()
            for address in binds {
                future = future.flatMap { kernel.value.bind(address) }
            }
            return future.map { kernel.value.listeners.compactMap(\.localAddress) }
        }.get()
        let seeds = configuration.seeds
        let ours: Set<String>
        if seeds.isEmpty || listening.isEmpty {
            ours = []
        } else {
            ours = (try? await NIOThreadPool.singleton.runIfActive { OwnAddresses.seeds(seeds, thatAreUs: listening) }) ?? []
        }
        await withKernel { $0.connectSeeds(ownSeeds: ours) }
    }

    /// Closes every listener and connection and stops all timers.
    public func shutdown() async {
        isShutDown.store(true, ordering: .releasing)
        endCalls()
        let future: EventLoopFuture<Void> = eventLoop.flatSubmit { [kernel] in
            let k = kernel.value
            k.isShutDown = true
            k.globalKeepalive?.cancel()
            for node in k.keptNodes.keys { k.stopKeepingConnected(node) }
            for i in k.seeds.indices {
                k.seeds[i].retryTimer?.cancel()
                k.seeds[i].retryTimer = nil
            }
            // Before connections close: their monitors would answer with transport_error.
            for token in k.deathWaits.keys.sorted() { k.deathWaits.removeValue(forKey: token)?(.failure(.shutDown)) }
            for peer in k.peers.values { peer.stopConnecting() }
            let closes = k.listeners.map { $0.close() }
            k.listeners.removeAll()
            for connection in k.connections.values { connection.close(reason: "node shutting down") }
            // Let go of every handler, monitor and watcher: they often capture their owner, who
            // holds this node, and that cycle would keep both alive after the node is gone.
            k.ports.removeAll()
            k.watchers.removeAll()
            k.nodeWatchers.removeAll()
            k.masterWatchers.removeAll()
            k.nodePortObservers.removeAll()
            k.families.removeAll()
            // Monitors on other nodes' ports whose connection never came up (those of closed
            // connections fired above).
            for peer in k.peers.values { peer.monitors.removeAll() }
            // The async forms (`nodeEvents()`, …) end: their loops finish.
            for token in k.streamEnds.keys.sorted() { k.streamEnds.removeValue(forKey: token)?() }
            // Whoever waits for an answer hears that none will come.
            for id in k.pendingQueries.keys.sorted() { k.endQuery(id: id, .failure(.shutDown)) }
            for token in k.masterWaits.keys.sorted() { k.endMasterWait(token, .failure(.shutDown)) }
            return EventLoopFuture.andAllComplete(closes, on: k.loop)
        }
        try? await future.get()
    }

    /// Runs `body` on the node's loop with the kernel; nil if the loop is gone (its event-loop
    /// group was shut down under the node).
    @discardableResult
    func withKernel<T: Sendable>(_ body: @escaping @Sendable (Kernel) -> T) async -> T? {
        try? await eventLoop.submit { [kernel] in body(kernel.value) }.get()
    }

    /// Runs `body` on the node's loop, in order with other calls from the same thread.
    func onLoop(_ body: @escaping @Sendable (Kernel) -> Void) {
        if eventLoop.inEventLoop {
            body(kernel.value)
            return
        }
        let me = pthread_self()
        let wake = inbox.withLock { i -> Bool in
            i.work.append(body)
            guard !i.scheduled, !i.batching.contains(where: { pthread_equal($0, me) != 0 }) else { return false }
            i.scheduled = true
            return true
        }
        // Any loop task submitted after this call (from this thread) runs after the drain
        // scheduled here or earlier, so calls keep their order.
        if wake { eventLoop.execute { [self] in drainInbox() } }
    }

    private func drainInbox() {
        var batch: [@Sendable (Kernel) -> Void] = []
        inbox.withLock { i in
            swap(&batch, &i.work)
            i.scheduled = false
        }
        let k = kernel.value
        for body in batch { body(k) }
    }

    /// Runs `body`; the node calls it makes on this thread (`snd`, `kil`, `mon`, `db_set`, …)
    /// reach the node's loop together when it returns, with one wake-up, in the order they were
    /// made. For a thread that serves many requests per pass (an HTTP server's polling thread):
    /// the loop then writes a pass's messages to a peer in one packet burst instead of one
    /// system call each. Not for blocking work: nothing reaches the loop until `body` returns.
    public func batch<T>(_ body: () throws -> T) rethrows -> T {
        let me = pthread_self()
        inbox.withLock { $0.batching.append(me) }
        defer {
            let wake = inbox.withLock { i -> Bool in
                if let at = i.batching.firstIndex(where: { pthread_equal($0, me) != 0 }) { i.batching.remove(at: at) }
                guard !i.work.isEmpty, !i.scheduled else { return false }
                i.scheduled = true
                return true
            }
            if wake { eventLoop.execute { [self] in drainInbox() } }
        }
        return try body()
    }

    // MARK: - Ports

    /// Creates a port whose messages go to `handler` (whole message, tag included).
    /// A port without handler is killed by the first message nobody handles.
    @discardableResult
    public func port(_ handler: MessageHandler? = nil) -> PortID {
        let name = ids.nextPortName()
        ports.insert(name, PortHandlers(defaultHandler: handler))
        return PortID(node: id, name: name)
    }

    /// Creates a port with a chosen name (e.g. an unguessable one); nil if the name is taken or
    /// not usable as a port name (empty, or containing `#`, aemp-protocol §2.2). `onDeath` runs
    /// with the kill reason when the port dies, however soon (unlike a later `mon`, no kill can
    /// arrive before it is in place).
    public func port(named name: String, _ handler: MessageHandler? = nil, onDeath: MonitorAction? = nil) -> PortID? {
        guard !name.isEmpty, !name.contains("#"),
            ports.insertIfAbsent(name, PortHandlers(defaultHandler: handler, onDeath: onDeath))
        else { return nil }
        return PortID(node: id, name: name)
    }

    /// Creates a port and returns its ID with a stream of its messages (ends when the port is killed).
    public func mailbox() -> (port: PortID, messages: AsyncStream<[Value]>) {
        let (stream, continuation) = AsyncStream<[Value]>.makeStream()
        let id = port(
            named: ids.nextPortName(), { message in continuation.yield(message) },
            onDeath: { _ in continuation.finish() })!  // fresh names are never taken
        return (id, stream)
    }

    /// Sets (or with nil removes) the default handler of a local port (`rcv $port, $cb`).
    public func rcv(_ port: PortID, _ handler: MessageHandler?) {
        setHandler(port, tag: nil, handler)
    }

    /// Sets the handler for messages whose first element is `tag` (`rcv $port, tag => $cb`);
    /// it receives the message without the tag.
    public func rcv(_ port: PortID, tag: String, _ handler: MessageHandler?) {
        setHandler(port, tag: tag, handler)
    }

    private func setHandler(_ port: PortID, tag: String?, _ handler: MessageHandler?) {
        let ok = port.node == id && ports.update(port.name) { h in
            if let tag { h.tagged[tag] = handler } else { h.defaultHandler = handler }
        }
        if !ok {
            configuration.logger.warning("rcv on a port that is not a live local port", metadata: ["port": "\(port)"])
        }
    }

    /// Sends a message to a port on any node (`snd`). Local delivery happens on a later loop turn.
    public func snd(_ port: PortID, _ message: [Value]) {
        onLoop { $0.send(to: port, message) }
    }

    /// Sends several messages, in order, with one hand-off to the node's loop (cheaper than a
    /// `snd` each when they come from another thread).
    ///
    /// `bytes`, an estimate of the batch's size on the wire (the gateway gives its request body's),
    /// counts in `unsentBytes(to:)` of each node the batch goes to from now until the node's loop
    /// has written the batch into its connections: a caller that checks `unsentBytes` before
    /// each batch cannot outrun the loop with batches still waiting to be taken.
    public func snd(batch messages: [(port: PortID, message: [Value])], bytes: Int = 0) {
        guard !messages.isEmpty else { return }
        var nodes: [String] = []
        if bytes > 0 {
            for (port, _) in messages where port.node != id && nodes.last != port.node && !nodes.contains(port.node) {
                nodes.append(port.node)
            }
            if !nodes.isEmpty { handedOver.add(nodes, bytes) }
        }
        onLoop { [handedOver, nodes] k in
            for (port, message) in messages { k.send(to: port, message) }
            if !nodes.isEmpty { handedOver.add(nodes, -bytes) }
        }
    }

    /// Bytes sent to `nodeID` that its connection has not yet taken (written to the socket's
    /// buffer), and those of `snd(batch:bytes:)` batches for it that the loop has not yet taken:
    /// 0 when the node is keeping up, or has no connection. Packets queued while a connection is
    /// being opened are not counted. Callable from any thread; a caller that feeds
    /// this node faster than a peer reads can hold back before `maxUnsentBytes` cuts the peer off.
    public func unsentBytes(to nodeID: String) -> Int {
        backlogs.bytes(nodeID) + handedOver.bytes(nodeID)
    }

    /// Accepted connections closed before their handshake because `maxPendingHandshakes` (or the
    /// per-address cap) were in progress. Callable from any thread.
    public var handshakesRefused: Int { refusedHandshakes.value }

    /// Why configured seeds are not connected, in configuration order: each one's latest
    /// handshake failure (e.g. "peer requires TLS and this node has no certificate", "node
    /// ID already connected") or connect error, until it comes up. Callable from any thread.
    public var seedProblems: [SeedProblem] {
        let table = problems.all()
        var seen = Set<String>()
        return configuration.seeds.compactMap { seed in
            guard seen.insert(seed).inserted, let reason = table[seed] else { return nil }
            return SeedProblem(seed: seed, reason: reason)
        }
    }

    /// Kills a port with a reason (empty = normal exit); remote ports get `kil1` (aemp-protocol §8).
    public func kil(_ port: PortID, reason: [Value] = []) {
        if port.node == id {
            // Leave the table at once (no more deliveries); watchers run on the loop.
            guard !port.name.isEmpty, let handlers = ports.remove(port.name) else { return }
            onLoop { $0.portDied(port.name, reason: reason, onDeath: handlers.onDeath) }
        } else {
            onLoop { $0.kill(port: port, reason: reason) }
        }
    }

    /// Monitors a port (or a node, when the port name is empty); `action` runs once with the kill
    /// reason. Monitors on remote ports fire with `transport_error` when the connection fails.
    /// `cancel()` the subscription to stop (`mon0` goes out when the last monitor of a remote port
    /// is gone); `death(of:)` is the awaited form.
    @discardableResult
    public func mon(_ port: PortID, _ action: @escaping MonitorAction) -> Subscription {
        let token = ids.nextToken()
        onLoop { $0.monitor(port, token: token, action: action) }
        return Subscription(.monitor(port), token: token, node: self)
    }

    // MARK: - Nodes

    /// Calls `handler(node, isUp)` whenever a connection to a node comes up or goes down
    /// (`mon_nodes`), until the subscription is cancelled; `nodeEvents()` is the async form.
    @discardableResult
    public func monNodes(_ handler: @escaping NodeEventHandler) -> Subscription {
        let token = ids.nextToken()
        onLoop { $0.nodeWatchers[token] = handler }
        return Subscription(.nodes, token: token, node: self)
    }

    /// Calls `observer(request, source)` with every request that arrives at this node's node port
    /// (aemp-protocol §7), from peers and from this node itself, before the node acts on it (or
    /// refuses it): for audit logs, and for tests that must show nothing arrived, until the
    /// subscription is cancelled. The observer runs on the node's loop and must not block. It is in place when
    /// this returns: a request that arrives afterwards, over any connection, is seen.
    @discardableResult
    public func observeNodePort(_ observer: @escaping NodePortObserver) async -> Subscription {
        let token = ids.nextToken()
        await withKernel { $0.nodePortObservers[token] = observer }
        return Subscription(.nodePort, token: token, node: self)
    }

    /// Keeps a connection to `node` open, reconnecting with backoff whenever it drops. A private
    /// node must do this for every node that has to reach it (nobody can dial a private node).
    public func keepConnected(to node: String) {
        onLoop { $0.keepConnected(node) }
    }

    /// Stops keeping a connection to `node` (an open one stays until it drops).
    public func stopKeepingConnected(to node: String) {
        onLoop { $0.stopKeepingConnected(node) }
    }

    /// Keeps a connection to every public node of the network, as family `'l` lists them
    /// (nodes with at least one listener), following joins and leaves, until the subscription is
    /// cancelled.
    /// This is how a private node such as the gateway stays reachable from every public node.
    @discardableResult
    public func keepConnectedToPublicNodes() -> Subscription {
        dbMon("'l") { [self] change in
            for key in change.added + change.changed {
                let addresses = change.values[key]?.arrayValue ?? []
                if addresses.isEmpty { self.stopKeepingConnected(to: key) } else { self.keepConnected(to: key) }
            }
            for key in change.deleted { self.stopKeepingConnected(to: key) }
        }
    }

    /// Node IDs with a live connection (`up_nodes`).
    public func upNodes() async -> [String] {
        await withKernel { $0.upNodes } ?? []
    }

    /// The established connections, by peer: address, TLS version (nil without TLS), auth method,
    /// framings.
    public func connections() async -> [ConnectionInfo] {
        await withKernel { kernel in
            kernel.connections.values.compactMap(\.info).sorted { ($0.node, $0.address) < ($1.node, $1.address) }
        } ?? []
    }

    /// The current master's node ID, if attached.
    public func master() async -> String? {
        await withKernel { $0.master } ?? nil
    }

    /// The addresses this node listens on (with real port numbers), as published in `'l`.
    public func listenAddresses() async -> [String] {
        await withKernel { $0.listenAddresses } ?? []
    }

    /// Calls `handler` on the node's loop with the current master (nil = none) now and on every
    /// change, until the subscription is cancelled; `masterChanges()` is the async form.
    @discardableResult
    public func monMaster(_ handler: @escaping @Sendable (String?) -> Void) -> Subscription {
        let token = ids.nextToken()
        onLoop { k in
            k.masterWatchers[token] = handler
            handler(k.master)
        }
        return Subscription(.master, token: token, node: self)
    }

    /// Waits until the node is attached to a master, up to `timeout`, and returns the master's ID.
    /// Throws `timedOut`, `cancelled` (the waiting task was) or `shutDown`.
    public func waitForMaster(timeout: TimeAmount) async throws(RequestError) -> String {
        try await request(
            start: { k, token, end in k.waitForMaster(token: token, timeout: timeout, end: end) },
            cancel: { k, token in k.endMasterWait(token, .failure(.cancelled)) })
    }

    /// A request that waits on the node's loop for its answer: `start` registers it under a fresh
    /// token with the completion to call once; `cancel` ends it with `cancelled` when the waiting
    /// task is cancelled, whether before or after `start` ran on the loop.
    func request<T: Sendable>(
        start: @escaping @Sendable (Kernel, UInt64, @escaping @Sendable (Result<T, RequestError>) -> Void) -> Void,
        cancel: @escaping @Sendable (Kernel, UInt64) -> Void
    ) async throws(RequestError) -> T {
        let token = ids.nextToken()
        let cancelled = CancellationFlag()
        let result: Result<T, RequestError> = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Result<T, RequestError>, Never>) in
                onLoop { k in
                    if cancelled.isSet { return continuation.resume(returning: .failure(.cancelled)) }
                    start(k, token) { continuation.resume(returning: $0) }
                }
            }
        } onCancel: {
            cancelled.set()
            onLoop { cancel($0, token) }
        }
        return try result.get()
    }
}


// MARK: - Distributed database (aemp-protocol §11)

extension Node {
    /// Sets `family/subkey` to `value`, owned by this node (`db_set`); re-sent after every reconnect.
    public func dbSet(_ family: String, _ subkey: String, _ value: Value) {
        onLoop { $0.dbSet(family, subkey, value) }
    }

    /// Deletes keys this node set (`db_del`).
    public func dbDel(_ family: String, _ subkeys: [String]) {
        onLoop { $0.dbDel(family, subkeys) }
    }

    /// Sets `family/<port id>` to `value` until the port dies (`db_reg`).
    public func dbReg(_ family: String, port: PortID, _ value: Value = .null) {
        let key = port.description
        onLoop { $0.dbSet(family, key, value) }
        mon(port) { [self] _ in self.dbDel(family, [key]) }
    }

    /// The whole family (`db_family`), answered by the master (this node when global). Waits for
    /// a master if there is none, up to `timeout`; throws `timedOut`, `cancelled` or `shutDown`,
    /// and a cancelled or timed-out query leaves nothing behind.
    public func dbFamily(_ family: String, timeout: TimeAmount = .seconds(30)) async throws(RequestError) -> [String: Value] {
        try await query("g_db_family", family, timeout: timeout).objectValue ?? [:]
    }

    /// The family's subkeys (`db_keys`); as `dbFamily`.
    public func dbKeys(_ family: String, timeout: TimeAmount = .seconds(30)) async throws(RequestError) -> [String] {
        (try await query("g_db_keys", family, timeout: timeout).arrayValue ?? []).compactMap(\.stringValue)
    }

    /// The family's values (`db_values`); as `dbFamily`.
    public func dbValues(_ family: String, timeout: TimeAmount = .seconds(30)) async throws(RequestError) -> [Value] {
        try await query("g_db_values", family, timeout: timeout).arrayValue ?? []
    }

    private func query(_ tag: String, _ family: String, timeout: TimeAmount) async throws(RequestError) -> Value {
        try await request(
            start: { k, token, end in k.dbQuery(tag, family, token: token, timeout: timeout, completion: end) },
            cancel: { k, token in k.cancelQuery(token: token) })
    }

    /// Watches a family (`db_mon`): `handler` gets the current family first, then every change.
    /// Watchers of one family share one `g_mon1` with the master; `cancel()` the subscription to
    /// stop (`g_mon0` goes out with the last one). `familyChanges(_:)` is the async form.
    @discardableResult
    public func dbMon(_ family: String, _ handler: @escaping @Sendable (FamilyChange) -> Void) -> Subscription {
        let token = ids.nextToken()
        onLoop { $0.dbMon(family, token: token, handler: handler) }
        return Subscription(.family(family), token: token, node: self)
    }
}

/// Why a seed is not connected (`Node.seedProblems`).
public struct SeedProblem: Sendable, Equatable {
    /// The seed's address as configured, `host:port`.
    public let seed: String
    /// The latest handshake failure or connect error.
    public let reason: String
}
