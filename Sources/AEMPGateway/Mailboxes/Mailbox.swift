import AEMP
import NIOCore

/// What a long-poll of a mailbox gets: the entries after its cursor (possibly none), the sequence
/// number it may acknowledge next, and how many entries were given up so far.
struct MailboxBatch: Sendable, Equatable {
    var events: [Value]
    var last: UInt64
    var dropped: UInt64
}

/// How a parked long-poll of a mailbox ends.
enum MailboxAnswer: Sendable {
    /// Entries arrived (or, at the timer, none did).
    case batch(MailboxBatch)
    /// The mailbox is gone: why, and the kill reason if its port was killed.
    case gone(why: String, reason: Value?)
}

/// A port owned by the gateway whose messages wait for web clients (long-poll or SSE).
///
/// It speaks in entries and batches, never HTTP: a parked long-poll is a closure that gets a
/// `MailboxAnswer`, always called outside the mailbox's lock (`MailboxRoutes` turns it into a
/// response). SSE subscribers are `EventStream`s, fed under the lock so their order is the
/// sequence order.
///
/// Every entry gets a sequence number, and only an acknowledgement frees it: `after` on a
/// long-poll, `Last-Event-ID` (or `after`) when an SSE client reconnects. Handing an entry to a
/// client, in a long-poll answer or written into a stream, does not: the client may
/// never have had it. Past `maxQueue` unacknowledged entries the oldest go, and a `dropped` entry
/// takes their place, in sequence order: its `seq` is the last one gone and `first` the first, so
/// whoever resumes from before them is told, on any transport, at the place of the gap.
final class Mailbox: Sendable {
    let name: String
    let port: PortID
    let maxQueue: Int
    let ttl: TimeAmount
    /// Counts deliveries and drops (nil: not counted).
    let metrics: GatewayMetrics?
    /// The bytes all mailboxes hold together (nil: no limit).
    let budget: ByteBudget?

    struct Entry {
        let seq: UInt64
        var value: Value
        /// For a `dropped` entry: the first sequence number it stands for (`seq` is the last).
        var droppedFrom: UInt64?
        /// Bytes taken from the budget (0 for a `dropped` entry).
        var size = 0
    }

    struct Waiter {
        let after: UInt64
        let max: Int
        let timer: Timeouts.Handle?
        let answer: @Sendable (MailboxAnswer) -> Void
    }

    struct Subscriber {
        let stream: EventStream
        var cursor: UInt64
    }

    struct State {
        /// Unacknowledged entries in sequence order: at most one `dropped` entry, at the front,
        /// then consecutive sequence numbers.
        var entries = CircularBuffer<Entry>()
        var nextSeq: UInt64 = 1
        /// Highest sequence number acknowledged: entries up to it are gone.
        var acked: UInt64 = 0
        /// Highest sequence number handed to any client.
        var delivered: UInt64 = 0
        /// Entries given up unacknowledged because the queue was full (what `dropped` entries count).
        var droppedTotal: UInt64 = 0
        /// Of those, the ones no client had been handed.
        var droppedUnseen: UInt64 = 0
        var lastActivity: NIODeadline = .now()
        var waiters: [UInt64: Waiter] = [:]
        var subscribers: [UInt64: Subscriber] = [:]
        var monitors: [Subscription] = []
        /// Set when the mailbox is gone (deleted, expired, or its port killed).
        var closedReason: String?
        var killReason: Value?

        /// Messages (and monitor events) held, the `dropped` entry not counted.
        var messageCount: Int { entries.count - (entries.first?.droppedFrom == nil ? 0 : 1) }

        /// Where the first entry after `cursor` is (entries.count if none): O(1), the sequence
        /// numbers behind the front are consecutive.
        func position(after cursor: UInt64) -> Int {
            guard let front = entries.first else { return 0 }
            if cursor < front.seq { return 0 }
            return Swift.min(entries.count, Int(cursor - front.seq) + 1)
        }

