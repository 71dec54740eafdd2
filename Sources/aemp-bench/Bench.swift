import AEMP
import ChildProcesses
import Foundation
import NIOCore

/// The processes of a run and the scenarios. Scenarios run one after another from one task.
final class Bench: @unchecked Sendable {
    let settings: AEMPBench
    let bin: String
    let baselinePath: String
    let fanoutPath: String
    let wrk: String
    let report = Report()
    let secret = "aemp-bench-secret"
    let tmp: String
    let header: String

    var children: [ChildProcess] = []
    let baseline: ChildProcess
    let basePort: Int
    let gateway: ChildProcess
    let httpPort: Int
    let seedPort: Int
    let sink: ChildProcess
    let sinkPort: String
    /// The node of the benchmark itself (a member of the gateway's network).
    let node: Node
    /// Gateway RSS once it serves, before any load; the highest seen during the run.
    let startRSS: Int
    var peakRSS: Int
    /// Scenario 3's gateway median (ns), the yardstick of scenario 4.
    var fanOutMedian: Double?

    init(bin: String, baselinePath: String, fanoutPath: String, wrk: String, settings: AEMPBench) async throws {
        self.settings = settings
        self.bin = bin
        self.baselinePath = baselinePath
        self.fanoutPath = fanoutPath
        guard let wrkPath = executablePath(wrk) else { throw BenchError("\(wrk) not found (apt-get install wrk)") }
        self.wrk = wrkPath
        tmp = NSTemporaryDirectory() + "aemp-bench-\(getpid())"
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        let cpu = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?
            .split(separator: "\n").first { $0.hasPrefix("model name") }
            .map { $0.split(separator: ":", maxSplits: 1).last!.trimmingCharacters(in: .whitespaces) } ?? "unknown CPU"
        let memory = procMeminfoGB()
        header = "aemp-gateway benchmarks, \(ISO8601DateFormatter().string(from: Date())), \(ProcessInfo.processInfo.activeProcessorCount) cores (\(cpu)), \(memory) GB RAM"

        basePort = freePort()
        baseline = try startChild("baseline", baselinePath, ["\(basePort)"], log: tmp + "/baseline.log")
        children.append(baseline)
        _ = try await baseline.line(startingWith: "baseline listening", within: 10)

        httpPort = freePort()
        seedPort = freePort()
        gateway = try startChild(
            "aemp-gateway", bin + "/aemp-gateway",
            ["--http", "127.0.0.1:\(httpPort)", "--standalone-bind", "127.0.0.1:\(seedPort)", "--secret", secret,
             "--log-level", "error", "--metrics-public"],
            environment: ["AEMP_GATEWAY_STATE_DIR": tmp], log: tmp + "/gateway.log")
        children.append(gateway)
        _ = try await gateway.line(startingWith: "aemp-gateway ", within: 30)
        try await Task.sleep(nanoseconds: 1_000_000_000)
        startRSS = gateway.rss
        peakRSS = startRSS

        sink = try startChild(
            "aemp sink", bin + "/aemp",
            ["sink", "--seeds", "127.0.0.1:\(seedPort)", "--secret", secret, "--report", "0.1"])
        children.append(sink)
        sinkPort = String(try await sink.line(startingWith: "sink ", within: 20).dropFirst(5))
        // Sends to a node the gateway neither sees connected nor finds in 'l answer 502: wait
        // until its end of the sink's handshake is done.
        let sinkNode = String(sinkPort.prefix { $0 != "#" })
        let deadline = monotonicNanoseconds() + 20_000_000_000
        while !((try? httpExchange(port: httpPort, method: "GET", path: "/v1/node"))?.1.contains("\"\(sinkNode)\"") ?? false) {
            guard monotonicNanoseconds() < deadline else { throw BenchError("the gateway never saw the sink \(sinkNode) connected") }
            try await Task.sleep(nanoseconds: 50_000_000)
        }

        node = try await Self.joinedNode(id: "bench/%u", seed: "127.0.0.1:\(seedPort)", secret: secret)
    }

