import AEMPTestSupport
import AEMP
import Foundation
import Testing

/// The `aemp` executable as a subprocess: every client subcommand against a Swift seed, with its
/// output checked for content, and its failure modes (exit status and the `aemp: error:` line).
@Suite("aemp command", .serialized, .timeLimit(.minutes(3)))
struct ToolTests {

    // MARK: - snd

    @Test("snd delivers the elements as JSON values to a port on the seed and, via g_find, on another node")
    func sndDelivers() async throws {
        try await ToolNetwork.with(publicNode: true) { net in
            let (port, inbox) = net.seed.mailbox()
            var messages = inbox.makeAsyncIterator()

            let sent = try await net.run(
                ["snd"] + net.options + [
                    port.description, "ping", #"{"a":1}"#, "42", #""42""#, #"[1,"x"]"#, "true", "null", "plain words",
                    "--", "-1.5",
                ])
            #expect(sent.exit == .exited(0), "\(sent)")
            #expect(sent.stdout.isEmpty && sent.stderr.isEmpty, "\(sent)")
            // The receipt came back before exit, so the message is already there.
            let m = try await next(&messages, within: 1, "message sent by aemp snd")
            #expect(m == ["ping", ["a": 1], 42, "42", [1, "x"], true, nil, "plain words", -1.5])

            let pub = try #require(net.pub)
            let (pubPort, pubInbox) = pub.mailbox()
            var pubMessages = pubInbox.makeAsyncIterator()
            let relayed = try await net.run(["snd"] + net.options + [pubPort.description, "hello", "2"])
            #expect(relayed.exit == .exited(0), "\(relayed)")
            #expect(try await next(&pubMessages, within: 1, "message to the public node") == ["hello", 2])

            // A node ID alone is the node port: `devnull` is accepted and the receipt still comes.
            let nodePort = try await net.run(["snd"] + net.options + [pub.id, "devnull"])
            #expect(nodePort.exit == .exited(0), "\(nodePort)")
        }
    }

    @Test("snd to a port that does not exist fails with no_such_port")
    func sndMissingPort() async throws {
        try await ToolNetwork.with { net in
            let r = try await net.run(["snd"] + net.options + ["\(net.seed.id)#no-such-port", "x"])
            #expect(r.exit == .exited(1), "\(r)")
            #expect(r.stderr == "aemp: error: message not delivered: port \(net.seed.id)#no-such-port does not exist (no_such_port)\n")
        }
    }

    // MARK: - cal

