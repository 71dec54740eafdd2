import AEMPTestSupport
import Crypto
import Foundation
import Logging
import NIOCore
import NIOPosix
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
            #expect(await client.waitForMaster(timeout: .seconds(10)) == seed.id)
            try await expectTLSLink(seed, client)
            let info = try #require(await client.connections().first { $0.node == seed.id })
            #expect(info.sendFraming == framings.0.first?.rawValue && info.receiveFraming == framings.1.first?.rawValue, "\(info)")
        }
    }
}
