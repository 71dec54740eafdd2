import AEMP
import CMicroHTTPD
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Hands freed heap back to the system after bursts (glibc keeps it otherwise): the gateway's
/// housekeeping calls `tick(load:)` once a second with its load (connections + mailboxes).
/// Linux-only, like the package (Platform.swift): `malloc_trim`, `mallinfo2` and `mallopt` are
/// glibc's.
final class MemoryKeeper: Sendable {
    /// The highest load since memory was last returned, the load a second ago, and for how many
    /// seconds it has not grown.
    private let loadMark = Locked<(high: Int, last: Int, quietSeconds: Int)>((0, 0, 0))
    /// Seconds since the heap's free space was last looked at.
    private let heapCheckClock = Atomic<Int>(0)

    /// After a burst (a thousand connections or mailboxes or more gone since the high mark), once
    /// the load has not grown for 5 s, hands freed heap pages back to the system: the RSS of a
    /// gateway that once held 10,000 streams would stay at its peak. Trimming a large heap holds
    /// malloc's locks for a while, so it waits for a quiet spell rather than running while a new
    /// burst starts.
    func tick(load: Int) {
        let trim = loadMark.withLock { m -> Bool in
            m.quietSeconds = load > m.last ? 0 : m.quietSeconds + 1
            m.last = load
            m.high = max(m.high, load)
            guard m.high - load >= 1000, m.quietSeconds >= 5 else { return false }
            m.high = load
            return true
        }
        // Bursts that hold no connections or mailboxes leave freed heap too (a peer's backlog, a
        // stream that fell behind, big bodies): every 10 s, trim when more than 8 MiB lie free.
        var heapCheck = false
        if heapCheckClock.wrappingAdd(1, ordering: .relaxed).newValue >= 10 {
            heapCheckClock.store(0, ordering: .relaxed)
            heapCheck = mallinfo2().fordblks > 8 << 20
        }
        if trim || heapCheck { _ = malloc_trim(0) }
    }

    /// Two malloc arenas, unless `MALLOC_ARENA_MAX` says otherwise; call before other threads start.
    /// A soak with MALLOC_ARENA_MAX=2 in the environment kept a flat RSS where glibc's default (8
    /// arenas per core) climbed in steps; called from `run()`, after the runtime's threads exist, it
    /// did not help as much, so the environment variable is the surer setting (README, Memory).
    static func limitArenas() {
        if getenv("MALLOC_ARENA_MAX") == nil { _ = mallopt(M_ARENA_MAX, 2) }
    }
}
