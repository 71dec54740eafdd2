import Crypto

/// Equality of secrets (handshake tokens, HTTP bearer tokens) that leaks neither where two
/// values differ nor how long they are.
///
/// Both sides are first reduced to an HMAC-SHA256 under a random key drawn once per process, then
/// the two 32-byte digests are compared by XOR-accumulating every byte. The time taken depends
/// only on the lengths of the inputs hashed (the presented value is the caller's own), never on the
/// position of the first difference, and a length mismatch costs exactly what a match costs.
package enum ConstantTime {
    /// The per-process HMAC key: the digests cannot be precomputed or compared across processes.
    private static let key = SymmetricKey(size: .bits256)

    /// A value reduced for comparison: its HMAC-SHA256 under the per-process key. Reduce a stored
    /// secret once and compare each presented value's digest with it (`equal(_:_:)`).
    package struct Digest: Sendable {
        fileprivate let code: HashedAuthenticationCode<SHA256>
    }

    /// The digest of `a`.
    package static func digest(_ a: some Sequence<UInt8>) -> Digest {
        Digest(code: HMAC<SHA256>.authenticationCode(for: Array(a), using: key))
    }

    /// Whether two digests are the same, by XOR-accumulating every byte.
    package static func equal(_ x: Digest, _ y: Digest) -> Bool {
        x.code.withUnsafeBytes { p in
            y.code.withUnsafeBytes { q in
                var diff: UInt8 = 0
                for i in 0..<p.count { diff |= p[i] ^ q[i] }
                return diff == 0
            }
        }
    }

    /// Whether `a` and `b` hold the same bytes, in time independent of where they differ.
    package static func equal(_ a: some Sequence<UInt8>, _ b: some Sequence<UInt8>) -> Bool {
        equal(digest(a), digest(b))
    }

    /// Whether two strings hold the same UTF-8 bytes, in time independent of where they differ.
    package static func equal(_ a: String, _ b: String) -> Bool {
        equal(a.utf8, b.utf8)
    }
}
