@testable import AEMP
import Testing

/// Issue 16: the global directory (what a global node knows: every owner's keys and the merged
/// view) without a network. (Against recorded Perl globals: GlobalReplayTests and GlobalMeshTests.)
@Suite("Global directory")
struct GlobalDirectoryTests {
    @Test("the latest write shows; deleting it shows the previous owner's value again; a node that leaves takes its keys")
    func latestWriteWins() {
        var d = GlobalDirectory()
        var delta = d.apply(owner: "a", family: "f", set: ["k": 1], delete: [])
        #expect(delta.set == ["k": 1] && delta.deleted.isEmpty)
        delta = d.apply(owner: "b", family: "f", set: ["k": 2], delete: [])
        #expect(delta.set == ["k": 2] && d.family("f") == ["k": 2])
        // b deletes its write: a's value shows again (a change for watchers, not a deletion).
        delta = d.apply(owner: "b", family: "f", set: [:], delete: ["k"])
        #expect(delta.set == ["k": 1] && delta.deleted.isEmpty && d.family("f") == ["k": 1])
        // a leaves: the key is gone.
        let gone = d.drop(owner: "a")
        #expect(gone["f"]?.deleted == ["k"] && d.family("f").isEmpty)
        #expect(d.shards.isEmpty && d.merged.isEmpty)
    }

    @Test("a slave's write is reported even when unchanged (as Perl's g_upd); a replacement reports only visible changes")
    func reporting() {
        var d = GlobalDirectory()
        _ = d.apply(owner: "a", family: "f", set: ["k": 1, "x": 0], delete: [])
        #expect(d.apply(owner: "a", family: "f", set: ["k": 1], delete: []).set == ["k": 1])
        #expect(d.apply(owner: "a", family: "f", set: ["k": 1], delete: [], reportUnchanged: false).isEmpty)
        // g_slave again with k changed, x gone, y new.
        let changes = d.replace(owner: "a", with: ["f": ["k": 5, "y": 7]])
        #expect(changes["f"]?.set == ["k": 5, "y": 7] && changes["f"]?.deleted == ["x"])
        #expect(d.family("f") == ["k": 5, "y": 7])
    }

    @Test("'l gives node addresses: nil for a node nobody registered, [] for a private one")
    func addresses() {
        var d = GlobalDirectory()
        _ = d.apply(owner: "pub", family: "'l", set: ["pub": ["127.0.0.1:4040"]], delete: [])
        _ = d.apply(owner: "priv", family: "'l", set: ["priv": []], delete: [])
        #expect(d.addresses(of: "pub") == ["127.0.0.1:4040"])
        #expect(d.addresses(of: "priv") == [])
        #expect(d.addresses(of: "nobody") == nil)
    }

    @Test("a global's copy stays when a slave deletes a key only the global still holds; an orphaned owner's keys are taken over by a live writer")
    func globalCopiesAndOrphans() {
        var d = GlobalDirectory()
        d.globalOwners = ["g2"]
        _ = d.apply(owner: "g2", family: "f", set: ["k": "from g2"], delete: [])
        _ = d.apply(owner: "s", family: "f", set: ["k": "from s"], delete: [])
        let delta = d.apply(owner: "s", family: "f", set: [:], delete: ["k"])
        #expect(d.family("f") == ["k": "from g2"])
        #expect(delta.forwardDeleted == ["k"] && delta.notForwarded == ["k"] && delta.forwarded.deleted == ["k"])

        // g2 goes down but is kept as an orphan for a while; a live writer takes the key over.
        d.orphan("g2")
        #expect(d.orphans == ["g2"])
        _ = d.apply(owner: "s2", family: "f", set: ["k": "from s2"], delete: [])
        #expect(d.family("f") == ["k": "from s2"] && d.shards["g2"] == nil && d.orphans.isEmpty)
    }

    @Test("the union of owners is what a global sends the others (g_set): later owners win")
    func union() {
        var d = GlobalDirectory()
        _ = d.apply(owner: "a", family: "f", set: ["k": 1, "a": 1], delete: [])
        _ = d.apply(owner: "b", family: "f", set: ["k": 2], delete: [])
        _ = d.apply(owner: "b", family: "g", set: ["z": 0], delete: [])
        #expect(d.union(of: ["a", "b"]) == ["f": ["k": 2, "a": 1], "g": ["z": 0]])
        #expect(d.union(of: ["a"]) == ["f": ["k": 1, "a": 1]])
        #expect(d.union(of: []).isEmpty)
    }
}
