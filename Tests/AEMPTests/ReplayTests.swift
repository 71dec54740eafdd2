import Foundation
import NIOCore
import Testing

@testable import AEMP

/// Perl's side of the captured conversations (shared/aemp-vectors), replayed by a scripted peer
/// against a real Swift node over TCP on 127.0.0.1: the handshake (aemp-protocol §4), joining a
/// seed (§10.1) and the node-port requests of §7 the way the Perl nodes sent them.
@Suite("Replay of captured Perl conversations", .serialized, .timeLimit(.minutes(2)))
struct ReplayTests {

    /// One replay of `conn03` (the private node `send` joining the seed), Perl's side played by the peer.
    enum SeedMode: String, CaseIterable, Sendable, CustomTestStringConvertible {
        /// json/: every Perl node has `framing_format => ["json"]`.
        case json
        /// cbor/: Perl's default `cbor,json,storable`; the Swift node prefers cbor so both directions are CBOR.
        case cbor
        /// mixed-framing/: Perl offers `cbor,json,storable`, the Swift node `json,cbor`: the node
        /// sends CBOR, the peer names json in its auth line and sends JSON.
        case mixed

        var testDescription: String { rawValue }

        var scenario: String {
            switch self {
            case .json: "json"
            case .cbor: "cbor"
            case .mixed: "mixed-framing"
            }
        }

        var nodeFramings: [Framing] {
            switch self {
            case .json, .mixed: [.json, .cbor]
            case .cbor: [.cbor, .json]
            }
        }

        /// What the node must send in: the first entry of Perl's list that it supports.
        var expectedNodeFraming: String {
            switch self {
            case .json: "json"
            case .cbor, .mixed: "cbor"
            }
        }

        /// What Perl (the peer) sends in: the first entry of the node's list that Perl supports.
        var expectedPeerFraming: String {
            switch self {
            case .json, .mixed: "json"
            case .cbor: "cbor"
            }
        }
    }

    @Test("a Swift node joins a scripted Perl seed (conn03) and answers Perl's node-port requests",
          arguments: SeedMode.allCases)
    func seedReplay(_ mode: SeedMode) async throws {
        try await ScriptedResources.with { res in
            let capture = try ReplayCapture.load(mode.scenario, "conn03")
            #expect(capture.serverNode == "seed")
            let perlGreeting1 = try #require(capture.greeting1["s2c"])
            let perlNonce = try #require(capture.greeting2["s2c"])
            let perlFramings = try #require(Greeting(line: Substring(perlGreeting1))).framings

            let listener = res.listener(try await ScriptedListener.start())
            let node = res.node(try Node(configuration: scriptedNodeConfiguration(
                id: "replay-\(mode.rawValue)-%u", seeds: [listener.address], framings: mode.nodeFramings)))
            try await node.start()
            let peer = res.peer(try await listener.accept(within: 10))

            // Perl's seed greeting, with the peeraddr it would see now (the node's ephemeral address).
            let greeting1 = ScriptedPeer.rewritePeerAddr(perlGreeting1, to: peer.remoteAddress)
            let hs = try await peer.handshake(ScriptedHandshakeOptions(greeting1: greeting1, greeting2: perlNonce))

            try Self.checkNodeGreeting(hs, node: node, peerAddr: listener.address)
            #expect(hs.nodeTokenValid, "the node's hmac_sha3_512 token over the real lines")
            #expect(hs.nodeAuthMethod == "hmac_sha3_512")
            let supported = mode.nodeFramings.map(\.rawValue)
            #expect(hs.nodeFraming == perlFramings.first(where: supported.contains))
            #expect(hs.nodeFraming == mode.expectedNodeFraming)
            #expect(hs.ourFraming == mode.expectedPeerFraming)

            // Perl's seed sends g_global (these are the captured bytes, in the capture's framing).
            let gGlobal = try #require(capture.packets.first { $0.dir == "s2c" && $0.decoded == ["", "g_global"] })
            #expect(gGlobal.framing == hs.ourFraming)
            try await peer.write(gGlobal.raw)

            // The node registers with its master: g_slave carrying 'l => {id: []} (empty g_slaves allowed first).
            var empties = 0
            while true {
                let p = try await peer.readMeaningfulPacket(within: 5, "g_slave")
                if p == ["", "g_slave"], empties < 3 {
                    empties += 1
                    continue
                }
                #expect(p.count == 3 && p.first == "" && p.dropFirst().first == "g_slave", "got \(p)")
                let db = p.count == 3 ? p[2].objectValue : nil
                #expect(db?["'l"] == .object([node.id: .array([])]), "g_slave db: \(p)")
                break
            }
            #expect(try await node.waitForMaster(timeout: stretched(.seconds(5))) == "seed")
            #expect(await node.upNodes() == ["seed"])

            try await Self.nodePortConversation(peer: peer, node: node, peerID: "seed")

            // A reply port on a node we have no connection to: like Perl, the node asks its master
            // where that node is (g_find), and gives up on `g_found … null`.
            try await peer.send(["", "time", "third#p", "to-a-third-node"])
            #expect(try await peer.readMeaningfulPacket(within: 5, "g_find third") == ["", "g_find", "third"])
            try await peer.send(["", "g_found", "third", nil])
            try await Self.expectTimeReply(peer: peer, peerID: "seed", tag: "after-g_found")
            #expect(await node.upNodes() == ["seed"])
        }
    }