    /// A node of this process, started and attached to `seed` (errors only in its log).
    static func joinedNode(id: String, seed: String, secret: String) async throws -> Node {
        var c = NodeConfiguration(secret: secret)
        c.nodeID = id
        c.seeds = [seed]
        c.logger.logLevel = .error
        let node = try Node(configuration: c)
        try await node.start()
        guard (try? await node.waitForMaster(timeout: .seconds(10))) != nil else { throw BenchError("node \(node.id) found no master at \(seed)") }
        return node
    }

    func stopAll() {
        for child in children.reversed() { child.stop(grace: 3) }
        children.removeAll()
    }

    func notePeak() { peakRSS = max(peakRSS, gateway.rss) }

    /// HTTP connections the gateway holds (its /metrics).
    func gatewayConnections() throws -> Int {
        let (_, text) = try httpExchange(port: httpPort, method: "GET", path: "/metrics")
        for line in text.split(separator: "\n") where line.hasPrefix("aemp_gateway_http_connections ") {
            return Int(Double(line.split(separator: " ")[1]) ?? -1)
        }
        throw BenchError("no aemp_gateway_http_connections in /metrics")
    }

    /// Waits (bounded) until the previous scenario's connections are gone: closed idle event
    /// streams are noticed at the next heartbeat (15 s), as suspended connections are not polled.
    func settle() async throws {
        let deadline = monotonicSeconds() + 40
        while try gatewayConnections() > 10, monotonicSeconds() < deadline {
            try await Task.sleep(nanoseconds: 250_000_000)
        }
    }

    func scenario(_ n: Int) async throws {
        FileHandle.standardError.write(Data("aemp-bench: scenario \(n)\n".utf8))
        try await settle()
        switch n {
        case 1: try await send()
        case 2: try await batchSend()
        case 3: try await fanOut()
        case 4: try await mailboxes()
        case 5: try await mesh()
        case 7: try await watchedFamilyCost()
        default: try await footprint()
        }
    }

    // MARK: - Scenarios 1 and 2: wrk against POST /v1/send

    struct WrkResult {
        var requestsPerSecond: Double
        var p99ms: Double
        var requests: Int
        var non2xx: Int
    }

    func runWrk(port: Int, body: String, seconds: Int) async throws -> WrkResult {
        let script = tmp + "/post-\(port).lua"
        let escaped = body.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'")
        try """
            wrk.method = "POST"
            wrk.body = '\(escaped)'
            wrk.headers["Content-Type"] = "application/json"
            """.write(toFile: script, atomically: true, encoding: .utf8)
        let child = try startChild(
            "wrk", wrk,
            ["-t2", "-c\(settings.connections)", "-d\(seconds)s", "--latency", "-s", script, "http://127.0.0.1:\(port)/v1/send"])
        guard (try? await child.waitForExit(within: Double(seconds) + 30)) == .exited(0) else {
            child.stop(grace: 3)
            throw BenchError("wrk failed: \(child.lines.suffix(5))")
        }
        try await Task.sleep(nanoseconds: 50_000_000)
        let out = child.lines
        func field(_ prefix: String) -> [Substring]? {
            out.first { $0.trimmingCharacters(in: .whitespaces).hasPrefix(prefix) }?.split(separator: " ")
        }
        guard let rps = field("Requests/sec:").flatMap({ Double($0[1]) }),
            let p99 = field("99%").map({ String($0[1]) }),
            let total = out.first(where: { $0.contains(" requests in ") }).flatMap({ Int($0.split(separator: " ")[0]) })
        else { throw BenchError("cannot read wrk's output: \(out)") }
        let non2xx = field("Non-2xx or 3xx responses:").flatMap { Int($0.last!) } ?? 0
        return WrkResult(requestsPerSecond: rps, p99ms: milliseconds(p99), requests: total, non2xx: non2xx)
    }

