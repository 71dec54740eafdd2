import AEMPTestSupport
import Foundation
import Logging
import NIOCore
import Testing

@testable import AEMP

// Issue 13 item 8: handshake failures that used to show only as "connection closed during
// handshake" (or a bare "no common auth method") say what is wrong, at warning level, and the
// gateway's /readyz says why it is not attached.

@Suite("clear handshake errors", .serialized, .timeLimit(.minutes(2)))
struct HandshakeDiagnosticsTests {

    @Test("a seed whose greeting says tls=1.0 and that accepts only tls_sha3_512,tls_anon: the gateway (no certificate) warns that the peer requires TLS and this node has no certificate, and /readyz says so")
    func tlsOnlySeed() async throws {
        let tlsSeed = try await ScriptedListener.start()
        defer { Task { await tlsSeed.close() } }
        let gateway = try await GatewayChild.start(seeds: [tlsSeed.address])
        defer { gateway.child.stop() }

        // What a Perl 2.02 node with a `cert` and no secret greets with (Transport.pm: `tls=1.0`
        // when a TLS context exists); it cannot authenticate without TLS and closes after reading
        // our greeting ("unable to handshake TLS and no shared secret configured").
        let peer = try await tlsSeed.accept(within: 10)
        try await peer.write(
            "aemp;1;hd-tls-seed;tls_sha3_512,tls_anon;cbor,json;tls=1.0;peeraddr=\(peer.remoteAddress);"
                + "provider=AE-2.02;gproto=1;mproto=1\n\(ScriptedPeer.nonce())\n")
        _ = try await peer.readGreeting(within: 5)
        await peer.close()

        let port = tlsSeed.address.split(separator: ":").last.map(String.init) ?? "?"
        await eventually(within: 10, "a warning names TLS, the missing secret and the seed's address") {
            gateway.child.errorText.split(separator: "\n").contains { line in
                line.contains("warning") && line.contains("peer requires TLS and this node has no certificate") && line.contains("--mesh-cert")
                    && line.contains(":\(port)")
            }
        }
        let ready = try await gateway.get("/readyz")
        #expect(ready.status == 503, "\(ready.body)")
        #expect(ready.body.contains(#""code":"not_ready""#), "\(ready.body)")
        #expect(ready.body.contains("seed \(tlsSeed.address): peer requires TLS"), "\(ready.body)")
        #expect(ready.body.contains(#""seeds":[{"#), "the per-seed reasons as a member: \(ready.body)")
    }

    @Test("a tls=1.0 peer that lists hmac_sha3_512 but closes without authenticating (a Perl node with a cert and no secret): the node warns peer requires TLS, and seedProblems says it")
    func tlsPeerClosesAfterGreeting() async throws {
        let tlsSeed = try await ScriptedListener.start()
        defer { Task { await tlsSeed.close() } }
        let log = CapturedLog()
        var c = scriptedNodeConfiguration(id: "hd-tls-client-%u", seeds: [tlsSeed.address])
        c.logger = log.logger()
        let node = try Node(configuration: c)
        try await node.start()
        defer { Task { await node.shutdown() } }

        let peer = try await tlsSeed.accept(within: 10)
        try await peer.write(
            "aemp;1;hd-tls-perl;tls_sha3_512,hmac_sha3_512,tls_anon,cleartext;cbor,json;tls=1.0;"
                + "peeraddr=\(peer.remoteAddress);provider=AE-2.02\n\(ScriptedPeer.nonce())\n")
        _ = try await peer.readGreeting(within: 5)
        _ = try await peer.readLine(within: 5, "the node's auth line (it has a secret)")
        await peer.close()  // Perl: "unable to handshake TLS and no shared secret configured"

        await eventually(within: 10, "a warning: peer requires TLS, naming the peer and its address") {
            log.records.withLock { records in
                records.contains { r in
                    r.level == .warning && r.description.contains("peer requires TLS and this node has no certificate")
                        && r.description.contains("hd-tls-perl") && r.description.contains(peer.localAddress)
                }
            }
        }
        let problems = node.seedProblems
        #expect(problems.count == 1 && problems.first?.seed == tlsSeed.address, "\(problems)")
        #expect(problems.first?.reason.hasPrefix("peer requires TLS and this node has no certificate") == true, "\(problems)")
    }

    @Test("two nodes with the same ID join one seed: the second one's log says node ID already connected, naming the ID and the seed")
    func duplicateNodeID() async throws {
        let seed = try makeNode(id: "hd-seed-%u", binds: ["127.0.0.1:0"])
        try await seed.start()
        let seedAddress = try #require(await seed.listenAddresses().first)
        let first = try makeNode(id: "hd-twin", seeds: [seedAddress])
        try await first.start()
        defer { Task { await first.shutdown(); await seed.shutdown() } }
        #expect(try await first.waitForMaster(timeout: stretched(.seconds(10))) == seed.id)

        let log = CapturedLog()
        var c = scriptedNodeConfiguration(id: "hd-twin", seeds: [seedAddress])
        c.logger = log.logger()
        let second = try Node(configuration: c)
        try await second.start()
        defer { Task { await second.shutdown() } }

        await eventually(within: 10, "the second node warns: node ID already connected, naming hd-twin and the seed") {
            log.records.withLock { records in
                records.contains { r in
                    r.level == .warning && r.description.contains("node ID already connected")
                        && r.description.contains("hd-twin") && r.description.contains(seed.id)
                }
            }
        }
        #expect(await second.master() == nil, "the seed refuses the second hd-twin")
        let seen = log.records.withLock { $0.map(\.description) }
        #expect(!seen.contains { $0.contains("connection closed during handshake") && !$0.contains("node ID") }, "\(seen)")
    }
}
