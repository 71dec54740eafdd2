import AEMPTestSupport
import Crypto
import Foundation
import Logging
import NIOCore
import NIOEmbedded
import NIOPosix
import NIOSSL
import Testing

@testable import AEMP

// Issue 14: AnyEvent::MP networks secured with a certificate (Perl's profile `cert`). TLS starts
// after both greetings when both ask for it (`tls=1.0`); the side with the lower nonce is the TLS
// client; the auth lines travel inside TLS (tls_sha3_512); a node with a certificate and no
// secret is valid (aemp-protocol §4.5, Transport.pm).

/// One network certificate per test process (generating is cheap, but a shared one keeps the
/// logs of a failing test comparable).
let networkPEM: String = try! MeshCertificate.generate()
let otherNetworkPEM: String = try! MeshCertificate.generate(commonName: "some other network")

func tlsNodeConfiguration(
    id: String, binds: [String] = [], seeds: [String] = [], pem: String? = networkPEM, secret: String = "",
    framings: [Framing] = [.cbor, .json], log: CapturedLog? = nil
) throws -> NodeConfiguration {
    var c = scriptedNodeConfiguration(id: id, binds: binds, seeds: seeds, framings: framings)
    c.secret = Array(secret.utf8)
    if let pem { c.certificate = try MeshCertificate(pem: pem, source: "test") }
    if let log { c.logger = log.logger() }
    return c
}

@Suite("mesh TLS (issue 14)", .serialized, .timeLimit(.minutes(3)))
struct MeshTLSTests {

    /// A seed and a private node joined to it, with the given configurations; runs `body`, then
    /// shuts both down.
    private func withPair(
        seed: NodeConfiguration, client makeClient: (String) throws -> NodeConfiguration,
        _ body: (Node, Node) async throws -> Void
    ) async throws {
        let seedNode = try Node(configuration: seed)
        try await seedNode.start()
        let address = try #require(await seedNode.listenAddresses().first)
        let clientNode = try Node(configuration: try makeClient(address))
        try await clientNode.start()
        do {
            try await body(seedNode, clientNode)
        } catch {
            await clientNode.shutdown()
            await seedNode.shutdown()
            throw error
        }
        await clientNode.shutdown()
        await seedNode.shutdown()
    }

    /// A message each way, and both list each other's connection as TLS with tls_sha3_512.
    private func expectTLSLink(_ a: Node, _ b: Node, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let (aPort, aInbox) = a.mailbox()
        var aMessages = aInbox.makeAsyncIterator()
        let (bPort, bInbox) = b.mailbox()
        var bMessages = bInbox.makeAsyncIterator()
        b.snd(aPort, ["to a", 1, "ünïcödé", ["k": [1.5, nil]]])
        #expect(try await next(&aMessages) == ["to a", 1, "ünïcödé", ["k": [1.5, nil]]], sourceLocation: sourceLocation)
        a.snd(bPort, ["to b", .string(String(repeating: "x", count: 100_000))])
        #expect(try await next(&bMessages) == ["to b", .string(String(repeating: "x", count: 100_000))], sourceLocation: sourceLocation)
        for (node, peer) in [(a, b), (b, a)] {
            let infos = await node.connections().filter { $0.node == peer.id }
            #expect(infos.count == 1, "\(infos)", sourceLocation: sourceLocation)
            #expect(infos.first?.tls?.hasPrefix("TLSv1.") == true, "\(infos)", sourceLocation: sourceLocation)
            #expect(infos.first?.auth == "tls_sha3_512", "\(infos)", sourceLocation: sourceLocation)
        }
    }

    @Test(
        "a network with a certificate and no secret: the nodes join over TLS and carry messages both ways, in each framing pair",
        arguments: [([Framing.json], [Framing.json]), ([.cbor], [.cbor]), ([.cbor, .json], [.json, .cbor])])
    func certificateOnly(framings: ([Framing], [Framing])) async throws {
        try await withPair(
            seed: try tlsNodeConfiguration(id: "tls-seed-%u", binds: ["127.0.0.1:0"], framings: framings.0),
            client: { try tlsNodeConfiguration(id: "tls-priv-%u", seeds: [$0], framings: framings.1) }
        ) { seed, client in
            #expect(try await client.waitForMaster(timeout: stretched(.seconds(10))) == seed.id)
            try await expectTLSLink(seed, client)
            let info = try #require(await client.connections().first { $0.node == seed.id })
            #expect(info.sendFraming == framings.0.first?.rawValue && info.receiveFraming == framings.1.first?.rawValue, "\(info)")
        }
    }

