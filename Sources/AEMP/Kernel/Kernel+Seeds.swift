import Logging
import NIOCore

/// Seeds, master selection and address lookup for a non-global node (aemp-protocol §9, §10.1-§10.2).
extension Kernel {

    /// Marks the seeds that are this node (`ownSeeds`, found from our listen addresses by
    /// `OwnAddresses`, and any seed spelled as one of our binds or listen addresses), becoming
    /// global if there is one; then dials every other seed. A seed's greeting never makes it this
    /// node: that is unauthenticated (`connection(_:checkGreeting:)`).
    func connectSeeds(ownSeeds: Set<String> = []) {
        guard !isShutDown else { return }
        let own = Set(listenAddresses + configuration.binds).union(ownSeeds)
        for i in seeds.indices where own.contains(seeds[i].address) {
            seeds[i].isSelf = true
            seeds[i].nodeID = nodeID
        }
        if seeds.contains(where: \.isSelf) { becomeGlobal() }
        for i in seeds.indices { connectSeed(at: i) }
    }

    private func connectSeed(at i: Int) {
        guard !isShutDown, i < seeds.count else { return }
        let seed = seeds[i]
        guard !seed.isSelf, !seed.dialing, seed.retryTimer == nil else { return }
        if let id = seed.nodeID, peers[id]?.isUp == true { return }
        seeds[i].dialing = true
        let address = seed.address
        dial(address) { [weak self] reason in
            guard let self, let i = self.seeds.firstIndex(where: { $0.address == address }) else { return }
            self.seeds[i].dialing = false
            self.seedProblems.set(address, "cannot connect: \(Self.summary(ofConnectError: reason))")
            self.logger.debug("seed unreachable", metadata: ["seed": "\(address)", "error": "\(reason)"])
            self.scheduleSeedRetry(at: i)
        }
    }

    /// Exponential backoff per seed: 0.6-1.2 s, doubling, capped (aemp-protocol §10.1).
    private func scheduleSeedRetry(at i: Int) {
        guard !isShutDown, !seeds[i].isSelf, seeds[i].retryTimer == nil else { return }
        let limit = Double(configuration.seedBackoffLimit.nanoseconds) / 1e9
        let delay = seeds[i].backoff == 0 ? Double.random(in: 0.6...1.2) : min(seeds[i].backoff * 2, limit)
        seeds[i].backoff = delay
        let address = seeds[i].address
        seeds[i].retryTimer = loop.assumeIsolated().scheduleTask(in: .nanoseconds(Int64(delay * 1e9))) {
            [weak self] in
            guard let self, let i = self.seeds.firstIndex(where: { $0.address == address }) else { return }
            self.seeds[i].retryTimer = nil
            self.connectSeed(at: i)
        }
    }

    /// NIO's connect errors are long structure dumps; keep the part an operator can act on.
    static func summary(ofConnectError error: String) -> String {
        let lower = error.lowercased()
        if lower.contains("connection refused") { return "connection refused" }
        if lower.contains("connecttimeout") || lower.contains("timed out") { return "connect timeout" }
        if lower.contains("no route") { return "no route to host" }
        return error.count > 200 ? String(error.prefix(200)) + "..." : error
    }

    /// A handshake with the seed dialed at `address` failed: remember why, unless the seed is up
    /// over another connection (crossing dials, a duplicate) or is this node.
    func seedHandshakeFailed(_ address: String, reason: String) {
        guard let seed = seeds.first(where: { $0.address == address }), !seed.isSelf else { return }
        if let id = seed.nodeID, peers[id]?.isUp == true { return }
        seedProblems.set(address, reason)
    }

    /// A connection came up: if it is a seed, it may become our master.
    func seedNodeUp(_ id: String) {
        for i in seeds.indices where seeds[i].nodeID == id {
            seedProblems.set(seeds[i].address, nil)
            seeds[i].backoff = 0
            seeds[i].retryTimer?.cancel()
            seeds[i].retryTimer = nil
        }
        if seeds.contains(where: { $0.nodeID == id && !$0.isSelf }) {
            // "Run the global service": Perl asks every seed so, master or not (aemp-protocol
            // §10.1 step 3), so that every seed is a global its slaves can fail over to.
            peers[id]?.sendIfConnected(["", "g_slave"])
            if master == nil { selectMaster() }
        }
    }