    @Test("a scripted Perl node dials a public Swift node (recv's greeting of conn04) and gets the same answers",
          arguments: ["json", "cbor"])
    func dialReplay(_ scenario: String) async throws {
        try await ScriptedResources.with { res in
            let capture = try ReplayCapture.load(scenario, "conn04")
            #expect(capture.serverNode == "recv")
            let perlGreeting1 = try #require(capture.greeting1["s2c"])
            let perlNonce = try #require(capture.greeting2["s2c"])

            let node = res.node(try Node(configuration: scriptedNodeConfiguration(
                id: "replay-public-%u", binds: ["127.0.0.1:0"])))
            try await node.start()
            let address = try #require(await node.listenAddresses().first)
            let peer = res.peer(try await ScriptedPeer.dial(address))
            let greeting1 = ScriptedPeer.rewritePeerAddr(perlGreeting1, to: address)
            let hs = try await peer.handshake(ScriptedHandshakeOptions(greeting1: greeting1, greeting2: perlNonce))

            try Self.checkNodeGreeting(hs, node: node, peerAddr: peer.localAddress)
            #expect(hs.nodeTokenValid)
            // Perl lists `json` (json/) or `cbor,json,storable` (cbor/); the node offers json,cbor.
            #expect(hs.nodeFraming == scenario)
            #expect(hs.ourFraming == "json")
            await eventually(within: 5, "the node lists recv as up") { await node.upNodes() == ["recv"] }
            #expect(await node.master() == nil)

            try await Self.nodePortConversation(peer: peer, node: node, peerID: "recv")
        }
    }

    // MARK: - Perl-compatible tolerance (things Perl accepts)

    @Test("CRLF-terminated handshake lines are accepted (Perl reads lines with an optional CR)")
    func crlfLines() async throws {
        try await withPublicNode { node, address, res in
            let peer = res.peer(try await ScriptedPeer.dial(address))
            var options = ScriptedHandshakeOptions(
                greeting1: ScriptedPeer.perlGreeting(nodeID: "crlf", peerAddr: address), greeting2: ScriptedPeer.nonce())
            options.lineEnding = "\r\n"
            let hs = try await peer.handshake(options)
            #expect(hs.nodeTokenValid)
            try await Self.expectTimeReply(peer: peer, peerID: "crlf", tag: "after-crlf")
        }
    }

