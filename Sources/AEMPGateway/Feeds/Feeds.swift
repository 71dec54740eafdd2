import AEMP
import NIOCore

/// Why a family's feed cannot be joined (`DatabaseRoutes` answers it with its problem).
enum FeedError: Error, Equatable {
    /// The family has its maximum of subscribers (`--max-subscribers-per-family`).
    case full(family: String, limit: Int)
}

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

    /// The shared feed of a family, made (and its `db_mon` started) on first use; `full` when the
    /// family has its maximum of subscribers.
    func feed(_ family: String) throws(FeedError) -> FamilyFeed {
        let (feed, created) = registry.withLock { f -> (FamilyFeed, Bool) in
            if let existing = f.active[family] {
                existing.touch()
                return (existing, false)
            }
            let feed = FamilyFeed(family: family, historyLimit: historyLimit, resuming: f.resume(family), epoch: FamilyFeed.newEpoch())
            f.active[family] = feed
            return (feed, true)
        }
        if created { feed.attach(node.dbMon(family) { feed.apply($0) }) }
        guard feed.subscriberCount < maxSubscribers else { throw .full(family: family, limit: maxSubscribers) }
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
        for feed in idle { feed.detach() }
    }

    /// For the gauges: active feeds, families remembered, long-polls parked on feeds.
    var census: (active: Int, dormant: Int, parked: Int) {
        let (active, dormant) = registry.withLock { (Array($0.active.values), $0.dormantCount) }
        return (active.count, dormant, active.reduce(0) { $0 + $1.state.withLock { $0.waiters.count } })
    }

    /// Ends every stream with `final` and answers every waiting client (shutdown).
    func close(final: [UInt8]) {
        for feed in registry.withLock({ Array($0.active.values) }) { feed.close(final: final) }
    }
}
