import AEMP
import Synchronization

/// Bytes held together by many owners against one limit: all mailboxes (`--max-mailbox-bytes`;
/// an entry counts its `footprint`), all event streams' unsent bytes (`--max-stream-bytes`).
final class ByteBudget: Sendable {
    let limit: Int
    private let held = Atomic<Int>(0)

    init(limit: Int) { self.limit = limit }

    /// Bytes held now.
    var bytes: Int { held.load(ordering: .relaxed) }

    /// Takes `size` bytes if they fit under the limit.
    func take(_ size: Int) -> Bool {
        var current = held.load(ordering: .relaxed)
        while true {
            guard current + size <= limit else { return false }
            let (exchanged, original) = held.compareExchange(
                expected: current, desired: current + size, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
    }

    func give(_ size: Int) {
        if size > 0 { held.wrappingSubtract(size, ordering: .relaxed) }
    }

    /// Takes `size` bytes whatever the limit (what is already queued must be accounted for).
    func add(_ size: Int) {
        if size > 0 { held.wrappingAdd(size, ordering: .relaxed) }
    }

    /// Bytes left under the limit (0 when at or over it).
    var remaining: Int { max(0, limit - held.load(ordering: .relaxed)) }
}

extension Value {
    /// About the bytes this value takes in memory: its strings' UTF-8, 16 per scalar and 32 per
    /// container (element storage included). Linear in the value's size, like decoding it.
    var footprint: Int {
        switch self {
        case .null, .bool, .int, .double: return 16
        case .bigInteger: return 64
        case .string(let s): return 32 + s.utf8.count
        case .codePoints(let c): return 32 + 4 * c.count
        case .array(let a): return a.reduce(32) { $0 + $1.footprint }
        case .object(let o): return o.reduce(48) { $0 + 32 + $1.key.utf8.count + $1.value.footprint }
        }
    }
}