    @Test("a greeting without key=value pairs, and version written 1.0, are accepted (Perl compares numerically)")
    func minimalGreeting() async throws {
        try await withPublicNode { node, address, res in
            for (id, line) in [("bare", "aemp;1;bare;hmac_sha3_512;json"), ("onepointo", "aemp;1.0;onepointo;hmac_sha3_512;json")] {
                let peer = res.peer(try await ScriptedPeer.dial(address))
                let hs = try await peer.handshake(ScriptedHandshakeOptions(greeting1: line, greeting2: ScriptedPeer.nonce()))
                #expect(hs.nodeTokenValid)
                #expect(hs.nodeFraming == "json")
                try await Self.expectTimeReply(peer: peer, peerID: id, tag: "after-\(id)")
            }
        }
    }

    @Test("handshake and packets arriving one byte per write, and an auth line coalesced with packets",
          arguments: ["json", "cbor"])
    func segmentation(_ framing: String) async throws {
        // A handshake of some 330 one-byte writes, each awaited: under ThreadSanitizer on a busy
        // machine it took longer than the usual 5 s handshake timeout, and the node hung up.
        try await withPublicNode(handshakeTimeout: .seconds(60)) { node, address, res in
            // One byte per TCP write: greeting lines, auth line and packets.
            let slow = res.peer(try await ScriptedPeer.dial(address))
            let g1 = ScriptedPeer.perlGreeting(nodeID: "slow-\(framing)", framings: framing, peerAddr: address)
            let g2 = ScriptedPeer.nonce()
            for byte in Array((g1 + "\n" + g2 + "\n").utf8) { try await slow.write([byte]) }
            let nodeLines = try await slow.readGreeting()
            let authLine = try await slow.readLine(within: 5, "the node's auth line")
            let token = Authenticator(secret: testSecret).tokenToSend(.hmacSHA3_512, local: (g1, g2), remote: nodeLines)
            for byte in Array("hmac_sha3_512;\(token);\(framing)\n".utf8) { try await slow.write([byte]) }
            #expect(authLine.hasSuffix(";\(framing)"), "\(authLine)")
            slow.inbox.update { s in
                s.decoder = PacketDecoder(Framing(rawValue: framing)!, maxPacketSize: 1 << 20)
                s.sendFraming = Framing(rawValue: framing)
            }
            let request = try ScriptedCodec.encode(["", "time", .string("slow-\(framing)#p"), "bytewise"],
                                                   framing: Framing(rawValue: framing)!)
            for byte in request + request { try await slow.write([byte]) }
            for _ in 0..<2 {
                Self.checkTimeReply(try await slow.readMeaningfulPacket(within: 5, "bytewise time reply"), tag: "bytewise")
            }

            // Auth line and the first packets in one write.
            let fast = res.peer(try await ScriptedPeer.dial(address))
            let f1 = ScriptedPeer.perlGreeting(nodeID: "fast-\(framing)", framings: framing, peerAddr: address)
            let f2 = ScriptedPeer.nonce()
            try await fast.write(f1 + "\n" + f2 + "\n")
            let fastLines = try await fast.readGreeting()
            _ = try await fast.readLine(within: 5, "the node's auth line")
            let fastToken = Authenticator(secret: testSecret).tokenToSend(.hmacSHA3_512, local: (f1, f2), remote: fastLines)
            fast.inbox.update { s in
                s.decoder = PacketDecoder(Framing(rawValue: framing)!, maxPacketSize: 1 << 20)
                s.sendFraming = Framing(rawValue: framing)
            }
            let first = try ScriptedCodec.encode(["", "time", .string("fast-\(framing)#p"), "coalesced"],
                                                 framing: Framing(rawValue: framing)!)
            try await fast.write(Array("hmac_sha3_512;\(fastToken);\(framing)\n".utf8) + first + first)
            for _ in 0..<2 {
                Self.checkTimeReply(try await fast.readMeaningfulPacket(within: 5, "coalesced time reply"), tag: "coalesced")
            }
            #expect(await node.upNodes() == ["fast-\(framing)", "slow-\(framing)"])
        }
    }