    private func milliseconds(_ wrkTime: String) -> Double {
        if wrkTime.hasSuffix("us") { return (Double(wrkTime.dropLast(2)) ?? 0) / 1000 }
        if wrkTime.hasSuffix("ms") { return Double(wrkTime.dropLast(2)) ?? 0 }
        if wrkTime.hasSuffix("s") { return (Double(wrkTime.dropLast(1)) ?? 0) * 1000 }
        return 0
    }

    /// The sink's latest count.
    var sinkCount: Int {
        sink.lines.last { $0.hasPrefix("count ") }.flatMap { Int($0.dropFirst(6)) } ?? 0
    }

    /// Waits until the sink has `expected` messages or its count stops moving for 2 s (bounded);
    /// returns the count and when it was first seen.
    func drainSink(expected: Int) async throws -> (count: Int, at: Int) {
        var last = sinkCount, lastAt = monotonicNanoseconds()
        let deadline = monotonicSeconds() + 120
        while last < expected, monotonicSeconds() < deadline, monotonicNanoseconds() - lastAt < 2_000_000_000 {
            try await Task.sleep(nanoseconds: 10_000_000)
            let now = sinkCount
            if now != last {
                last = now
                lastAt = monotonicNanoseconds()
            }
        }
        return (last, lastAt)
    }

    /// One ~100-byte message (its JSON envelope) for the sink.
    var envelope: String {
        let pad = String(repeating: "x", count: max(8, 100 - sinkPort.count - 40))
        return "{\"port\":\"\(sinkPort)\",\"message\":[\"bench\",12345,\"\(pad)\"]}"
    }

    /// Scenario 1: `repeats` pairs of wrk runs, baseline then gateway, so that both see the same
    /// drift of a noisy machine; the ratio is the median of the pairs' ratios.
    func send() async throws {
        let seconds = settings.duration
        var pairs: [(gateway: WrkResult, baseline: WrkResult)] = []
        var accepted = 0, arrived = 0, non2xx = 0
        for _ in 0..<settings.repeats {
            let base = try await runWrk(port: basePort, body: envelope, seconds: seconds)
            let before = sinkCount
            let gw = try await runWrk(port: httpPort, body: envelope, seconds: seconds)
            notePeak()
            let ok = gw.requests - gw.non2xx
            let (count, _) = try await drainSink(expected: before + ok)
            accepted += ok
            arrived += count - before
            non2xx += gw.non2xx
            pairs.append((gw, base))
        }
        // wrk does not count requests in flight when it stops: the sink may hold a few more.
        let lost = max(0, accepted - arrived)
        let gwRPS = median(pairs.map(\.gateway.requestsPerSecond)), baseRPS = median(pairs.map(\.baseline.requestsPerSecond))
        let r = median(pairs.map { $0.gateway.requestsPerSecond / $0.baseline.requestsPerSecond })
        let gwP99 = median(pairs.map(\.gateway.p99ms)), baseP99 = median(pairs.map(\.baseline.p99ms))
        report.add(Row(scenario: "1 send: POST /v1/send, req/s (median of \(pairs.count))", measured: format(gwRPS),
                       baseline: format(baseRPS), ratio: String(format: "%.2f×", r), target: "≥ 0.80×", pass: r >= 0.8))
        report.add(Row(scenario: "1 send: ratio of each pair", measured: pairs.map { String(format: "%.2f", $0.gateway.requestsPerSecond / $0.baseline.requestsPerSecond) }.joined(separator: " "),
                       target: "", pass: nil))
        report.add(Row(scenario: "1 send: p99 latency, ms", measured: format(gwP99, 2), baseline: format(baseP99, 2),
                       target: "≤ 5 ms", pass: gwP99 <= 5))
        report.add(Row(scenario: "1 send: accepted / at sink / lost", measured: "\(accepted) / \(arrived) / \(lost)",
                       target: "0 lost", pass: lost == 0 && non2xx == 0))
    }

