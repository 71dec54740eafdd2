import Logging
import NIOCore

/// The global role (aemp-protocol §10.3, §11.3-§11.6): the directory of every node's database,
/// `g_slave`, `g_find`, `g_upd`, `g_set`, `g_db_*`, `g_mon1`/`g_mon0`, and cleanup when a node goes.
extension Kernel {

    /// Becomes a global node (a seed that finds itself in its seed list, or a public node asked
    /// to serve by `g_slave`): its own master.
    func becomeGlobal() {
        guard !isGlobal else { return }
        isGlobal = true
        logger.info("running as a global node")
        directory.globalOwners.formUnion(globals)
        var own = localDB
        own["'l", default: [:]][nodeID] = .array(listenAddresses.map { .string($0) })
        own["'g", default: [:]][nodeID] = .null
        for (family, delta) in directory.replace(owner: nodeID, with: own) {
            publish(family: family, delta)
        }
        master = nodeID
        notifyMasterWatchers()
        // Our own db_mon watchers are now fed by ourselves.
        for family in families.keys {
            applyChangeFeed(tag: "g_chg1", [.string(family), familyValue(family)])
        }
        // Tell every node we are global; the globals we already know get our data at once, as
        // if they had just announced themselves (Perl's post_configure, G 308-334).
        for peer in peers.values.sorted(by: { $0.id < $1.id }) where peer.isUp {
            peer.sendIfConnected(["", "g_global"])
            if globals.contains(peer.id) { connectGlobal(peer.id) }
        }
        scheduleGlobalKeepalive()
    }

    private func scheduleGlobalKeepalive() {
        globalKeepalive = loop.assumeIsolated().scheduleTask(in: configuration.connectInterval) { [weak self] in
            guard let self, !self.isShutDown else { return }
            self.connectGlobals()
            self.scheduleGlobalKeepalive()
        }
    }

    /// Globals keep a connection to every node in `'g`, including those no seed list names
    /// (aemp-protocol §10.3): dial each one that is neither up nor being connected.
    func connectGlobals() {
        guard isGlobal, !isShutDown else { return }
        for id in directory.family("'g").keys.sorted() where id != nodeID {
            let p = peer(id)
            if !p.isUp && !p.connecting { p.ensureConnected(kernel: self) }
        }
    }

    /// The merged family as sent in `g_chg1` (null when empty, as Perl does).
    func familyValue(_ family: String) -> Value {
        let f = directory.family(family)
        return f.isEmpty ? .null : .object(f)
    }

    /// Node-port requests only a global node answers; returns false if `tag` is not one of them.
    func handleGlobalRequest(tag: String, _ args: [Value], from source: String) -> Bool {
        guard isGlobal else { return false }
        switch tag {
        case "g_slave":
            guard case .object(let db)? = args.first else { return true }  // empty g_slave: "run the global service"
            var data: [String: [String: Value]] = [:]
            for (family, entries) in db { data[family] = entries.objectValue ?? [:] }
            let changes = directory.replace(owner: source, with: data)
            for (family, delta) in changes { publish(family: family, delta, forward: false) }
            if !globals.contains(source) {
                // The other globals get the slave's whole database, not just what changed here: they
                // may hold those keys only as orphaned copies of a lost global (see globalNodeDown).
                for family in Set(data.keys).union(changes.keys).sorted() {
                    let deleted = changes[family]?.forwarded.deleted ?? []
                    let update: [Value] = [
                        "", "g_upd", .string(family), .object(data[family] ?? [:]),
                        .array(deleted.map { .string($0) }),
                    ]
                    for g in globals where g != nodeID { peers[g]?.sendIfConnected(update) }
                }
            }
        case "g_set":
            guard case .object(let db)? = args.first else { return true }
            var data: [String: [String: Value]] = [:]
            for (family, entries) in db { data[family] = entries.objectValue ?? [:] }
            for (family, delta) in directory.replace(owner: source, with: data) {
                publish(family: family, delta, forward: false)
            }
            // Mirror the sender's listeners into our own db, so every global we know learns them
            // (aemp-protocol §10.3; [wire] failover-json: g_upd 'l right after g_set).
            if let addresses = data["'l"]?[source] { dbSet("'l", source, addresses) }
        case "g_upd":
            guard let family = args.first?.stringValue else { return true }
            let set = args.count > 1 ? (args[1].objectValue ?? [:]) : [:]
            let del = args.count > 2 ? (args[2].arrayValue ?? []).compactMap(\.stringValue) : []
            // A slave's write reports every key set (as Perl does); a write forwarded by another
            // global reports only visible changes (it may re-state keys we already show).
            let fromGlobal = globals.contains(source)
            let delta = directory.apply(
                owner: source, family: family, set: set, delete: del, reportUnchanged: !fromGlobal)
            publish(family: family, delta, forward: !fromGlobal)
        case "g_find":
            guard let node = args.first?.stringValue else { return true }
            let addresses: [String]? = node == nodeID ? listenAddresses : directory.addresses(of: node)
            let found: Value = addresses.map { .array($0.map { .string($0) }) } ?? .null
            peers[source]?.sendIfConnected(["", "g_found", .string(node), found])
        case "g_db_family", "g_db_keys", "g_db_values":
            guard args.count >= 2, let family = args[0].stringValue else { return true }
            peers[source]?.sendIfConnected(["", "g_reply", args[1], answer(query: tag, family: family)])
        case "g_mon1":
            guard let family = args.first?.stringValue else { return true }
            subscribers[family, default: []].insert(source)
            peers[source]?.sendIfConnected(["", "g_chg1", .string(family), familyValue(family)])
        case "g_mon0":
            guard let family = args.first?.stringValue else { return true }
            subscribers[family]?.remove(source)
            if subscribers[family]?.isEmpty == true { subscribers[family] = nil }
        case "g_global":
            globals.insert(source)
            directory.globalOwners.insert(source)
            // A global is its own master: its g_mon1 subscriptions with us are over (Perl's
            // g_disconnect on g_global, G 223-242, 292-297).
            for family in subscribers.keys { subscribers[family]?.remove(source) }
            subscribers = subscribers.filter { !$0.value.isEmpty }
            connectGlobal(source)
        default:
            return false
        }
        return true
    }