    @Test("fields after the third in the auth line are ignored, as Perl does (T 291)")
    func authLineExtraFields() async throws {
        try await withPublicNode { node, address, res in
            let peer = res.peer(try await ScriptedPeer.dial(address))
            var options = ScriptedHandshakeOptions(
                greeting1: ScriptedPeer.perlGreeting(nodeID: "extra", peerAddr: address), greeting2: ScriptedPeer.nonce())
            options.authSuffix = ";future=1;x"
            let hs = try await peer.handshake(options)
            #expect(hs.nodeTokenValid)
            try await Self.expectTimeReply(peer: peer, peerID: "extra", tag: "after-extra-fields")
        }
    }

    @Test("cleartext auth from the peer is accepted, as Perl does (pyprobe-cleartext)")
    func cleartextAccepted() async throws {
        try await withPublicNode { node, address, res in
            let peer = res.peer(try await ScriptedPeer.dial(address))
            var options = ScriptedHandshakeOptions(
                greeting1: ScriptedPeer.perlGreeting(nodeID: "clear", peerAddr: address), greeting2: ScriptedPeer.nonce())
            options.authMethod = .cleartext
            let hs = try await peer.handshake(options)
            #expect(hs.nodeAuthMethod == "hmac_sha3_512", "the node itself never sends cleartext")
            #expect(hs.nodeTokenValid)
            try await Self.expectTimeReply(peer: peer, peerID: "clear", tag: "after-cleartext")
        }
    }

    @Test("whitespace between JSON texts, CBOR text strings and a non-string port name are tolerated")
    func dataTolerance() async throws {
        try await withPublicNode { node, address, res in
            // JSON with whitespace between packets (JSON::XS's incremental parser skips it).
            let j = res.peer(try await ScriptedPeer.dial(address))
            _ = try await j.handshake(ScriptedHandshakeOptions(
                greeting1: ScriptedPeer.perlGreeting(nodeID: "ws", peerAddr: address), greeting2: ScriptedPeer.nonce()))
            try await j.write(#"["","time","ws#p","a"]"# + "\n " + #"["","time","ws#p","b"]"# + "\r\n\t" + #"[1,"x"]"#
                + #"["","time","ws#p","c"]"#)
            for tag in ["a", "b", "c"] {
                Self.checkTimeReply(try await j.readMeaningfulPacket(within: 5, "time reply \(tag)"), tag: tag)
            }

            // CBOR with text strings (major type 3), like pyprobe-cbor; Perl treats them like byte strings.
            let c = res.peer(try await ScriptedPeer.dial(address))
            let hs = try await c.handshake(ScriptedHandshakeOptions(
                greeting1: ScriptedPeer.perlGreeting(nodeID: "txt", framings: "cbor,json", peerAddr: address),
                greeting2: ScriptedPeer.nonce(), sendFraming: "cbor"))
            #expect(hs.nodeFraming == "cbor", "the first of the peer's list the node supports")
            try await c.write(CBORCodec.encode(["", "time", "txt#p", "text-strings"]))
            Self.checkTimeReply(try await c.readMeaningfulPacket(within: 5, "time reply"), tag: "text-strings")
            try await c.write(CBORCodec.encode(["", "can", "time", "txt#p", "can-text"]))
            #expect(try await c.readMeaningfulPacket() == ["p", "can-text", "1"])
        }
    }

    // MARK: - Shared parts

    /// A public node on 127.0.0.1:0 for tests that dial it.
    private func withPublicNode(
        handshakeTimeout: TimeAmount = .seconds(5),
        _ body: (Node, String, ScriptedResources) async throws -> Void
    ) async throws {
        try await ScriptedResources.with { res in
            let node = res.node(try Node(configuration: scriptedNodeConfiguration(
                id: "replay-tol-%u", binds: ["127.0.0.1:0"], handshakeTimeout: handshakeTimeout)))
            try await node.start()
            let address = try #require(await node.listenAddresses().first)
            try await body(node, address, res)
        }
    }

    /// aemp-protocol §4.2-§4.3: what the node's two greeting lines must look like.
    static func checkNodeGreeting(
        _ hs: ScriptedHandshake, node: Node, peerAddr: String, sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let g = try #require(hs.nodeGreeting, "greeting line 1: \(hs.nodeLines.0)", sourceLocation: sourceLocation)
        #expect(g.protocolName == "aemp", sourceLocation: sourceLocation)
        #expect(g.version == "1", sourceLocation: sourceLocation)
        #expect(g.nodeID == node.id, sourceLocation: sourceLocation)
        #expect(g.authMethods.contains("hmac_sha3_512"), sourceLocation: sourceLocation)
        #expect(!g.authMethods.contains(where: { $0.hasPrefix("tls_") }), sourceLocation: sourceLocation)
        #expect(g.framings.count == 2 && Set(g.framings) == ["json", "cbor"], "\(g.framings)", sourceLocation: sourceLocation)
        #expect(g.pairs["peeraddr"] == peerAddr, "Perl sends the address it sees", sourceLocation: sourceLocation)
        #expect(g.pairs["tls"] == nil, sourceLocation: sourceLocation)
        let nonce = hs.nodeLines.1
        #expect(nonce.utf8.count == 88, "nonce \(nonce)", sourceLocation: sourceLocation)
        #expect(Data(base64Encoded: nonce)?.count == 66, "nonce is Base64 of 66 bytes", sourceLocation: sourceLocation)
        #expect(hs.nodeLines.1 != hs.ourLines.1, sourceLocation: sourceLocation)
    }

    static func checkTimeReply(_ p: [Value], tag: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let now = Date().timeIntervalSince1970
        #expect(p.count == 3 && p.first == "p" && p.dropFirst().first == .string(tag), "time reply: \(p)",
                sourceLocation: sourceLocation)
        guard p.count == 3 else { return }
        switch p[2] {
        case .double(let t): #expect(abs(t - now) < 30, "time \(t) vs now \(now)", sourceLocation: sourceLocation)
        case .int(let t): #expect(abs(Double(t) - now) < 30, sourceLocation: sourceLocation)
        default: Issue.record("time reply carries a non-number: \(p[2])", sourceLocation: sourceLocation)
        }
    }