        subscript(offset: Int) -> Entry {
            entries[entries.index(entries.startIndex, offsetBy: offset)]
        }
    }

    let state = Locked(State())

    init(
        name: String, port: PortID, maxQueue: Int, ttl: TimeAmount, metrics: GatewayMetrics? = nil, budget: ByteBudget? = nil
    ) {
        self.name = name
        self.port = port
        self.maxQueue = maxQueue
        self.ttl = ttl
        self.metrics = metrics
        self.budget = budget
    }

    // MARK: - Incoming (node loop)

    /// Appends a message (or a monitor event); wakes waiting clients.
    func deliver(_ value: Value) {
        let woken = state.withLock { s -> [(Waiter, MailboxBatch)] in
            guard s.closedReason == nil else { return [] }
            metrics?.messagesDelivered.increment()
            let seq = s.nextSeq
            s.nextSeq += 1
            var entry = Entry(seq: seq, value: value, droppedFrom: nil)
            if let budget {
                // At the limit of all mailboxes together, this mailbox gives up its own oldest
                // messages to make room; if that is not enough, the new message itself.
                let size = value.footprint
                var freed = 0
                while !budget.take(size) {
                    guard s.messageCount > 0 else {
                        giveUp(&s, 0, also: seq)
                        metrics?.droppedForMemory.increment(by: Int64(freed + 1))
                        feedSubscribers(&s)
                        return wakeWaiters(&s)
                    }
                    giveUp(&s, 1)
                    freed += 1
                }
                if freed > 0 { metrics?.droppedForMemory.increment(by: Int64(freed)) }
                entry.size = size
            }
            s.entries.append(entry)
            giveUp(&s, s.messageCount - maxQueue)
            feedSubscribers(&s)
            return wakeWaiters(&s)
        }
        for (waiter, batch) in woken { waiter.answer(.batch(batch)) }
    }

    /// Gives up the `count` oldest unacknowledged messages (and then the message `also`, which
    /// never entered the queue): they go into the `dropped` entry at the front, made or grown in
    /// place, and their bytes back to the budget.
    private func giveUp(_ s: inout State, _ count: Int, also seq: UInt64? = nil) {
        var excess = count
        guard excess > 0 || seq != nil else { return }
        var marker = s.entries.first?.droppedFrom != nil ? s.entries.removeFirst() : nil
        var unseen: UInt64 = 0, dropped: UInt64 = 0, bytes = 0
        while excess > 0, let gone = s.entries.first {
            s.entries.removeFirst()
            if gone.seq > s.delivered { unseen += 1 }
            dropped += 1
            excess -= 1
            bytes += gone.size
            marker = Entry(seq: gone.seq, value: .null, droppedFrom: marker?.droppedFrom ?? gone.seq)
        }
        if let seq {
            unseen += 1
            dropped += 1
            marker = Entry(seq: seq, value: .null, droppedFrom: marker?.droppedFrom ?? seq)
        }
        if let marker { s.entries.prepend(marker) }
        budget?.give(bytes)
        s.droppedTotal += dropped
        s.droppedUnseen += unseen
        metrics?.droppedMessages.increment(by: Int64(unseen))
        metrics?.droppedHandedMessages.increment(by: Int64(dropped - unseen))
    }

    // MARK: - Clients (any thread)

    /// Entries after `after` (at most `max`), acknowledging everything up to `after`; nil when
    /// there are none.
    func poll(after: UInt64?, max: Int) -> MailboxBatch? {
        state.withLock { s in
            s.lastActivity = .now()
            acknowledge(&s, through: after)
            return collect(&s, after: after ?? s.acked, max: max)
        }
    }

    /// The answer of a long-poll that waited in vain: no entries, and `last` what the client may
    /// acknowledge next (never beyond what it was given).
    func emptyBatch() -> MailboxBatch {
        state.withLock { s in MailboxBatch(events: [], last: s.acked, dropped: s.droppedTotal) }
    }

