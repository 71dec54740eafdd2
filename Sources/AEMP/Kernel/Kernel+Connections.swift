import Logging
import NIOCore
import NIOPosix

/// Listening, dialing and the life of connections (aemp-protocol §3, §9).
extension Kernel: ConnectionDelegate {

    // MARK: - Listening

    func bind(_ address: String) -> EventLoopFuture<Void> {
        guard let (host, port) = splitHostPort(address) else {
            return loop.makeFailedFuture(NodeError.invalidAddress(address))
        }
        let me = NIOLoopBound(self, eventLoop: loop)
        return ServerBootstrap(group: loop, childGroup: loop)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.socketOption(.so_keepalive), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let kernel = me.value
                    let ip = channel.remoteAddress?.ipAddress ?? "?"
                    if let refusal = kernel.refusePending(from: ip) {
                        kernel.handshakesRefused.add(1)
                        kernel.logger.warning(
                            "refusing a connection: too many handshakes in progress",
                            metadata: ["peer_addr": "\(channel.remoteAddress?.description ?? "?")", "limit": "\(refusal)"])
                        channel.close(promise: nil)
                        return
                    }
                    let connection = Connection(
                        origin: .accepted, settings: kernel.settings, delegate: kernel, logger: kernel.logger)
                    kernel.connections[ObjectIdentifier(connection)] = connection
                    kernel.pendingAccepted[ObjectIdentifier(connection)] = ip
                    kernel.pendingByAddress[ip, default: 0] += 1
                    try channel.pipeline.syncOperations.addHandler(connection)
                }
            }
            .bind(host: host, port: port)
            .flatMapErrorThrowing { error in
                throw NodeError.bindFailed(address: address, reason: "\(error)")
            }
            .map { channel in
                let kernel = me.value
                kernel.listeners.append(channel)
                let boundPort = channel.localAddress?.port ?? port
                kernel.listenAddresses.append("\(host):\(boundPort)")
                kernel.logger.info("listening", metadata: ["address": "\(host):\(boundPort)"])
            }
    }

    // MARK: - Dialing

    /// Opens a TCP connection to `address`; the handshake tells whose it is.
    /// `onFailure` runs if the TCP connect itself fails.
    func dial(_ address: String, onFailure: @escaping (String) -> Void) {
        guard !isShutDown else { return }
        guard let (host, port) = splitHostPort(address) else {
            onFailure("invalid address \(address.debugDescription)")
            return
        }
        let me = NIOLoopBound(self, eventLoop: loop)
        // The connection the channel initializer made: a failed connect must drop it from
        // `connections` itself (its channel never became active, so it never reports closing).
        let made = NIOLoopBoundBox<Connection?>(nil, eventLoop: loop)
        let future = ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.socketOption(.so_keepalive), value: 1)
            .connectTimeout(.nanoseconds(min(configuration.connectTimeout.nanoseconds, configuration.handshakeTimeout.nanoseconds)))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let kernel = me.value
                    let connection = Connection(
                        origin: .dialed(address: address), settings: kernel.settings, delegate: kernel,
                        logger: kernel.logger)
                    kernel.connections[ObjectIdentifier(connection)] = connection
                    made.value = connection
                    try channel.pipeline.syncOperations.addHandler(connection)
                }
            }
            .connect(host: host, port: port)
        future.assumeIsolated().whenComplete { [self] result in
            let connection = made.value
            made.value = nil
            switch result {
            case .success(let channel):
                if isShutDown { channel.close(promise: nil) }
            case .failure(let error):
                if let connection { connections[ObjectIdentifier(connection)] = nil }
                logger.debug("connect failed", metadata: ["address": "\(address)", "error": "\(error)"])
                onFailure("\(error)")
            }
        }
    }

    /// Starts connecting to a peer: dial known addresses, or ask the master where it is.
    func startConnect(_ peer: Peer) {
        if !peer.addresses.isEmpty {
            dialAddresses(of: peer)
        } else if let seedIndex = seeds.firstIndex(where: { $0.nodeID == peer.id }) {
            peer.addresses = [seeds[seedIndex].address]
            dialAddresses(of: peer)
        } else if isGlobal {
            peer.addresses = directory.addresses(of: peer.id) ?? []
            if peer.addresses.isEmpty {
                // A global either knows the node or does not (Perl's Node.pm `connect`): fail at
                // once, on the next loop turn (we may be inside the `snd` or `mon` that asked).
                loop.assumeIsolated().execute { [weak self, weak peer] in
                    guard let self, let peer else { return }
                    self.noKnownAddress(peer)
                }
            } else {
                dialAddresses(of: peer)
            }
        } else {
            lookup(peer.id)
        }
    }

    /// Dials a peer's addresses one after another, `connectInterval` apart; the first handshake wins.
    func dialAddresses(of peer: Peer) {
        let addresses = peer.addresses
        guard !addresses.isEmpty else {
            retryConnect(peer, after: "no known address")
            return
        }
        var remaining = addresses.count
        for (i, address) in addresses.enumerated() {
            let attempt = { [weak self, weak peer] in
                guard let self, let peer, peer.connecting else { return }
                self.dial(address) { [weak self, weak peer] reason in
                    remaining -= 1
                    guard let self, let peer, peer.connecting, remaining == 0 else { return }
                    self.retryConnect(peer, after: "cannot connect to \(addresses.joined(separator: ", ")): \(reason)")
                }
            }
            if i == 0 {
                attempt()
            } else {
                let delay = TimeAmount.nanoseconds(configuration.connectInterval.nanoseconds * Int64(i))
                peer.dialTimers.append(loop.assumeIsolated().scheduleTask(in: delay, attempt))
            }
        }
    }

    /// One attempt to dial known addresses failed: look the node up and dial again after
    /// `connectInterval`, until the connect deadline gives up with the last reason. (An answer
    /// that the node has no address fails at once instead: `handleFound`, `startConnect`.)
    func retryConnect(_ peer: Peer, after reason: String) {
        guard peer.connecting else { return }
        peer.lastError = reason
        peer.addresses.removeAll()
        peer.dialTimers.append(
            loop.assumeIsolated().scheduleTask(in: configuration.connectInterval) { [weak self, weak peer] in
                guard let self, let peer, peer.connecting, !peer.isUp else { return }
                self.startConnect(peer)
            })
    }

    /// The network has no address for the node: the connect fails at once, as in Perl
    /// (`transport_error <node> "no known address"`, aemp-protocol §9) — unless that node is in a
    /// handshake with us right now (it dialed us and its greeting is in): that connection is what
    /// the queue waits for, and the connect deadline still applies.
    func noKnownAddress(_ peer: Peer) {
        guard peer.connecting, !peer.isUp else { return }
        if connections.values.contains(where: { $0.peerID == peer.id }) {
            peer.lastError = "no known address"
            return
        }
        connectFailed(peer, reason: "no known address")
    }

    /// A connect attempt failed: queued messages are dropped and monitors fire (aemp-protocol §8).
    func connectFailed(_ peer: Peer, reason: String) {
        guard peer.connecting, !peer.isUp else { return }
        peer.stopConnecting()
        pendingLookups.remove(peer.id)
        transportFailed(peer, reason: reason)
        keptNodeLost(peer.id)
    }

    /// Drops a peer's queue and fires every monitor on it with `transport_error`.
    func transportFailed(_ peer: Peer, reason: String) {
        if !peer.queue.isEmpty {
            logger.warning(
                "dropping messages queued for an unreachable node",
                metadata: ["to": "\(peer.id)", "count": "\(peer.queue.count)", "reason": "\(reason)"])
            peer.queue.removeAll()
        }
        let monitors = peer.monitors
        peer.monitors.removeAll()
        let why: [Value] = ["transport_error", .string(peer.id), .string(reason)]
        for (_, actions) in monitors.sorted(by: { $0.key < $1.key }) {
            for (_, action) in actions.sorted(by: { $0.key < $1.key }) { action(why) }
        }
    }

    // MARK: - ConnectionDelegate

    func connection(_ connection: Connection, checkGreeting greeting: Greeting) -> String? {
        // An empty ID, or one with '#', ';' or a line break, cannot be addressed (aemp-protocol §2.1);
        // a non-ASCII one (a Perl peer's, its greeting's bytes as Latin-1) can (§14).
        if let problem = NodeIDTemplate.addressProblem(with: greeting.nodeID) {
            return "peer greeting: \(problem)"
        }
        if greeting.nodeID == nodeID {
            // Nothing in a greeting is authenticated yet: a peer that claims our ID is not us (Perl
            // takes a seed that greets with its own ID for itself and turns global, K 486-505; a
            // fake seed could make every node it reaches a global that way). Seeds that are this
            // node were found from our listen addresses before any dial (`connectSeeds`).
            var where_ = "a peer that dialed us"
            if case .dialed(let address) = connection.origin { where_ = "seed or peer \(address)" }
            return "I refuse to talk to myself: the greeting of \(where_) claims this node's ID "
                + "\(nodeID.debugDescription) before authenticating; a seed is taken for this node only when its "
                + "address is one we listen on (\(listenAddresses.joined(separator: ", "))), never on a peer's word "
                + "(another node with our ID, a loop through an address we do not bind, or a peer echoing our greeting)"
        }
        if case .dialed(let address) = connection.origin, let i = seeds.firstIndex(where: { $0.address == address }) {
            seeds[i].nodeID = greeting.nodeID
        }
        if let existing = peers[greeting.nodeID]?.connection, existing.isEstablished {
            return "already connected to \(greeting.nodeID)"
        }
        return nil
    }

    func connectionHasSibling(_ connection: Connection) -> Bool {
        guard let id = connection.peerID else { return false }
        if peers[id]?.isUp == true { return true }
        return connections.values.contains { $0 !== connection && $0.peerID == id }
    }

    /// Why a connection from `ip` is refused before its handshake starts, if it is: the caps on
    /// handshakes in progress (in all, and from one address).
    func refusePending(from ip: String) -> String? {
        if pendingAccepted.count >= configuration.maxPendingHandshakes {
            return "\(configuration.maxPendingHandshakes) in all"
        }
        if pendingByAddress[ip, default: 0] >= configuration.maxPendingHandshakesPerAddress {
            return "\(configuration.maxPendingHandshakesPerAddress) from \(ip)"
        }
        return nil
    }

    /// An accepted connection left its handshake (established, or closed).
    func handshakeOver(_ connection: Connection) {
        guard let ip = pendingAccepted.removeValue(forKey: ObjectIdentifier(connection)) else { return }
        let left = pendingByAddress[ip, default: 1] - 1
        pendingByAddress[ip] = left > 0 ? left : nil
    }

    func connectionEstablished(_ connection: Connection) {
        handshakeOver(connection)
        guard let id = connection.peerID else { return }
        if isShutDown {
            connection.close(reason: "node shutting down")
            return
        }
        let peer = peer(id)
        if let existing = peer.connection, existing !== connection, existing.isEstablished {
            // Both sides dialed at once: keep the connection dialed by the smaller node ID, so both
            // ends keep the same one (Perl keeps the newer; with crossing dials that can drop both).
            let dialerOf: (Connection) -> String = { c in
                if case .dialed = c.origin { return self.nodeID } else { return id }
            }
            let keepNew: Bool
            if dialerOf(existing) == dialerOf(connection) {
                keepNew = true
            } else {
                keepNew = dialerOf(connection) == min(nodeID, id)
            }
            if keepNew {
                peer.connection = connection
                backlogs.set(id, connection.unsent)
                existing.close(reason: "switched connections")
                // The peer closes its end of the old connection as a duplicate and reads nothing
                // more from it, so what we announced there (g_global) may be lost: announce again
                // on the connection both ends keep.
                globalNodeUp(peer)
            } else {
                connection.close(reason: "duplicate connection")
            }
            return
        }
        peer.connection = connection
        backlogs.set(id, connection.unsent)
        peer.stopConnecting()
        if case .dialed(let address) = connection.origin, !peer.addresses.contains(address) {
            peer.addresses.insert(address, at: 0)
        }
        logger.info("node up", metadata: ["peer": "\(id)", "addr": "\(connection.remoteAddress)"])
        let queued = peer.queue
        peer.queue.removeAll()
        for packet in queued { connection.send(packet) }
        // Monitors fired when the last connection failed; mon1 of newer ones was in the queue.
        globalNodeUp(peer)
        keptNodeUp(id)
        notifyNodeWatchers(id, up: true)
        seedNodeUp(id)
    }

    func connection(_ connection: Connection, received packet: [Value]) {
        guard let id = connection.peerID else { return }
        received(packet, from: id)
    }

    func connectionClosed(_ connection: Connection, reason: String) {
        connections[ObjectIdentifier(connection)] = nil
        handshakeOver(connection)
        if case .dialed(let address) = connection.origin, let i = seeds.firstIndex(where: { $0.address == address }) {
            seeds[i].dialing = false
        }
        guard let id = connection.peerID, let peer = peers[id], peer.connection === connection else {
            if case .dialed(let address) = connection.origin { seedHandshakeFailed(address, reason: reason) }
            seedConnectionLost(nil)
            return
        }
        peer.connection = nil
        backlogs.remove(id, connection.unsent)
        logger.info("node down", metadata: ["peer": "\(id)", "reason": "\(reason)"])
        for name in watchers.keys { watchers[name]?.remote.remove(id) }
        let wasGlobal = globals.remove(id) != nil
        globalNodeDown(id, wasGlobal: wasGlobal)
        transportFailed(peer, reason: reason)
        keptNodeLost(id)
        notifyNodeWatchers(id, up: false)
        seedConnectionLost(id)
    }
}
