import AEMP
import NIOCore

/// A port owned by the gateway whose messages wait for web clients (long-poll or SSE).
///
/// Every entry gets a sequence number. Long-poll clients acknowledge with `after`, so a client
/// that lost a response asks again and loses nothing; SSE clients resume with `Last-Event-ID`.
/// Past `maxQueue` undelivered entries the oldest is dropped and a `dropped` entry says so.
final class Mailbox: Sendable {
    let name: String
    let port: PortID
    let maxQueue: Int
    let ttl: TimeAmount
    /// Counts deliveries and drops (nil: not counted).
    let metrics: GatewayMetrics?

    struct Entry {
        let seq: UInt64
        var value: Value
        var isDropMarker: Bool
    }

    struct Waiter {
        let exchange: Exchange
        let after: UInt64
        let max: Int
        let timer: Timeouts.Handle?
    }

    struct Subscriber {
        let stream: EventStream
        var cursor: UInt64
    }

    struct State {
        var entries: [Entry] = []
        var nextSeq: UInt64 = 1
        /// Highest sequence number acknowledged (`after`) — entries up to it are gone.
        var acked: UInt64 = 0
        /// Highest sequence number handed to any client.
        var delivered: UInt64 = 0
        var droppedTotal: UInt64 = 0
        var lastActivity: NIODeadline = .now()
        var waiters: [UInt64: Waiter] = [:]
        var subscribers: [UInt64: Subscriber] = [:]
        var monitors: [Monitor] = []
        /// Set when the mailbox is gone (deleted, expired, or its port killed).
        var closedReason: String?
        var killReason: Value?
    }

    let state = Locked(State())

    init(name: String, port: PortID, maxQueue: Int, ttl: TimeAmount, metrics: GatewayMetrics? = nil) {
        self.name = name
        self.port = port
        self.maxQueue = maxQueue
        self.ttl = ttl
        self.metrics = metrics
    }

    // MARK: - Incoming (node loop)

    /// Appends a message (or a monitor event); wakes waiting clients.
    func deliver(_ value: Value) {
        state.withLock { s in
            guard s.closedReason == nil else { return }
            metrics?.messagesDelivered.increment()
            let seq = s.nextSeq
            s.nextSeq += 1
            s.entries.append(Entry(seq: seq, value: value, isDropMarker: false))
            trim(&s)
            wakeWaiters(&s)
            feedSubscribers(&s)
        }
    }

    /// Keeps at most `maxQueue` undelivered entries; delivered-but-unacknowledged ones go first.
    private func trim(_ s: inout State) {
        // Fast path: with no more entries than the limit, neither kind can exceed it (the count
        // below walks the queue, which a full mailbox of 100,000 entries made the hot spot).
        if s.entries.count <= maxQueue { return }
        let deliveredThrough = s.delivered
        let undelivered = s.entries.lazy.filter { $0.seq > deliveredThrough && !$0.isDropMarker }.count
        let delivered = s.entries.count - undelivered
        // Delivered entries are kept for replay up to `maxQueue` too.
        if delivered > maxQueue {
            s.entries.removeFirst(delivered - maxQueue)
        }
        var excess = undelivered - maxQueue
        guard excess > 0 else { return }
        var dropped: UInt64 = 0
        var i = 0
        while excess > 0, i < s.entries.count {
            if s.entries[i].seq > s.delivered && !s.entries[i].isDropMarker {
                s.entries.remove(at: i)
                dropped += 1
                excess -= 1
            } else {
                i += 1
            }
        }
        s.droppedTotal += dropped
        metrics?.droppedMessages.increment(by: Int64(dropped))
        // One marker per burst: grow the last one while nobody has seen it.
        if let last = s.entries.indices.last(where: { s.entries[$0].isDropMarker }), s.entries[last].seq > s.delivered {
            let count = (s.entries[last].value.objectValue?["count"]?.integerValue ?? 0) + Int64(dropped)
            s.entries[last].value = Self.dropMarker(count: count, total: s.droppedTotal)
        } else {
            let seq = s.nextSeq
            s.nextSeq += 1
            s.entries.append(
                Entry(seq: seq, value: Self.dropMarker(count: Int64(dropped), total: s.droppedTotal), isDropMarker: true))
        }
    }

    private static func dropMarker(count: Int64, total: UInt64) -> Value {
        ["type": "dropped", "count": .int(count), "total": .int(Int64(total))]
    }

    // MARK: - Clients (any thread)

    /// Entries after `after` (at most `max`), acknowledging everything up to `after`.
    func poll(after: UInt64?, max: Int) -> (events: [Value], last: UInt64)? {
        state.withLock { s in
            s.lastActivity = .now()
            acknowledge(&s, through: after)
            return collect(&s, after: after ?? s.acked, max: max)
        }
    }

    /// What `poll` with no wait would answer now, changing nothing (HEAD): no acknowledgement, no
    /// entry counted as handed out.
    func peek(after: UInt64?, max: Int) -> HTTPResponse {
        state.withLock { s in
            let acked = after.map { $0 > s.acked ? Swift.min($0, s.delivered) : s.acked } ?? s.acked
            let from = Swift.max(after ?? acked, acked)
            let ready = s.entries.lazy.filter { $0.seq > from }.prefix(max)
            return Self.pollResponse(events: ready.map(Self.event), last: ready.last?.seq ?? acked, dropped: s.droppedTotal)
        }
    }

    /// Drops entries up to `after`; a client can only acknowledge what it was given, so the
    /// acknowledgement stops at the highest entry handed out.
    private func acknowledge(_ s: inout State, through after: UInt64?) {
        guard let after, after > s.acked else { return }
        s.acked = min(after, s.delivered)
        s.entries.removeAll { $0.seq <= s.acked }
    }