    func batchSend() async throws {
        let body = "[" + Array(repeating: envelope, count: settings.batch).joined(separator: ",") + "]"
        let seconds = settings.duration
        let base = try await runWrk(port: basePort, body: body, seconds: seconds)
        let before = sinkCount
        let start = monotonicNanoseconds()
        let gw = try await runWrk(port: httpPort, body: body, seconds: seconds)
        notePeak()
        let accepted = (gw.requests - gw.non2xx) * settings.batch
        let (count, at) = try await drainSink(expected: before + accepted)
        let arrived = count - before
        // Delivered messages over the time from the first request to the last message at the sink.
        let rate = Double(arrived) / (Double(at - start) / 1e9)
        let baseRate = base.requestsPerSecond * Double(settings.batch)
        report.add(Row(scenario: "2 batch send (\(settings.batch)/request): msgs/s at sink", measured: format(rate),
                       baseline: format(baseRate), ratio: ratio(rate, baseRate), target: "≥ 300,000/s", pass: rate >= 300_000))
        let lost = max(0, accepted - arrived)
        report.add(Row(scenario: "2 batch send: accepted / at sink / lost", measured: "\(accepted) / \(arrived) / \(lost)",
                       target: "0 lost", pass: lost == 0 && gw.non2xx == 0))
    }

    // MARK: - Scenario 3: fan-out to SSE subscribers

    /// Runs `fanout sse` against a server; `trigger(k)` makes the change of round k. Returns the
    /// per-round times (ns from just before the trigger to the last subscriber's receipt), the
    /// time to connect everyone (ms) and the server's RSS growth per subscriber.
    func fanOutRun(port: Int, server: ChildProcess, rounds: Int? = nil, trigger: (Int) throws -> Void) async throws -> (rounds: [Double], first: [Double], connectMS: Double, perSubscriber: Double) {
        let n = settings.subscribers
        let roundCount = rounds ?? settings.rounds
        let idleRSS = server.rss
        let client = try startChild(
            "fanout sse", fanoutPath, ["sse", "127.0.0.1", "\(port)", "/v1/db/bench/watch", "\(n)", "\(roundCount)", "60"],
            log: tmp + "/fanout-sse-\(port).log")
        defer { client.stop(grace: 3) }
        let ready = try await client.line(startingWith: "ready ", within: 120)
        let connectMS = Double(ready.split(separator: " ")[2]) ?? 0
        try await Task.sleep(nanoseconds: 1_000_000_000)
        let perSubscriber = Double(server.rss - idleRSS) / Double(n)
        if server === gateway { notePeak() }
        var times: [Double] = [], firsts: [Double] = []
        for k in 1...roundCount {
            try await Task.sleep(nanoseconds: 300_000_000)
            let t0 = monotonicNanoseconds()
            try trigger(k)
            let line = try await client.line(startingWith: "round \(k) ", within: 90).split(separator: " ")
            guard line.count == 5, let first = Int(line[2]), let last = Int(line[3]) else {
                throw BenchError("fan-out round \(k): \(line.joined(separator: " "))")
            }
            times.append(Double(last - t0))
            firsts.append(Double(first - t0))
        }
        _ = try? await client.waitForExit(within: 30)
        return (times, firsts, connectMS, perSubscriber)
    }

