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
