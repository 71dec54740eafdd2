import Foundation
import Logging
import NIOCore
import Synchronization
import Testing

@testable import AEMP

/// A node never runs code on request of a peer (issue 7, "Security"). A raw wire peer sends a
/// Swift node every node-port request that makes a Perl 2.x node run code (aemp-protocol §7:
/// `eval`, function names such as `AnyEvent::MP::_spawn`, and the relays and replies that would
/// carry `eval` on to a third node); the node runs nothing, logs each refusal, and keeps serving.
@Suite("Node security", .serialized, .timeLimit(.minutes(2)))
struct NodeSecurityTests {

    @Test("eval, function calls, spawn and relays into node ports: nothing runs or is forwarded, each is logged, the node keeps serving")
    func neverExecutesForPeers() async throws {
        try await ScriptedResources.with { res in
            let log = CapturedLog()
            var configuration = scriptedNodeConfiguration(id: "nsec-target-%u", binds: ["127.0.0.1:0"])
            configuration.logger = log.logger()
            let target = res.node(try Node(configuration: configuration))
            try await target.start()
            let address = try #require(await target.listenAddresses().first)
            // A third node attached to the target (so relays from the target reach it at once),
            // with an observer on its node port and a port for the relays that are allowed.
            let third = res.node(try Node(configuration: scriptedNodeConfiguration(id: "nsec-third-%u", seeds: [address])))
            try await third.start()
            #expect(try await third.waitForMaster(timeout: stretched(.seconds(10))) == target.id)
            let thirdSeen = Watched<[Value]>([])
            await third.observeNodePort { request, source in
                thirdSeen.update { $0.append(["from": .string(source), "request": .array(request)]) }
            }
            let (thirdPort, thirdInbox) = third.mailbox()
            var thirdMessages = thirdInbox.makeAsyncIterator()

            let id = "nsec-peer"
            let peer = res.peer(try await ScriptedPeer.dial(address))
            let hs = try await peer.handshake(ScriptedHandshakeOptions(
                greeting1: ScriptedPeer.perlGreeting(nodeID: id, framings: "json,cbor", peerAddr: address),
                greeting2: ScriptedPeer.nonce()))
            #expect(hs.nodeTokenValid)
            let reply = Value.string("\(id)#p")
            let sentinel = NSTemporaryDirectory() + "aemp-nsec-ran-\(UUID().uuidString)"
            let code = Value.string("open my $f, '>', '\(sentinel)'; 42")

            // A relay the node does perform (aemp snd's receipt uses it): the path to the third node works.
            try await peer.send(["", "snd", .string(thirdPort.description), "relay-works"])
            #expect(try await next(&thirdMessages, within: 5, "the allowed relay") == ["relay-works"])

            let functionTags = [
                "AnyEvent::MP::_spawn", "AnyEvent::MP::Kernel::snd_to_func", "AnyEvent::MP::LogCatcher::connect",
                "AnyEvent::MP::DataConn::_expect", "CORE::system", "POSIX::_exit", "x;open my $f, '>', '\(sentinel)';::y",
            ]
            let packets: [[Value]] = [
                // Perl: `eval shift`, then `snd @reply, $@, @results`.
                ["", "eval", code, reply, "eval-reply"],
                // Perl: load_func (a string eval of `require <package>`), then call it with the rest.
                ["", "AnyEvent::MP::_spawn", "nsec-spawned", "::spawned", "arg1", 2],
                ["", "AnyEvent::MP::Kernel::snd_to_func", .string(third.id), "::f"],
                ["", "AnyEvent::MP::LogCatcher::connect", 0, reply, 9],
                ["", "AnyEvent::MP::DataConn::_expect", "x", reply],
                ["", "CORE::system", "touch", .string(sentinel)],
                ["", "POSIX::_exit", 0],
                ["", .string(functionTags[6])],
                // Perl's kil1 of the empty name deletes its own node port.
                ["", "kil1", ""],
                // Relays and replies that would make the target send eval in its own name.
                ["", "snd", .string("\(third.id)#"), "eval", code, reply, "relayed-eval"],
                ["", "snd", .string(third.id), "eval", code],
                ["", "snd", .string("\(target.id)#"), "eval", code, reply, "eval-via-self"],
                ["", "time", .string("\(third.id)#"), "eval", code],
                ["", "can", "eval", .string(third.id), "eval", code],
            ]
            for p in packets { try await peer.send(p) }
            // The port a Perl node would have spawned does not exist, and the node still answers.
            try await peer.send(["nsec-spawned", "hello-spawned"])
            try await peer.send(["", "mon1", "nsec-spawned"])
            try await peer.send(["", "time", reply, "after"])
            var answers: [[Value]] = []
            while true {
                let p = try await peer.readMeaningfulPacket(within: 5, "the answers")
                if p == ["", "g_global"] { continue }
                answers.append(p)
                if p.first == "p" && p.dropFirst().first == "after" { break }
            }
            #expect(answers.count == 2, "only the monitor's answer and the time reply come back: \(answers)")
            #expect(answers.first == ["", "kil0", "nsec-spawned", "no_such_port", "cannot monitor nonexistent port",
                                      .string("\(target.id)#nsec-spawned")], "\(answers)")
            ReplayTests.checkTimeReply(answers.last ?? [], tag: "after")