    func fanOut() async throws {
        let base = try await fanOutRun(port: basePort, server: baseline) { k in
            let status = try httpRequest(port: basePort, method: "PUT", path: "/v1/db/bench/k", body: "\"bench-round-\(k)\"")
            guard status == 204 else { throw BenchError("baseline PUT: \(status)") }
        }
        // The baseline notices closed idle streams at its next change: let it (see fanout.c).
        for _ in 0..<2 { _ = try? httpRequest(port: basePort, method: "PUT", path: "/v1/db/bench/k", body: "0") }
        let node = self.node
        let gw = try await fanOutRun(port: httpPort, server: gateway) { k in
            node.dbSet("bench", "k", .string("bench-round-\(k)"))
        }
        let gwMedian = median(gw.rounds), baseMedian = median(base.rounds)
        fanOutMedian = gwMedian
        let n = settings.subscribers
        report.add(Row(scenario: "3 fan-out: \(n) SSE subscribers, median ms", measured: format(gwMedian / 1e6, 1),
                       baseline: format(baseMedian / 1e6, 1), ratio: ratio(gwMedian, baseMedian), target: "≤ 1.30×",
                       pass: gwMedian <= 1.3 * baseMedian))
        report.add(Row(scenario: "3 fan-out: rounds, ms", measured: gw.rounds.map { format($0 / 1e6, 0) }.joined(separator: " "),
                       baseline: base.rounds.map { format($0 / 1e6, 0) }.joined(separator: " "), target: "", pass: nil))
        report.add(Row(scenario: "3 fan-out: first subscriber has it, median ms", measured: format(median(gw.first) / 1e6, 1),
                       baseline: format(median(base.first) / 1e6, 1), target: "", pass: nil))
        report.add(Row(scenario: "3 fan-out: connect \(n) subscribers, ms", measured: format(gw.connectMS, 0),
                       baseline: format(base.connectMS, 0), ratio: ratio(gw.connectMS, base.connectMS), target: "", pass: nil))
        report.add(Row(scenario: "3 fan-out: memory per idle subscriber, KB", measured: format(gw.perSubscriber / 1024, 1),
                       baseline: format(base.perSubscriber / 1024, 1), ratio: ratio(gw.perSubscriber, base.perSubscriber),
                       target: "≤ 12 KB", pass: gw.perSubscriber <= 12 * 1024))
        // The same with libmicrohttpd's per-connection pool at 4 KiB instead of the default 8 KiB,
        // in a gateway of its own (the change is made there with its own PUT).
        let small = try await smallPoolGateway()
        defer { small.child.stop(grace: 3) }
        let smallRun = try await fanOutRun(port: small.port, server: small.child, rounds: 1) { k in
            let status = try httpRequest(port: small.port, method: "PUT", path: "/v1/db/bench/k", body: "\"bench-round-\(k)\"")
            guard status == 204 || status == 200 else { throw BenchError("gateway PUT: \(status)") }
        }
        report.add(Row(scenario: "3 fan-out: same, --connection-memory 4096, KB", measured: format(smallRun.perSubscriber / 1024, 1),
                       baseline: format(base.perSubscriber / 1024, 1), ratio: ratio(smallRun.perSubscriber, base.perSubscriber),
                       target: "≤ 12 KB", pass: smallRun.perSubscriber <= 12 * 1024))
    }

    /// A second standalone gateway with `--connection-memory 4096`, idle.
    func smallPoolGateway() async throws -> (child: ChildProcess, port: Int) {
        let port = freePort()
        let child = try startChild(
            "aemp-gateway (4 KiB pool)", bin + "/aemp-gateway",
            ["--http", "127.0.0.1:\(port)", "--standalone-bind", "127.0.0.1:\(freePort())", "--secret", secret,
             "--log-level", "error", "--connection-memory", "4096"],
            environment: ["AEMP_GATEWAY_STATE_DIR": tmp], log: tmp + "/gateway-small.log")
        _ = try await child.line(startingWith: "aemp-gateway ", within: 30)
        try await Task.sleep(nanoseconds: 1_000_000_000)
        return (child, port)
    }

    // MARK: - Scenario 4: parked long-polls on mailboxes

