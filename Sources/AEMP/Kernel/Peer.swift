import NIOCore

/// A remote node as this node sees it (Perl's `AnyEvent::MP::Node`, aemp-protocol §9): its
/// connection, the messages queued while it connects, and the monitors on its ports.
final class Peer {
    let id: String
    /// The established connection, if any.
    var connection: Connection?
    /// Packets waiting for a connection, in order.
    var queue: [[Value]] = []
    /// Addresses learnt from `g_found` or a seed list.
    var addresses: [String] = []
    /// Whether a connect attempt (lookup or dial) is running.
    var connecting = false
    /// Fires when the current connect attempt has taken too long.
    var connectDeadline: Scheduled<Void>?
    /// Timers for staggered dials to further addresses.
    var dialTimers: [Scheduled<Void>] = []
    /// Why the latest connect attempt failed (reported when the deadline passes).
    var lastError: String?
    /// Monitor actions by port name (`""` = the node itself), each by token.
    var monitors: [String: [UInt64: MonitorAction]] = [:]

    init(id: String) {
        self.id = id
    }

    var isUp: Bool { connection?.isEstablished == true }

    /// Sends now if connected, else queues and starts connecting (aemp-protocol §9).
    func send(_ packet: [Value], kernel: Kernel) {
        if let connection, connection.isEstablished {
            connection.send(packet)
            return
        }
        queue.append(packet)
        ensureConnected(kernel: kernel)
    }

    /// Sends only over a live connection (answers that make no sense to queue).
    func sendIfConnected(_ packet: [Value]) {
        guard let connection, connection.isEstablished else { return }
        connection.send(packet)
    }

    func ensureConnected(kernel: Kernel) {
        guard !isUp, !connecting, !kernel.isShutDown else { return }
        connecting = true
        lastError = nil
        connectDeadline = kernel.loop.assumeIsolated().scheduleTask(in: kernel.configuration.connectTimeout) {
            [weak kernel, self] in
            kernel?.connectFailed(self, reason: self.lastError ?? "connect timeout")
        }
        kernel.startConnect(self)
    }

    /// Stops the current attempt's timers.
    func stopConnecting() {
        connecting = false
        connectDeadline?.cancel()
        connectDeadline = nil
        for t in dialTimers { t.cancel() }
        dialTimers.removeAll()
    }
}

/// One configured seed address and the state of our connection to it (aemp-protocol §10.1).
struct SeedState {
    let address: String
    /// The node ID learnt from the seed's greeting.
    var nodeID: String?
    /// The seed is this node itself.
    var isSelf = false
    /// A dial is in progress.
    var dialing = false
    /// Next reconnect delay in seconds.
    var backoff: Double = 0
    var retryTimer: Scheduled<Void>?

    init(address: String) {
        self.address = address
    }
}
