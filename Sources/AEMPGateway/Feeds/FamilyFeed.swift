import AEMP
import NIOCore

/// What a long-poll of a family feed gets: a snapshot or the changes since its index (`body`, the
/// JSON the contract names `FeedSnapshot` / `FeedChanges`), with the feed's index then.
struct FeedState: Sendable {
    let body: Value
    let index: String
}

/// How a parked long-poll of a family feed ends.
enum FeedAnswer: Sendable {
    /// A change arrived, or the wait ended with none.
    case state(FeedState)
    /// The gateway is shutting down.
    case closed
}

/// One family's change feed: a single `db_mon` subscription shared by every HTTP client of the
/// family, with a numbered history so clients resume without gaps.
///
/// Event IDs are `<epoch>-<index>`; `epoch` is new for every gateway process, so an ID from an
/// earlier process never matches and the client gets a snapshot marked `reset`. A feed that fell
/// idle gives up its `db_mon` subscription but leaves a `FeedMemory`: the next feed of the family
/// goes on with the same epoch and index, and its first snapshot is compared with what the old
/// one had (one `change` if the family changed meanwhile), so an idle client is never reset.
///
/// It speaks in snapshots and changes, never HTTP: a parked long-poll is a closure that gets a
/// `FeedAnswer`, always called outside the feed's lock (`DatabaseRoutes` makes the response).
final class FamilyFeed: Sendable {
    let family: String
    let epoch: String
    let historyLimit: Int
    /// What the previous feed of this family had, compared with the first snapshot.
    private let resumed: FeedMemory?

    struct Change {
        let index: UInt64
        let data: Value
        let sse: [UInt8]
    }

    struct Waiter {
        let after: UInt64
        let timer: Timeouts.Handle?
        let answer: @Sendable (FeedAnswer) -> Void
    }

    struct State {
        var values: [String: Value] = [:]
        var synced = false
        var history: [Change] = []
        /// Index of the latest change (0 = none yet).
        var index: UInt64 = 0
        var streams: [UInt64: Subscriber] = [:]
        var waiters: [UInt64: Waiter] = [:]
        /// Clients that asked before the first snapshot arrived.
        var early: [UInt64: @Sendable () -> Void] = [:]
        var watch: Subscription?
        var idleSince: NIODeadline? = .now()
    }

    /// An SSE client: the index of the last change written into its stream.
    struct Subscriber {
        let stream: EventStream
        var cursor: UInt64
    }

    let state = Locked(State())

    init(family: String, historyLimit: Int, resuming memory: FeedMemory? = nil, epoch: String) {
        self.family = family
        self.historyLimit = historyLimit
        self.resumed = memory
        self.epoch = memory?.epoch ?? epoch
        if let memory { state.withLock { $0.index = memory.index } }
    }

    /// A fresh epoch: 8 hex digits from the system's CSPRNG.
    static func newEpoch() -> String {
        var rng = SystemRandomNumberGenerator()
        return String(UInt32.random(in: 0x1000_0000...UInt32.max, using: &rng), radix: 16)
    }

    /// What the next feed of this family needs to go on where this one stops (taken when it is
    /// dropped for being idle): its epoch, its index and a digest of each value.
    var memory: FeedMemory {
        state.withLock { s in
            FeedMemory(epoch: epoch, index: s.index, digests: s.synced ? s.values.mapValues(\.hashValue) : resumed?.digests ?? [:])
        }
    }

    func id(_ index: UInt64) -> String { "\(epoch)-\(index)" }

    /// Parses an event ID of this feed; nil if it belongs to another epoch or is malformed.
    func index(of id: String) -> UInt64? {
        guard let dash = id.lastIndex(of: "-"), id[..<dash] == epoch else { return nil }
        return UInt64(id[id.index(after: dash)...])
    }

    // MARK: - From the node (db_mon deliveries, in order)

    /// Keeps the feed's `db_mon` subscription (ended by `detach`).
    func attach(_ watch: Subscription) {
        state.withLock { $0.watch = watch }
    }

    /// Ends the feed's `db_mon` subscription (the feed was dropped for being idle).
    func detach() {
        state.withLock { s in defer { s.watch = nil }; return s.watch }?.cancel()
    }