    func mailboxes() async throws {
        let n = settings.subscribers
        let create = try startChild(
            "fanout post", fanoutPath, ["post", "127.0.0.1", "\(httpPort)", "/v1/ports", "\(n)", "32", "{\"ttl\":20}"],
            log: tmp + "/fanout-post.log")
        guard (try? await create.waitForExit(within: 180)) == .exited(0) else {
            create.stop(grace: 3)
            throw BenchError("creating \(n) mailboxes failed: \((try? String(contentsOfFile: tmp + "/fanout-post.log", encoding: .utf8)) ?? "")")
        }
        try await Task.sleep(nanoseconds: 100_000_000)
        var names: [String] = [], ports: [PortID] = []
        for line in create.lines where line.hasPrefix("{") {
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                let name = object["name"] as? String, let port = (object["port"] as? String).flatMap(PortID.init)
            else { throw BenchError("unexpected mailbox answer \(line)") }
            names.append(name)
            ports.append(port)
        }
        guard names.count == n else { throw BenchError("\(names.count) of \(n) mailboxes created") }
        // The same shape in C first: n long-polls parked in the baseline, answered by one request.
        let base = try await longPollRun(port: basePort, paths: Array(repeating: "/v1/poll", count: n), name: "baseline") {
            let status = try httpRequest(port: basePort, method: "POST", path: "/v1/release", body: "")
            guard status == 200 else { throw BenchError("baseline release: \(status)") }
        }
        let node = self.node
        let gw = try await longPollRun(port: httpPort, paths: names.map { "/v1/ports/\($0)/messages?wait=60" }, name: "gateway") {
            for (i, port) in ports.enumerated() { node.snd(port, ["bench", .int(Int64(i))]) }
        }
        let yardstick = fanOutMedian
        report.add(Row(scenario: "4 mailboxes: \(n) parked long-polls, ms", measured: format(gw.time / 1e6, 1),
                       baseline: format(base.time / 1e6, 1), ratio: ratio(gw.time, base.time), target: "", pass: nil))
        report.add(Row(scenario: "4 mailboxes: compared with scenario 3", measured: format(gw.time / 1e6, 1),
                       baseline: yardstick.map { "\(format($0 / 1e6, 1)) (3)" } ?? "-",
                       ratio: yardstick.map { ratio(gw.time, $0) } ?? "-", target: "≤ 1.50× (3)",
                       pass: yardstick.map { gw.time <= 1.5 * $0 }))
        report.add(Row(scenario: "4 mailboxes: first long-poll answered, ms", measured: format(gw.first / 1e6, 1),
                       baseline: format(base.first / 1e6, 1), target: "", pass: nil))
        // Done with them, as a client would be (DELETE), so that scenario 6 sees the gateway empty.
        for name in names { _ = try? httpRequest(port: httpPort, method: "DELETE", path: "/v1/ports/\(name)", body: "") }
        report.add(Row(scenario: "4 mailboxes: answered 200 / other", measured: "\(n - gw.non200) / \(gw.non200)",
                       baseline: "\(n - base.non200) / \(base.non200)", target: "all 200", pass: gw.non200 == 0))
    }

    /// Parks one long-poll per path (each on its own connection), waits 2 s, runs `trigger` and
    /// returns the time from just before it to the last answer (ns), to the first, and how many
    /// answers were not 200.
    func longPollRun(port: Int, paths: [String], name: String, trigger: () throws -> Void) async throws
        -> (time: Double, first: Double, non200: Int)
    {
        let file = tmp + "/long-polls-\(port).txt"
        try paths.map { $0 + "\n" }.joined().write(toFile: file, atomically: true, encoding: .utf8)
        let client = try startChild("fanout poll", fanoutPath, ["poll", "127.0.0.1", "\(port)", file, "120"], log: tmp + "/fanout-poll-\(port).log")
        defer { client.stop(grace: 3) }
        _ = try await client.line(startingWith: "parked ", within: 120)
        FileHandle.standardError.write(Data("  4: \(paths.count) long-polls written to the \(name); answering in 2 s\n".utf8))
        // Every request is written; give the server a moment to read and park them all.
        try await Task.sleep(nanoseconds: 2_000_000_000)
        if port == httpPort { notePeak() }
        let t0 = monotonicNanoseconds()
        try trigger()
        let done = try await client.line(startingWith: "done ", within: 120).split(separator: " ")
        guard done.count == 5, let first = Int(done[2]), let last = Int(done[3]), let non200 = Int(done[4]) else {
            throw BenchError("long-polls: \(done.joined(separator: " "))")
        }
        return (Double(last - t0), Double(first - t0), non200)
    }