    @Test("certificate and secret on both sides: TLS is used and the auth is tls_sha3_512 (as Perl picks it from the accept list)")
    func certificateAndSecret() async throws {
        try await withPair(
            seed: try tlsNodeConfiguration(id: "tls-both-seed-%u", binds: ["127.0.0.1:0"], secret: testSecret),
            client: { try tlsNodeConfiguration(id: "tls-both-priv-%u", seeds: [$0], secret: testSecret) }
        ) { seed, client in
            #expect(try await client.waitForMaster(timeout: stretched(.seconds(10))) == seed.id)
            try await expectTLSLink(seed, client)
        }
    }

    @Test("a seed with certificate and secret and a node with only the secret: no TLS, hmac_sha3_512, as between Perl nodes")
    func mixedNetwork() async throws {
        try await withPair(
            seed: try tlsNodeConfiguration(id: "tls-mixed-seed-%u", binds: ["127.0.0.1:0"], secret: testSecret),
            client: { try tlsNodeConfiguration(id: "tls-mixed-priv-%u", seeds: [$0], pem: nil, secret: testSecret) }
        ) { seed, client in
            #expect(try await client.waitForMaster(timeout: stretched(.seconds(10))) == seed.id)
            // The seed's end of the handshake may finish after the client found its master (a
            // ThreadSanitizer run of CI saw it): wait for it.
            await eventually("the seed lists the client's connection") {
                await seed.connections().contains { $0.node == client.id }
            }
            let info = try #require(await seed.connections().first { $0.node == client.id })
            #expect(info.tls == nil && info.auth == "hmac_sha3_512", "\(info)")
        }
    }

    @Test("different network certificates: refused on both sides with a reason that names the peer and the certificate problem; no link comes up")
    func mismatchedCertificates() async throws {
        let seedLog = CapturedLog()
        let clientLog = CapturedLog()
        try await withPair(
            seed: try tlsNodeConfiguration(id: "tls-mm-seed-%u", binds: ["127.0.0.1:0"], secret: testSecret, log: seedLog),
            client: {
                try tlsNodeConfiguration(id: "tls-mm-priv-%u", seeds: [$0], pem: otherNetworkPEM, secret: testSecret, log: clientLog)
            }
        ) { seed, client in
            // The same secret is no fallback once both ask for TLS (as between Perl nodes).
            await eventually(within: 10, "both sides log a TLS handshake failure at warning level") {
                seedLog.warnings(containing: "TLS handshake failed") && clientLog.warnings(containing: "TLS handshake failed")
            }
            let all = seedLog.text() + clientLog.text()
            #expect(all.contains("untrusted certificate"), "\(all)")
            #expect(all.contains(client.id) && all.contains(seed.id), "the reasons name the peers: \(all)")
            let problems = client.seedProblems
            #expect(problems.first?.reason.hasPrefix("TLS handshake failed") == true, "\(problems)")
            let clientUp = await client.upNodes()
            let seedUp = await seed.upNodes()
            #expect(clientUp.isEmpty && seedUp.isEmpty, "\(clientUp) \(seedUp)")
        }
    }

