import Crypto
import _CryptoExtras
import Foundation
import NIOCore
import NIOSSL
import SwiftASN1
import X509

/// The network's certificate, as AnyEvent::MP keeps it in a profile under `cert` (aemp-protocol
/// §4.5): one PEM text holding a private key, this node's certificate and any CA certificates to
/// trust. `aemp gencert` makes one self-signed certificate and every node gets the same file; an
/// operator with a CA gives each node its own key and certificate followed by the CA.
///
/// Read as Perl's AnyEvent::TLS reads the same text for its `cert` and `ca_cert` options: the key
/// is the first private key block, this node's certificate is the first certificate, and every
/// certificate in the text is trusted (a self-signed network certificate is its own trust anchor).
public struct MeshCertificate: Sendable {
    /// The PEM text as read.
    public let pem: String
    /// Where it came from (a file name or profile), for messages.
    public let source: String
    /// This node's certificate's subject, e.g. `CN=AnyEvent::MP`.
    public let subject: String
    /// SHA-256 of this node's certificate (DER), lowercase hex: the same on every node that shares
    /// a network certificate.
    public let fingerprint: String
    /// This node's certificate's validity.
    public let notValidBefore: Date
    public let notValidAfter: Date
    /// How many certificates the text holds (all of them trusted).
    public var trustedCount: Int { trustRoots.count }

    let privateKey: NIOSSLPrivateKey
    /// This node's certificate first, then the others of the text (sent along, as Perl does).
    let chain: [NIOSSLCertificate]
    let trustRoots: [NIOSSLCertificate]

    /// Reads a certificate file (Perl's `aemp setcert FILE` reads the same file).
    public init(contentsOfFile path: String) throws(MeshCertificateError) {
        guard let data = FileManager.default.contents(atPath: path) else {
            let why = FileManager.default.fileExists(atPath: path) ? "cannot read it" : "no such file"
            throw MeshCertificateError(source: path, problem: why)
        }
        try self.init(pem: String(decoding: data, as: UTF8.self), source: path)
    }

    /// Reads PEM text (a profile's `cert` value).
    public init(pem: String, source: String = "the mesh certificate") throws(MeshCertificateError) {
        func fail(_ problem: String) -> MeshCertificateError { MeshCertificateError(source: source, problem: problem) }
        let blocks = PEMBlock.split(pem)
        guard !blocks.isEmpty else {
            throw fail("no PEM blocks: expected a private key, then a certificate, then any CA certificates (as `aemp gencert` writes)")
        }
        var key: NIOSSLPrivateKey?
        var keyText = ""
        var certificates: [NIOSSLCertificate] = []
        var first: X509.Certificate?
        for (index, block) in blocks.enumerated() {
            let place = "block \(index + 1) (\(block.label))"
            switch block.label {
            case "ENCRYPTED PRIVATE KEY":
                throw fail("\(place): the private key is encrypted; a node reads it unattended, so it must not be (Perl's `aemp gencert` writes it unencrypted)")
            case let label where label.hasSuffix("PRIVATE KEY"):
                if block.text.contains("Proc-Type: 4,ENCRYPTED") {
                    throw fail("\(place): the private key is encrypted; a node reads it unattended, so it must not be")
                }
                guard key == nil else { continue }  // AnyEvent::TLS uses the first key too
                do {
                    key = try NIOSSLPrivateKey(bytes: Array(block.text.utf8), format: .pem)
                    keyText = block.text
                } catch {
                    throw fail("\(place): not a usable private key (\(error))")
                }
            case "CERTIFICATE", "TRUSTED CERTIFICATE", "X509 CERTIFICATE":
                do {
                    certificates.append(try NIOSSLCertificate(bytes: Array(block.text.utf8), format: .pem))
                    if first == nil { first = try X509.Certificate(pemEncoded: block.text) }
                } catch {
                    throw fail("\(place): not a usable certificate (\(error))")
                }
            default:
                continue  // EC PARAMETERS and the like: not needed
            }
        }
        guard let key else {
            throw fail("no private key: expected a private key, then a certificate, then any CA certificates (as `aemp gencert` writes)")
        }
        guard let leaf = first, !certificates.isEmpty else {
            throw fail("no certificate: expected a private key, then a certificate, then any CA certificates")
        }
        if let parsed = try? X509.Certificate.PrivateKey(pemEncoded: keyText), parsed.publicKey != leaf.publicKey {
            throw fail("the private key does not belong to the first certificate (\(leaf.subject)); expected the key of that certificate")
        }
        self.pem = pem
        self.source = source
        self.privateKey = key
        self.chain = certificates
        self.trustRoots = certificates
        self.subject = leaf.subject.description
        self.notValidBefore = leaf.notValidBefore
        self.notValidAfter = leaf.notValidAfter
        let der = (try? certificates[0].toDERBytes()) ?? []
        self.fingerprint = Authenticator.hex(Array(SHA256.hash(data: der)))
        // The key must be the certificate's: BoringSSL checks it when the context is made.
        _ = try Self.contexts(privateKey: key, chain: certificates, trustRoots: certificates, source: source)
    }

