import AEMP
import NIOCore

/// The gateway's mailboxes by name, and the names that are gone (so clients get 410, not 404).
///
/// A name is `<instance>.<random>`: `instance` is fixed for the life of the process, so a name
/// from an earlier gateway process is recognised as gone. The random part is 17 bytes from the
/// system CSPRNG (`SystemRandomNumberGenerator`: getrandom(2)), 136 bits in 23 URL-safe base64
/// characters (22 × 6 bits, and 4 in the last).
final class MailboxRegistry: Sendable {
    let instance: String
    private let mailboxes = Locked<[String: Mailbox]>([:])
    private let tombstones: Locked<Tombstones>
    let limit: Int

    /// Names of mailboxes that are gone, with why, for `capacity` names at most (oldest out first).
    /// Keyed by the name's 64-bit hash: under 100 bytes a name (85 measured) instead of about 170 (a collision,
    /// about one in 10^9 at 100,000 names, would turn one 404 into a 410).
    struct Tombstones {
        var reasons: [Int: (why: String, reason: Value?)] = [:]
        var order: [Int] = []
        var head = 0
        let capacity: Int

        mutating func add(_ name: String, _ why: String, _ reason: Value?) {
            let key = name.hashValue
            if reasons[key] == nil { order.append(key) }
            reasons[key] = (why, reason)
            while order.count - head > capacity {
                reasons[order[head]] = nil
                head += 1
            }
            if head > max(capacity, 1024) {
                order.removeFirst(head)
                head = 0
            }
        }

        func lookup(_ name: String) -> (why: String, reason: Value?)? { reasons[name.hashValue] }
    }

    init(limit: Int, remembered: Int = 100_000) {
        self.limit = limit
        self.instance = randomToken(bytes: 6)
        self.tombstones = Locked(Tombstones(capacity: remembered))
    }

    var count: Int { mailboxes.withLock { $0.count } }

    /// A fresh unguessable mailbox name.
    func newName() -> String {
        "\(instance).\(randomToken(bytes: 17))"
    }

    /// Registers a mailbox; false when the gateway holds its maximum.
    func add(_ mailbox: Mailbox) -> Bool {
        mailboxes.withLock { m in
            guard m.count < limit else { return false }
            m[mailbox.name] = mailbox
            return true
        }
    }

    /// The live mailbox of that name, or why there is none.
    func lookup(_ name: String) throws(MailboxError) -> Mailbox {
        guard Self.isWellFormed(name) else { throw .invalidName(name) }
        if let mailbox = mailboxes.withLock({ $0[name] }) { return mailbox }
        if let gone = tombstones.withLock({ $0.lookup(name) }) { throw .gone(name, why: gone.why, reason: gone.reason) }
        if let dot = name.firstIndex(of: "."), name[..<dot] != instance {
            throw .gone(name, why: "belonged to an earlier gateway process (this one is \(instance))", reason: nil)
        }
        throw .unknown(name)
    }

    /// Removes a mailbox and remembers why it is gone.
    func remove(_ name: String, reason: String, killReason: Value? = nil) -> Mailbox? {
        let m = mailboxes.withLock { $0.removeValue(forKey: name) }
        if m != nil { tombstones.withLock { $0.add(name, reason, killReason) } }
        return m
    }

    var all: [Mailbox] { mailboxes.withLock { Array($0.values) } }

    static func isWellFormed(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 128
            && name.utf8.allSatisfy { c in
                (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
                    || c == UInt8(ascii: ".") || c == UInt8(ascii: "_") || c == UInt8(ascii: "-")
            }
    }
}

/// URL-safe base64 of `bytes` random bytes (no padding).
func randomToken(bytes count: Int) -> String {
    let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
    var rng = SystemRandomNumberGenerator()
    var bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) }
    while bytes.count % 3 != 0 { bytes.append(0) }
    var out: [UInt8] = []
    for i in stride(from: 0, to: bytes.count, by: 3) {
        let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
        for shift in [18, 12, 6, 0] { out.append(alphabet[Int((n >> UInt32(shift)) & 63)]) }
    }
    return String(decoding: out.prefix((count * 8 + 5) / 6), as: UTF8.self)
}
