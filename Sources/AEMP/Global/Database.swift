import Logging
import NIOCore

/// One delivery of a `db_mon` watcher: the whole family after the change, and what changed
/// (aemp-protocol §11.4). The first delivery lists every key as added.
public struct FamilyChange: Sendable, Equatable {
    /// The family name.
    public let family: String
    /// The whole family after this change.
    public let values: [String: Value]
    /// Keys that are new.
    public let added: [String]
    /// Keys whose value was set again: a `g_chg2` set reports its keys even when the value is
    /// unchanged, as Perl does; after a re-attach, the new master's full `g_chg1` reports only keys
    /// whose value differs (Perl's `db_mon` would list every key it already had).
    public let changed: [String]
    /// Keys that are gone.
    public let deleted: [String]
}

/// Local state of one watched family: the last known content and the watchers sharing it.
struct FamilyWatch {
    var values: [String: Value] = [:]
    var synced = false
    var watchers: [UInt64: @Sendable (FamilyChange) -> Void] = [:]
}

/// A database query waiting for `g_reply` (re-sent to a new master), until its timeout.
struct PendingQuery {
    var packet: [Value]
    /// The caller's token (for cancellation).
    var token: UInt64
    var timer: Scheduled<Void>?
    var completion: @Sendable (Result<Value, RequestError>) -> Void
}

/// The database API of every node (aemp-protocol §11): the local database, writes to the master,
/// queries, and `db_mon` change feeds.
extension Kernel {

    /// Where writes and queries go: ourselves when global, else the master (if attached).
    private var masterPeer: Peer? {
        guard !isGlobal, let master else { return nil }
        return peers[master]
    }

    func dbSet(_ family: String, _ key: String, _ value: Value) {
        if localDB[family]?[key] == value, localDB[family]?[key] != nil { return }  // unchanged: Perl sends nothing
        localDB[family, default: [:]][key] = value
        if isGlobal {
            publish(family: family, directory.apply(owner: nodeID, family: family, set: [key: value], delete: []))
        } else {
            masterPeer?.sendIfConnected(["", "g_upd", .string(family), .object([key: value])])
        }
    }

    func dbDel(_ family: String, _ keys: [String]) {
        let present = keys.filter { localDB[family]?[$0] != nil }
        guard !present.isEmpty else { return }
        for key in present { localDB[family]?[key] = nil }
        if localDB[family]?.isEmpty == true { localDB[family] = nil }
        if isGlobal {
            publish(family: family, directory.apply(owner: nodeID, family: family, set: [:], delete: present))
        } else {
            masterPeer?.sendIfConnected(["", "g_upd", .string(family), .null, .array(present.map { .string($0) })])
        }
    }

    /// `db_family` / `db_keys` / `db_values`: answered by ourselves when global, else by the master
    /// (sent now if there is one, else when one is found). Ends with the answer, or
    /// `timedOut` after `timeout`, `cancelled` (`cancelQuery`), `shutDown`.
    func dbQuery(
        _ tag: String, _ family: String, token: UInt64, timeout: TimeAmount,
        completion: @escaping @Sendable (Result<Value, RequestError>) -> Void
    ) {
        if isShutDown { return completion(.failure(.shutDown)) }
        if isGlobal { return completion(.success(answer(query: tag, family: family))) }
        queryCounter += 1
        let id = String(queryCounter, radix: 36)
        let packet: [Value] = ["", .string(tag), .string(family), .string(id)]
        let timer = loop.assumeIsolated().scheduleTask(in: timeout) { [weak self] () -> Void in
            self?.endQuery(id: id, .failure(RequestError(timeout: timeout)))
        }
        pendingQueries[id] = PendingQuery(packet: packet, token: token, timer: timer, completion: completion)
        queryIDs[token] = id
        masterPeer?.sendIfConnected(packet)
    }

    /// Ends a waiting query with `cancelled` (nothing if it has ended).
    func cancelQuery(token: UInt64) {
        guard let id = queryIDs[token] else { return }
        endQuery(id: id, .failure(.cancelled))
    }

