import Logging
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A message handler; runs on the node's event loop.
public typealias MessageHandler = @Sendable (_ message: [Value]) -> Void
/// A monitor action; receives the kill reason (empty = normal kill). Runs on the node's event loop.
public typealias MonitorAction = @Sendable (_ reason: [Value]) -> Void
/// A node up/down callback; runs on the node's event loop.
public typealias NodeEventHandler = @Sendable (_ node: String, _ isUp: Bool) -> Void
/// Sees a request that arrived at the node port (tag first) and the node it came from; runs on
/// the node's event loop.
public typealias NodePortObserver = @Sendable (_ request: [Value], _ source: String) -> Void

/// Port names and handle tokens; usable from any thread, so `Node` can hand out IDs at once.
final class IDGenerator: Sendable {
    private let prefix: String
    private let counter = Atomic<UInt64>(0)

    /// Perl leaves the prefix empty for randomised node IDs (aemp-protocol §2.2); a fixed ID gets a
    /// random prefix so names never repeat across restarts.
    init(randomisedID: Bool) {
        prefix = randomisedID ? "" : String(NodeIDTemplate.randomSuffix().prefix(6))
    }

    /// A fresh port name: prefix plus a counter in base 36 (never reused within this process).
    func nextPortName() -> String {
        prefix + String(nextToken(), radix: 36)
    }

    /// A process-unique token for monitors and watchers.
    func nextToken() -> UInt64 {
        counter.wrappingAdd(1, ordering: .relaxed).newValue
    }
}

/// The handlers of a local port.
struct PortHandlers: Sendable {
    var defaultHandler: MessageHandler?
    var tagged: [String: MessageHandler] = [:]
    /// Runs when the port dies; set with the port itself, so no kill can come first.
    var onDeath: MonitorAction?
}

/// The live local ports and their handlers. Shared by the node's loop (delivery) and callers on any
/// thread (`port`, `rcv`, `kil`), so a port exists the moment its ID is handed out: NIO may read
/// a socket before it runs tasks queued from other threads.
/// A `Node.waitForMaster` call waiting for a master.
struct MasterWait {
    let timer: Scheduled<Void>
    let end: @Sendable (Result<String, RequestError>) -> Void
}

final class PortTable: Sendable {
    private let table = Locked<[String: PortHandlers]>([:])

    func insert(_ name: String, _ handlers: PortHandlers) {
        table.withLock { $0[name] = handlers }
    }

    /// Inserts unless the name is taken; returns whether it did.
    func insertIfAbsent(_ name: String, _ handlers: PortHandlers) -> Bool {
        table.withLock { t in
            guard t[name] == nil else { return false }
            t[name] = handlers
            return true
        }
    }

    func handlers(_ name: String) -> PortHandlers? {
        table.withLock { $0[name] }
    }

    func contains(_ name: String) -> Bool {
        table.withLock { $0[name] != nil }
    }

    /// Updates a live port's handlers; false if the port is gone.
    func update(_ name: String, _ body: (inout PortHandlers) -> Void) -> Bool {
        table.withLock { t in
            guard var h = t[name] else { return false }
            body(&h)
            t[name] = h
            return true
        }
    }

    /// Removes a port; false if it was not there.
    /// Removes the port; returns its handlers if it was there.
    func remove(_ name: String) -> PortHandlers? {
        table.withLock { $0.removeValue(forKey: name) }
    }

    /// Removes every port (no monitor fires): the node is shutting down.
    func removeAll() {
        // Taken out and released after the lock: a handler's captures may call back in on deinit.
        let gone = table.withLock { t -> [String: PortHandlers] in
            defer { t = [:] }
            return t
        }
        withExtendedLifetime(gone) {}
    }
}

/// Who watches a local port: local monitor actions and remote nodes that sent `mon1`.
struct PortWatchers {
    var monitors: [UInt64: MonitorAction] = [:]
    var remote: Set<String> = []
}

/// The node's state and behaviour (aemp-protocol §6-§10). Confined to one event loop, like the
/// single AnyEvent loop of a Perl node; `Node` is the thread-safe face of it.
final class Kernel {
    let loop: any EventLoop
    let nodeID: String
    var logger: Logger
    let configuration: NodeConfiguration
    let settings: ConnectionSettings

    // Ports
    let ports: PortTable
    /// Watchers of live local ports, by port name.
    var watchers: [String: PortWatchers] = [:]
    let ids: IDGenerator

