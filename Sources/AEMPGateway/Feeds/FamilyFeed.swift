import AEMP
import NIOCore

/// One family's change feed: a single `db_mon` subscription shared by every HTTP client of the
/// family, with a numbered history so clients resume without gaps.
///
/// Event IDs are `<epoch>-<index>`; `epoch` is new for every feed instance, so an ID from an
/// earlier feed (or process) never matches and the client gets a snapshot marked `reset`.
final class FamilyFeed: Sendable {
    let family: String
    let epoch: String
    let historyLimit: Int

    struct Change {
        let index: UInt64
        let data: Value
        let sse: [UInt8]
    }

    struct Waiter {
        let exchange: Exchange
        let after: UInt64
        let timer: Timeouts.Handle?
    }

    struct State {
        var values: [String: Value] = [:]
        var synced = false
        var history: [Change] = []
        /// Index of the latest change (0 = none yet).
        var index: UInt64 = 0
        var streams: [UInt64: EventStream] = [:]
        var waiters: [UInt64: Waiter] = [:]
        /// Clients that asked before the first snapshot arrived.
        var early: [UInt64: @Sendable () -> Void] = [:]
        var watch: FamilyWatchHandle?
        var idleSince: NIODeadline? = .now()
    }

    let state = Locked(State())

    init(family: String, historyLimit: Int) {
        self.family = family
        self.historyLimit = historyLimit
        var rng = SystemRandomNumberGenerator()
        self.epoch = String(UInt32.random(in: 0x1000_0000...UInt32.max, using: &rng), radix: 16)
    }

    func id(_ index: UInt64) -> String { "\(epoch)-\(index)" }

    /// Parses an event ID of this feed; nil if it belongs to another epoch or is malformed.
    func index(of id: String) -> UInt64? {
        guard let dash = id.lastIndex(of: "-"), id[..<dash] == epoch else { return nil }
        return UInt64(id[id.index(after: dash)...])
    }

    // MARK: - From the node (db_mon deliveries, in order)

    func apply(_ change: FamilyChange) {
        let early = state.withLock { s -> [@Sendable () -> Void] in
            if !s.synced {
                s.synced = true
                s.values = change.values
                defer { s.early.removeAll() }
                return Array(s.early.values)
            }
            s.values = change.values
            s.index += 1
            var added: [String: Value] = [:], changed: [String: Value] = [:]
            for k in change.added { added[k] = change.values[k] ?? .null }
            for k in change.changed { changed[k] = change.values[k] ?? .null }
            let data: Value = [
                "family": .string(family), "id": .string(id(s.index)),
                "added": .object(added), "changed": .object(changed),
                "deleted": .array(change.deleted.map { .string($0) }),
            ]
            let sse = ServerSentEvent.encode(id: id(s.index), event: "change", data: data)
            s.history.append(Change(index: s.index, data: data, sse: sse))
            if s.history.count > historyLimit { s.history.removeFirst(s.history.count - historyLimit) }
            for (token, stream) in s.streams where !stream.send(sse, orEndWith: Self.overflowEvent) {
                s.streams[token] = nil
            }
            for (token, waiter) in s.waiters where waiter.after < s.index {
                s.waiters[token] = nil
                waiter.timer?.cancel()
                waiter.exchange.respond(response(&s, after: waiter.after))
            }
            return []
        }
        for resume in early { resume() }  // outside the lock: they subscribe or poll
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
        ["family": .string(family), "id": .string(id(s.index)), "values": .object(s.values), "reset": .bool(reset)]
    }

    /// Attaches an SSE client: a snapshot (or the changes after `lastEventID`), then every change.
    func subscribe(_ token: UInt64, stream: EventStream, lastEventID: String?) {
        state.withLock { s in
            s.idleSince = nil
            var bytes = ServerSentEvent.retry(1000)
            if let lastEventID, let after = index(of: lastEventID), let replay = changes(s, after: after) {
                for c in replay { bytes += c.sse }
            } else {
                let reset = lastEventID != nil
                bytes += ServerSentEvent.encode(id: id(s.index), event: "snapshot", data: snapshotData(s, reset: reset))
            }
            if stream.send(bytes, orEndWith: Self.overflowEvent) { s.streams[token] = stream }
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
    func response(_ s: inout State, after: UInt64?, reset: Bool = false) -> HTTPResponse {
        let header = [("X-AEMP-Index", id(s.index))]
        if !reset, let after, let list = changes(s, after: after) {
            return .json(
                200, ["family": .string(family), "id": .string(id(s.index)), "changes": .array(list.map(\.data))],
                headers: header)
        }
        return .json(200, snapshotData(s, reset: reset || after != nil), headers: header)
    }

    /// Answers a long-poll now, or parks it until a change (returns nil when parked).
    func poll(
        _ token: UInt64, exchange: Exchange, indexID: String?, park: Bool, timer: @escaping () -> Timeouts.Handle?
    ) -> HTTPResponse? {
        state.withLock { s in
            guard let indexID else { return response(&s, after: nil) }
            guard let after = index(of: indexID), after <= s.index else { return response(&s, after: nil, reset: true) }
            if after < s.index || !park { return response(&s, after: after) }
            s.idleSince = nil
            s.waiters[token] = Waiter(exchange: exchange, after: after, timer: timer())
            return nil
        }
    }

    /// The long-poll's time is up: it gets an empty change list.
    func expire(_ token: UInt64) {
        state.withLock { s in
            guard let waiter = s.waiters.removeValue(forKey: token) else { return }
            waiter.exchange.respond(response(&s, after: waiter.after))
            if s.streams.isEmpty && s.waiters.isEmpty { s.idleSince = .now() }
        }
    }

    var subscriberCount: Int { state.withLock { $0.streams.count + $0.waiters.count + $0.early.count } }

    func isIdle(since deadline: NIODeadline) -> Bool {
        state.withLock { s in s.idleSince.map { $0 < deadline } ?? false }
    }

    /// Ends every stream and answers every waiter (shutdown).
    func close(final: [UInt8]?, gone: (_ requestID: String) -> HTTPResponse) {
        state.withLock { s in
            for (_, stream) in s.streams { stream.finish(with: final) }
            s.streams.removeAll()
            for (_, w) in s.waiters {
                w.timer?.cancel()
                w.exchange.respond(gone(w.exchange.request.requestID))
            }
            s.waiters.removeAll()
        }
    }
}
