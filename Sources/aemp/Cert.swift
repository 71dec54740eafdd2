import AEMP
import ArgumentParser

#if canImport(Glibc)
import Glibc
#endif

/// `aemp cert …`: the network's certificate (mesh TLS, aemp-protocol §4.5).
struct Cert: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cert",
        abstract: "Make and inspect the network's certificate (mesh TLS).",
        discussion: """
            Every node of a network secured with TLS has the same PEM file: a private key, a \
            certificate and any CA certificates (AnyEvent::MP keeps its text in the profile's \
            `cert`, put there by Perl's `aemp setcert FILE`). Nodes present it and trust only \
            peers that present it (or one signed by its certificates). Pass it with --cert to \
            every other command, to aemp-gateway with --mesh-cert.
            """,
        subcommands: [CertGenerate.self, CertShow.self]
    )
}

/// `aemp cert generate --out FILE`: a new self-signed network certificate in Perl's layout.
struct CertGenerate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Write a new self-signed network certificate (private key, then certificate), mode 0600.",
        discussion: """
            Like Perl's `aemp gencert` (CN=AnyEvent::MP, ten years), without openssl. Prints one \
            JSON line: the file, subject, SHA-256 fingerprint and end of validity. Copy the file \
            to every node of the network; Perl nodes load it with `aemp setcert FILE`.
            """)

    @Option(help: ArgumentHelp("Where to write the certificate file.", valueName: "file"))
    var out: String

    @Option(help: "Common name of the certificate's subject.")
    var cn: String = "AnyEvent::MP"

    @Option(help: "Days the certificate is valid (1...36500).")
    var days: Int = 3650

    @Option(help: "Key type: p256 (ECDSA, default), rsa2048 (as Perl's gencert) or rsa3072.")
    var key: String = MeshCertificate.KeyType.p256.rawValue

    @Flag(help: "Overwrite the file if it exists.")
    var force = false

    func run() async throws {
        guard let keyType = MeshCertificate.KeyType(rawValue: key) else {
            let all = MeshCertificate.KeyType.allCases.map(\.rawValue).joined(separator: ", ")
            throw ToolError.badArgument("unknown key type '\(key)' (use \(all))")
        }
        guard (1...36_500).contains(days) else { throw ToolError.badArgument("--days \(days) is not in 1...36500") }
        guard !cn.isEmpty else { throw ToolError.badArgument("--cn must not be empty") }
        let pem: String
        let certificate: MeshCertificate
        do {
            pem = try MeshCertificate.generate(commonName: cn, days: days, keyType: keyType)
            certificate = try MeshCertificate(pem: pem, source: out)
        } catch {
            throw ToolError.failed("cannot make a certificate: \(error)")
        }
        try writePrivateFile(out, pem, replace: force)
        writeLine(
            renderJSON([
                "file": .string(out), "subject": .string(certificate.subject), "fingerprint": .string(certificate.fingerprint),
                "not_after": .string(MeshCertificate.format(certificate.notValidAfter)),
            ]))
    }
}

/// `aemp cert show FILE`: what a certificate file holds, as the node reads it.
struct CertShow: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Check a certificate file as a node reads it and print what it holds.",
        discussion: """
            Prints one JSON line: subject, SHA-256 fingerprint (the same on every node that shares \
            the file), validity, the number of certificates trusted, and `valid_now`. A file a node \
            cannot use (no key, no certificate, an encrypted key, a key of another certificate) is \
            one error line and exit status 64; an expired certificate is printed, with a warning.
            """)

    @Argument(help: "The certificate file (PEM).")
    var file: String

    func run() async throws {
        let certificate: MeshCertificate
        do {
            certificate = try MeshCertificate(contentsOfFile: file)
        } catch {
            throw ToolError.configuration("\(error)")
        }
        let problem = certificate.validityProblem()
        writeLine(
            renderJSON([
                "file": .string(file), "subject": .string(certificate.subject), "fingerprint": .string(certificate.fingerprint),
                "not_before": .string(MeshCertificate.format(certificate.notValidBefore)),
                "not_after": .string(MeshCertificate.format(certificate.notValidAfter)),
                "trusted_certificates": .int(Int64(certificate.trustedCount)), "valid_now": .bool(problem == nil),
            ]))
        if let problem { writeError("aemp: warning: \(problem)") }
    }
}

/// Writes `text` to `path` readable by the owner only (0600): a new file, or, with `replace`, over
/// an existing one (whose mode becomes 0600 too).
private func writePrivateFile(_ path: String, _ text: String, replace: Bool) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (replace ? O_TRUNC : O_EXCL), 0o600)
    guard fd >= 0 else {
        if errno == EEXIST { throw ToolError.configuration("\(path) exists; pass --force to overwrite it") }
        throw ToolError.failed("cannot write \(path): \(String(cString: strerror(errno)))")
    }
    defer { close(fd) }
    guard fchmod(fd, 0o600) == 0 else { throw ToolError.failed("cannot make \(path) private: \(String(cString: strerror(errno)))") }
    let bytes = Array(text.utf8)
    var offset = 0
    while offset < bytes.count {
        let n = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if n < 0, errno == EINTR { continue }
        guard n > 0 else { throw ToolError.failed("cannot write \(path): \(String(cString: strerror(errno)))") }
        offset += n
    }
}
