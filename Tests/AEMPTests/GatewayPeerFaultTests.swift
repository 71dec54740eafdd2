import AEMPTestSupport
import Foundation
import NIOCore
import Testing

@testable import AEMP

// The `aemp-gateway` process against mesh peers that misbehave (issue 7): a seed that accepts
// and never answers, and one that completes the handshake and then sends garbage. The gateway
// must cut each off with a logged reason, keep serving HTTP, and keep dialling.
//
// These live with the wire tests because the misbehaving seed is a `ScriptedListener` playing
// Perl's side of the handshake; the gateway is a real child process and is asked over real HTTP.

@Suite("gateway process: misbehaving mesh peers", .serialized, .timeLimit(.minutes(2)))
struct GatewayPeerFaultTests {

    @Test("a seed that accepts and never answers is cut off after --handshake-timeout and logged; the gateway joins the good seed")
    func silentSeed() async throws {
        let silent = try await ScriptedListener.start()
        defer { Task { await silent.close() } }
        let seedAddress = "127.0.0.1:\(try freePort())"
        let seed = try ChildProcess(
            "aemp", ["seed", "--bind", seedAddress, "--secret", testSecret, "--node-id", "pf-seed-%u"])
        defer { seed.stop() }
        let seedID = try bannerNodeID(try await seed.readLine())

        let gateway = try await GatewayChild.start(seeds: [silent.address, seedAddress], handshakeTimeout: 1)
        defer { gateway.child.stop() }

        let peer = try await silent.accept(within: 10)
        let accepted = ContinuousClock.now
        let (unread, _) = try await peer.waitForClose(within: 10)
        let held = ContinuousClock.now - accepted
        #expect(String(decoding: unread, as: UTF8.self).hasPrefix("aemp;1;"), "the gateway greeted first, as a node does")
        // No lower bound: under a sanitizer the gateway's first attempt may time out before this
        // accept returns. The log line below names the reason.
        #expect(held < promptly(.seconds(5)), "cut off soon after the handshake timeout: \(held)")

        // Ready through the good seed meanwhile.
        await eventually(within: 10, "the gateway is ready (its master is the good seed)") {
            (try? await gateway.get("/readyz").status) == 200
        }
        let node = try await gateway.get("/v1/node")
        #expect(node.status == 200)
        #expect(node.body.contains(seedID), "the gateway's master is the good seed: \(node.body)")

        // The reason is in the log at the default level, with the silent seed's address.
        let port = silent.address.split(separator: ":").last.map(String.init) ?? "?"
        await eventually(within: 5, "the log names the handshake timeout and the silent seed") {
            gateway.child.errorText.split(separator: "\n").contains { line in
                line.contains("handshake timeout") && line.contains(":\(port)")
            }
        }
        // It does not give up on the silent seed either: it dials again later.
        let again = try await silent.accept(within: 15)
        await again.close()
        #expect(try await gateway.get("/healthz").status == 200)
    }

    @Test(
        "a seed that sends garbage after auth is cut off with a warning; the gateway keeps serving and dials again",
        arguments: ["json", "cbor"])
    func garbageAfterAuth(framing: String) async throws {
        let hostile = try await ScriptedListener.start()
        defer { Task { await hostile.close() } }
        // The handshake must not time out while this peer completes it: under ThreadSanitizer a
        // CI run's gateway gave up at 5 s and closed the connection under the peer's first write.
        let gateway = try await GatewayChild.start(seeds: [hostile.address], handshakeTimeout: 5 * sanitizerSlowdown)
        defer { gateway.child.stop() }

        let peer = try await hostile.accept(within: 10)
        let options = ScriptedHandshakeOptions(
            greeting1: ScriptedPeer.perlGreeting(
                nodeID: "pf-hostile-\(framing)", framings: framing, peerAddr: ScriptedPeer.format(peer.channel.remoteAddress)),
            greeting2: ScriptedPeer.nonce())
        let handshake = try await peer.handshake(options)
        #expect(handshake.nodeTokenValid, "the gateway authenticated with the shared secret")
        #expect(handshake.ourFraming == framing)

        // Well-formed for a moment (a no-op packet), then garbage in the chosen framing.
        try await peer.send([])
        let garbage: [UInt8] =
            framing == "json"
            ? Array("[\"\",\"g_slave\",{\"x\":}]\nthis is not JSON\n".utf8)  // a closed packet that does not parse
            : [0x82, 0x40, 0xFF, 0x1C, 0xFF, 0xFF, 0xFF, 0xFF]  // a break code and a reserved head: invalid CBOR
        try await peer.write(garbage)
        _ = try await peer.waitForClose(within: 5)

        await eventually(within: 5, "a warning names the protocol violation and the peer") {
            gateway.child.errorText.split(separator: "\n").contains { line in
                line.contains("warning") && line.contains("cutting off a peer that broke the protocol")
                    && line.contains("undecodable \(framing) data") && line.contains("pf-hostile-\(framing)")
            }
        }
        #expect(try await gateway.get("/healthz").status == 200)
        let ready = try await gateway.get("/readyz")
        #expect(ready.status == 503, "no master: the only seed is hostile")
        #expect(ready.body.contains("mesh_unavailable") || ready.body.contains("master"), "\(ready.body)")

        // The gateway dials its seed again (it is its only way into the mesh).
        let again = try await hostile.accept(within: 15)
        await again.close()
        #expect(try await gateway.get("/healthz").status == 200)
    }
}