    /// Sends a `time` request and expects its reply to be the next packet.
    static func expectTimeReply(
        peer: ScriptedPeer, peerID: String, tag: String, sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        try await peer.send(["", "time", .string("\(peerID)#p"), .string(tag)])
        checkTimeReply(try await peer.readMeaningfulPacket(within: 5, "time reply \(tag)"), tag: tag,
                       sourceLocation: sourceLocation)
    }

    /// The node-port part of json conn04 (send -> recv) plus the port traffic of the captures,
    /// played by `peer` (node ID `peerID`) against `node` over an established connection.
    static func nodePortConversation(peer: ScriptedPeer, node: Node, peerID: String) async throws {
        let me = node.id
        let reply = Value.string("\(peerID)#p")

        // mon1 of a nonexistent port -> immediate kil0 no_such_port (K 372-377).
        try await peer.send(["", "mon1", "doesnotexist"])
        #expect(try await peer.readMeaningfulPacket(within: 5, "kil0 no_such_port") == [
            "", "kil0", "doesnotexist", "no_such_port", "cannot monitor nonexistent port", .string("\(me)#doesnotexist"),
        ])

        // time, can (answers are the strings "1" / "").
        try await peer.send(["", "time", reply, "time-reply"])
        checkTimeReply(try await peer.readMeaningfulPacket(within: 5, "time-reply"), tag: "time-reply")
        try await peer.send(["", "can", "mon1", reply, "can-reply"])
        #expect(try await peer.readMeaningfulPacket(within: 5, "can-reply") == ["p", "can-reply", "1"])
        try await peer.send(["", "can", "eval", reply, "can-eval"])
        #expect(try await peer.readMeaningfulPacket(within: 5, "can-eval") == ["p", "can-eval", ""])

        // eval is never run and never answered: the next thing back is a later time reply.
        try await peer.send(["", "eval", "1+1", reply, "eval-reply"])
        try await expectTimeReply(peer: peer, peerID: peerID, tag: "after-eval")

        // spawn (a function call by name) and a message to the would-be spawned port: ignored.
        try await peer.send(["", "AnyEvent::MP::_spawn", "8wGTOPibpFc", "::spawned", "arg1", 2])
        try await peer.send(["8wGTOPibpFc", "hello-spawned"])
        try await peer.send(["", "Some::Module::func", 1, [2]])
        try await expectTimeReply(peer: peer, peerID: peerID, tag: "after-spawn")

        // No-op packets (pyprobe-*): nothing comes back, the connection stays.
        for noop: [Value] in [[], [""], ["", ""], ["", "devnull", 1, 2]] { try await peer.send(noop) }
        try await expectTimeReply(peer: peer, peerID: peerID, tag: "after-noops")

        // A user message to a port made with mailbox() arrives unchanged (json conn04's test message).
        let (port, inbox) = node.mailbox()
        var messages = inbox.makeAsyncIterator()
        let testMessage: [Value] = ["test", "hello", 42, -7, 1.5, "ünïcödé ✓", [1, 2, 3], ["b": [nil], "a": 1], nil]
        try await peer.send([.string(port.name)] + testMessage)
        #expect(try await next(&messages, within: 5, "the test message") == testMessage)

        // The peer monitors that port, the node monitors it locally, then the peer kills it (kil1).
        let (reasons, reasonSink) = AsyncStream<[Value]>.makeStream()
        var reasonIterator = reasons.makeAsyncIterator()
        node.mon(port) { reasonSink.yield($0) }
        _ = await node.upNodes()  // a barrier: the node's loop has registered the monitor
        try await peer.send(["", "mon1", .string(port.name)])
        try await peer.send(["", "kil1", .string(port.name), "bye", "now"])
        #expect(try await next(&reasonIterator, within: 5, "the local monitor") == ["bye", "now"])
        #expect(try await peer.readMeaningfulPacket(within: 5, "kil0 for the killed port") == [
            "", "kil0", .string(port.name), "bye", "now",
        ])
        // The port is gone: monitoring it now gets no_such_port.
        try await peer.send(["", "mon1", .string(port.name)])
        #expect(try await peer.readMeaningfulPacket(within: 5, "kil0 no_such_port") == [
            "", "kil0", .string(port.name), "no_such_port", "cannot monitor nonexistent port", .string(port.description),
        ])

        // A Swift-side monitor on a port of the peer: mon1 goes out; kil0 from the peer fires it.
        let (remoteReasons, remoteSink) = AsyncStream<[Value]>.makeStream()
        var remoteIterator = remoteReasons.makeAsyncIterator()
        node.mon(PortID(node: peerID, name: "someport")) { remoteSink.yield($0) }
        #expect(try await peer.readMeaningfulPacket(within: 5, "mon1 someport") == ["", "mon1", "someport"])
        try await peer.send(["", "kil0", "someport", "die", "x"])
        #expect(try await next(&remoteIterator, within: 5, "the remote monitor") == ["die", "x"])
        // Cancelling the last monitor on a remote port sends mon0.
        let other = node.mon(PortID(node: peerID, name: "otherport")) { _ in }
        #expect(try await peer.readMeaningfulPacket(within: 5, "mon1 otherport") == ["", "mon1", "otherport"])
        other.cancel()
        #expect(try await peer.readMeaningfulPacket(within: 5, "mon0 otherport") == ["", "mon0", "otherport"])

        // snd to a port of the peer arrives as [name, …].
        node.snd(PortID(node: peerID, name: "q"), ["hello-from-swift", 1, 2.5, "ünï", ["k": nil]])
        #expect(try await peer.readMeaningfulPacket(within: 5, "the snd to q") == [
            "q", "hello-from-swift", 1, 2.5, "ünï", ["k": nil],
        ])

        // The node-port relay `snd` (aemp snd's receipt) sends on to the given port.
        try await peer.send(["", "snd", .string("\(peerID)#r"), "relayed", 7])
        #expect(try await peer.readMeaningfulPacket(within: 5, "the relayed message") == ["r", "relayed", 7])

        try await expectTimeReply(peer: peer, peerID: peerID, tag: "final")
        #expect(await node.upNodes().contains(peerID))
    }
}