    /// Meets another global (Perl's `g_global_connect`, G 263-290): our own db records it in `'g`,
    /// which every global hears through `g_upd` ([wire] failover-json: that is how globals no seed
    /// list connects find each other), and it gets what our slaves (and we) own in `g_set`.
    func connectGlobal(_ id: String) {
        dbSet("'g", id, .null)
        let mine = [nodeID] + directory.shards.keys.filter {
            !globals.contains($0) && $0 != nodeID && !directory.orphans.contains($0)
        }
        let db = directory.union(of: mine)
        peers[id]?.sendIfConnected(["", "g_set", .object(db.mapValues { .object($0) })])
    }

    /// Answers a `g_db_*` query from the merged view.
    func answer(query: String, family: String) -> Value {
        let f = directory.family(family)
        switch query {
        case "g_db_keys": return .array(f.keys.sorted().map { .string($0) })
        case "g_db_values": return .array(f.keys.sorted().map { f[$0]! })
        default: return .object(f)
        }
    }

    /// Sends a change to every subscriber of the family (and our own watchers), and forwards
    /// writes of our slaves to the other globals (aemp-protocol §11.5).
    func publish(family: String, _ delta: FamilyDelta, forward: Bool = true) {
        guard !delta.isEmpty else { return }
        if family == "'g" || family == "'l", !delta.set.isEmpty { connectGlobals() }
        if !delta.isUnchanged {
            let packet: [Value] = [
                "", "g_chg2", .string(family), .object(delta.set), .array(delta.deleted.map { .string($0) }),
            ]
            for node in subscribers[family] ?? [] where node != nodeID {
                peers[node]?.sendIfConnected(packet)
            }
            if families[family] != nil {
                applyChangeFeed(tag: "g_chg2", Array(packet.dropFirst(2)))
            }
        }
        let (set, deleted) = delta.forwarded
        if forward, !set.isEmpty || !deleted.isEmpty {
            let update: [Value] = ["", "g_upd", .string(family), .object(set), .array(deleted.map { .string($0) })]
            for g in globals where g != nodeID { peers[g]?.sendIfConnected(update) }
        }
    }

    /// A node went down: a global forgets everything it owned and its subscriptions (aemp-protocol §11.6).
    /// What a dead *global* carried for its slaves is kept for `globalLossGrace`, unless its slaves
    /// re-claim it sooner, so that a failover does not make their keys blink out everywhere.
    func globalNodeDown(_ id: String, wasGlobal: Bool) {
        guard isGlobal else { return }
        for family in subscribers.keys { subscribers[family]?.remove(id) }
        // What we recorded about the node ourselves (it was a global, aemp-protocol §11.6).
        dbDel("'g", [id])
        dbDel("'l", [id])
        // A slave's keys vanish everywhere (the other globals hear it); a global's are its
        // slaves', which the other globals hold themselves: no g_upd for them (Perl's g_clr goes
        // through g_upd, which broadcasts only a slave's writes, G 73-142, 223-242).
        let grace = configuration.globalLossGrace
        guard wasGlobal, grace.nanoseconds > 0 else {
            for (family, delta) in directory.drop(owner: id) {
                publish(family: family, delta, forward: !wasGlobal)
            }
            directory.globalOwners.remove(id)
            return
        }
        directory.orphan(id)
        logger.info("keeping a lost global's data until its slaves re-register", metadata: ["global": "\(id)"])
        loop.assumeIsolated().scheduleTask(in: grace) { [weak self] in
            guard let self, !self.isShutDown, self.directory.orphans.contains(id) else { return }
            for (family, delta) in self.directory.drop(owner: id) {
                self.publish(family: family, delta, forward: false)
            }
            if !self.globals.contains(id) { self.directory.globalOwners.remove(id) }
        }
    }

    /// A connection came up: a global announces itself (aemp-protocol §10.1 step 5).
    func globalNodeUp(_ peer: Peer) {
        guard isGlobal else { return }
        peer.sendIfConnected(["", "g_global"])
    }
}