    func apply(_ change: FamilyChange) {
        var woken: [(Waiter, FeedState)] = []
        let early = state.withLock { s -> [@Sendable () -> Void] in
            if !s.synced {
                s.synced = true
                s.values = change.values
                defer { s.early.removeAll() }
                if let resumed {
                    let d = resumed.difference(to: change.values)
                    if !(d.added.isEmpty && d.changed.isEmpty && d.deleted.isEmpty) { record(&s, d, waking: &woken) }
                }
                return Array(s.early.values)
            }
            // The change applied to our own copy (not `s.values = change.values`: holding the
            // node's dictionary would make its next change copy the whole family).
            for k in change.added + change.changed { s.values[k] = change.values[k] }
            for k in change.deleted { s.values[k] = nil }
            record(&s, (change.added, change.changed, change.deleted), waking: &woken)
            return []
        }
        // Outside the lock: waiters are answered, early clients subscribe or poll.
        for (waiter, answer) in woken { waiter.answer(.state(answer)) }
        for resume in early { resume() }
    }

    /// Appends one change to the history and hands it to every stream; the waiters it ends go
    /// into `woken`, with their answers.
    private func record(
        _ s: inout State, _ change: (added: [String], changed: [String], deleted: [String]), waking woken: inout [(Waiter, FeedState)]
    ) {
        s.index += 1
        var added: [String: Value] = [:], changed: [String: Value] = [:]
        for k in change.added { added[k] = s.values[k] ?? .null }
        for k in change.changed { changed[k] = s.values[k] ?? .null }
        let data: Value = [
            "type": "change", "family": .string(family), "id": .string(id(s.index)),
            "added": .object(added), "changed": .object(changed),
            "deleted": .array(change.deleted.map { .string($0) }),
        ]
        let sse = ServerSentEvent.encode(id: id(s.index), event: "change", data: data)
        s.history.append(Change(index: s.index, data: data, sse: sse))
        if s.history.count > historyLimit { s.history.removeFirst(s.history.count - historyLimit) }
        for token in s.streams.keys { feed(&s, token) }
        for (token, waiter) in s.waiters where waiter.after < s.index {
            s.waiters[token] = nil
            waiter.timer?.cancel()
            woken.append((waiter, answer(s, after: waiter.after)))
        }
    }

    /// Writes the changes after the subscriber's cursor into its stream while they fit in its
    /// room (one at least when nothing is queued); the rest wait in the history until the client
    /// has read more. A client the history no longer reaches back to (it stopped reading for
    /// `historyLimit` changes) gets `overflow` and its stream ends.
    private func feed(_ s: inout State, _ token: UInt64) {
        guard var sub = s.streams[token], sub.cursor < s.index else { return }
        guard let pending = changes(s, after: sub.cursor) else {
            sub.stream.finish(with: Self.overflowEvent)
            s.streams[token] = nil
            return
        }
        let (room, empty) = sub.stream.room
        var bytes: [UInt8] = []
        for change in pending {
            guard bytes.count + change.sse.count <= room || (bytes.isEmpty && empty) else { break }
            bytes += change.sse
            sub.cursor = change.index
        }
        guard !bytes.isEmpty else { return }
        if sub.stream.append(bytes) {
            s.streams[token] = sub
        } else {
            s.streams[token] = nil
        }
    }

    /// The stream of `token` has room (libmicrohttpd's thread).
    private func refill(_ token: UInt64) {
        state.withLock { s in feed(&s, token) }
    }

    static let overflowEvent = ServerSentEvent.encode(
        id: nil, event: "overflow",
        data: ["detail": "the client fell too far behind; reconnect with Last-Event-ID to resume or get a reset snapshot"])

    // MARK: - Clients

    /// Runs `body` once the first snapshot is there (at once if it is).
    func whenSynced(_ token: UInt64, _ body: @escaping @Sendable () -> Void) {
        let now = state.withLock { s -> Bool in
            if s.synced { return true }
            s.early[token] = body
            return false
        }
        if now { body() }
    }

    func snapshotData(_ s: State, reset: Bool) -> Value {
        ["type": "snapshot", "family": .string(family), "id": .string(id(s.index)), "values": .object(s.values), "reset": .bool(reset)]
    }

    /// Attaches an SSE client: a snapshot (or the changes after `lastEventID`), then every change,
    /// in pieces of at most the stream's backlog as the client reads (the stream pulls the rest).
    /// A snapshot is one event, written whole whatever its size.
    func subscribe(_ token: UInt64, stream: EventStream, lastEventID: String?) {
        state.withLock { s in
            s.idleSince = nil
            var bytes = ServerSentEvent.retry(1000)
            let cursor: UInt64
            if let lastEventID, let after = index(of: lastEventID), changes(s, after: after) != nil {
                cursor = after
            } else {
                let reset = lastEventID != nil
                bytes += ServerSentEvent.encode(id: id(s.index), event: "snapshot", data: snapshotData(s, reset: reset))
                cursor = s.index
            }
            guard stream.append(bytes) else { return }
            s.streams[token] = Subscriber(stream: stream, cursor: cursor)
            stream.pull { self.refill(token) }  // strong: the stream drops its source when it closes
            feed(&s, token)
        }
    }