    @Test("a node without a certificate meets a certificate-only seed: the seed says the peer has no certificate and it has no secret; the node says the peer requires TLS and it has no certificate")
    func nodeWithoutCertificateRefused() async throws {
        let seedLog = CapturedLog()
        let clientLog = CapturedLog()
        try await withPair(
            seed: try tlsNodeConfiguration(id: "tls-only-seed-%u", binds: ["127.0.0.1:0"], log: seedLog),
            client: { try tlsNodeConfiguration(id: "tls-none-priv-%u", seeds: [$0], pem: nil, secret: testSecret, log: clientLog) }
        ) { seed, client in
            await eventually(within: 10, "the seed warns: the peer has no certificate and this node has no shared secret") {
                seedLog.warnings(containing: "peer has no certificate and this node has no shared secret")
            }
            await eventually(within: 10, "the node warns: the peer requires TLS and this node has no certificate") {
                clientLog.warnings(containing: "peer requires TLS and this node has no certificate")
            }
            #expect(client.seedProblems.first?.reason.hasPrefix("peer requires TLS and this node has no certificate") == true,
                "\(client.seedProblems)")
            #expect(await seed.upNodes().isEmpty)
        }
    }

    @Test("a node with neither a secret nor a certificate cannot start; a certificate alone is enough")
    func credentialsRequired() throws {
        #expect(throws: NodeError.missingSecret) { try Node(configuration: NodeConfiguration(secret: "")) }
        var c = NodeConfiguration(secret: "")
        c.certificate = try MeshCertificate(pem: networkPEM)
        _ = try Node(configuration: c)
    }

    // MARK: - Tokens and roles

    @Test("tls_sha3_512 tokens: SHA3-512 of the four greeting lines, ours first when sent, the peer's first when checked (fixed lines, and a real Perl 2.02 exchange)")
    func tlsToken() {
        let auth = Authenticator(secret: "")
        // Fixed lines; the expected values come from Python's hashlib.sha3_512.
        let ours = ("aemp;1;alpha;tls_sha3_512,hmac_sha3_512,tls_anon,cleartext;cbor,json;tls=1.0", "QUxQSEEtbm9uY2U=")
        let theirs = ("aemp;1;beta;tls_sha3_512,hmac_sha3_512,tls_anon,cleartext;cbor,json,storable;provider=AE-2.02;tls=1.0", "QkVUQS1ub25jZQ==")
        #expect(auth.tokenToSend(.tlsSHA3_512, local: ours, remote: theirs)
            == "fff439b4e7d162a1f665cf5e29c13b92d12fc007589384810515a157ef7576319f64c9cf1d56c392c770f7a8102fa683bd5da2a4436b07bd8e776f62f737d0fa")
        #expect(auth.tokenExpected(.tlsSHA3_512, local: ours, remote: theirs)
            == "41eb8a1d4e7e64a2434eaeae0d730f0959fda07814f7d622e7ea0ac355d05000175107c38c977d640a7e316615b1eb613c2a66c4618371bf4cce08d5dca397a0")
        #expect(auth.tokenToSend(.tlsAnon, local: ours, remote: theirs) == "")

        // Two Perl 2.02 nodes with a certificate and a secret (auth lines logged before TLS
        // encrypted them): each sent tls_sha3_512 over its own lines first; the secret plays no part.
        let cli = (
            "aemp;1;cli4231;tls_sha3_512,hmac_sha3_512,tls_anon,cleartext;cbor,json,storable;gproto=1;provider=AE-2.02;tls=1.0;peeraddr=127.0.0.1:4330;mproto=1",
            "VyrCaH5oKk1C9ShAp+zOvH3CZGUIex8zAq8BvXu8p8eCBDsSW0JK1xPHUKQuyo1wIbk5m5Z5GamkfYJ1Z5EdiC0i")
        let seed = (
            "aemp;1;seed4230;tls_sha3_512,hmac_sha3_512,tls_anon,cleartext;cbor,json,storable;provider=AE-2.02;tls=1.0;mproto=1;peeraddr=127.0.0.1:51852;gproto=1",
            "sZp8ouymflh9pHC45HbcNzUkjaqfCNg1RITiSpt9QCgU5Ck4/4X3NUgxQRzQXWscNGraM3PXgL6mp+DolvEBKzcT")
        let cliSent = "5c148d46dc18c43a0ac201622a7a64ea32b9448e30cd005c89d182f115fd815ef0c308b6ad41b95ee75344ac8a9586f326396f43ccbd3fe6bd43d5a9ff8f9b59"
        let seedSent = "c25040199c0281125038f09b3764a4ca620ba1e4fc330b06259ac83ab2cf4c54a960a0e305a832dbc1ae4d6086db977fb95b815bfbc8c9b7f23661608e03f2a4"
        #expect(auth.tokenToSend(.tlsSHA3_512, local: cli, remote: seed) == cliSent)
        #expect(auth.tokenExpected(.tlsSHA3_512, local: cli, remote: seed) == seedSent)
        #expect(Authenticator(secret: "whatever").tokenToSend(.tlsSHA3_512, local: seed, remote: cli) == seedSent)
        // That exchange's roles: cli's nonce ("V…") sorts below seed's ("s…"): cli was the TLS client.
        #expect(Connection.isTLSClient(localNonce: cli.1, remoteNonce: seed.1))
        #expect(!Connection.isTLSClient(localNonce: seed.1, remoteNonce: cli.1))
    }

    @Test("the TLS role: the lower nonce line (raw bytes) is the client, exactly one side is, from both sides")
    func roleChoice() {
        let pairs = [
            ("ABC", "abc"), ("abc", "abcd"), ("+/", "0"), ("zzz", "zz{"), (ScriptedPeer.nonce(), ScriptedPeer.nonce()),
            ("caf\u{E9}", "cafe"),  // Latin-1 byte 0xE9 sorts above 'e'
        ]
        for (a, b) in pairs where a != b {
            let aIsClient = Connection.isTLSClient(localNonce: a, remoteNonce: b)
            #expect(aIsClient != Connection.isTLSClient(localNonce: b, remoteNonce: a), "\(a) vs \(b)")
            #expect(aIsClient == Array(a.unicodeScalars.map { UInt8($0.value) }).lexicographicallyPrecedes(b.unicodeScalars.map { UInt8($0.value) }))
        }
        #expect(Connection.isTLSClient(localNonce: "abc", remoteNonce: "abcd"))
        #expect(!Connection.isTLSClient(localNonce: "caf\u{E9}", remoteNonce: "cafe"))
    }

    @Test("on the wire: a peer whose nonce sorts above ours gets our ClientHello right after the greetings; one whose nonce sorts below gets nothing (we wait for its ClientHello)")
    func roleOnTheWire() async throws {
        try await ScriptedResources.with { res in
            let node = res.node(try Node(configuration: try tlsNodeConfiguration(id: "tls-role-%u", binds: ["127.0.0.1:0"])))
            try await node.start()
            let address = try #require(await node.listenAddresses().first)
            for (nonce, nodeIsClient) in [(String(repeating: "~", count: 88), true), (String(repeating: "!", count: 88), false)] {
                let peer = res.peer(try await ScriptedPeer.dial(address))
                let greeting = try await peer.readGreeting(within: 5)
                #expect(greeting.0.contains(";tls=1.0"), "\(greeting.0)")
                #expect(greeting.0.contains(";tls_sha3_512,hmac_sha3_512,tls_anon,cleartext;"), "\(greeting.0)")
                try await peer.write(
                    ScriptedPeer.perlGreeting(nodeID: "role-peer-\(nodeIsClient)", framings: "cbor,json", peerAddr: address)
                        + ";tls=1.0\n\(nonce)\n")
                if nodeIsClient {
                    let hello = try await peer.read("a TLS ClientHello", within: 5) { s -> [UInt8]? in
                        s.buffer.readableBytes >= 6 ? Array(s.buffer.readableBytesView.prefix(6)) : nil
                    }
                    #expect(hello[0] == 22 && hello[1] == 3 && hello[5] == 1, "a handshake record holding a ClientHello: \(hello)")
                } else {
                    try await Task.sleep(for: .milliseconds(Int(500 * sanitizerSlowdown)))
                    let sent = peer.inboxBytes()
                    #expect(sent.isEmpty, "the TLS server sends nothing before the ClientHello: \(sent.prefix(16))")
                }
                await peer.close()
            }
        }
    }

    @Test("a Perl-like TLS client peer: its nonce line and ClientHello in one segment, its auth line right behind its Finished; the node completes the handshake, answers tls_sha3_512 inside TLS and lists the peer up")
    func coalescedPeer() async throws {
        try await ScriptedResources.with { res in
            let node = res.node(try Node(configuration: try tlsNodeConfiguration(id: "tls-coal-%u", binds: ["127.0.0.1:0"])))
            try await node.start()
            let address = try #require(await node.listenAddresses().first)
            let peer = res.peer(try await ScriptedPeer.dial(address))
            let nodeLines = try await peer.readGreeting(within: 5)
            let peerID = "coalesced-perl"
            let ours = (ScriptedPeer.perlGreeting(nodeID: peerID, framings: "cbor,json", peerAddr: address) + ";tls=1.0",
                        "!" + String(ScriptedPeer.nonce().dropFirst()))  // sorts below any Base64 nonce: we are the TLS client

            // The TLS client of the peer, run in a testing channel over the raw TCP connection.
            let tls = NIOAsyncTestingChannel()
            let contexts = try MeshCertificate(pem: networkPEM).makeContexts()
            try await tls.testingEventLoop.executeInContext {
                try tls.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: contexts.client, serverHostname: nil))
            }
            try await tls.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 1))
            func drainOutbound() async throws -> [UInt8] {
                var out: [UInt8] = []
                while let chunk = try await tls.readOutbound(as: ByteBuffer.self) { out += chunk.readableBytesView }
                return out
            }
            let token = Authenticator(secret: "").tokenToSend(.tlsSHA3_512, local: ours, remote: nodeLines)
            // Queued before the handshake completes, as Perl's push_write right after starttls.
            tls.writeAndFlush(ByteBuffer(string: "tls_sha3_512;\(token);cbor\n"), promise: nil)
            let clientHello = try await drainOutbound()
            #expect(clientHello.first == 22, "a ClientHello record")
            try await peer.write(Array("\(ours.0)\n\(ours.1)\n".utf8) + clientHello)

            // Pump records both ways until the node's auth line comes out of TLS.
            var plaintext: [UInt8] = []
            let deadline = ContinuousClock.now + .seconds(10 * sanitizerSlowdown)
            while !plaintext.contains(0x0A), ContinuousClock.now < deadline {
                let incoming = try await peer.read("TLS records from the node", within: 10) { s -> [UInt8]? in
                    guard s.buffer.readableBytes > 0 else { return nil }
                    defer { s.buffer.clear() }
                    return Array(s.buffer.readableBytesView)
                }
                try await tls.writeInbound(ByteBuffer(bytes: incoming))
                while let chunk = try await tls.readInbound(as: ByteBuffer.self) { plaintext += chunk.readableBytesView }
                let out = try await drainOutbound()
                if !out.isEmpty { try await peer.write(out) }  // Finished and the auth line, in one write
            }
            let line = String(decoding: plaintext.prefix { $0 != 0x0A }, as: UTF8.self)
            let expected = Authenticator(secret: "").tokenExpected(.tlsSHA3_512, local: ours, remote: nodeLines)
            #expect(line == "tls_sha3_512;\(expected);cbor", "the node's auth line, inside TLS: \(line)")
            await eventually(within: 5, "the node lists the peer up") { await node.upNodes().contains(peerID) }
            let info = await node.connections().first { $0.node == peerID }
            #expect(info?.tls != nil && info?.auth == "tls_sha3_512", "\(String(describing: info))")
            // Closing waits for a close_notify no peer of a testing channel sends, until the TLS
            // shutdown timeout (5 s) on a clock that only moves when told to: move it, or the
            // channel and its buffers stay alive (AddressSanitizer reports them as leaked).
            tls.close(promise: nil)
            await tls.testingEventLoop.advanceTime(by: .seconds(10))
            _ = try? await tls.finish()
        }
    }

    // MARK: - On the wire

    @Test("a capture between two nodes: after each side's two greeting lines every byte is a TLS record; no auth line, no packet in the clear")
    func captureIsTLS() async throws {
        let seed = try Node(configuration: try tlsNodeConfiguration(id: "tls-cap-seed-%u", binds: ["127.0.0.1:0"], framings: [.json]))
        try await seed.start()
        let seedAddress = try #require(await seed.listenAddresses().first)
        let relay = try await RecordingRelay.start(target: seedAddress)
        let client = try Node(configuration: try tlsNodeConfiguration(id: "tls-cap-priv-%u", seeds: [relay.address], framings: [.json]))
        try await client.start()
        #expect(try await client.waitForMaster(timeout: stretched(.seconds(10))) == seed.id)
        let marker = "plaintext-marker-\(UInt64.random(in: 0...UInt64.max))"
        let (port, inbox) = seed.mailbox()
        var messages = inbox.makeAsyncIterator()
        client.snd(port, [.string(marker), 1, 2, 3])
        #expect(try await next(&messages) == [.string(marker), 1, 2, 3])
        await client.shutdown()
        await seed.shutdown()
        let (up, down) = await relay.stop()

        for (label, bytes) in [("dialer to seed", up), ("seed to dialer", down)] {
            let parsed = try #require(TLSCapture.parse(bytes), "\(label): \(bytes.count) bytes")
            #expect(parsed.lines.count == 2 && parsed.lines[0].hasPrefix("aemp;1;") && parsed.lines[0].contains(";tls=1.0"), "\(label): \(parsed.lines)")
            #expect(parsed.trailing == 0, "\(label): bytes after the last whole record")
            #expect(Set(parsed.records.map(\.type)).isSubset(of: [20, 21, 22, 23]), "\(label): \(parsed.records.map(\.type))")
            #expect(parsed.records.first?.type == 22, "\(label): the first record is a handshake record")
            #expect(parsed.records.contains { $0.type == 23 }, "\(label): application data records")
            let afterGreeting = Array(bytes[parsed.greetingLength...])
            for plain in ["tls_sha3_512;", "hmac_sha3_512", marker, "g_slave", "aemp;"] {
                #expect(!afterGreeting.contains(subsequence: Array(plain.utf8)), "\(label): \(plain) in the clear")
            }
        }
        // Without TLS the same exchange shows them (the check can fail).
        let plainSeed = try Node(configuration: try tlsNodeConfiguration(
            id: "tls-cap-plain-%u", binds: ["127.0.0.1:0"], pem: nil, secret: testSecret, framings: [.json]))
        try await plainSeed.start()
        let plainRelay = try await RecordingRelay.start(target: try #require(await plainSeed.listenAddresses().first))
        let plainClient = try Node(configuration: try tlsNodeConfiguration(
            id: "tls-cap-plainpriv-%u", seeds: [plainRelay.address], pem: nil, secret: testSecret, framings: [.json]))
        try await plainClient.start()
        #expect(try await plainClient.waitForMaster(timeout: stretched(.seconds(10))) == plainSeed.id)
        // The client takes the seed as master on the seed's auth line; its own may still be on the
        // way through the relay (a CI run read the capture before it arrived). The seed lists the
        // client once it has checked that line.
        await eventually("the seed has authenticated the client") { await plainSeed.upNodes().contains(plainClient.id) }
        await plainClient.shutdown()
        await plainSeed.shutdown()
        let (plainUp, _) = await plainRelay.stop()
        #expect(TLSCapture.parse(plainUp) == nil, "a cleartext link does not parse as TLS records")
        // On whichever connection authenticated (under AddressSanitizer the first one can be
        // given up as slow and a second one dialled).
        #expect(plainRelay.everyUp.contains(subsequence: Array("hmac_sha3_512;".utf8)))
    }

    // MARK: - Certificate files

    @Test("a generated certificate: key block then certificate block, CN=AnyEvent::MP, ten years, read back; RSA too")
    func generatedLayout() throws {
        for type in MeshCertificate.KeyType.allCases {
            let pem = try MeshCertificate.generate(keyType: type)
            let labels = PEMBlock.split(pem).map(\.label)
            #expect(labels == ["PRIVATE KEY", "CERTIFICATE"], "\(type): \(labels)")
            let certificate = try MeshCertificate(pem: pem)
            #expect(certificate.subject == "CN=AnyEvent::MP", "\(certificate.subject)")
            #expect(certificate.notValidAfter.timeIntervalSinceNow > 3649 * 86400)
            #expect(certificate.validityProblem() == nil)
            #expect(certificate.fingerprint.count == 64 && certificate.trustedCount == 1)
        }
    }

    @Test("a file as Perl's aemp gencert writes it (certificate first, then the key) is read, and a node using it joins one using the same text reordered key-first")
    func perlLayout() async throws {
        let perl = try MeshCertificate(pem: perlGencertPEM, source: "perl.pem")
        #expect(perl.subject == "CN=AnyEvent::MP")
        let blocks = PEMBlock.split(perlGencertPEM)
        let keyFirst = blocks.reversed().map(\.text).joined()
        #expect(try MeshCertificate(pem: keyFirst).fingerprint == perl.fingerprint)
        try await withPair(
            seed: try tlsNodeConfiguration(id: "tls-perlpem-seed-%u", binds: ["127.0.0.1:0"], pem: perlGencertPEM),
            client: { try tlsNodeConfiguration(id: "tls-perlpem-priv-%u", seeds: [$0], pem: keyFirst) }
        ) { seed, client in
            #expect(try await client.waitForMaster(timeout: stretched(.seconds(10))) == seed.id)
            try await expectTLSLink(seed, client)
        }
    }

    @Test("bad certificate texts get one clear line naming the source and the problem", arguments: BadCertificate.allCases)
    func badFiles(_ bad: BadCertificate) throws {
        let generated = try MeshCertificate.generate()
        let blocks = PEMBlock.split(generated)
        let other = PEMBlock.split(otherNetworkPEM)
        let text: String
        let expected: String
        switch bad {
        case .empty: (text, expected) = ("", "no PEM blocks")
        case .garbage: (text, expected) = ("hello\nworld\n", "no PEM blocks")
        case .keyOnly: (text, expected) = (blocks[0].text, "no certificate")
        case .certificateOnly: (text, expected) = (blocks[1].text, "no private key")
        case .encryptedKey:
            (text, expected) = ("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n" + blocks[1].text, "encrypted")
        case .foreignKey: (text, expected) = (other[0].text + blocks[1].text, "does not belong")
        case .brokenCertificate:
            (text, expected) = (blocks[0].text + "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a usable certificate")
        }
        do {
            _ = try MeshCertificate(pem: text, source: "mesh.pem")
            Issue.record("\(bad) was accepted")
        } catch {
            #expect(error.description.hasPrefix("mesh certificate mesh.pem: "), "\(error)")
            #expect(error.description.contains(expected), "\(error)")
            #expect(!error.description.contains("\n"), "one line: \(error)")
        }
        let missing = "/nonexistent/mesh-\(UInt32.random(in: 0...UInt32.max)).pem"
        #expect(throws: MeshCertificateError(source: missing, problem: "no such file")) { try MeshCertificate(contentsOfFile: missing) }
    }

    @Test("Perl reads the tls pair as a number (int): 1.0, 1, 1.9 and ' 1x' ask for TLS; 0, 2, x and empty do not")
    func tlsPairAsPerlReadsIt() {
        for (value, wants) in [("1.0", true), ("1", true), ("1.9", true), (" 1x", true), ("1e0", true), ("0", false), ("2", false),
                               ("x", false), ("", false), ("0.9", false), ("-1", false)] {
            let greeting = Greeting(nodeID: "n", authMethods: [], framings: [], pairs: ["tls": value])
            #expect(greeting.requestsTLS == wants, "tls=\(value)")
        }
    }
}