extension GatewayPeerFaultTests {

    @Test("a node that reads slower than clients send: send and call get 503 peer_backlogged, nothing is cut off, every accepted message arrives in order")
    func peerBacklog() async throws {
        let bind = "127.0.0.1:\(try freePort())"
        let limit = 1 << 20
        let gateway = try await GatewayChild.start(standaloneBind: bind, extra: ["--peer-backlog", "\(limit)"])
        defer { gateway.child.stop() }

        // A node of the network joins the standalone gateway, then stops reading. Its receive
        // buffer is fixed at 256 KiB: with the kernel's autotuning (up to 32 MB here) the 1,000
        // sends below were sometimes all taken by the sockets, unrefused (2 runs in 6 failed so).
        let peer = try await ScriptedPeer.dial(bind, receiveBufferSize: 256 * 1024)
        defer { Task { await peer.close() } }
        let slow = "pf-slow"
        _ = try await peer.handshake(ScriptedHandshakeOptions(
            greeting1: ScriptedPeer.perlGreeting(nodeID: slow, framings: "json", peerAddr: bind),
            greeting2: ScriptedPeer.nonce(), sendFraming: "json"))
        await eventually(within: 10, "the gateway lists \(slow) as up") {
            (try? await gateway.get("/v1/node").body.contains("\"\(slow)\"")) == true
        }
        try await peer.stopReading()

        // Sends of 60 KB messages to a port of the stalled node: accepted until its connection holds
        // more than --peer-backlog unsent (the socket buffers fill first), then refused, whole.
        let payload = String(repeating: "x", count: 60_000)
        var accepted = 0
        var refusals = 0
        var refusal: (status: Int, head: String, body: String)?
        func fill(_ most: Int) async throws {
            refusal = nil
            for _ in 0..<most {
                let r = try await gateway.post("/v1/send", json: #"{"port":"\#(slow)#inbox","message":["bulk",\#(accepted),"\#(payload)"]}"#)
                if r.status == 202 {
                    accepted += 1
                } else {
                    refusal = r
                    refusals += 1
                    return
                }
            }
        }
        // Until a refusal survives a pause: a refusal can come while sends still wait for the node's
        // loop (counted as unsent from the moment they are accepted), and the gateway's socket may
        // take more while the kernel grows its send buffer; once the loop has caught up and the
        // buffers are full, the backlog stays put while the node reads nothing.
        for _ in 0..<20 {
            try await fill(1_000)  // 60 MB at most: far below the 256 MiB at which the node cuts a peer off
            guard refusal != nil else { break }
            try await Task.sleep(for: .milliseconds(500))
            try await fill(1)
            if refusal != nil { break }
        }
        let refused = try #require(refusal, "1,000 sends of 60 KB to a node that reads nothing were all accepted")
        #expect(accepted > 0)
        #expect(refused.status == 503, "\(refused)")
        let problem = try JSONCodec.decode(Array(refused.body.utf8)).objectValue ?? [:]
        #expect(problem["code"] == "peer_backlogged", "\(refused.body)")
        #expect(problem["node"] == .string(slow), "\(refused.body)")
        #expect(problem["detail"]?.stringValue?.contains("retry later") == true, "\(refused.body)")
        #expect(refused.head.lowercased().contains("retry-after: 1"), "\(refused.head)")
        #expect(refused.head.lowercased().contains("application/problem+json"), "\(refused.head)")

        // A batch touching the stalled node is refused whole; a call to it too.
        let batch = try await gateway.post("/v1/send", json: #"[{"port":"\#(slow)#inbox","message":["batch"]}]"#)
        #expect(batch.status == 503 && batch.body.contains("peer_backlogged"), "\(batch)")
        let call = try await gateway.post("/v1/call", json: #"{"port":"\#(slow)#inbox","message":["ping"],"timeout":1}"#)
        #expect(call.status == 503 && call.body.contains("peer_backlogged"), "\(call)")

        // Nothing else is held up: the gateway's own ports take messages, the node stays connected.
        let box = try await gateway.post("/v1/ports", json: "{}")
        #expect(box.status == 201, "\(box)")
        let boxPort = try #require(try JSONCodec.decode(Array(box.body.utf8)).objectValue?["port"]?.stringValue)
        let own = try await gateway.post("/v1/send", json: #"{"port":"\#(boxPort)","message":["local"]}"#)
        #expect(own.status == 202, "\(own)")
        #expect(try await gateway.get("/v1/node").body.contains("\"\(slow)\""), "the stalled node is still connected")
        let metrics = try await gateway.get("/metrics").body
        let counterLine = metrics.split(separator: "\n").first { $0.hasPrefix("aemp_gateway_sends_refused_backlogged_total ") }
        let refusedCount: Double = counterLine.flatMap { line in line.split(separator: " ").last.flatMap { Double($0) } } ?? 0
        #expect(refusedCount == Double(refusals + 2), "each refusal counted once (\(refusals) + batch + call): \(counterLine.map(String.init) ?? "no counter")")

        // The node reads again: every accepted message arrives, in order, none of the refused ones.
        try await peer.resumeReading()
        var next = 0
        while next < accepted {
            let packet = try await peer.readPacket(within: 20, "bulk message \(next) of \(accepted)")
            guard packet.first == "inbox" else { continue }  // the gateway's own traffic (g_global, database)
            #expect(packet.dropFirst().first == "bulk" && packet.dropFirst(2).first == .int(Int64(next)), "got \(packet.prefix(3))")
            next += 1
        }
        // Once the backlog has drained, sends to the node are accepted again.
        await eventually(within: 10, "sends to \(slow) are accepted again") {
            (try? await gateway.post("/v1/send", json: #"{"port":"\#(slow)#inbox","message":["again"]}"#).status) == 202
        }
        // The next message for the port is that one: the refused batch and call were never sent.
        var after = try await peer.readPacket(within: 10, "the message sent after the drain")
        while after.first != "inbox" { after = try await peer.readPacket(within: 10, "the message sent after the drain") }
        #expect(after == ["inbox", "again"], "\(after.prefix(3))")
        #expect(gateway.child.errorText.contains("peer stopped reading") == false, "the node was not cut off")
    }
}

/// An `aemp-gateway` child process joined to `seeds`, HTTP on a free port, logging at info.
struct GatewayChild {
    let child: ChildProcess
    let port: Int

    /// Joined to `seeds`, or standalone on `standaloneBind` when there are none.
    static func start(
        seeds: [String] = [], standaloneBind: String? = nil, handshakeTimeout: Double = 5, extra: [String] = []
    ) async throws -> GatewayChild {
        let inherited = ProcessInfo.processInfo.environment.keys.filter { $0.hasPrefix("AEMP_GATEWAY_") }
        let mesh = seeds.isEmpty ? ["--standalone-bind", standaloneBind ?? "127.0.0.1:0"] : ["--seeds", seeds.joined(separator: ",")]
        let child = try ChildProcess(
            "aemp-gateway",
            [
                "--http", "127.0.0.1:0", "--secret", testSecret,
                "--node-id", "pf-gateway-%u", "--handshake-timeout", "\(handshakeTimeout)", "--log-level", "info",
            ] + mesh + extra,
            unset: ["AEMP_SECRET", "XDG_STATE_HOME", "PERL_ANYEVENT_MP_RC"] + inherited)
        do {
            for _ in 0..<5 {
                // aemp-gateway <node-id> serving http://127.0.0.1:<port>
                let words = try await child.readLine().split(separator: " ")
                if words.count >= 4, words[2] == "serving", let colon = words[3].lastIndex(of: ":"),
                    let port = Int(words[3][words[3].index(after: colon)...])
                {
                    return GatewayChild(child: child, port: port)
                }
            }
            throw ChildProcess.ChildError.noLine("aemp-gateway printed no serving line; stderr: \(child.errorText)")
        } catch {
            child.stop()
            throw error
        }
    }

    /// One HTTP/1.1 GET over a fresh connection (`Connection: close`): status and body.
    func get(_ path: String) async throws -> (status: Int, body: String) {
        let r = try await request("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return (r.status, r.body)
    }

    /// One HTTP/1.1 POST of a JSON body over a fresh connection: status, header block and body.
    func post(_ path: String, json: String) async throws -> (status: Int, head: String, body: String) {
        try await request(
            "POST \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n"
                + "Content-Length: \(json.utf8.count)\r\n\r\n\(json)")
    }

    private func request(_ text: String) async throws -> (status: Int, head: String, body: String) {
        let connection = try await ScriptedPeer.dial("127.0.0.1:\(port)")
        defer { Task { await connection.close() } }
        try await connection.write(text)
        let (bytes, _) = try await connection.waitForClose(within: 10)
        let answer = String(decoding: bytes, as: UTF8.self)
        let statusLine = answer.prefix { $0 != "\r" }.split(separator: " ")
        guard statusLine.count >= 2, let status = Int(statusLine[1]) else {
            throw ScriptedPeerError.protocolViolation("no HTTP status line in \(answer.prefix(200).debugDescription)")
        }
        guard let end = answer.range(of: "\r\n\r\n") else { return (status, answer, "") }
        return (status, String(answer[..<end.lowerBound]), String(answer[end.upperBound...]))
    }
}