            // Nothing was forwarded to the third node's node port: a later relay on the same
            // connection arrives, so anything sent before it would have arrived first.
            try await peer.send(["", "snd", .string(thirdPort.description), "barrier"])
            #expect(try await next(&thirdMessages, within: 5, "the barrier relay") == ["barrier"])
            let fromTarget = thirdSeen.read { $0 }.filter { $0.objectValue?["from"] == .string(target.id) }
            #expect(!fromTarget.contains { entry in
                entry.objectValue?["request"]?.arrayValue?.contains { $0 == "eval" || $0 == code } == true
            }, "the target forwarded eval: \(fromTarget)")
            #expect(!FileManager.default.fileExists(atPath: sentinel))

            // Each refusal is logged, with the peer that asked.
            let records = log.records.withLock { $0 }
            func logged(_ message: String, _ key: String? = nil, _ value: String? = nil) -> Int {
                records.filter { r in
                    r.message.contains(message) && r.metadata["from"] == id && (key == nil || r.metadata[key!] == value)
                }.count
            }
            #expect(logged("refusing remote eval request") == 1, "\(records)")
            for tag in functionTags {
                #expect(logged("ignoring unknown node-port request (function calls are never executed)", "tag", tag) == 1,
                        "\(tag): \(records)")
            }
            #expect(logged("refusing to send to a node port on request of a peer", "request", "snd") == 3, "\(records)")
            #expect(logged("refusing to send to a node port on request of a peer", "request", "time") == 1, "\(records)")
            #expect(logged("refusing to send to a node port on request of a peer", "request", "can") == 1, "\(records)")
            #expect(records.filter { $0.level >= .warning && $0.message.contains("refusing") }.count == 6)

            // Still serving: the peer's connection is up, and the third node talks to the target.
            #expect(!peer.isClosed)
            #expect(await target.upNodes().contains(id))
            let (targetPort, targetInbox) = target.mailbox()
            var targetMessages = targetInbox.makeAsyncIterator()
            third.snd(targetPort, ["still", "serving"])
            #expect(try await next(&targetMessages, within: 5, "third -> target") == ["still", "serving"])
        }
    }

    @Test("observeNodePort sees every node-port request, from peers and from the node itself, until cancelled")
    func nodePortObserver() async throws {
        try await ScriptedResources.with { res in
            var configuration = scriptedNodeConfiguration(id: "nsec-observed-%u", binds: ["127.0.0.1:0"])
            configuration.logger = CapturedLog().logger()  // quiet: the eval below is refused with a warning
            let node = res.node(try Node(configuration: configuration))
            try await node.start()
            let address = try #require(await node.listenAddresses().first)
            let seen = Watched<[Value]>([])
            let watch = await node.observeNodePort { request, source in seen.update { $0.append([.string(source), .array(request)]) } }
            node.snd(PortID(node: node.id, name: ""), ["devnull", "local"])
            let peer = res.peer(try await ScriptedPeer.dial(address))
            _ = try await peer.handshake(ScriptedHandshakeOptions(
                greeting1: ScriptedPeer.perlGreeting(nodeID: "nsec-observer-peer", peerAddr: address), greeting2: ScriptedPeer.nonce()))
            try await peer.send(["", "eval", "1"])
            try await peer.send([])
            let got = try await seen.wait(within: 5) { s in s.count >= 2 ? s : nil }
            let expected: [Value] = [[.string(node.id), ["devnull", "local"]], ["nsec-observer-peer", ["eval", "1"]]]
            #expect(got == expected, "\(got ?? [])")
            watch.cancel()
            _ = await node.upNodes()  // a barrier: the node's loop has run the cancel
            try await peer.send(["", "devnull", "after-cancel"])
            try await peer.send(["", "time", "nsec-observer-peer#p", "sync"])
            _ = try await peer.readMeaningfulPacket(within: 5, "the time reply")
            #expect(seen.read { $0.count } == 2, "\(seen.read { $0 })")
        }
    }
}

/// The records a node logs, kept for the test to read.
final class CapturedLog: Sendable {
    struct Record: Sendable, CustomStringConvertible {
        let level: Logger.Level
        let message: String
        let metadata: [String: String]
        var description: String { "\(level) \(message) \(metadata.sorted { $0.key < $1.key })" }
    }

    let records = Locked<[Record]>([])

    /// A logger (every level) that writes here.
    func logger() -> Logger {
        var logger = Logger(label: "aemp-test") { _ in Handler(log: self) }
        logger.logLevel = .trace
        return logger
    }

    struct Handler: LogHandler {
        let log: CapturedLog
        var logLevel: Logger.Level = .trace
        var metadata: Logger.Metadata = [:]

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            var all = metadata
            if let extra = event.metadata { all.merge(extra) { _, new in new } }
            let record = Record(level: event.level, message: "\(event.message)", metadata: all.mapValues { "\($0)" })
            log.records.withLock { $0.append(record) }
        }
    }
}