enum BadCertificate: String, CaseIterable, Sendable {
    case empty, garbage, keyOnly, certificateOnly, encryptedKey, foreignKey, brokenCertificate
}

extension CapturedLog {
    /// Whether a warning (or worse) mentions `text`.
    func warnings(containing text: String) -> Bool {
        records.withLock { $0.contains { $0.level >= .warning && $0.description.contains(text) } }
    }

    func text() -> String {
        records.withLock { $0.map(\.description).joined(separator: "\n") }
    }
}

extension Array where Element == UInt8 {
    func contains(subsequence needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, needle.count <= count else { return needle.isEmpty }
        for start in 0...(count - needle.count) where self[start] == needle[0] {
            if Array(self[start..<(start + needle.count)]) == needle { return true }
        }
        return false
    }
}

/// One direction of a captured mesh connection read as: greeting lines, then TLS records.
struct TLSCapture: Equatable {
    var lines: [String]
    var greetingLength: Int
    var records: [Record]
    /// Bytes after the last whole record.
    var trailing: Int

    struct Record: Equatable {
        var type: UInt8
        var length: Int
    }

    /// Nil when the bytes after the two greeting lines are not TLS records (or there are none).
    static func parse(_ bytes: [UInt8]) -> TLSCapture? {
        var at = 0
        var lines: [String] = []
        while lines.count < 2, let lf = bytes[at...].firstIndex(of: 0x0A) {
            lines.append(String(decoding: bytes[at..<lf], as: UTF8.self))
            at = lf + 1
        }
        guard lines.count == 2 else { return nil }
        let greetingLength = at
        var records: [Record] = []
        while at + 5 <= bytes.count {
            let type = bytes[at]
            let length = Int(bytes[at + 3]) << 8 | Int(bytes[at + 4])
            guard (20...23).contains(type), bytes[at + 1] == 3, bytes[at + 2] <= 4, length <= 16384 + 2048 else { return nil }
            guard at + 5 + length <= bytes.count else { break }
            records.append(Record(type: type, length: length))
            at += 5 + length
        }
        guard !records.isEmpty else { return nil }
        return TLSCapture(lines: lines, greetingLength: greetingLength, records: records, trailing: bytes.count - at)
    }
}