    /// Removes a waiting query and completes it (once; a late `g_reply` finds nothing).
    func endQuery(id: String, _ result: Result<Value, RequestError>) {
        guard let query = pendingQueries.removeValue(forKey: id) else { return }
        queryIDs[query.token] = nil
        query.timer?.cancel()
        query.completion(result)
    }

    func dbMon(_ family: String, token: UInt64, handler: @escaping @Sendable (FamilyChange) -> Void) {
        var watch = families[family] ?? FamilyWatch()
        let first = watch.watchers.isEmpty
        watch.watchers[token] = handler
        families[family] = watch
        if watch.synced {
            let values = watch.values
            handler(FamilyChange(family: family, values: values, added: values.keys.sorted(), changed: [], deleted: []))
        }
        guard first else { return }
        if isGlobal {
            applyChangeFeed(tag: "g_chg1", [.string(family), familyValue(family)])
        } else {
            masterPeer?.sendIfConnected(["", "g_mon1", .string(family)])
        }
    }

    func dbUnmon(_ family: String, token: UInt64) {
        guard families[family]?.watchers.removeValue(forKey: token) != nil else { return }
        if families[family]?.watchers.isEmpty == true {
            families[family] = nil
            masterPeer?.sendIfConnected(["", "g_mon0", .string(family)])
        }
    }

    /// Re-sends subscriptions and unanswered queries to a new master (aemp-protocol §10.2).
    func resendDatabaseRequests(to master: Peer) {
        for family in families.keys.sorted() {
            master.send(["", "g_mon1", .string(family)], kernel: self)
        }
        for id in pendingQueries.keys.sorted() {
            master.send(pendingQueries[id]!.packet, kernel: self)
        }
    }

    /// `g_reply`, `g_chg1`, `g_chg2` from the master.
    func handleGlobalReply(tag: String, _ args: [Value], from source: String) {
        guard source == master else {
            logger.debug("ignoring \(tag) from a node that is not our master", metadata: ["from": "\(source)"])
            return
        }
        if tag == "g_reply" {
            guard let id = args.first?.stringValue else { return }
            endQuery(id: id, .success(args.count > 1 ? args[1] : .null))
        } else {
            applyChangeFeed(tag: tag, args)
        }
    }

    /// Applies `g_chg1` (full replacement; `null` = empty) or `g_chg2` (set + deletions) to a
    /// watched family and tells its watchers what changed (aemp-protocol §11.4).
    func applyChangeFeed(tag: String, _ args: [Value]) {
        // Taken out of `families` while it changes: with a second reference to its values, every
        // change would copy the whole family (copy on write), O(family) instead of O(change).
        // It goes back before the watchers run (they may subscribe or unsubscribe).
        guard let family = args.first?.stringValue, var watch = families.removeValue(forKey: family) else { return }
        var added: [String] = [], changed: [String] = [], deleted: [String] = []
        if tag == "g_chg1" {
            let new = args.count > 1 ? (args[1].objectValue ?? [:]) : [:]
            for (k, v) in new {
                if let old = watch.values[k] {
                    if old != v || !watch.synced { changed.append(k) }
                } else {
                    added.append(k)
                }
            }
            deleted = watch.values.keys.filter { new[$0] == nil }
            if !watch.synced {
                added += changed
                changed = []
            }
            watch.values = new
            let firstSync = !watch.synced
            watch.synced = true
            families[family] = watch
            if !firstSync, added.isEmpty, changed.isEmpty, deleted.isEmpty { return }
        } else {
            let set = args.count > 1 ? (args[1].objectValue ?? [:]) : [:]
            for (k, v) in set {
                if watch.values[k] == nil { added.append(k) } else { changed.append(k) }
                watch.values[k] = v
            }
            for k in (args.count > 2 ? (args[2].arrayValue ?? []) : []).compactMap(\.stringValue)
            where watch.values.removeValue(forKey: k) != nil {
                deleted.append(k)
            }
            families[family] = watch
            if added.isEmpty, changed.isEmpty, deleted.isEmpty { return }
        }
        let change = FamilyChange(
            family: family, values: watch.values, added: added.sorted(), changed: changed.sorted(),
            deleted: deleted.sorted())
        for (_, watcher) in watch.watchers.sorted(by: { $0.key < $1.key }) { watcher(change) }
    }
}
