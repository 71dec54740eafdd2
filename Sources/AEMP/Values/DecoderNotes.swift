import Synchronization

/// What a stream decoder has to tell about the packets it read (aemp-protocol §14): packets it
/// skipped (legal, but nested deeper than Perl decodes; the link stays up) and packets whose
/// values it changed (hash keys Perl cannot use or Unicode cannot hold, keys Swift merges,
/// malformed text). Every one is also counted in `ValueEvents`; these are for the log.
public struct DecoderNotes: Sendable {
    /// Why each skipped packet was skipped.
    public private(set) var skipped: [String] = []
    /// What was changed in each packet whose values were changed.
    public private(set) var changed: [String] = []

    public init() {}

    /// Whether there is nothing to tell.
    public var isEmpty: Bool { skipped.isEmpty && changed.isEmpty }

    mutating func skip(_ why: String) { skipped.append(why) }

    /// Notes a change if `ValueEvents.readConversions` moved past `before` while reading a packet.
    mutating func noteChanges(since before: Int, packetBytes: Int) {
        let changes = ValueEvents.readConversions.load(ordering: .relaxed) - before
        guard changes > 0 else { return }
        changed.append(
            "a \(packetBytes)-byte packet had \(changes) value(s) changed: a hash key Perl cannot use or Unicode cannot hold, keys Swift merges, or malformed text (value_events_total)")
    }

    /// Returns and forgets the skipped packets' reasons.
    public mutating func takeSkipped() -> [String] {
        guard !skipped.isEmpty else { return [] }
        defer { skipped = [] }
        return skipped
    }

    /// Returns and forgets the notes on changed packets.
    public mutating func takeChanged() -> [String] {
        guard !changed.isEmpty else { return [] }
        defer { changed = [] }
        return changed
    }
}
