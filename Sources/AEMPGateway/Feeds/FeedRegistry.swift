/// The gateway's family feeds: the active ones by family, and what idle ones left behind.
struct FeedRegistry {
    var active: [String: FamilyFeed] = [:]
    /// Epoch and index of feeds dropped for being idle, by family (at most the capacity given to
    /// `remember`; the family that fell idle longest ago is forgotten first, and its clients get
    /// a reset snapshot: a forgotten family's next feed starts a new epoch).
    private var dormant: [String: (memory: FeedMemory, generation: UInt64)] = [:]
    private var order: [(family: String, generation: UInt64)] = []
    private var head = 0
    private var generation: UInt64 = 0

    var dormantCount: Int { dormant.count }

    /// Takes what the family's last feed left (nil: none, or forgotten).
    mutating func resume(_ family: String) -> FeedMemory? {
        dormant.removeValue(forKey: family)?.memory
    }

    mutating func remember(_ family: String, _ memory: FeedMemory, capacity: Int) {
        guard capacity > 0 else { return }
        generation += 1
        dormant[family] = (memory, generation)
        order.append((family, generation))
        while dormant.count > capacity, head < order.count {
            let oldest = order[head]
            head += 1
            // Entries of families that came back (or fell idle again later) are stale: skip them.
            if dormant[oldest.family]?.generation == oldest.generation { dormant[oldest.family] = nil }
        }
        // Stale entries pile up when the same families go idle again and again: drop them once
        // they outnumber the live ones.
        if order.count - head > 2 * dormant.count + 1024 {
            order = order[head...].filter { dormant[$0.family]?.generation == $0.generation }
            head = 0
        }
    }
}