    /// What `poll` with no wait would answer now, changing nothing (HEAD): no acknowledgement, no
    /// entry counted as handed out.
    func peek(after: UInt64?, max: Int) -> MailboxBatch {
        state.withLock { s in
            let acked = after.map { $0 > s.acked ? Swift.min($0, s.delivered) : s.acked } ?? s.acked
            let cursor = Swift.max(after ?? acked, acked)
            let from = s.position(after: cursor)
            var events: [Value] = []
            var last = acked
            for i in from..<Swift.min(s.entries.count, from + max) {
                events.append(event(s[i], after: cursor, s))
                last = s[i].seq
            }
            return MailboxBatch(events: events, last: last, dropped: s.droppedTotal)
        }
    }

    /// Frees entries up to `after`; a client can only acknowledge what it was given, so the
    /// acknowledgement stops at the highest entry handed out. A `dropped` entry reaching past it
    /// shrinks to what is still unacknowledged.
    private func acknowledge(_ s: inout State, through after: UInt64?) {
        guard let after, after > s.acked else { return }
        s.acked = min(after, s.delivered)
        var bytes = 0
        while let front = s.entries.first, front.seq <= s.acked { bytes += s.entries.removeFirst().size }
        budget?.give(bytes)
        if let from = s.entries.first?.droppedFrom, from <= s.acked {
            s.entries[s.entries.startIndex].droppedFrom = s.acked + 1
        }
    }

    private func collect(_ s: inout State, after: UInt64, max: Int) -> MailboxBatch? {
        let from = s.position(after: after)
        guard from < s.entries.count else { return nil }
        var events: [Value] = []
        var last = after
        for i in from..<Swift.min(s.entries.count, from + max) {
            let entry = s[i]
            events.append(event(entry, after: after, s))
            last = entry.seq
        }
        s.delivered = Swift.max(s.delivered, last)
        return MailboxBatch(events: events, last: last, dropped: s.droppedTotal)
    }

    /// What a client that has seen `after` gets for `entry`: the entry with its `seq`; a `dropped`
    /// entry counts only what that client has not seen.
    private func event(_ entry: Entry, after: UInt64, _ s: State) -> Value {
        guard let from = entry.droppedFrom else {
            var v = entry.value.objectValue ?? [:]
            v["seq"] = .int(Int64(entry.seq))
            return .object(v)
        }
        let first = Swift.max(from, after + 1)
        return [
            "type": "dropped", "seq": .int(Int64(entry.seq)), "first": .int(Int64(first)),
            "count": .int(Int64(entry.seq - first + 1)), "total": .int(Int64(s.droppedTotal)),
        ]
    }