    // Remote nodes
    var peers: [String: Peer] = [:]
    var nodeWatchers: [UInt64: NodeEventHandler] = [:]
    /// Observers of every node-port request (`Node.observeNodePort`).
    var nodePortObservers: [UInt64: NodePortObserver] = [:]

    // Listeners
    var listeners: [any Channel] = []
    /// Our listen addresses as published in family `'l` (aemp-protocol §10.1).
    var listenAddresses: [String] = []

    // Seeds and master
    var seeds: [SeedState] = []
    var master: String?
    /// Nodes that told us they are global (`g_global`).
    var globals: Set<String> = []
    /// Nodes whose addresses we asked the master for.
    var pendingLookups: Set<String> = []
    /// The local database (family → subkey → value) that `g_slave` carries (aemp-protocol §10.1, §11).
    var localDB: [String: [String: Value]] = [:]
    /// Called with master changes (new master ID or nil).
    var masterWatchers: [UInt64: @Sendable (String?) -> Void] = [:]
    /// How to end the async sequence of a subscription (`Node.nodeEvents()`, …), by its token: at
    /// shutdown, so that a `for await` loop over it finishes.
    var streamEnds: [UInt64: @Sendable () -> Void] = [:]
    /// `Node.death(of:)` waiting for its monitor to fire, by the monitor's token.
    var deathWaits: [UInt64: @Sendable (Result<[Value], RequestError>) -> Void] = [:]
    /// `Node.waitForMaster` calls waiting, by token.
    var masterWaits: [UInt64: MasterWait] = [:]

    var isShutDown = false
    /// Whether this node runs the global role (aemp-protocol §10.3).
    var isGlobal = false
    /// Nodes we keep a connection to, reconnecting with backoff (`Node.keepConnected`).
    var keptNodes: [String: KeptNode] = [:]
    /// Re-dials every global in `'g` we are not connected to (only used when global).
    var globalKeepalive: Scheduled<Void>?
    /// What the global role knows about every node (only used when global).
    var directory = GlobalDirectory()
    /// Nodes subscribed to each family with `g_mon1` (only used when global).
    var subscribers: [String: Set<String>] = [:]
    /// Families watched locally with `db_mon`.
    var families: [String: FamilyWatch] = [:]
    /// Database queries waiting for `g_reply`, by request ID.
    var pendingQueries: [String: PendingQuery] = [:]
    /// The request ID of each waiting query, by the caller's token.
    var queryIDs: [UInt64: String] = [:]
    var queryCounter: UInt64 = 0
    /// Channels we dialed that have not yet been handed to a peer (closed on shutdown).
    var dialing: [ObjectIdentifier: any Channel] = [:]
    /// Every live connection (established or in handshake).
    var connections: [ObjectIdentifier: Connection] = [:]
    /// Accepted connections in their handshake, with the IP address each came from.
    var pendingAccepted: [ObjectIdentifier: String] = [:]
    /// Those by IP address.
    var pendingByAddress: [String: Int] = [:]
    /// What each peer's connection has not yet taken, for `Node.unsentBytes(to:)`.
    let backlogs = PeerBacklogs()
    /// Accepted connections closed at once for the handshake caps (read from any thread).
    let handshakesRefused = SharedCounter()
    /// Why each seed is not connected, for `Node.seedProblems`.
    let seedProblems = SeedProblemTable()

    init(
        configuration: NodeConfiguration, nodeID: String, randomisedID: Bool, loop: any EventLoop, ports: PortTable,
        tls: MeshTLSContexts? = nil
    ) {
        self.loop = loop
        self.ports = ports
        self.configuration = configuration
        self.nodeID = nodeID
        var logger = configuration.logger
        logger[metadataKey: "node"] = "\(nodeID)"
        self.logger = logger
        settings = ConnectionSettings(
            nodeID: nodeID,
            authenticator: Authenticator(secret: configuration.secret),
            framings: configuration.framings,
            handshakeTimeout: configuration.handshakeTimeout,
            maxPacketSize: configuration.maxPacketSize,
            maxUnsentBytes: configuration.maxUnsentBytes,
            tls: tls
        )
        ids = IDGenerator(randomisedID: randomisedID)
        seeds = configuration.seeds.map { SeedState(address: $0) }
    }

    // MARK: - Ports

    /// Delivers a message to a local port (aemp-protocol §6).
    func deliverLocal(port name: String, message: [Value]) {
        if name.isEmpty {
            handleNodeRequest(message, from: nodeID)
            return
        }
        guard let port = ports.handlers(name) else {
            logger.debug("message for unknown local port dropped", metadata: ["port": "\(name)"])
            return
        }
        if case .string(let tag)? = message.first, let handler = port.tagged[tag] {
            handler(Array(message.dropFirst()))
        } else if let handler = port.defaultHandler {
            handler(message)
        } else {
            let tag = message.first?.stringValue ?? ""
            kill(port: name, reason: ["unhandled_message", .string("no callback found for message '\(tag)'")])
        }
    }

