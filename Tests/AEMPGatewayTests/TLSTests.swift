import Foundation
import Testing

/// HTTPS served by libmicrohttpd itself (GnuTLS), checked with curl as the real client.
@Suite("gateway: TLS", .timeLimit(.minutes(2)))
struct TLSTests {
    /// Runs a tool found on PATH to completion; returns its exit status and standard output.
    private func run(_ tool: String, _ arguments: [String]) async throws -> (status: Int32, output: String) {
        let r = try await ChildProcess.run(executable: "/usr/bin/env", [tool] + arguments, within: 60)
        return (r.exit.status, r.stdout)
    }

    @Test("with --tls-cert/--tls-key the gateway speaks HTTPS; curl verifies the certificate")
    func https() async throws {
        let dir = NSTemporaryDirectory() + "aemp-gw-tls-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cert = dir + "/cert.pem", key = dir + "/key.pem"
        let made = try await run("openssl", [
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ])
        try #require(made.status == 0, "openssl could not make a certificate")

        let gateway = try await GatewayProcess.start(
            seeds: nil, arguments: ["--standalone-bind", "127.0.0.1:\(try freePort())", "--tls-cert", cert, "--tls-key", key])
        defer { gateway.child.stop() }
        #expect(gateway.line.contains("serving https://127.0.0.1:\(gateway.port)"), "\(gateway.line)")
        let url = "https://127.0.0.1:\(gateway.port)"

        let ok = try await run("curl", ["-sS", "--max-time", "10", "--cacert", cert, url + "/healthz"])
        #expect(ok.status == 0 && ok.output == #"{"status":"ok"}"#, "\(ok)")
        let created = try await run("curl", ["-sS", "--max-time", "10", "--cacert", cert, "-X", "POST", url + "/v1/ports"])
        #expect(created.status == 0 && created.output.contains("\"port\""), "\(created)")

        // Without the certificate as trust anchor, curl refuses (60: peer certificate cannot be verified).
        #expect(try await run("curl", ["-sS", "--max-time", "10", url + "/healthz"]).status == 60)
        // Plain HTTP gets no HTTP answer from the TLS port.
        let plain = try await run("curl", ["-sS", "--max-time", "5", "http://127.0.0.1:\(gateway.port)/healthz"])
        #expect(plain.status != 0 && !plain.output.contains("status"), "\(plain)")
    }
}
