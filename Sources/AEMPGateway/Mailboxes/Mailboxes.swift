import AEMP
import Logging
import NIOCore

/// Why a mailbox operation failed (`MailboxRoutes` answers each with its problem).
enum MailboxError: Error, Equatable {
    /// Not a mailbox name at all (letters, digits, '.', '_', '-'; at most 128 bytes).
    case invalidName(String)
    /// No mailbox of that name ever existed here (that this gateway remembers).
    case unknown(String)
    /// It existed and closed: deleted, expired, killed (with the kill's reason), or it belonged
    /// to an earlier gateway process.
    case gone(String, why: String, reason: Value?)
    /// The gateway holds its maximum of mailboxes (`--max-mailboxes`).
    case full(limit: Int)
    /// The node refused the mailbox's port (its name is taken: never for a fresh random name).
    case portRefused
}

/// The gateway's mailboxes, as a service: made, looked up, monitored from, deleted and expired
/// here, in domain terms (mailboxes, ports, reasons); `MailboxRoutes` turns HTTP into these calls
/// and their results and problems into responses. Any thread.
final class Mailboxes: Sendable {
    /// Defaults and bounds of a new mailbox (from the configuration).
    struct Limits: Sendable {
        var ttl: Int
        var maxTTL: Int
        var queue: Int
        var maxQueue: Int
    }

    let registry: MailboxRegistry
    let limits: Limits
    /// The bytes all mailboxes hold together (`--max-mailbox-bytes`).
    let budget: ByteBudget
    private let node: Node
    private let metrics: GatewayMetrics
    private let logger: Logger
    /// Told the port of every mailbox that closes (its `db_reg` keys go with it).
    private let closed: @Sendable (PortID) -> Void

    init(configuration c: GatewayConfiguration, node: Node, metrics: GatewayMetrics, closed: @escaping @Sendable (PortID) -> Void) {
        registry = MailboxRegistry(limit: c.maxMailboxes, remembered: c.rememberedMailboxes)
        limits = Limits(ttl: c.mailboxTTL, maxTTL: c.maxMailboxTTL, queue: c.mailboxQueue, maxQueue: c.maxMailboxQueue)
        budget = ByteBudget(limit: c.maxMailboxBytes)
        self.node = node
        self.metrics = metrics
        self.logger = c.logger
        self.closed = closed
    }

    var count: Int { registry.count }

    /// For the gauges: live mailboxes, long-polls parked on them, messages queued in them (one
    /// short lock per mailbox).
    var census: (mailboxes: Int, parked: Int, queued: Int) {
        let all = registry.all
        var parked = 0, queued = 0
        for mailbox in all {
            mailbox.state.withLock { s in
                parked += s.waiters.count
                queued += s.messageCount
            }
        }
        return (all.count, parked, queued)
    }

    /// The live mailbox of that name, or why there is none.
    func lookup(_ name: String) throws(MailboxError) -> Mailbox { try registry.lookup(name) }

    /// A new mailbox and its port (`ttl` and `maxQueue` already within `limits`). A `kil` of the
    /// port from anywhere closes it.
    func create(ttl: Int, maxQueue: Int) throws(MailboxError) -> Mailbox {
        let name = registry.newName()
        let mailbox = Mailbox(
            name: name, port: PortID(node: node.id, name: name), maxQueue: maxQueue, ttl: .seconds(Int64(ttl)), metrics: metrics,
            budget: budget)
        guard registry.add(mailbox) else { throw .full(limit: registry.limit) }
        let port = node.port(
            named: name,
            { message in mailbox.deliver(["type": "message", "message": .array(message)]) },
            onDeath: { [self] reason in
                let why = reason.isEmpty ? "was killed" : "was killed: \(reason.map(\.description).joined(separator: " "))"
                close(name, why, killReason: .array(reason))
            })
        guard port != nil else {
            _ = registry.remove(name, reason: "could not be created")
            throw .portRefused
        }
        return mailbox
    }

    /// Deletes a mailbox: closed here, then `kil` of its port.
    func delete(_ name: String) throws(MailboxError) {
        let mailbox = try lookup(name)
        close(name, "was deleted", killReason: nil)
        node.kil(mailbox.port)
    }

    /// Removes a mailbox (deleted, expired or killed): its waiting clients are answered, its streams
    /// end, its monitors are cancelled, and its name answers 410 from now on.
    func close(_ name: String, _ why: String, killReason: Value?) {
        guard let mailbox = registry.remove(name, reason: why, killReason: killReason) else { return }
        closed(mailbox.port)
        for monitor in mailbox.close(reason: why, killReason: killReason) { monitor.cancel() }
        logger.info("mailbox closed", metadata: ["mailbox": "\(name)", "why": "\(why)"])
    }

    /// Closes the mailboxes that had no client for their TTL, and kills their ports (housekeeping).
    func expire() {
        let now = NIODeadline.now()
        for mailbox in registry.all where mailbox.isExpired(now: now) {
            close(mailbox.name, "expired after \(mailbox.ttl.nanoseconds / 1_000_000_000) s without a client", killReason: nil)
            node.kil(mailbox.port)
        }
    }

    /// Monitors `target` from a mailbox: its death arrives in the mailbox as a `monitor` entry.
    func monitor(_ target: PortID, from mailbox: Mailbox) throws(MailboxError) {
        let monitor = node.mon(target) { reason in
            mailbox.deliver(["type": "monitor", "port": .string(target.description), "reason": .array(reason)])
        }
        guard mailbox.addMonitor(monitor) else {
            monitor.cancel()
            throw Self.gone(mailbox)
        }
    }

    /// The error for a mailbox that closed while a client used it.
    static func gone(_ mailbox: Mailbox) -> MailboxError {
        let (why, reason) = mailbox.closedReason ?? ("is gone", nil)
        return .gone(mailbox.name, why: why, reason: reason)
    }
}

/// Keys this gateway set (family → subkeys): only those can be deleted through it (`db_del` works
/// only for the node that set a key). Any thread.
final class OwnedKeys: Sendable {
    private let keys = Locked<[String: Set<String>]>([:])

    func insert(_ family: String, _ subkey: String) {
        keys.withLock { _ = $0[family, default: []].insert(subkey) }
    }

    /// Forgets a key; false when this gateway did not set it.
    func remove(_ family: String, _ subkey: String) -> Bool {
        keys.withLock { keys in
            guard keys[family]?.remove(subkey) != nil else { return false }
            if keys[family]?.isEmpty == true { keys[family] = nil }
            return true
        }
    }

    /// Forgets a subkey in every family (a mailbox's `db_reg` keys, when its port dies).
    func forget(subkey: String) {
        keys.withLock { keys in
            for family in keys.keys where keys[family]?.remove(subkey) != nil && keys[family]?.isEmpty == true {
                keys[family] = nil
            }
        }
    }
}