    /// `snd`: to a local port directly (on the next loop turn), to a remote one over its connection.
    func send(to target: PortID, _ message: [Value]) {
        if target.node == nodeID {
            loop.assumeIsolated().execute { [self] in
                deliverLocal(port: target.name, message: message)
            }
            return
        }
        peer(target.node).send([.string(target.name)] + message, kernel: self)
    }

    /// `kil`: kills a local port (monitors fire with `reason`) or asks a remote node to (`kil1`).
    func kill(port target: PortID, reason: [Value]) {
        if target.node == nodeID {
            kill(port: target.name, reason: reason)
        } else if !target.name.isEmpty {
            peer(target.node).send([.string(""), "kil1", .string(target.name)] + reason, kernel: self)
        }
    }

    /// Runs the watchers of a local port that is gone from the table (aemp-protocol §8).
    func portDied(_ name: String, reason: [Value], onDeath: MonitorAction?) {
        onDeath?(reason)
        guard let w = watchers.removeValue(forKey: name) else { return }
        for (_, action) in w.monitors.sorted(by: { $0.key < $1.key }) { action(reason) }
        for node in w.remote {
            peers[node]?.sendIfConnected([.string(""), "kil0", .string(name)] + reason)
        }
    }

    func kill(port name: String, reason: [Value]) {
        guard !name.isEmpty, let handlers = ports.remove(name) else { return }
        portDied(name, reason: reason, onDeath: handlers.onDeath)
    }

    /// `mon`: local port, remote port or node (empty port name), under `token` (`Subscription.cancel`).
    func monitor(_ target: PortID, token: UInt64, action: @escaping MonitorAction) {
        if target.node == nodeID {
            if !target.name.isEmpty, ports.contains(target.name) {
                watchers[target.name, default: PortWatchers()].monitors[token] = action
            } else {
                let reason: [Value] = [
                    "no_such_port", "cannot monitor nonexistent port", .string(target.description),
                ]
                loop.assumeIsolated().execute { action(reason) }
            }
            return
        }
        let peer = peer(target.node)
        let first = peer.monitors[target.name]?.isEmpty ?? true
        peer.monitors[target.name, default: [:]][token] = action
        if target.name.isEmpty {
            peer.ensureConnected(kernel: self)
        } else if first {
            peer.send([.string(""), "mon1", .string(target.name)], kernel: self)
        }
    }

    func unmonitor(_ target: PortID, token: UInt64) {
        if target.node == nodeID {
            watchers[target.name]?.monitors[token] = nil
            return
        }
        guard let peer = peers[target.node], peer.monitors[target.name]?[token] != nil else { return }
        peer.monitors[target.name]?[token] = nil
        if peer.monitors[target.name]?.isEmpty == true {
            peer.monitors[target.name] = nil
            if !target.name.isEmpty {
                peer.sendIfConnected([.string(""), "mon0", .string(target.name)])
            }
        }
    }

    // MARK: - Remote nodes

    func peer(_ id: String) -> Peer {
        if let p = peers[id] { return p }
        let p = Peer(id: id)
        peers[id] = p
        return p
    }

    var upNodes: [String] {
        peers.values.filter { $0.connection?.isEstablished == true }.map(\.id).sorted()
    }

    func notifyNodeWatchers(_ node: String, up: Bool) {
        for (_, watcher) in nodeWatchers.sorted(by: { $0.key < $1.key }) { watcher(node, up) }
    }

    // MARK: - Node port (aemp-protocol §7)

    /// Node-port requests this node understands (answers `can`).
    static let nodeRequests: Set<String> = [
        "mon1", "mon0", "kil0", "kil1", "snd", "can", "time", "devnull", "",
        "g_global", "g_reply", "g_found", "g_chg1", "g_chg2", "g_slave",
    ]
    /// Requests a global node answers in addition.
    static let globalRequests: Set<String> = [
        "g_find", "g_upd", "g_set", "g_db_family", "g_db_keys", "g_db_values", "g_mon1", "g_mon0",
    ]