/// A TCP relay on 127.0.0.1 that forwards the connections it accepts to `target` and records the
/// bytes of the first one in each direction: a capture of a mesh link, between two real nodes.
final class RecordingRelay: Sendable {
    let address: String
    private let server: any Channel
    private let captured = Locked<(up: [UInt8], down: [UInt8], connections: Int, everyUp: [UInt8])>(([], [], 0, []))

    private init(address: String, server: any Channel) {
        self.address = address
        self.server = server
    }

    static func start(target: String) async throws -> RecordingRelay {
        let parts = target.split(separator: ":")
        let host = String(parts[0])
        let port = Int(parts[1])!
        let box = Locked<RecordingRelay?>(nil)
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { (inbound: any Channel) -> EventLoopFuture<Void> in
                guard let relay = box.withLock({ $0 }) else { return inbound.close() }
                return relay.forward(inbound, host: host, port: port)
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let relay = RecordingRelay(address: "127.0.0.1:\(server.localAddress!.port!)", server: server)
        box.withLock { $0 = relay }
        return relay
    }

    /// Connects an accepted connection to the target and forwards both ways.
    private func forward(_ inbound: any Channel, host: String, port: Int) -> EventLoopFuture<Void> {
        let first = captured.withLock { c -> Bool in
            c.connections += 1
            return c.connections == 1
        }
        let recordUp: @Sendable ([UInt8]) -> Void = { [self] bytes in
            self.captured.withLock { c in
                if first { c.up += bytes }
                c.everyUp += bytes
            }
        }
        let recordDown: @Sendable ([UInt8]) -> Void = { [self] bytes in
            if first { self.captured.withLock { $0.down += bytes } }
        }
        let upward = Forward(record: recordUp)
        let downward = Forward(record: recordDown)
        downward.partner = inbound
        do {
            try inbound.pipeline.syncOperations.addHandler(upward)
        } catch {
            return inbound.eventLoop.makeFailedFuture(error)
        }
        let connected: EventLoopFuture<any Channel> = ClientBootstrap(group: inbound.eventLoop)
            .channelInitializer { (outbound: any Channel) -> EventLoopFuture<Void> in
                outbound.eventLoop.makeCompletedFuture { try outbound.pipeline.syncOperations.addHandler(downward) }
            }
            .connect(host: host, port: port)
        return connected.map { (outbound: any Channel) -> Void in
            upward.partner = outbound
        }
    }

    /// Closes the listener; what the first connection carried each way.
    func stop() async -> (up: [UInt8], down: [UInt8]) {
        try? await server.close()
        return captured.withLock { ($0.up, $0.down) }
    }

    /// What every connection carried upward so far (a node may dial again when its first
    /// connection's handshake is slow, as under a sanitizer).
    var everyUp: [UInt8] { captured.withLock { $0.everyUp } }

    private final class Forward: ChannelInboundHandler, @unchecked Sendable {
        // @unchecked: created in a channel initializer and used only on that channel's loop
        // (the relay puts both ends of a connection on one loop).
        typealias InboundIn = ByteBuffer
        let record: @Sendable ([UInt8]) -> Void
        /// Bytes read before the other end connected.
        var pending: [ByteBuffer] = []
        var partner: (any Channel)? {
            didSet {
                for buffer in pending { partner?.writeAndFlush(buffer, promise: nil) }
                pending = []
            }
        }

        init(record: @escaping @Sendable ([UInt8]) -> Void) { self.record = record }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = unwrapInboundIn(data)
            record(Array(buffer.readableBytesView))
            if let partner { partner.writeAndFlush(buffer, promise: nil) } else { pending.append(buffer) }
        }

        func channelInactive(context: ChannelHandlerContext) {
            partner?.close(promise: nil)
            context.fireChannelInactive()
        }
    }
}
