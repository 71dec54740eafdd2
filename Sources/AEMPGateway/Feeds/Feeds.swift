import AEMP
import NIOCore

/// The gateway's family feeds, as a service: one `FamilyFeed` (one `db_mon`) per watched family,
/// shared by every client; idle ones give up their subscription and leave a memory behind.
/// `DatabaseRoutes` turns HTTP into these calls. Any thread.
final class Feeds: Sendable {
    private let registry = Locked<FeedRegistry>(FeedRegistry())
    private let node: Node
    private let historyLimit: Int
    /// Families whose idle feed is remembered (`--feed-memory`).
    private let memoryCapacity: Int
    private let idleSeconds: Double
    private let maxSubscribers: Int

    init(configuration c: GatewayConfiguration, node: Node) {
        self.node = node
        historyLimit = c.feedHistory
        memoryCapacity = c.feedMemory
        idleSeconds = c.feedIdle
        maxSubscribers = c.maxSubscribersPerFamily
    }

    /// The shared feed of a family, made (and its `db_mon` started) on first use; 503 when the
    /// family has its maximum of subscribers.
    func feed(_ family: String) throws(Problem) -> FamilyFeed {
        let (feed, created) = registry.withLock { f -> (FamilyFeed, Bool) in
            if let existing = f.active[family] {
                existing.touch()
                return (existing, false)
            }
            let feed = FamilyFeed(family: family, historyLimit: historyLimit, resuming: f.resume(family), epoch: FamilyFeed.newEpoch())
            f.active[family] = feed
            return (feed, true)
        }
        if created {
            let watch = node.dbMon(family) { feed.apply($0) }
            feed.state.withLock { $0.watch = watch }
        }
        guard feed.subscriberCount < maxSubscribers else {
            throw .overloaded("family \(family.debugDescription) has its maximum of \(maxSubscribers) subscribers")
        }
        return feed
    }

    /// Drops the feeds nobody used for `--feed-idle` seconds (housekeeping): their `db_mon` ends,
    /// their epoch and index are remembered.
    func dropIdle() {
        let cutoff = NIODeadline.now() - .nanoseconds(Int64(idleSeconds * 1e9))
        let idle = registry.withLock { f -> [FamilyFeed] in
            let idle = f.active.values.filter { $0.isIdle(since: cutoff) }
            for feed in idle {
                f.active[feed.family] = nil
                f.remember(feed.family, feed.memory, capacity: memoryCapacity)
            }
            return idle
        }
        for feed in idle { feed.state.withLock({ $0.watch })?.cancel() }
    }

    /// The active feeds and how many families are remembered (for the gauges).
    var census: (active: [FamilyFeed], dormant: Int) {
        registry.withLock { (Array($0.active.values), $0.dormantCount) }
    }

    /// Ends every stream with `final` and answers every waiting client (shutdown).
    func close(final: [UInt8]) {
        for feed in registry.withLock({ Array($0.active.values) }) { feed.close(final: final) }
    }
}
