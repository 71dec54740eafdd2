/// One family's effective change: keys set (new or changed) and keys deleted (aemp-protocol §11.4 `g_chg2`).
struct FamilyDelta: Equatable {
    var set: [String: Value] = [:]
    var deleted: [String] = []
    var isEmpty: Bool { self.set.isEmpty && self.deleted.isEmpty }
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

    /// Applies one owner's write; returns the effective change of the merged view.
    mutating func apply(owner: String, family: String, set: [String: Value], delete: [String]) -> FamilyDelta {
        var delta = FamilyDelta()
        for (key, value) in set {
            shards[owner, default: [:]][family, default: [:]][key] = value
            var list = owners[family]?[key] ?? []
            list.removeAll { $0 == owner }
            list.append(owner)
            owners[family, default: [:]][key] = list
            merged[family, default: [:]][key] = value
            delta.set[key] = value
        }
        for key in delete where set[key] == nil {
            guard shards[owner]?[family]?[key] != nil else { continue }
            shards[owner]?[family]?[key] = nil
            if shards[owner]?[family]?.isEmpty == true { shards[owner]?[family] = nil }
            var list = owners[family]?[key] ?? []
            list.removeAll { $0 == owner }
            if let previous = list.last, let value = shards[previous]?[family]?[key] {
                owners[family, default: [:]][key] = list
                merged[family, default: [:]][key] = value
                delta.set[key] = value
            } else {
                owners[family]?[key] = nil
                merged[family]?[key] = nil
                if merged[family]?.isEmpty == true { merged[family] = nil }
                if owners[family]?.isEmpty == true { owners[family] = nil }
                delta.deleted.append(key)
            }
        }
        delta.deleted.sort()
        return delta
    }

    /// Replaces everything an owner had with `db` (a `g_slave` or `g_set`); returns changes by family.
    mutating func replace(owner: String, with db: [String: [String: Value]]) -> [String: FamilyDelta] {
        var changes: [String: FamilyDelta] = [:]
        let old = shards[owner] ?? [:]
        for (family, entries) in old {
            let gone = entries.keys.filter { db[family]?[$0] == nil }
            let d = apply(owner: owner, family: family, set: [:], delete: gone)
            if !d.isEmpty { changes[family] = d }
        }
        for (family, entries) in db where !entries.isEmpty {
            // Only report keys whose visible value changes.
            let before = merged[family] ?? [:]
            var d = apply(owner: owner, family: family, set: entries, delete: [])
            d.set = d.set.filter { before[$0.key] != $0.value }
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
        }
        for k in other.deleted where !deleted.contains(k) {
            set[k] = nil
            deleted.append(k)
        }
        deleted.sort()
    }
}