    /// Why the certificate cannot be used now (expired, not yet valid), or nil.
    public func validityProblem(at now: Date = Date()) -> String? {
        if now > notValidAfter {
            return "\(source): the certificate (\(subject)) expired on \(Self.format(notValidAfter)); peers refuse it"
        }
        if now < notValidBefore {
            return "\(source): the certificate (\(subject)) is valid only from \(Self.format(notValidBefore)); peers refuse it until then"
        }
        return nil
    }

    /// A validity date as written in messages, `/v1/node` and `aemp cert show`: ISO 8601, UTC.
    public static func format(_ date: Date) -> String {
        ISO8601DateFormatter().string(from: date)
    }

    /// The TLS contexts of both roles: each side presents this node's certificate and requires and
    /// verifies the peer's against the certificates of the file, without a host name check (Perl's
    /// `verify => 1`, `verify_require_client_cert => 1`, `ca_cert` = `cert`).
    func makeContexts() throws(MeshCertificateError) -> MeshTLSContexts {
        try Self.contexts(privateKey: privateKey, chain: chain, trustRoots: trustRoots, source: source)
    }

    private static func contexts(
        privateKey: NIOSSLPrivateKey, chain: [NIOSSLCertificate], trustRoots: [NIOSSLCertificate], source: String
    ) throws(MeshCertificateError) -> MeshTLSContexts {
        let certificates = chain.map { NIOSSLCertificateSource.certificate($0) }
        var server = TLSConfiguration.makeServerConfigurationWithMTLS(
            certificateChain: certificates, privateKey: .privateKey(privateKey), trustRoots: .certificates(trustRoots))
        // Perl allows TLS 1.0 and 1.1 too; every OpenSSL a Perl 2.02 node runs on speaks 1.2.
        server.minimumTLSVersion = .tlsv12
        var client = TLSConfiguration.makeClientConfiguration()
        client.certificateChain = certificates
        client.privateKey = .privateKey(privateKey)
        client.trustRoots = .certificates(trustRoots)
        client.certificateVerification = .noHostnameVerification
        client.minimumTLSVersion = .tlsv12
        do {
            return MeshTLSContexts(client: try NIOSSLContext(configuration: client), server: try NIOSSLContext(configuration: server))
        } catch {
            let text = "\(error)"
            // The key itself loaded (above): BoringSSL refuses it here only when it is not the
            // certificate's (NIOSSL reports that as failedToLoadPrivateKey).
            if text.contains("KEY_VALUES_MISMATCH") || text.contains("X509_CHECK_PRIVATE_KEY") || text.contains("VALUES_MISMATCH")
                || text.contains("failedToLoadPrivateKey")
            {
                throw MeshCertificateError(source: source, problem: "the private key does not belong to the first certificate")
            }
            throw MeshCertificateError(source: source, problem: "TLS cannot use it: \(text)")
        }
    }

    /// Key types `generate` can make.
    public enum KeyType: String, Sendable, CaseIterable {
        /// ECDSA on P-256: small and fast; every OpenSSL of a Perl node speaks it.
        case p256
        /// RSA 2048, as Perl's `aemp gencert` makes.
        case rsa2048
        /// RSA 3072.
        case rsa3072
    }

    /// A new self-signed network certificate in Perl's layout: the private key (PKCS#8, not
    /// encrypted), then the certificate, as `aemp setcert` expects. Like Perl's `aemp gencert`
    /// (`CN=AnyEvent::MP`, ten years), made with swift-certificates instead of `openssl req`.
    public static func generate(
        commonName: String = "AnyEvent::MP", days: Int = 3650, keyType: KeyType = .p256, now: Date = Date()
    ) throws -> String {
        let key: X509.Certificate.PrivateKey
        let keyPEM: String
        switch keyType {
        case .p256:
            let k = P256.Signing.PrivateKey()
            key = .init(k)
            keyPEM = k.pemRepresentation
        case .rsa2048, .rsa3072:
            let k = try _RSA.Signing.PrivateKey(keySize: keyType == .rsa2048 ? .bits2048 : .bits3072)
            key = .init(k)
            keyPEM = k.pkcs8PEMRepresentation
        }
        let name = try DistinguishedName { CommonName(commonName) }
        var serial = [UInt8](repeating: 0, count: 16)
        var rng = SystemRandomNumberGenerator()
        for i in serial.indices { serial[i] = UInt8.random(in: 0...255, using: &rng) }
        serial[0] &= 0x7F
        let certificate = try X509.Certificate(
            version: .v3,
            serialNumber: .init(bytes: serial),
            publicKey: key.publicKey,
            notValidBefore: now.addingTimeInterval(-3600),
            notValidAfter: now.addingTimeInterval(Double(days) * 86400),
            issuer: name,
            subject: name,
            signatureAlgorithm: keyType == .p256 ? .ecdsaWithSHA256 : .sha256WithRSAEncryption,
            extensions: try X509.Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
                KeyUsage(digitalSignature: true, keyEncipherment: keyType != .p256, keyCertSign: true)
                SubjectKeyIdentifier(hash: key.publicKey)
            },
            issuerPrivateKey: key)
        let certificatePEM = try certificate.serializeAsPEM().pemString
        return keyPEM.trimmingCharacters(in: .newlines) + "\n" + certificatePEM.trimmingCharacters(in: .newlines) + "\n"
    }
}

