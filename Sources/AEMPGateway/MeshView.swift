import AEMP
import Logging

/// What the gateway knows of the mesh, followed from the node: the master, which nodes a message
/// can reach, and the `/v1/nodes/events` streams that hear connections come and go. Written on
/// the node's loop, read by every request. Any thread.
final class MeshView: Sendable {
    private let master_ = Locked<String?>(nil)
    /// Which nodes a message can reach now: those connected to the gateway's node, and those the
    /// network's directory (`'l`) has an address for (followed from start; `synced` after its
    /// first snapshot). Read by every send.
    private let reachability = Locked<Reachability>(Reachability())
    private let streams = Locked<[UInt64: EventStream]>([:])
    private let nextToken = Locked<UInt64>(0)

    var master: String? { master_.withLock { $0 } }

    /// Follows the node: master changes (counted and logged), the directory, connections.
    func follow(_ node: Node, metrics: GatewayMetrics, logger: Logger) {
        node.monMaster { [self] master in
            let previous = master_.withLock { m in
                defer { m = master }
                return m
            }
            if previous != master {
                metrics.masterChanges.increment()
                logger.notice("master changed", metadata: ["master": "\(master ?? "none")"])
            }
        }
        node.dbMon("'l") { [self] change in
            let listed = Set(change.values.lazy.filter { !($0.value.arrayValue ?? []).isEmpty }.map(\.key))
            reachability.withLock { r in
                r.listed = listed
                r.synced = true
            }
        }
        node.monNodes { [self] id, up in
            reachability.withLock { r in
                if up { r.connected.insert(id) } else { r.connected.remove(id) }
            }
            let event = ServerSentEvent.encode(id: nil, event: up ? "up" : "down", data: ["node": .string(id), "up": .bool(up)])
            for (token, stream) in streams.withLock({ $0 }) where !stream.send(event, orEndWith: FamilyFeed.overflowEvent) {
                streams.withLock { _ = $0.removeValue(forKey: token) }
            }
        }
    }

    /// Adds a node-events stream (until it closes); registered before its snapshot is taken, so
    /// an event may repeat what the snapshot says and none is lost.
    func addStream(_ stream: EventStream) {
        let token = nextToken.withLock { t in
            t += 1
            return t
        }
        streams.withLock { $0[token] = stream }
        stream.onClose { [self] in streams.withLock { _ = $0.removeValue(forKey: token) } }
    }

    /// Ends the streams with `final` (shutdown; the node's own shutdown ends the watchers).
    func close(final: [UInt8]) {
        for (_, stream) in streams.withLock({ $0 }) { stream.finish(with: final) }
    }

    /// The first node of `nodes` (with its position) that a message is known not to reach (see
    /// `Reachability.knownUnreachable`); `me` and runs of one node are asked once.
    func firstUnreachable<S: Sequence<String>>(_ nodes: S, me: String) -> (index: Int, node: String)? {
        reachability.withLock { r in
            guard r.synced else { return nil }
            var last: String?
            for (i, id) in nodes.enumerated() where id != me && id != last {
                last = id
                if r.knownUnreachable(id) { return (i, id) }
            }
            return nil
        }
    }
}

/// What the gateway knows about reaching other nodes (see `MeshView.reachability`).
struct Reachability: Sendable {
    var connected: Set<String> = []
    /// Nodes with at least one address in `'l`.
    var listed: Set<String> = []
    var synced = false

    /// Whether a message to `node` is known to be undeliverable: not connected, and the synced
    /// directory has no address to dial (it left, it is private and not connected here, or it
    /// never was). Before the directory is synced nothing is known.
    func knownUnreachable(_ node: String) -> Bool {
        synced && !connected.contains(node) && !listed.contains(node)
    }
}
