import Crypto

/// Auth methods of the handshake (aemp-protocol §4.4).
package enum AuthMethod: String, Sendable, CaseIterable {
    /// HMAC-SHA3-512 over both greeting pairs, keyed with the shared secret.
    case hmacSHA3_512 = "hmac_sha3_512"
    /// The hex of the secret itself; accepted from peers, never sent by this library.
    case cleartext = "cleartext"
    /// Under TLS only: the plain SHA3-512 of both greeting pairs (no key: the certificates, which
    /// both sides verified, authenticate; aemp-protocol §4.5).
    case tlsSHA3_512 = "tls_sha3_512"
    /// Under TLS only: an empty token (Perl accepts it and marks the peer untrusted; we accept it
    /// only where Perl does, under TLS with a verified certificate).
    case tlsAnon = "tls_anon"

    /// Valid only when TLS was negotiated on the connection.
    package var needsTLS: Bool { self == .tlsSHA3_512 || self == .tlsAnon }

    /// What a node offers, in preference order (Perl's `auth_offer`): the first of the peer's
    /// accept list that is also here (and is not a `tls_*` method unless TLS is on) is sent.
    package static let offered: [AuthMethod] = [.tlsSHA3_512, .hmacSHA3_512]

    /// What a node accepts, in preference order (field 4 of its greeting). With a certificate this
    /// is Perl's `auth_accept` (`tls_sha3_512,hmac_sha3_512,tls_anon,cleartext`); without one the
    /// `tls_*` methods would never be usable, so they are not listed.
    package static func accepted(withTLS tls: Bool) -> [AuthMethod] {
        tls ? [.tlsSHA3_512, .hmacSHA3_512, .tlsAnon, .cleartext] : [.hmacSHA3_512, .cleartext]
    }
}

/// Computes and checks handshake tokens (aemp-protocol §4.4, checklist §12.2).
package struct Authenticator: Sendable {
    /// The shared secret's bytes, used directly as the HMAC key.
    package let secret: [UInt8]

    /// An authenticator for the given secret bytes.
    package init(secret: [UInt8]) { self.secret = secret }

    /// An authenticator for a secret string (its UTF-8 bytes).
    package init(secret: String) { self.secret = Array(secret.utf8) }

    /// The token for `method` over `first` then `second` greeting pair (each a two-line array).
    ///
    /// The token we send puts our own lines first; the token we expect puts the peer's first.
    package func token(_ method: AuthMethod, first: (String, String), second: (String, String)) -> String {
        switch method {
        case .tlsAnon:
            return ""
        case .tlsSHA3_512:
            return Self.hex(Array(SHA3_512.hash(data: Self.message(first: first, second: second))))
        case .cleartext:
            return Self.hex(secret)
        case .hmacSHA3_512:
            var mac = HMAC<SHA3_512>(key: SymmetricKey(data: secret))
            mac.update(data: Self.message(first: first, second: second))
            return Self.hex(Array(mac.finalize()))
        }
    }

    /// The bytes the HMAC covers: the four lines, each followed by LF (aemp-protocol §4.4). Lines
    /// hold the bytes read as Latin-1 characters (a peer's non-ASCII node ID), so they go back to
    /// exactly those bytes.
    static func message(first: (String, String), second: (String, String)) -> [UInt8] {
        var bytes: [UInt8] = []
        for line in [first.0, first.1, second.0, second.1] {
            for scalar in line.unicodeScalars {
                if scalar.value < 0x100 {
                    bytes.append(UInt8(scalar.value))
                } else {
                    bytes.append(contentsOf: String(scalar).utf8)
                }
            }
            bytes.append(0x0A)
        }
        return bytes
    }

    /// The token we send: our two lines, then the peer's.
    package func tokenToSend(_ method: AuthMethod, local: (String, String), remote: (String, String)) -> String {
        token(method, first: local, second: remote)
    }

    /// The token we expect from the peer: its two lines, then ours.
    package func tokenExpected(_ method: AuthMethod, local: (String, String), remote: (String, String)) -> String {
        token(method, first: remote, second: local)
    }

    /// Compares two tokens in time independent of where they differ and of their lengths
    /// (`ConstantTime.equal`).
    package static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        ConstantTime.equal(a, b)
    }

    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