    // MARK: - Scenario 7: a change to a watched family costs what it changes

    /// A global node and a watcher node in this process: the time from a `db_set` on the global
    /// to the watcher's `db_mon` callback, per change, with the family holding 1,000 keys and
    /// 300,000 keys. A change that costs O(family) (the whole family copied per change, as before
    /// issue 15) shows as a ratio in the hundreds; the goal is the same cost at both sizes.
    func watchedFamilyCost() async throws {
        let port = freePort()
        var c = NodeConfiguration(secret: secret)
        c.nodeID = "bench-global/%u"
        c.binds = ["127.0.0.1:\(port)"]
        c.seeds = ["127.0.0.1:\(port)"]
        c.logger.logLevel = .error
        let global = try Node(configuration: c)
        try await global.start()
        defer { Task { await global.shutdown() } }
        let watcher = try await Self.joinedNode(id: "bench-watcher/%u", seed: "127.0.0.1:\(port)", secret: secret)
        defer { Task { await watcher.shutdown() } }
        var perChange: [Int: Double] = [:]
        for size in [1_000, 300_000] {
            let family = "bench-\(size)"
            for start in stride(from: 0, to: size, by: 10_000) {
                global.batch { for i in start..<min(size, start + 10_000) { global.dbSet(family, "k\(i)", .int(Int64(i))) } }
            }
            // The watcher's changes, in order: the number of keys each one left.
            let (stream, continuation) = AsyncStream<Int>.makeStream()
            let watch = watcher.dbMon(family) { change in continuation.yield(change.values.count) }
            var changesSeen = stream.makeAsyncIterator()
            while let count = await changesSeen.next(), count < size {}
            let changes = 300
            let t0 = monotonicNanoseconds()
            for i in 0..<changes {
                global.dbSet(family, "k\(i % 100)", .int(Int64(-1 - i)))
                guard await changesSeen.next() != nil else { throw BenchError("change \(i) of \(family) never arrived") }
            }
            perChange[size] = Double(monotonicNanoseconds() - t0) / Double(changes) / 1e3
            watch.cancel()
            continuation.finish()
        }
        let small = perChange[1_000] ?? 0, large = perChange[300_000] ?? 0
        let ratio = small > 0 ? large / small : 0
        report.add(Row(
            scenario: "7 db_mon: µs per change, 300,000-key family", measured: format(large, 1), baseline: format(small, 1),
            ratio: String(format: "%.2f", ratio), target: "ratio ≤ 3 (baseline: 1,000 keys)", pass: ratio <= 3))
    }

    // MARK: - Scenario 5: node to node