    @Test("cal appends a reply port and prints the first reply as one JSON line; a node port answers time")
    func calPrintsReply() async throws {
        try await ToolNetwork.with { net in
            let seed = net.seed
            let echo = seed.port { message in
                guard let reply = message.last?.stringValue else { return }
                seed.snd(reply, ["pong"] + message.dropLast())
                seed.snd(reply, ["second reply, never printed"])
            }
            let r = try await net.run(["cal"] + net.options + [echo.description, "ping", #"{"n":[1,2]}"#])
            #expect(r.exit == .exited(0), "\(r)")
            #expect(r.lines == [#"["pong","ping",{"n":[1,2]}]"#], "\(r)")

            let t = try await net.run(["cal"] + net.options + [seed.id, "time"])
            #expect(t.exit == .exited(0), "\(t)")
            let reply = try JSONCodec.decode(t.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
            let now = Date().timeIntervalSince1970
            #expect(abs((reply.arrayValue?.first?.numberValue ?? 0) - now) < 60, "time reply \(t.stdout)")
        }
    }

    @Test("cal without a reply times out with a non-zero exit")
    func calTimeout() async throws {
        try await ToolNetwork.with { net in
            let silent = net.seed.port { _ in }
            let started = ContinuousClock.now
            let r = try await net.run(["cal"] + net.options + ["--timeout", "1", silent.description, "anyone?"])
            let elapsed = ContinuousClock.now - started
            #expect(r.exit == .exited(1), "\(r)")
            #expect(r.stdout.isEmpty)
            #expect(r.stderr == "aemp: error: timed out: no reply from \(silent) within 1 s\n")
            #expect(elapsed >= .seconds(1) && elapsed < promptly(.seconds(8)), "took \(elapsed)")
        }
    }

    @Test("cal to a port that dies reports the kill reason; to a missing port, no_such_port")
    func calDeadPort() async throws {
        try await ToolNetwork.with { net in
            let seed = net.seed
            let doomed = seed.port()
            seed.rcv(doomed) { _ in seed.kil(doomed, reason: ["custom_reason", "going away", 7]) }
            let r = try await net.run(["cal"] + net.options + [doomed.description, "hello"])
            #expect(r.exit == .exited(1), "\(r)")
            #expect(r.stderr == #"aemp: error: no reply: port \#(doomed) was killed: ["custom_reason","going away",7]"# + "\n")

            let missing = try await net.run(["cal"] + net.options + ["\(seed.id)#nobody", "hello"])
            #expect(missing.exit == .exited(1), "\(missing)")
            #expect(missing.stderr.contains("port \(seed.id)#nobody does not exist (no_such_port)"), "\(missing)")
        }
    }

    // MARK: - Joining fails

    @Test("no master: a seed address where nothing listens fails after --connect-timeout with the reason")
    func noMaster() async throws {
        let dead = "127.0.0.1:\(try freePort())"
        let started = ContinuousClock.now
        let r = try await ChildProcess.run(
            "aemp", ["snd", "--secret", testSecret, "--seeds", dead, "--connect-timeout", "1", "somenode#port", "x"])
        let elapsed = ContinuousClock.now - started
        #expect(r.exit == .exited(1), "\(r)")
        #expect(r.stderr.hasPrefix("aemp: error: no master within 1 s (seeds \(dead)): cannot connect to seed \(dead): connection refused"), "\(r)")
        #expect(r.stderr.filter { $0 == "\n" }.count == 1, "one line: \(r.stderr)")
        #expect(elapsed < promptly(.seconds(8)), "took \(elapsed)")
    }

    @Test("wrong secret: the handshake fails with an authentication failure, reported at once")
    func wrongSecret() async throws {
        try await ToolNetwork.with { net in
            let r = try await ChildProcess.run(
                "aemp", ["db", "keys", "--secret", "not-the-secret", "--seeds", net.address, "--connect-timeout", "20", "fam"])
            #expect(r.exit == .exited(1), "\(r)")
            #expect(r.stderr.hasPrefix("aemp: error: no seed accepts this node (seeds \(net.address)): handshake with \(net.address) failed: authentication failure"), "\(r)")
            #expect(r.stdout.isEmpty)
        }
    }

    @Test("bad JSON, a bad port ID, a missing secret or no seeds: one error line, exit 64, nothing sent")
    func badArguments() async throws {
        // A dead seed: if the command tried to join, it would fail differently (exit 1, "no master").
        let dead = ["--seeds", "127.0.0.1:\(try freePort())", "--connect-timeout", "1"]
        let secret = ["--secret", testSecret]

        let json = try await ChildProcess.run("aemp", ["snd"] + secret + dead + ["n#p", "ok", #"{"a":"#])
        #expect(json.exit == .exited(64), "\(json)")
        #expect(json.stderr == #"aemp: error: message element 2 '{"a":' is not valid JSON: unexpected token near end of file (column 5)"# + "\n")

        let value = try await ChildProcess.run("aemp", ["db", "set"] + secret + dead + ["fam", "key", "[1,"])
        #expect(value.exit == .exited(64), "\(value)")
        #expect(value.stderr.hasPrefix("aemp: error: value '[1,' is not valid JSON: "), "\(value)")

        let port = try await ChildProcess.run("aemp", ["cal"] + secret + dead + ["#name", "x"])
        #expect(port.exit == .exited(64), "\(port)")
        #expect(port.stderr == "aemp: error: invalid port ID '#name': the node part before '#' is empty\n")

        let badNode = try await ChildProcess.run("aemp", ["snd"] + secret + dead + ["a;b#name"])
        #expect(badNode.exit == .exited(64), "\(badNode)")
        #expect(badNode.stderr.hasPrefix("aemp: error: invalid port ID 'a;b#name': node ID \"a;b\" contains ';'"), "\(badNode)")

        // Deeper than the network carries (issue 13): refused before joining.
        let deepMessage = try await ChildProcess.run(
            "aemp", ["snd"] + secret + dead + ["n#p", String(repeating: "[", count: 512) + String(repeating: "]", count: 512)])
        #expect(deepMessage.exit == .exited(64), "\(deepMessage)")
        #expect(deepMessage.stderr.hasPrefix("aemp: error: the message nests 513 levels deep (its list counted as one); the network carries at most 512"), "\(deepMessage)")
        let deepValue = try await ChildProcess.run(
            "aemp", ["db", "set"] + secret + dead + ["fam", "key", String(repeating: "[", count: 510) + String(repeating: "]", count: 510)])
        #expect(deepValue.exit == .exited(64), "\(deepValue)")
        #expect(deepValue.stderr.hasPrefix("aemp: error: the value nests 510 levels deep; the network carries at most 509"), "\(deepValue)")
        let badPacket = try await ChildProcess.run("aemp", ["nodes", "--max-packet", "100"] + secret + dead)
        #expect(badPacket.exit == .exited(64), "\(badPacket)")
        #expect(badPacket.stderr == "aemp: error: --max-packet 100 is not in 65536...268435456\n", "\(badPacket)")

        let noSecret = try await ChildProcess.run("aemp", ["nodes"] + dead, unset: ["AEMP_SECRET", "AEMP_CERT"])
        #expect(noSecret.exit == .exited(64), "\(noSecret)")
        #expect(noSecret.stderr == "aemp: error: no shared secret and no certificate: pass --secret, --secret-file, --cert or set AEMP_SECRET\n")
        let noSeedSecret = try await ChildProcess.run(
            "aemp", ["seed", "--bind", "127.0.0.1:0"], unset: ["AEMP_SECRET", "AEMP_CERT"])
        #expect(noSeedSecret.exit == .exited(64), "\(noSeedSecret)")
        #expect(noSeedSecret.stderr == noSecret.stderr, "\(noSeedSecret)")
        let badCert = try await ChildProcess.run("aemp", ["nodes", "--cert", "/nonexistent/mesh.pem"] + dead)
        #expect(badCert.exit == .exited(64), "\(badCert)")
        #expect(badCert.stderr == "aemp: error: mesh certificate /nonexistent/mesh.pem: no such file\n", "\(badCert)")

        let noSeeds = try await ChildProcess.run("aemp", ["db", "get"] + secret + ["fam"])
        #expect(noSeeds.exit == .exited(64), "\(noSeeds)")
        #expect(noSeeds.stderr == "aemp: error: no seeds: pass --seeds host:port[,host:port...]\n")
    }

    // MARK: - db

    @Test("db get, keys and values print the family as JSON with sorted keys")
    func dbQueries() async throws {
        try await ToolNetwork.with { net in
            net.seed.dbSet("tool-q", "b", ["x": 1, "a": [true, nil]])
            net.seed.dbSet("tool-q", "a", "one")
            net.seed.dbSet("tool-q", "c", 3)

            let get = try await net.run(["db", "get"] + net.options + ["tool-q"])
            #expect(get.exit == .exited(0), "\(get)")
            #expect(get.stdout == #"{"a":"one","b":{"a":[true,null],"x":1},"c":3}"# + "\n")
            let keys = try await net.run(["db", "keys"] + net.options + ["tool-q"])
            #expect(keys.stdout == #"["a","b","c"]"# + "\n", "\(keys)")
            let values = try await net.run(["db", "values"] + net.options + ["tool-q"])
            #expect(values.stdout == #"["one",{"a":[true,null],"x":1},3]"# + "\n", "\(values)")
            let empty = try await net.run(["db", "get"] + net.options + ["tool-no-such-family"])
            #expect(empty.exit == .exited(0) && empty.stdout == "{}\n", "\(empty)")
        }
    }

    @Test("db set holds the key (visible to dbFamily) until SIGTERM, then deletes it and exits 0")
    func dbSetHolds() async throws {
        try await ToolNetwork.with { net in
            let holder = try net.spawn(["db", "set"] + net.options + ["tool-s", "k", #"{"v":[1,2]}"#])
            defer { holder.stop() }
            let confirmation = try JSONCodec.decode(try await holder.readLine(within: 20))
            let holderID = try #require(confirmation.objectValue?["node"]?.stringValue)
            #expect(confirmation == ["family": "tool-s", "key": "k", "node": .string(holderID), "value": ["v": [1, 2]]])
            #expect(try await net.seed.dbFamily("tool-s") == ["k": ["v": [1, 2]]])

            holder.signal(SIGTERM)
            #expect(try await holder.waitForExit() == .exited(0), "stderr: \(holder.errorText)")
            await eventually("the key is gone once its holder left") { try await net.seed.dbFamily("tool-s").isEmpty }
        }
    }

    @Test("db del makes the db set holder delete its key and exit; other nodes' keys stay and fail the command")
    func dbDel() async throws {
        try await ToolNetwork.with { net in
            let holder = try net.spawn(["db", "set"] + net.options + ["tool-d", "held", "1"])
            defer { holder.stop() }
            _ = try await holder.readLine(within: 20)
            net.seed.dbSet("tool-d", "owned", "by the seed")
            #expect(try await net.seed.dbFamily("tool-d") == ["held": 1, "owned": "by the seed"])

            let del = try await net.run(["db", "del"] + net.options + ["tool-d", "held", "missing"])
            #expect(del.exit == .exited(0), "\(del)")
            #expect(del.stderr == "aemp: tool-d/missing does not exist\n", "\(del)")
            #expect(try await net.seed.dbFamily("tool-d") == ["owned": "by the seed"])
            #expect(try await holder.waitForExit() == .exited(0))
            #expect(holder.errorText.hasPrefix("aemp: tool-d/held deleted at the request of "), "\(holder.errorText)")

            let refused = try await net.run(["db", "del"] + net.options + ["--timeout", "1", "tool-d", "owned"])
            #expect(refused.exit == .exited(1), "\(refused)")
            #expect(refused.stderr.hasPrefix("aemp: error: tool-d/owned still present after 1 s: a key belongs to the node that set it"), "\(refused)")
            #expect(try await net.seed.dbFamily("tool-d") == ["owned": "by the seed"])
            // The request the refused del published is gone with its node.
            await eventually("the delete request vanished") { try await net.seed.dbFamily("aemp::del").isEmpty }
        }
    }

    @Test("db mon prints the family, then one JSON line per change, and exits 0 on SIGTERM")
    func dbMon() async throws {
        try await ToolNetwork.with { net in
            net.seed.dbSet("tool-m", "a", 1)
            let mon = try net.spawn(["db", "mon"] + net.options + ["tool-m"])
            defer { mon.stop() }
            #expect(try await mon.readLine(within: 20)
                == #"{"family":"tool-m","values":{"a":1},"added":["a"],"changed":[],"deleted":[]}"#)

            net.seed.dbSet("tool-m", "b", ["x": "y"])
            #expect(try await mon.readLine()
                == #"{"family":"tool-m","values":{"a":1,"b":{"x":"y"}},"added":["b"],"changed":[],"deleted":[]}"#)
            net.seed.dbSet("tool-m", "a", 2)
            #expect(try await mon.readLine()
                == #"{"family":"tool-m","values":{"a":2,"b":{"x":"y"}},"added":[],"changed":["a"],"deleted":[]}"#)
            net.seed.dbDel("tool-m", ["b"])
            #expect(try await mon.readLine()
                == #"{"family":"tool-m","values":{"a":2},"added":[],"changed":[],"deleted":["b"]}"#)

            mon.signal(SIGTERM)
            #expect(try await mon.waitForExit() == .exited(0), "stderr: \(mon.errorText)")
            #expect(mon.outputText.isEmpty)
            #expect(mon.errorText.isEmpty)
        }
    }

    // MARK: - nodes

    @Test("nodes lists the seed and a public node with their addresses, not itself")
    func nodes() async throws {
        try await ToolNetwork.with(publicNode: true) { net in
            let pub = try #require(net.pub)
            let pubAddress = try #require(await pub.listenAddresses().first)
            await eventually("the public node registered its address") {
                try await net.seed.dbFamily("'l")[pub.id] != nil
            }
            let r = try await net.run(["nodes"] + net.options + ["--node-id", "tool-lister-%u"])
            #expect(r.exit == .exited(0), "\(r)")
            let listed = try #require(try JSONCodec.decode(r.stdout).objectValue, "\(r)")
            #expect(listed[net.seed.id] == [.string(net.address)])
            #expect(listed[pub.id] == [.string(pubAddress)])
            #expect(!listed.keys.contains { $0.hasPrefix("tool-lister-") }, "lists itself: \(listed)")
        }
    }

    // MARK: - cert (issue 14)

    @Test("cert generate writes key then certificate, mode 0600, never over a file without --force; cert show prints the same fingerprint; a cert-only `aemp seed --cert` takes tools with the file and refuses one with only a secret")
    func certificates() async throws {
        let dir = NSTemporaryDirectory() + "aemp-tool-cert-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/mesh.pem"

        let generated = try await ChildProcess.run("aemp", ["cert", "generate", "--out", file, "--cn", "tool test net", "--days", "30"])
        #expect(generated.exit == .exited(0), "\(generated)")
        let made = try #require(try JSONCodec.decode(generated.stdout).objectValue, "\(generated)")
        #expect(made["subject"] == "CN=tool test net" && made["file"] == .string(file), "\(generated)")
        let fingerprint = try #require(made["fingerprint"]?.stringValue)
        #expect(fingerprint.count == 64, "\(generated)")

        // Perl's layout: the private key, then the certificate.
        let text = try String(contentsOfFile: file, encoding: .utf8)
        let labels = text.split(separator: "\n").filter { $0.hasPrefix("-----BEGIN ") }
        #expect(labels == ["-----BEGIN PRIVATE KEY-----", "-----BEGIN CERTIFICATE-----"], "\(text)")
        let mode = try #require(try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int)
        #expect(mode == 0o600, "mode \(String(mode, radix: 8))")

        // A second run would replace the network's certificate: refused without --force.
        let again = try await ChildProcess.run("aemp", ["cert", "generate", "--out", file])
        #expect(again.exit == .exited(64), "\(again)")
        #expect(again.stderr == "aemp: error: \(file) exists; pass --force to overwrite it\n", "\(again)")
        #expect(try String(contentsOfFile: file, encoding: .utf8) == text, "the file is unchanged")
        let forced = dir + "/forced.pem"
        _ = FileManager.default.createFile(atPath: forced, contents: Data("old".utf8), attributes: [.posixPermissions: 0o644])
        let overwritten = try await ChildProcess.run("aemp", ["cert", "generate", "--out", forced, "--force", "--key", "rsa2048"])
        #expect(overwritten.exit == .exited(0), "\(overwritten)")
        #expect(try FileManager.default.attributesOfItem(atPath: forced)[.posixPermissions] as? Int == 0o600)
        #expect(try String(contentsOfFile: forced, encoding: .utf8).hasPrefix("-----BEGIN PRIVATE KEY-----"))
        let badKey = try await ChildProcess.run("aemp", ["cert", "generate", "--out", dir + "/x.pem", "--key", "dsa"])
        #expect(badKey.exit == .exited(64) && badKey.stderr == "aemp: error: unknown key type 'dsa' (use p256, rsa2048, rsa3072)\n", "\(badKey)")

        // cert show reads it as a node does.
        let shown = try await ChildProcess.run("aemp", ["cert", "show", file])
        #expect(shown.exit == .exited(0), "\(shown)")
        let show = try #require(try JSONCodec.decode(shown.stdout).objectValue, "\(shown)")
        #expect(show["fingerprint"] == .string(fingerprint) && show["subject"] == "CN=tool test net", "\(shown)")
        #expect(show["trusted_certificates"] == 1 && show["valid_now"] == true, "\(shown)")
        #expect(show["not_before"]?.stringValue != nil && show["not_after"]?.stringValue != nil, "\(shown)")
        let keyOnly = dir + "/key-only.pem"
        try String(text[..<text.range(of: "-----BEGIN CERTIFICATE-----")!.lowerBound]).write(toFile: keyOnly, atomically: true, encoding: .utf8)
        let bad = try await ChildProcess.run("aemp", ["cert", "show", keyOnly])
        #expect(bad.exit == .exited(64), "\(bad)")
        #expect(bad.stderr == "aemp: error: mesh certificate \(keyOnly): no certificate: expected a private key, then a certificate, then any CA certificates\n", "\(bad)")

        // A cert-only seed (no secret anywhere) and tools that join it with the same file.
        let address = "127.0.0.1:\(try freePort())"
        let seed = try ChildProcess(
            "aemp", ["seed", "--bind", address, "--cert", file, "--node-id", "tool-tls-seed-%u"],
            unset: ["AEMP_SECRET", "AEMP_CERT"])
        defer { seed.stop() }
        let seedID = try bannerNodeID(try await seed.readLine())
        let time = try await ChildProcess.run("aemp", ["cal", "--cert", file, "--seeds", address, seedID, "time"], unset: ["AEMP_SECRET"])
        #expect(time.exit == .exited(0), "\(time)")
        #expect(try JSONCodec.decode(time.stdout).arrayValue?.first?.numberValue != nil, "\(time)")
        let viaEnvironment = try await ChildProcess.run(
            "aemp", ["nodes", "--seeds", address], environment: ["AEMP_CERT": file], unset: ["AEMP_SECRET"])
        #expect(viaEnvironment.exit == .exited(0), "\(viaEnvironment)")
        #expect(viaEnvironment.stdout.contains(seedID), "\(viaEnvironment)")
        // Only a secret: the seed has none, so nothing authenticates the tool.
        let secretOnly = try await ChildProcess.run(
            "aemp", ["nodes", "--secret", testSecret, "--seeds", address, "--connect-timeout", "3"], unset: ["AEMP_CERT"])
        #expect(secretOnly.exit == .exited(1), "\(secretOnly)")
        #expect(secretOnly.stdout.isEmpty)
        seed.signal(SIGTERM)
        #expect(try await seed.waitForExit() == .exited(0))
    }

    // MARK: - Only processes

    @Test("aemp seed, db mon, db set, db del and cal as separate processes")
    func allProcesses() async throws {
        let address = "127.0.0.1:\(try freePort())"
        let seed = try ChildProcess(
            "aemp", ["seed", "--bind", address, "--secret", testSecret, "--node-id", "tool-proc-seed-%u"])
        defer { seed.stop() }
        let seedID = try bannerNodeID(try await seed.readLine())
        let options = ["--secret", testSecret, "--seeds", address]

        let mon = try ChildProcess("aemp", ["db", "mon"] + options + ["tool-p"])
        defer { mon.stop() }
        #expect(try await mon.readLine() == #"{"family":"tool-p","values":{},"added":[],"changed":[],"deleted":[]}"#)
        let holder = try ChildProcess("aemp", ["db", "set"] + options + ["tool-p", "k", "[1]"])
        defer { holder.stop() }
        _ = try await holder.readLine()
        #expect(try await mon.readLine() == #"{"family":"tool-p","values":{"k":[1]},"added":["k"],"changed":[],"deleted":[]}"#)

        let del = try await ChildProcess.run("aemp", ["db", "del"] + options + ["tool-p", "k"])
        #expect(del.exit == .exited(0), "\(del)")
        #expect(try await mon.readLine() == #"{"family":"tool-p","values":{},"added":[],"changed":[],"deleted":["k"]}"#)
        #expect(try await holder.waitForExit() == .exited(0))

        let time = try await ChildProcess.run("aemp", ["cal"] + options + [seedID, "time"])
        #expect(time.exit == .exited(0), "\(time)")
        #expect(try JSONCodec.decode(time.stdout).arrayValue?.first?.numberValue != nil, "\(time)")

        mon.signal(SIGINT)
        #expect(try await mon.waitForExit() == .exited(0))
        seed.signal(SIGTERM)
        #expect(try await seed.waitForExit() == .exited(0))
    }
}

/// A global seed on 127.0.0.1 (it lists its own address as a seed), optionally with a public
/// node attached to it, and how to run `aemp` against it.
struct ToolNetwork {
    let seed: Node
    let address: String
    let pub: Node?

    /// `--secret` and `--seeds` for the tool.
    /// What every tool run of a test passes: the secret, the seed, and a master deadline stretched
    /// under a sanitizer (a ThreadSanitizer run once took more than the default 10 s to attach
    /// while another suite flooded the machine with connections).
    var options: [String] {
        ["--secret", testSecret, "--seeds", address, "--connect-timeout", "\(Int(10 * sanitizerSlowdown))"]
    }

    /// Runs `body` with a fresh network and shuts it down afterwards, also when `body` throws.
    static func with(publicNode: Bool = false, _ body: (ToolNetwork) async throws -> Void) async throws {
        let net = try await start(withPublicNode: publicNode)
        do {
            try await body(net)
        } catch {
            await net.shutdown()
            throw error
        }
        await net.shutdown()
    }

    static func start(withPublicNode: Bool = false) async throws -> ToolNetwork {
        let address = "127.0.0.1:\(try freePort())"
        let seed = try makeNode(id: "tool-seed-%u", binds: [address], seeds: [address])
        try await seed.start()
        var pub: Node?
        if withPublicNode {
            let p = try makeNode(id: "tool-pub-%u", binds: ["127.0.0.1:0"], seeds: [address])
            try await p.start()
            #expect(try await p.waitForMaster(timeout: stretched(.seconds(10))) == seed.id)
            // Registered with the seed: a lookup before that fails at once ("no known address").
            await eventually(within: 10, "the seed knows the public node") { try await p.dbKeys("'l").contains(p.id) }
            pub = p
        }
        return ToolNetwork(seed: seed, address: address, pub: pub)
    }

    /// Runs `aemp` to completion.
    func run(_ arguments: [String]) async throws -> ChildResult {
        try await ChildProcess.run("aemp", arguments)
    }

    /// Starts a long-running `aemp` with collected output.
    func spawn(_ arguments: [String]) throws -> ChildProcess {
        try ChildProcess("aemp", arguments)
    }

    func shutdown() async {
        await pub?.shutdown()
        await seed.shutdown()
    }
}