    /// A connection went away (or a seed dial's handshake failed: `id` nil): retry seeds, re-elect.
    func seedConnectionLost(_ id: String?) {
        guard !isShutDown else { return }
        for i in seeds.indices where !seeds[i].dialing && (id == nil || seeds[i].nodeID == id || seeds[i].nodeID == nil) {
            if let sid = seeds[i].nodeID, peers[sid]?.isUp == true { continue }
            scheduleSeedRetry(at: i)
        }
        if let id, id == master, !isGlobal {
            logger.warning("master lost", metadata: ["master": "\(id)"])
            master = nil
            notifyMasterWatchers()
            selectMaster()
        }
    }

    /// The first seed (in configuration order) that is up becomes the master (aemp-protocol §10.1 step 4).
    func selectMaster() {
        guard master == nil, !isGlobal else { return }
        guard let seed = seeds.first(where: { s in !s.isSelf && s.nodeID.map { peers[$0]?.isUp == true } == true }),
            let id = seed.nodeID
        else { return }
        master = id
        logger.info("master selected", metadata: ["master": "\(id)"])
        attachToMaster(id)
        notifyMasterWatchers()
    }

    /// Sends `g_slave` with the whole local database, then every pending global request (aemp-protocol §10.1).
    func attachToMaster(_ id: String) {
        var db = localDB
        db["'l", default: [:]][nodeID] = .array(listenAddresses.map { .string($0) })
        let payload = Value.object(db.mapValues { .object($0) })
        let master = peer(id)
        master.send(["", "g_slave", payload], kernel: self)
        for node in pendingLookups.sorted() {
            master.send(["", "g_find", .string(node)], kernel: self)
        }
        resendDatabaseRequests(to: master)
    }

    func notifyMasterWatchers() {
        for (_, watcher) in masterWatchers.sorted(by: { $0.key < $1.key }) { watcher(master) }
        if let master {
            for token in masterWaits.keys.sorted() { endMasterWait(token, .success(master)) }
        }
    }

    /// `Node.waitForMaster`: ends at once if there is a master, else when one is found, or with
    /// `timedOut` after `timeout` (or `endMasterWait` from a cancellation or shutdown).
    func waitForMaster(token: UInt64, timeout: TimeAmount, end: @escaping @Sendable (Result<String, RequestError>) -> Void) {
        if isShutDown { return end(.failure(.shutDown)) }
        if let master { return end(.success(master)) }
        let timer = loop.assumeIsolated().scheduleTask(in: timeout) { [weak self] () -> Void in
            self?.endMasterWait(token, .failure(RequestError(timeout: timeout)))
        }
        masterWaits[token] = MasterWait(timer: timer, end: end)
    }

    func endMasterWait(_ token: UInt64, _ result: Result<String, RequestError>) {
        guard let wait = masterWaits.removeValue(forKey: token) else { return }
        wait.timer.cancel()
        wait.end(result)
    }

    // MARK: - Address lookup (g_find / g_found)

    /// Asks the master for a node's addresses; sent when a master is (or becomes) available.
    func lookup(_ node: String) {
        guard !pendingLookups.contains(node) else { return }
        pendingLookups.insert(node)
        if let master, let peer = peers[master], peer.isUp {
            peer.send(["", "g_find", .string(node)], kernel: self)
        }
    }

    /// `["", "g_found", node, [addr…] | null]` from the master.
    func handleFound(_ args: [Value]) {
        guard let node = args.first?.stringValue else { return }
        pendingLookups.remove(node)
        guard let peer = peers[node], peer.connecting else { return }
        let addresses = (args.dropFirst().first?.arrayValue ?? []).compactMap(\.stringValue)
        guard !addresses.isEmpty else {
            // The network has no address for it (`null`: unknown, `[]`: a private node that did
            // not connect to us): Perl fails the connect at once with this reason (Node.pm
            // `connect_to`, aemp-protocol §9, §14); waiting for the deadline would change nothing.
            logger.debug(
                "no known address", metadata: ["peer": "\(node)", "private": "\(args.count > 1 && !args[1].isNull)"])
            noKnownAddress(peer)
            return
        }
        peer.addresses = addresses
        dialAddresses(of: peer)
    }
}

/// Why each seed is not connected, as last seen: its latest handshake failure or dial error,
/// cleared when it comes up. Written on the node's loop, read from any thread.
final class SeedProblemTable: Sendable {
    private let table = Locked<[String: String]>([:])

    func set(_ seed: String, _ reason: String?) {
        table.withLock { $0[seed] = reason }
    }

    func all() -> [String: String] {
        table.withLock { $0 }
    }
}
