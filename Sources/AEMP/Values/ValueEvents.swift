import Synchronization

/// Process-wide counts of what the codecs converted or dropped, so that no value changes
/// silently (aemp-protocol §14). The gateway exports them in `/metrics`.
public enum ValueEvents {
    /// One kind of conversion or loss.
    public enum Kind: Int, CaseIterable, Sendable {
        /// A packet from a peer nested deeper than Perl decodes: skipped, the link kept.
        case packetTooDeepSkipped
        /// A packet to a peer nested deeper than Perl decodes: not sent (it would wedge the link).
        case packetTooDeepRefused
        /// NaN or ±Inf written to JSON as a string.
        case nonFiniteConverted
        /// A lone surrogate or code point above U+10FFFF written to HTTP JSON as U+FFFD.
        case invalidCodePointReplaced
        /// A CBOR text string that was not even lax UTF-8: malformed bytes became U+FFFD.
        case malformedTextReplaced
        /// A hash key with code points Unicode cannot hold: they became U+FFFD.
        case hashKeyReplaced
        /// A CBOR map key that was an array or map (Perl cannot use it either): the pair was dropped.
        case hashKeyDropped
        /// Two hash keys that differ in Perl but are one Swift `String` (canonically equivalent
        /// Unicode, e.g. "é" and "e\u{301}"): the later pair replaced the earlier.
        case hashKeyMerged

        /// Whether this kind changes a value while reading it from a peer.
        var isReadConversion: Bool {
            switch self {
            case .malformedTextReplaced, .hashKeyReplaced, .hashKeyDropped, .hashKeyMerged: return true
            default: return false
            }
        }

        /// The metric label.
        public var label: String {
            switch self {
            case .packetTooDeepSkipped: return "packet_too_deep_skipped"
            case .packetTooDeepRefused: return "packet_too_deep_refused"
            case .nonFiniteConverted: return "non_finite_converted"
            case .invalidCodePointReplaced: return "invalid_code_point_replaced"
            case .malformedTextReplaced: return "malformed_text_replaced"
            case .hashKeyReplaced: return "hash_key_replaced"
            case .hashKeyDropped: return "hash_key_dropped"
            case .hashKeyMerged: return "hash_key_merged"
            }
        }
    }

    /// Rare events (each is a peer's or client's odd value): a lock is cheap enough.
    private static let counts = Locked<[Int]>(Array(repeating: 0, count: Kind.allCases.count))

    /// Adds `n` to the count of `kind`.
    public static func record(_ kind: Kind, _ n: Int = 1) {
        guard n > 0 else { return }
        counts.withLock { $0[kind.rawValue] += n }
        if kind.isReadConversion { readConversions.add(n, ordering: .relaxed) }
    }

    /// Values changed while reading (keys replaced, dropped or merged, malformed text), all kinds
    /// together: a stream decoder compares it around a packet to say in the log that one had
    /// values changed. An atomic, as it is read twice per packet.
    static let readConversions = Atomic<Int>(0)

    /// Records what a JSON writer converted.
    public static func record(_ conversions: JSONConversions) {
        record(.nonFiniteConverted, conversions.nonFinite)
        record(.invalidCodePointReplaced, conversions.invalidCodePoints)
    }

    /// The count of `kind` since the process started.
    public static func count(_ kind: Kind) -> Int {
        counts.withLock { $0[kind.rawValue] }
    }
}
