/// One family's effective change: keys set (new or changed) and keys deleted (aemp-protocol §11.4 `g_chg2`),
/// plus what the other globals must hear beyond that (aemp-protocol §11.5).
struct FamilyDelta: Equatable {
    var set: [String: Value] = [:]
    var deleted: [String] = []
    /// Keys the writer deleted that stay visible only through other globals' copies: the other
    /// globals drop the writer's copy (`g_upd` deletion) and keep their own (Perl's `@del_global`
    /// in `g_upd`, G 73-142).
    var forwardDeleted: [String] = []
    /// Keys in `set` that show another global's copy again: watchers hear them, other globals do not
    /// (Perl's `%local_set` in `g_upd`).
    var notForwarded: Set<String> = []
    /// Nothing for watchers (`g_chg2`).
    var isUnchanged: Bool { self.set.isEmpty && self.deleted.isEmpty }
    /// Nothing for watchers nor for the other globals.
    var isEmpty: Bool { isUnchanged && forwardDeleted.isEmpty }
    /// The `g_upd` set and delete lists a slave's write is forwarded with.
    var forwarded: (set: [String: Value], deleted: [String]) {
        (self.set.filter { !notForwarded.contains($0.key) }, (deleted + forwardDeleted).sorted())
    }
}

/// What a global node knows: every owner's keys and the merged view (aemp-protocol §10.3, §11.5).
///
/// An owner is the node that reported the data over its own connection: a slave's local
/// database, or another global's merged slave data (`g_set`). When two owners set the same key,
/// the latest write shows; deleting it re-exposes the previous owner's value.
struct GlobalDirectory {
    /// owner → family → subkey → value.
    private(set) var shards: [String: [String: [String: Value]]] = [:]
    /// family → subkey → value, as watchers and queries see it.
    private(set) var merged: [String: [String: Value]] = [:]
    /// family → subkey → owners, latest writer last.
    private var owners: [String: [String: [String]]] = [:]

    /// Listener addresses of `node` from family `'l`, or nil when nobody registered the node.
    func addresses(of node: String) -> [String]? {
        guard let entry = merged["'l"]?[node] else { return nil }
        return entry.arrayValue?.compactMap(\.stringValue) ?? []
    }

    /// The merged family (empty when unknown).
    func family(_ name: String) -> [String: Value] {
        merged[name] ?? [:]
    }

    /// Owners whose data is kept only until someone re-claims it: a global that went down keeps
    /// carrying its slaves' keys for a grace period, so they do not vanish from every watcher's
    /// view while those slaves re-register elsewhere (aemp-protocol §10.2 describes Perl's window).
    private(set) var orphans: Set<String> = []

    /// Marks `owner`'s data as orphaned: other owners' writes of the same keys take it over.
    mutating func orphan(_ owner: String) {
        if shards[owner] != nil { orphans.insert(owner) }
    }

    /// Owners that are global nodes (their data is their slaves', merged: `g_set`). A slave's
    /// delete of a key only they still hold leaves their copies in place (aemp-protocol §11.5).
    var globalOwners: Set<String> = []

    private func isGlobalCopy(_ owner: String) -> Bool {
        globalOwners.contains(owner) || orphans.contains(owner)
    }

    /// Applies one owner's write; returns the effective change of the merged view.
    /// With `reportUnchanged`, every key set is reported, as Perl does for a slave's write even when
    /// the value is unchanged; otherwise only visible changes are.
    mutating func apply(
        owner: String, family: String, set: [String: Value], delete: [String], reportUnchanged: Bool = true
    ) -> FamilyDelta {
        var delta = FamilyDelta()
        var touched = Set(set.keys)
        for key in delete where set[key] == nil { touched.insert(key) }
        if !orphans.isEmpty, !orphans.contains(owner) {
            // A live owner writing a key takes it over from every orphaned copy.
            for key in touched {
                for orphan in orphans { removeCopy(owner: orphan, family: family, key: key) }
            }
            orphans = orphans.filter { shards[$0] != nil }
        }
        for (key, value) in set {
            shards[owner, default: [:]][family, default: [:]][key] = value
            var list = owners[family]?[key] ?? []
            list.removeAll { $0 == owner }
            list.append(owner)
            owners[family, default: [:]][key] = list
        }
        for key in delete where set[key] == nil {
            removeCopy(owner: owner, family: family, key: key)
        }
        for key in touched {
            refresh(family: family, key: key, wasSet: set[key] != nil, into: &delta)
            if reportUnchanged, let value = set[key] { delta.set[key] = value }
        }
        delta.deleted.sort()
        delta.forwardDeleted.sort()
        return delta
    }

