@testable import AEMP
@testable import AEMPGateway
import Testing

/// Issue 15, item 9, the gateway's half: a family feed applies each change to its own copy of the
/// family. Holding the node's dictionary instead (as it did) makes the node's next change copy
/// the whole family, O(family) per change; the node's own half is in AEMPTests'
/// `DatabaseTests.watchedFamilyChangesInPlace`, the time per change in `make bench` scenario 7.
@Suite("gateway: family feed cost")
struct FamilyFeedCostTests {
    static func storage(_ values: [String: Value]) -> UInt {
        withUnsafeBytes(of: values) { $0.load(as: UInt.self) }
    }

    @Test("a family feed holds no reference to the node's family after a change, so the node's next change is made in place")
    func feedLeavesNodeFamilyUnshared() {
        let feed = FamilyFeed(family: "f", historyLimit: 100, epoch: FamilyFeed.newEpoch())
        // What the node does: one dictionary, changed in place, handed to the watcher each time.
        var family: [String: Value] = [:]
        for i in 0..<10_000 { family["k\(i)"] = .int(Int64(i)) }
        feed.apply(FamilyChange(family: "f", values: family, added: family.keys.sorted(), changed: [], deleted: []))
        family["k0"] = .int(-1)  // the first snapshot is kept by the feed: one copy, once
        var copies = 0
        for i in 1...50 {
            let key = "k\(i)"
            let before = Self.storage(family)
            family[key] = .int(Int64(-1 - i))  // the node's change, in place unless shared
            if Self.storage(family) != before { copies += 1 }
            feed.apply(FamilyChange(family: "f", values: family, added: [], changed: [key], deleted: []))
        }
        #expect(copies == 0, "the node's family was copied on \(copies) of 50 changes")
        // And the feed's own copy follows every change.
        family.removeValue(forKey: "k9999")
        feed.apply(FamilyChange(family: "f", values: family, added: [], changed: [], deleted: ["k9999"]))
        let held = feed.state.withLock { $0.values }
        #expect(held.count == 9_999 && held["k50"] == .int(-51) && held["k0"] == .int(0))
    }
}

/// Issue 16: a family feed's replay without a server: which changes a client that has seen an
/// index gets, and when it gets a reset snapshot instead. (Through HTTP and SSE, with resets,
/// in DatabaseTests and LossTests.)
@Suite("gateway: family feed replay")
struct FamilyFeedReplayTests {
    /// A feed of family "f" with a history of 3: snapshot {a: 1}, then b set, c set, a deleted, d set.
    static func feed() -> FamilyFeed {
        let feed = FamilyFeed(family: "f", historyLimit: 3, epoch: "e1")
        var values: [String: Value] = ["a": 1]
        feed.apply(FamilyChange(family: "f", values: values, added: ["a"], changed: [], deleted: []))
        for (key, value) in [("b", Value.int(2)), ("c", 3), ("a", .null), ("d", 4)] {
            if value == .null {
                values[key] = nil
                feed.apply(FamilyChange(family: "f", values: values, added: [], changed: [], deleted: [key]))
            } else {
                values[key] = value
                feed.apply(FamilyChange(family: "f", values: values, added: [key], changed: [], deleted: []))
            }
        }
        return feed
    }

    /// The long-poll answer for a client that has seen `after`: its type, the change IDs or the
    /// snapshot's keys, and whether it is a reset.
    static func answer(_ feed: FamilyFeed, after: UInt64?) throws -> String {
        let body = feed.state.withLock { feed.answer($0, after: after) }.body.objectValue ?? [:]
        switch body["type"]?.stringValue {
        case "changes":
            let ids = (body["changes"]?.arrayValue ?? []).compactMap { $0.objectValue?["id"]?.stringValue }
            return "changes \(ids.joined(separator: ",")) to \(body["id"]?.stringValue ?? "?")"
        case "snapshot":
            let keys = (body["values"]?.objectValue ?? [:]).keys.sorted().joined(separator: ",")
            return "snapshot \(keys) at \(body["id"]?.stringValue ?? "?") reset \(body["reset"] == .bool(true))"
        default:
            return "unexpected \(body)"
        }
    }

    @Test("a client gets exactly the changes after its index while the history reaches back; else a reset snapshot")
    func replay() throws {
        let feed = Self.feed()
        #expect(try Self.answer(feed, after: nil) == "snapshot b,c,d at e1-4 reset false")
        #expect(try Self.answer(feed, after: 4) == "changes  to e1-4")
        #expect(try Self.answer(feed, after: 3) == "changes e1-4 to e1-4")
        #expect(try Self.answer(feed, after: 1) == "changes e1-2,e1-3,e1-4 to e1-4")
        // The history (3) no longer holds change 1: a reset, never a silent gap.
        #expect(try Self.answer(feed, after: 0) == "snapshot b,c,d at e1-4 reset true")
        // An index from the future (another process's feed) is a reset too.
        #expect(try Self.answer(feed, after: 9) == "snapshot b,c,d at e1-4 reset true")
    }

    @Test("event IDs belong to their epoch: another epoch's or a malformed ID is no index")
    func ids() {
        let feed = Self.feed()
        #expect(feed.id(4) == "e1-4")
        #expect(feed.index(of: "e1-2") == 2)
        #expect(feed.index(of: "e2-2") == nil)
        #expect(feed.index(of: "e1-x") == nil)
        #expect(feed.index(of: "2") == nil)
    }
}