    func handleNodeRequest(_ message: [Value], from source: String) {
        if !nodePortObservers.isEmpty {  // every node-port request passes here: no sort without observers
            for (_, observer) in nodePortObservers.sorted(by: { $0.key < $1.key }) { observer(message, source) }
        }
        guard let tagValue = message.first else { return }  // [] / [""]: keepalive
        let tag = tagValue.stringValue ?? ""
        let args = Array(message.dropFirst())
        if handleGlobalRequest(tag: tag, args, from: source) { return }
        switch tag {
        case "", "devnull":
            return
        case "mon1":
            // The node port always exists and never dies: Perl registers a monitor that never fires.
            guard let name = args.first?.stringValue, !name.isEmpty else { return }
            if !name.isEmpty, ports.contains(name) {
                watchers[name, default: PortWatchers()].remote.insert(source)
            } else {
                peers[source]?.sendIfConnected([
                    "", "kil0", .string(name), "no_such_port", "cannot monitor nonexistent port",
                    .string("\(nodeID)#\(name)"),
                ])
            }
        case "mon0":
            guard let name = args.first?.stringValue else { return }
            watchers[name]?.remote.remove(source)
        case "kil0":
            guard let name = args.first?.stringValue, let peer = peers[source] else { return }
            let reason = Array(args.dropFirst())
            if let actions = peer.monitors.removeValue(forKey: name) {
                for (_, action) in actions.sorted(by: { $0.key < $1.key }) { action(reason) }
            }
        case "kil1":
            guard let name = args.first?.stringValue else { return }
            kill(port: name, reason: Array(args.dropFirst()))
        case "snd":
            guard let target = args.first?.stringValue.flatMap(PortID.init) else { return }
            guard !target.isNodePort else { return refuseNodePortTarget(tag, target, from: source) }
            send(to: target, Array(args.dropFirst()))
        case "can":
            guard let asked = args.first?.stringValue else { return }
            let known = Self.nodeRequests.contains(asked) || (isGlobal && Self.globalRequests.contains(asked))
            reply(Array(args.dropFirst()), with: [.string(known ? "1" : "")], request: tag, from: source)
        case "time":
            var now = timespec()
            clock_gettime(CLOCK_REALTIME, &now)
            reply(args, with: [.double(Double(now.tv_sec) + Double(now.tv_nsec) / 1e9)], request: tag, from: source)
        case "g_global":
            globals.insert(source)
        case "g_found":
            handleFound(args)
        case "g_reply", "g_chg1", "g_chg2":
            handleGlobalReply(tag: tag, args, from: source)
        case "g_slave":
            // Perl loads the global module when asked to serve (aemp-protocol §7.3); a private
            // node cannot be reached by others, so it declines.
            if listenAddresses.isEmpty {
                logger.debug("ignoring g_slave (private node)", metadata: ["from": "\(source)"])
            } else {
                becomeGlobal()
                _ = handleGlobalRequest(tag: tag, args, from: source)
            }
        case "eval":
            logger.warning("refusing remote eval request", metadata: ["from": "\(source)"])
        default:
            logger.notice(
                "ignoring unknown node-port request (function calls are never executed)",
                metadata: ["from": "\(source)", "tag": "\(tag.prefix(100))"]
            )
        }
    }

    /// Sends `result` appended to a reply specification `[portid, msg…]` (aemp-protocol §7.1 `@reply`).
    private func reply(_ spec: [Value], with result: [Value], request tag: String, from source: String) {
        guard let target = spec.first?.stringValue.flatMap(PortID.init) else { return }
        guard !target.isNodePort else { return refuseNodePortTarget(tag, target, from: source) }
        send(to: target, Array(spec.dropFirst()) + result)
    }

    /// A relay (`snd`) or a reply (`time`, `can`) that names a node port is dropped: `["","snd",
    /// "perl#","eval",code]` or `["","time","perl#","eval",code]` would otherwise make this node
    /// send `eval` to a Perl node in its own name. Perl relays these; this node never does.
    private func refuseNodePortTarget(_ what: String, _ target: PortID, from source: String) {
        logger.warning(
            "refusing to send to a node port on request of a peer",
            metadata: ["from": "\(source)", "request": "\(what)", "target": "\(target)"])
    }

    // MARK: - Packets from connections

    func received(_ packet: [Value], from source: String) {
        guard let first = packet.first else {
            return  // [] is a no-op packet
        }
        guard case .string(let name) = first else {
            logger.notice("dropping packet whose port name is not a string", metadata: ["from": "\(source)"])
            return
        }
        if name.isEmpty {
            handleNodeRequest(Array(packet.dropFirst()), from: source)
        } else {
            deliverLocal(port: name, message: Array(packet.dropFirst()))
        }
    }
}
