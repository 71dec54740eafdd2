import Logging
import NIOCore

/// The data global nodes keep: every node's local database, by owner (aemp-protocol §10.3, §11).
struct GlobalDirectory {
    /// owner node → family → subkey → value.
    var shards: [String: [String: [String: Value]]] = [:]

    /// Listener addresses of `node` from family `'l`, or nil when no global knows the node.
    func addresses(of node: String) -> [String]? {
        for shard in shards.values {
            if let entry = shard["'l"]?[node] {
                return entry.arrayValue?.compactMap(\.stringValue) ?? []
            }
        }
        return nil
    }
}

/// The global role, as far as connection management needs it: answering `g_slave` and `g_find`,
/// announcing `g_global`, dropping what a node owned when it goes down (aemp-protocol §10.3).
extension Kernel {

    /// Becomes a global node (a seed that finds itself in its seed list): its own master.
    func becomeGlobal() {
        guard !isGlobal else { return }
        isGlobal = true
        logger.info("running as a global node")
        var own = localDB
        own["'l", default: [:]][nodeID] = .array(listenAddresses.map { .string($0) })
        own["'g", default: [:]][nodeID] = .null
        directory.shards[nodeID] = own
        master = nodeID
        notifyMasterWatchers()
        for peer in peers.values where peer.isUp {
            peer.sendIfConnected(["", "g_global"])
        }
    }

    /// True when one of our seed addresses is one of our listen addresses.
    func seedsIncludeSelf() -> Bool {
        let own = Set(listenAddresses + configuration.binds)
        return seeds.contains { own.contains($0.address) }
    }

    /// Node-port requests only a global node answers; returns false if `tag` is not one of them.
    func handleGlobalRequest(tag: String, _ args: [Value], from source: String) -> Bool {
        guard isGlobal else { return false }
        switch tag {
        case "g_slave":
            if case .object(let db)? = args.first {
                var shard: [String: [String: Value]] = [:]
                for (family, entries) in db {
                    shard[family] = entries.objectValue ?? [:]
                }
                directory.shards[source] = shard
            }
            return true
        case "g_find":
            guard let node = args.first?.stringValue else { return true }
            let addresses: [String]? = node == nodeID ? listenAddresses : directory.addresses(of: node)
            let found: Value = addresses.map { .array($0.map { .string($0) }) } ?? .null
            peers[source]?.sendIfConnected(["", "g_found", .string(node), found])
            return true
        default:
            return false
        }
    }

    /// A node went down: a global forgets everything it owned.
    func globalNodeDown(_ id: String) {
        guard isGlobal else { return }
        directory.shards[id] = nil
    }

    /// A connection came up: a global announces itself (aemp-protocol §10.1 step 5).
    func globalNodeUp(_ peer: Peer) {
        guard isGlobal else { return }
        peer.sendIfConnected(["", "g_global"])
    }
}