/// A certificate file or profile value the node cannot use: one line that says which and why.
public struct MeshCertificateError: Error, Equatable, Sendable, CustomStringConvertible {
    public let source: String
    public let problem: String
    public var description: String { "mesh certificate \(source): \(problem)" }
}

/// One PEM block: its label and its whole text, BEGIN and END lines included.
struct PEMBlock {
    var label: String
    var text: String

    static func split(_ pem: String) -> [PEMBlock] {
        var blocks: [PEMBlock] = []
        var current: (label: String, lines: [Substring])?
        for raw in pem.split(omittingEmptySubsequences: true, whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" }) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("-----BEGIN "), line.hasSuffix("-----") {
                current = (String(line.dropFirst(11).dropLast(5)), [Substring(line)])
            } else if var open = current {
                open.lines.append(Substring(line))
                if line.hasPrefix("-----END "), line.hasSuffix("-----") {
                    blocks.append(PEMBlock(label: open.label, text: open.lines.joined(separator: "\n") + "\n"))
                    current = nil
                } else {
                    current = open
                }
            }
        }
        return blocks
    }
}

/// The TLS contexts of a node with a certificate, made once: one per role of the handshake.
struct MeshTLSContexts: Sendable {
    let client: NIOSSLContext
    let server: NIOSSLContext
}

/// What a failed TLS handshake means, in words an operator can act on.
enum MeshTLSFailure {
    static func explain(_ error: any Error, peer: String, weAreClient: Bool) -> String {
        let text = "\(error)"
        let has = { (s: String) in text.contains(s) }
        let why: String
        if has("CERTIFICATE_VERIFY_FAILED") {
            why = "untrusted certificate: \(peer)'s certificate is not one of, or signed by one of, the certificates of our mesh certificate file (or it expired)"
        } else if has("UNKNOWN_CA") || has("BAD_CERTIFICATE") || has("CERTIFICATE_UNKNOWN") || has("DECRYPT_ERROR") {
            why = "\(peer) refused our certificate: it does not trust it (a different network certificate?)"
        } else if has("CERTIFICATE_EXPIRED") {
            why = "\(peer) says a certificate has expired"
        } else if has("PEER_DID_NOT_RETURN_A_CERTIFICATE") || has("CERTIFICATE_REQUIRED") {
            why = "no certificate: \(peer) presented none, and both sides must"
        } else if has("WRONG_VERSION_NUMBER") || has("UNSUPPORTED_PROTOCOL") || has("PROTOCOL_VERSION") || has("HTTP_REQUEST")
            || has("UNKNOWN_PROTOCOL") || has("PACKET_LENGTH_TOO_LONG") || has("RECORD_LENGTH_MISMATCH") || has("NO_SHARED_CIPHER")
            || has("HANDSHAKE_FAILURE_ON_CLIENT_HELLO") || has("UNEXPECTED_RECORD") || has("DECODE_ERROR")
        {
            why = "protocol mismatch: \(peer) did not speak TLS 1.2 or 1.3 after the greeting"
        } else if has("EOF during handshake") || has("uncleanShutdown") {
            why = "\(peer) closed the connection during the TLS handshake (it probably refused our certificate)"
        } else {
            why = "TLS handshake with \(peer) failed"
        }
        return "TLS handshake failed (we were the \(weAreClient ? "client" : "server")): \(why) (\(text))"
    }
}

/// A number as Perl reads the start of a string (`int "1.0"` is 1, `int " 1x"` is 1, `int "x"` is
/// 0): leading white space, sign, digits, fraction, exponent; the rest is ignored.
func perlNumericPrefix(_ s: String) -> Double {
    var chars = Substring(s).drop { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" || $0 == "\u{0C}" }
    var text = ""
    if let c = chars.first, c == "+" || c == "-" { text.append(c); chars = chars.dropFirst() }
    let digits = chars.prefix { $0.isASCII && $0.isNumber }
    text += digits
    chars = chars.dropFirst(digits.count)
    var fraction = ""
    if chars.first == "." {
        fraction = String(chars.dropFirst().prefix { $0.isASCII && $0.isNumber })
        chars = chars.dropFirst(1 + fraction.count)
    }
    guard !digits.isEmpty || !fraction.isEmpty else { return 0 }
    text += "." + (fraction.isEmpty ? "0" : fraction)
    if let e = chars.first, e == "e" || e == "E" {
        var rest = chars.dropFirst()
        var exponent = ""
        if let c = rest.first, c == "+" || c == "-" { exponent.append(c); rest = rest.dropFirst() }
        let exponentDigits = rest.prefix { $0.isASCII && $0.isNumber }
        if !exponentDigits.isEmpty { text += "e" + exponent + exponentDigits }
    }
    return Double(text) ?? 0
}
