import Logging
import NIOCore

/// A node we keep a connection to (a private node's way to stay reachable, aemp-protocol §9).
struct KeptNode {
    /// Next retry delay in seconds (0 = connected, or not yet retried).
    var backoff: Double = 0
    var timer: Scheduled<Void>?
}

/// Connections kept open on purpose: a private node cannot be dialed, so whoever must reach it
/// needs a connection it opened itself (aemp-protocol §9, §12 item 7).
extension Kernel {

    func keepConnected(_ node: String) {
        guard node != nodeID, keptNodes[node] == nil, !isShutDown else { return }
        keptNodes[node] = KeptNode()
        let p = peer(node)
        if !p.isUp && !p.connecting { p.ensureConnected(kernel: self) }
    }

    func stopKeepingConnected(_ node: String) {
        keptNodes.removeValue(forKey: node)?.timer?.cancel()
    }

    /// The connection to a kept node went down or could not be made: try again with backoff
    /// (0.5 s doubling up to the seed backoff limit).
    func keptNodeLost(_ node: String) {
        guard var kept = keptNodes[node], kept.timer == nil, !isShutDown else { return }
        let limit = Double(configuration.seedBackoffLimit.nanoseconds) / 1e9
        kept.backoff = kept.backoff == 0 ? Double.random(in: 0.3...0.6) : min(kept.backoff * 2, limit)
        kept.timer = loop.assumeIsolated().scheduleTask(in: .nanoseconds(Int64(kept.backoff * 1e9))) {
            [weak self] in
            guard let self, !self.isShutDown else { return }
            self.keptNodes[node]?.timer = nil
            guard self.keptNodes[node] != nil else { return }
            let p = self.peer(node)
            if !p.isUp && !p.connecting { p.ensureConnected(kernel: self) }
        }
        keptNodes[node] = kept
        logger.debug("will reconnect to a kept node", metadata: ["peer": "\(node)", "in": "\(kept.backoff)"])
    }

    /// A kept node is up again: reset its backoff.
    func keptNodeUp(_ node: String) {
        guard keptNodes[node] != nil else { return }
        keptNodes[node]?.backoff = 0
        keptNodes[node]?.timer?.cancel()
        keptNodes[node]?.timer = nil
    }
}