    private func collect(_ s: inout State, after: UInt64, max: Int) -> (events: [Value], last: UInt64)? {
        let ready = s.entries.lazy.filter { $0.seq > after }.prefix(max)
        guard !ready.isEmpty else { return nil }
        var events: [Value] = []
        var last = after
        for entry in ready {
            events.append(Self.event(entry))
            last = entry.seq
        }
        s.delivered = Swift.max(s.delivered, last)
        return (events, last)
    }

    static func event(_ entry: Entry) -> Value {
        var v = entry.value.objectValue ?? [:]
        v["seq"] = .int(Int64(entry.seq))
        return .object(v)
    }

    /// Parks a long-poll until an entry after `after` arrives or the timer fires.
    /// Returns false (and parks nothing) if entries are already there — then poll again.
    func park(_ token: UInt64, exchange: Exchange, after: UInt64?, max: Int, timer: Timeouts.Handle?) -> Bool {
        state.withLock { s in
            guard s.closedReason == nil else { return false }
            let from = after ?? s.acked
            if s.entries.contains(where: { $0.seq > from }) { return false }
            s.waiters[token] = Waiter(exchange: exchange, after: from, max: max, timer: timer)
            return true
        }
    }

    /// The long-poll's time is up: it gets an empty answer.
    func unpark(_ token: UInt64) -> Waiter? {
        state.withLock { s in
            s.lastActivity = .now()
            return s.waiters.removeValue(forKey: token)
        }
    }

    private func wakeWaiters(_ s: inout State) {
        guard !s.waiters.isEmpty else { return }
        for (token, waiter) in s.waiters {
            guard let (events, last) = collect(&s, after: waiter.after, max: waiter.max) else { continue }
            s.waiters[token] = nil
            waiter.timer?.cancel()
            waiter.exchange.respond(Self.pollResponse(events: events, last: last, dropped: s.droppedTotal))
        }
    }

    static func pollResponse(events: [Value], last: UInt64, dropped: UInt64) -> HTTPResponse {
        .json(
            200, ["messages": .array(events), "last": .int(Int64(last)), "dropped": .int(Int64(dropped))],
            headers: [("X-AEMP-Last", String(last))])
    }

    /// Attaches an SSE client that has seen everything up to `after`; replays what it missed.
    func subscribe(_ token: UInt64, stream: EventStream, after: UInt64?) -> Bool {
        state.withLock { s in
            guard s.closedReason == nil else { return false }
            s.lastActivity = .now()
            acknowledge(&s, through: after)
            s.subscribers[token] = Subscriber(stream: stream, cursor: after ?? s.acked)
            feedSubscribers(&s)
            return true
        }
    }

    func unsubscribe(_ token: UInt64) {
        state.withLock { s in
            s.subscribers[token] = nil
            s.lastActivity = .now()
        }
    }

    private func feedSubscribers(_ s: inout State) {
        guard !s.subscribers.isEmpty else { return }
        for (token, var sub) in s.subscribers {
            var bytes: [UInt8] = []
            for entry in s.entries where entry.seq > sub.cursor {
                let type = entry.value.objectValue?["type"]?.stringValue ?? "message"
                bytes += ServerSentEvent.encode(id: String(entry.seq), event: type, data: Self.event(entry))
                sub.cursor = entry.seq
            }
            guard !bytes.isEmpty else { continue }
            s.delivered = max(s.delivered, sub.cursor)
            let final = ServerSentEvent.encode(
                id: nil, event: "overflow",
                data: ["detail": "the client fell too far behind; reconnect with Last-Event-ID"])
            if sub.stream.send(bytes, orEndWith: final) {
                s.subscribers[token] = sub
            } else {
                s.subscribers[token] = nil
            }
        }
    }

    /// Whether the mailbox has been idle (no client attached or polling) for longer than its TTL.
    func isExpired(now: NIODeadline) -> Bool {
        state.withLock { s in
            s.waiters.isEmpty && s.subscribers.isEmpty && now - s.lastActivity > ttl
        }
    }

    /// Closes the mailbox: waiting clients get `gone`, streams end with a final event.
    func close(reason: String, killReason: Value?, gone: (_ requestID: String) -> HTTPResponse) -> [Monitor] {
        state.withLock { s in
            guard s.closedReason == nil else { return [] }
            s.closedReason = reason
            s.killReason = killReason
            for (_, w) in s.waiters {
                w.timer?.cancel()
                w.exchange.respond(gone(w.exchange.request.requestID))
            }
            s.waiters.removeAll()
            var data: [String: Value] = ["detail": .string("mailbox \(reason)")]
            if let killReason { data["reason"] = killReason }
            let final = ServerSentEvent.encode(id: nil, event: "closed", data: .object(data))
            for (_, sub) in s.subscribers { sub.stream.finish(with: final) }
            s.subscribers.removeAll()
            s.entries.removeAll()
            defer { s.monitors.removeAll() }
            return s.monitors
        }
    }

    func addMonitor(_ monitor: Monitor) -> Bool {
        state.withLock { s in
            guard s.closedReason == nil else { return false }
            s.monitors.append(monitor)
            return true
        }
    }

    /// What a client sees of the mailbox: settings and queue state.
    var info: Value {
        state.withLock { s in
            [
                "name": .string(name), "port": .string(port.description),
                "ttl": .int(ttl.nanoseconds / 1_000_000_000), "max_queue": .int(Int64(maxQueue)),
                "queued": .int(Int64(s.entries.count)), "last": .int(Int64(s.nextSeq - 1)),
                "acknowledged": .int(Int64(s.acked)), "dropped": .int(Int64(s.droppedTotal)),
            ]
        }
    }

    var closedReason: (String, Value?)? {
        state.withLock { s in s.closedReason.map { ($0, s.killReason) } }
    }
}