    func unsubscribe(_ token: UInt64) {
        state.withLock { s in
            s.streams[token] = nil
            s.early[token] = nil
            if s.streams.isEmpty && s.waiters.isEmpty { s.idleSince = .now() }
        }
    }

    /// Changes after `after`, or nil when the history no longer reaches back that far (or the
    /// index is from the future).
    private func changes(_ s: State, after: UInt64) -> ArraySlice<Change>? {
        if after == s.index { return [] }
        guard after < s.index else { return nil }
        guard let first = s.history.first, first.index <= after + 1 else { return nil }
        return s.history[Int(after + 1 - first.index)...]
    }

    /// The long-poll answer for a client that has seen `after` (nil = wants a snapshot; a reset
    /// snapshot when `reset` or when the history no longer reaches back to `after`).
    func answer(_ s: State, after: UInt64?, reset: Bool = false) -> FeedState {
        if !reset, let after, let list = changes(s, after: after) {
            return FeedState(
                body: ["type": "changes", "family": .string(family), "id": .string(id(s.index)), "changes": .array(list.map(\.data))],
                index: id(s.index))
        }
        return FeedState(body: snapshotData(s, reset: reset || after != nil), index: id(s.index))
    }

    /// Answers a long-poll now, or parks it until a change (returns nil when parked).
    func poll(
        _ token: UInt64, indexID: String?, park: Bool, timer: @escaping () -> Timeouts.Handle?,
        answer: @escaping @Sendable (FeedAnswer) -> Void
    ) -> FeedState? {
        state.withLock { s in
            guard let indexID else { return self.answer(s, after: nil) }
            guard let after = index(of: indexID), after <= s.index else { return self.answer(s, after: nil, reset: true) }
            if after < s.index || !park { return self.answer(s, after: after) }
            s.idleSince = nil
            s.waiters[token] = Waiter(after: after, timer: timer(), answer: answer)
            return nil
        }
    }

    /// The long-poll's client hung up: its waiter goes, unanswered.
    func forget(_ token: UInt64) {
        state.withLock { s in
            guard let waiter = s.waiters.removeValue(forKey: token) else { return }
            waiter.timer?.cancel()
            if s.streams.isEmpty && s.waiters.isEmpty { s.idleSince = .now() }
        }
    }

    /// The long-poll's time is up: it gets an empty change list.
    func expire(_ token: UInt64) {
        let ended = state.withLock { s -> (Waiter, FeedState)? in
            guard let waiter = s.waiters.removeValue(forKey: token) else { return nil }
            if s.streams.isEmpty && s.waiters.isEmpty { s.idleSince = .now() }
            return (waiter, answer(s, after: waiter.after))
        }
        if let (waiter, state) = ended { waiter.answer(.state(state)) }
    }

    var subscriberCount: Int { state.withLock { $0.streams.count + $0.waiters.count + $0.early.count } }

    /// A client is about to use the feed: it is not idle from now on (the idle sweep, which takes
    /// the same registry lock as the lookup, cannot drop it before the client attaches).
    func touch() {
        state.withLock { s in
            if s.idleSince != nil { s.idleSince = .now() }
        }
    }

    func isIdle(since deadline: NIODeadline) -> Bool {
        state.withLock { s in s.idleSince.map { $0 < deadline } ?? false }
    }

    /// Ends every stream with `final` and answers every waiter `closed` (shutdown).
    func close(final: [UInt8]?) {
        let waiters = state.withLock { s -> [Waiter] in
            for (_, sub) in s.streams { sub.stream.finish(with: final) }
            s.streams.removeAll()
            defer { s.waiters.removeAll() }
            return Array(s.waiters.values)
        }
        for w in waiters {
            w.timer?.cancel()
            w.answer(.closed)
        }
    }
}

/// What a family feed leaves behind when it is dropped for being idle: enough for the next feed of
/// the family to keep its IDs valid and tell what changed meanwhile (a digest per value, not the
/// values).
struct FeedMemory: Sendable {
    let epoch: String
    let index: UInt64
    let digests: [String: Int]

    /// The keys added, changed and deleted between the remembered family and `values`.
    func difference(to values: [String: Value]) -> (added: [String], changed: [String], deleted: [String]) {
        var added: [String] = [], changed: [String] = []
        for (key, value) in values {
            if let old = digests[key] {
                if old != value.hashValue { changed.append(key) }
            } else {
                added.append(key)
            }
        }
        let deleted = digests.keys.filter { values[$0] == nil }
        return (added.sorted(), changed.sorted(), deleted.sorted())
    }
}