    func mesh() async throws {
        let n = settings.meshMessages
        for framing in ["json", "cbor"] {
            let port = freePort()
            let receiver = try startChild(
                "aemp sink (\(framing))", bin + "/aemp",
                ["sink", "--bind", "127.0.0.1:\(port)", "--seeds", "127.0.0.1:\(port)", "--secret", secret,
                 "--framings", framing, "--expect", "\(n)", "--report", "0.05"])
            defer { receiver.stop(grace: 3) }
            let target = try await receiver.line(startingWith: "sink ", within: 20).dropFirst(5)
            guard let sinkPort = PortID(String(target)) else { throw BenchError("bad sink port \(target)") }
            // The sink is its own seed: the seed connection is the one connection measured.
            let sender = try await Self.joinedNode(id: "sender/%u", seed: "127.0.0.1:\(port)", secret: secret)
            let pad = String(repeating: "x", count: 70)
            let receiverCPU0 = receiver.cpuSeconds, senderCPU0 = ownCPU()
            let t0 = monotonicNanoseconds()
            // Paced, so that the sender runs at most 200,000 messages ahead of the receiver
            // (the sink counts every 50 ms) instead of buffering the whole run in memory.
            var sent = 0
            while sent < n {
                let received = receiver.lines.last { $0.hasPrefix("count ") }.flatMap { Int($0.dropFirst(6)) } ?? 0
                if sent - received > 200_000 {
                    try await Task.sleep(nanoseconds: 1_000_000)
                    continue
                }
                let chunk = min(1000, n - sent)
                sender.batch {
                    for i in sent..<(sent + chunk) { sender.snd(sinkPort, ["bench", .int(Int64(i)), .string(pad)]) }
                }
                sent += chunk
            }
            let reached = try await receiver.line(startingWith: "reached ", within: 300).split(separator: " ")
            guard reached.count == 3, let at = Int(reached[2]) else { throw BenchError("sink: \(reached)") }
            let seconds = Double(at - t0) / 1e9
            let rate = Double(n) / seconds
            let senderCPU = (ownCPU() - senderCPU0) / Double(n) * 1e6
            let receiverCPU = (receiver.cpuSeconds - receiverCPU0) / Double(n) * 1e6
            let framed = try framedSize(framing, sinkPort, pad)
            report.add(Row(scenario: "5 mesh \(framing) (\(framed) B/packet): msgs/s", measured: format(rate),
                           baseline: "", ratio: "", target: "≥ 300,000/s", pass: rate >= 300_000))
            report.add(Row(scenario: "5 mesh \(framing): CPU µs/msg sender + receiver",
                           measured: "\(format(senderCPU, 2)) + \(format(receiverCPU, 2))", target: "", pass: nil))
            await sender.shutdown()
        }
    }

    private func framedSize(_ framing: String, _ port: PortID, _ pad: String) throws -> Int {
        var buffer = ByteBufferAllocator().buffer(capacity: 256)
        try Framing(rawValue: framing)!.encode([.string(port.name), "bench", .int(123456), .string(pad)], into: &buffer)
        return buffer.readableBytes
    }

    // MARK: - Scenario 6: idle footprint

    func footprint() async throws {
        let startMB = Double(startRSS) / 1_048_576
        report.add(Row(scenario: "6 idle: gateway RSS at start, MB", measured: format(startMB, 1), target: "≤ 30 MB", pass: startMB <= 30))
        // After the load: the level it settles to, then `idle` seconds later.
        let descriptors0 = openDescriptors(gateway.pid)
        try await Task.sleep(nanoseconds: 2_000_000_000)
        let floor = gateway.rss
        try await Task.sleep(nanoseconds: UInt64(settings.idle) * 1_000_000_000)
        let final = gateway.rss
        notePeak()
        report.add(Row(scenario: "6 idle: RSS peak / settled / after \(settings.idle) s idle, MB",
                       measured: "\(format(Double(peakRSS) / 1_048_576, 0)) / \(format(Double(floor) / 1_048_576, 0)) / \(format(Double(final) / 1_048_576, 0))",
                       target: "≤ 1.10× settled", pass: Double(final) <= 1.1 * Double(floor)))
        report.add(Row(scenario: "6 idle: open descriptors after load / after idle", measured: "\(descriptors0) / \(openDescriptors(gateway.pid))",
                       target: "", pass: nil))
    }
}

func median(_ values: [Double]) -> Double {
    let s = values.sorted()
    guard !s.isEmpty else { return 0 }
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

func procMeminfoGB() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8),
        let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MemTotal:") }),
        let kb = Int(line.split(separator: " ")[1])
    else { return 0 }
    return Int((Double(kb) / 1_048_576).rounded())
}