    /// Removes one owner's copy of a key without touching the merged view.
    private mutating func removeCopy(owner: String, family: String, key: String) {
        guard shards[owner]?[family]?[key] != nil else { return }
        shards[owner]?[family]?[key] = nil
        if shards[owner]?[family]?.isEmpty == true { shards[owner]?[family] = nil }
        if shards[owner]?.isEmpty == true { shards[owner] = nil }
        owners[family]?[key]?.removeAll { $0 == owner }
        if owners[family]?[key]?.isEmpty == true { owners[family]?[key] = nil }
        if owners[family]?.isEmpty == true { owners[family] = nil }
    }

    /// Recomputes the merged value of a key: the latest write shows; after a delete, a slave's copy
    /// is preferred to another global's (Perl's `g_upd`, G 73-142). Records the change in `delta`.
    private mutating func refresh(family: String, key: String, wasSet: Bool, into delta: inout FamilyDelta) {
        let before = merged[family]?[key]
        let list = owners[family]?[key] ?? []
        let shown = wasSet ? list.last : (list.last { !isGlobalCopy($0) } ?? list.last)
        if let shown, let value = shards[shown]?[family]?[key] {
            merged[family, default: [:]][key] = value
            if before != value { delta.set[key] = value }
            if !wasSet, isGlobalCopy(shown) {
                // Only other globals hold it now: they keep their copies and drop the writer's.
                delta.forwardDeleted.append(key)
                delta.notForwarded.insert(key)
            }
        } else if before != nil {
            merged[family]?[key] = nil
            if merged[family]?.isEmpty == true { merged[family] = nil }
            delta.deleted.append(key)
        }
    }

    /// Replaces everything an owner had with `db` (a `g_slave` or `g_set`); returns changes by family.
    mutating func replace(owner: String, with db: [String: [String: Value]]) -> [String: FamilyDelta] {
        // Fresh data from the owner itself is no longer orphaned (and may claim others' orphaned
        // copies); a plain drop must not claim anything.
        if !db.isEmpty { orphans.remove(owner) }
        defer { orphans.remove(owner) }
        var changes: [String: FamilyDelta] = [:]
        let old = shards[owner] ?? [:]
        for (family, entries) in old {
            let gone = entries.keys.filter { db[family]?[$0] == nil }
            let d = apply(owner: owner, family: family, set: [:], delete: gone)
            if !d.isEmpty { changes[family] = d }
        }
        for (family, entries) in db where !entries.isEmpty {
            // Only report keys whose visible value changes.
            let d = apply(owner: owner, family: family, set: entries, delete: [], reportUnchanged: false)
            if !d.isEmpty { changes[family, default: FamilyDelta()].merge(d) }
        }
        return changes
    }

    /// Forgets everything `owner` had (it went down); returns changes by family.
    mutating func drop(owner: String) -> [String: FamilyDelta] {
        replace(owner: owner, with: [:])
    }

    /// The union of the given owners' data (what a global sends other globals in `g_set`).
    func union(of ownerIDs: [String]) -> [String: [String: Value]] {
        var out: [String: [String: Value]] = [:]
        for owner in ownerIDs {
            for (family, entries) in shards[owner] ?? [:] {
                out[family, default: [:]].merge(entries) { _, new in new }
            }
        }
        return out
    }
}

extension FamilyDelta {
    mutating func merge(_ other: FamilyDelta) {
        for (k, v) in other.set {
            set[k] = v
            deleted.removeAll { $0 == k }
            if !other.notForwarded.contains(k) { notForwarded.remove(k) }
        }
        for k in other.deleted where !deleted.contains(k) {
            set[k] = nil
            deleted.append(k)
        }
        notForwarded.formUnion(other.notForwarded)
        forwardDeleted = Array(Set(forwardDeleted + other.forwardDeleted).subtracting(other.set.keys)).sorted()
        deleted.sort()
    }
}