    /// Parks a long-poll until an entry after `after` arrives or the timer fires.
    /// Returns false (and parks nothing) if entries are already there — then poll again.
    func park(
        _ token: UInt64, after: UInt64?, max: Int, timer: Timeouts.Handle?, answer: @escaping @Sendable (MailboxAnswer) -> Void
    ) -> Bool {
        state.withLock { s in
            guard s.closedReason == nil else { return false }
            let from = after ?? s.acked
            if s.position(after: from) < s.entries.count { return false }
            s.waiters[token] = Waiter(after: from, max: max, timer: timer, answer: answer)
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

    /// Takes the waiters that now have entries, with their batches (answered outside the lock).
    private func wakeWaiters(_ s: inout State) -> [(Waiter, MailboxBatch)] {
        guard !s.waiters.isEmpty else { return [] }
        var woken: [(Waiter, MailboxBatch)] = []
        for (token, waiter) in s.waiters {
            guard let batch = collect(&s, after: waiter.after, max: waiter.max) else { continue }
            s.waiters[token] = nil
            waiter.timer?.cancel()
            woken.append((waiter, batch))
        }
        return woken
    }

    /// Attaches an SSE client that has seen everything up to `after`; replays what it missed, in
    /// pieces of at most the stream's backlog as the client reads (the stream pulls the rest).
    func subscribe(_ token: UInt64, stream: EventStream, after: UInt64?) -> Bool {
        state.withLock { s in
            guard s.closedReason == nil else { return false }
            s.lastActivity = .now()
            acknowledge(&s, through: after)
            s.subscribers[token] = Subscriber(stream: stream, cursor: after ?? s.acked)
            stream.pull { self.refill(token) }  // strong: the stream drops its source when it closes
            feed(&s, token)
            return true
        }
    }

    func unsubscribe(_ token: UInt64) {
        state.withLock { s in
            s.subscribers[token] = nil
            s.lastActivity = .now()
        }
    }

    /// The stream of `token` has room: queue what comes next (libmicrohttpd's thread).
    private func refill(_ token: UInt64) {
        state.withLock { s in feed(&s, token) }
    }

    private func feedSubscribers(_ s: inout State) {
        for token in s.subscribers.keys { feed(&s, token) }
    }

    /// Writes the entries after the subscriber's cursor into its stream while they fit in its room
    /// (one at least when nothing is queued, however large). What does not fit waits here, in the
    /// mailbox, until the client has read the rest: a mailbox stream never overflows.
    private func feed(_ s: inout State, _ token: UInt64) {
        guard var sub = s.subscribers[token] else { return }
        var from = s.position(after: sub.cursor)
        guard from < s.entries.count else { return }
        let (room, empty) = sub.stream.room
        var bytes: [UInt8] = []
        while from < s.entries.count {
            let entry = s[from]
            let value = event(entry, after: sub.cursor, s)
            let type = value.objectValue?["type"]?.stringValue ?? "message"
            let encoded = ServerSentEvent.encode(id: String(entry.seq), event: type, data: value)
            guard bytes.count + encoded.count <= room || (bytes.isEmpty && empty) else { break }
            bytes += encoded
            sub.cursor = entry.seq
            from += 1
        }
        guard !bytes.isEmpty else { return }
        s.delivered = max(s.delivered, sub.cursor)
        if sub.stream.append(bytes) {
            s.subscribers[token] = sub
        } else {
            s.subscribers[token] = nil
        }
    }

    /// Whether the mailbox has been idle (no client attached or polling) for longer than its TTL.
    func isExpired(now: NIODeadline) -> Bool {
        state.withLock { s in
            s.waiters.isEmpty && s.subscribers.isEmpty && now - s.lastActivity > ttl
        }
    }

    /// Closes the mailbox: waiting clients are answered `gone`, streams end with a final event.
    /// Returns the monitors it held, for the caller to cancel.
    func close(reason: String, killReason: Value?) -> [Subscription] {
        let (monitors, waiters) = state.withLock { s -> ([Subscription], [Waiter]) in
            guard s.closedReason == nil else { return ([], []) }
            s.closedReason = reason
            s.killReason = killReason
            let waiters = Array(s.waiters.values)
            for w in waiters { w.timer?.cancel() }
            s.waiters.removeAll()
            var data: [String: Value] = ["detail": .string("mailbox \(reason)")]
            if let killReason { data["reason"] = killReason }
            let final = ServerSentEvent.encode(id: nil, event: "closed", data: .object(data))
            for (_, sub) in s.subscribers { sub.stream.finish(with: final) }
            s.subscribers.removeAll()
            budget?.give(s.entries.reduce(0) { $0 + $1.size })
            s.entries.removeAll()
            defer { s.monitors.removeAll() }
            return (s.monitors, waiters)
        }
        for w in waiters { w.answer(.gone(why: reason, reason: killReason)) }
        return monitors
    }

    func addMonitor(_ monitor: Subscription) -> Bool {
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
                "queued": .int(Int64(s.messageCount)), "last": .int(Int64(s.nextSeq - 1)),
                "acknowledged": .int(Int64(s.acked)), "dropped": .int(Int64(s.droppedTotal)),
                "dropped_unseen": .int(Int64(s.droppedUnseen)),
            ]
        }
    }

    var closedReason: (String, Value?)? {
        state.withLock { s in s.closedReason.map { ($0, s.killReason) } }
    }
}
