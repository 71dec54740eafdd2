import AEMP
import AEMPTestSupport
import Foundation
import Logging
import NIOCore
import Testing

/// Issue 15, item 11: repeated log lines are rate limited (first `--log-burst` of a kind per
/// `--log-interval`, then one summary with the count left out), and /metrics counts what was left out.
@Suite("gateway: log floods")
struct LogFloodTests {

    @Test("2,000 refused HTTP evals, 1,000 mesh evals and 600 garbage or half-open mesh connections: a bounded log with summaries that add up, counted in /metrics")
    func floodsAreSummarised() async throws {
        let burst = 5, interval = 2.0
        let bind = "127.0.0.1:\(try freePort())"
        let meshPort = Int(bind.split(separator: ":").last!)!
        try await Cleanup.scope { cleanup in
            // The limits are given through the environment: a gateway that does not know them
            // still starts, and the test shows what it logs.
            let gateway = try await GatewayProcess.start(
                seeds: nil,
                arguments: ["--standalone-bind", bind, "--log-level", "info", "--log-format", "json", "--handshake-timeout", "1",
                    // Every one of the 600 mesh connections must reach its handshake (the caps on
                    // handshakes in progress have their own test).
                    "--max-mesh-handshakes", "2000", "--max-mesh-handshakes-per-address", "2000"],
                environment: ["AEMP_GATEWAY_LOG_BURST": "\(burst)", "AEMP_GATEWAY_LOG_INTERVAL": "\(Int(interval))"])
            cleanup.add { gateway.child.stop() }
            try await gateway.waitForNodeInfo("its own master") { $0["master"]?.stringValue == gateway.nodeID }
            let started = ContinuousClock.now

            // 1. HTTP clients sending eval to the gateway's node port: 403 node_port_forbidden.
            let nodePort = "\(gateway.nodeID)#"
            let httpEvals = 2_000
            let refused = try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<4 {
                    group.addTask {
                        let http = try await gateway.client()
                        var n = 0
                        for i in 0..<(httpEvals / 4) {
                            let r =
                                i % 10 == 0
                                ? try await http.request("POST", "/v1/call", json: ["port": .string(nodePort), "message": ["eval", "die"], "timeout": 1])
                                : try await http.request("POST", "/v1/send", json: ["port": .string(nodePort), "message": ["eval", "die"]])
                            if r.status == 403 { n += 1 }
                        }
                        await http.close()
                        return n
                    }
                }
                return try await group.reduce(0, +)
            }
            #expect(refused == httpEvals)

            // 2. A node of the network sending eval to the gateway's node port (refused, warning).
            var c = NodeConfiguration(secret: gatewayTestSecret)
            c.nodeID = "flood-%u"
            c.seeds = [bind]
            c.logger.logLevel = .critical
            let node = try Node(configuration: c)
            cleanup.add { await node.shutdown() }
            try await node.start()
            #expect(try await node.waitForMaster(timeout: stretched(.seconds(10))) == gateway.nodeID)
            let meshEvals = 1_000
            for _ in 0..<meshEvals { node.snd(PortID(node: gateway.nodeID, name: ""), ["eval", "die"]) }

            // 3. Mesh connections that fail their handshake: garbage, and silence (cut off after 1 s).
            let garbage = 300, silent = 300
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<(garbage + silent) {
                    group.addTask {
                        let bytes = i < garbage ? Array("GET / HTTP/1.0\r\n\r\n".utf8) : []
                        _ = try? await HTTPTestClient.rawExchange(port: meshPort, bytes, timeout: 10)
                    }
                }
                try await group.waitForAll()
            }
            // The node's evals have all arrived once it answers a time request after them.
            let (reply, replies) = node.mailbox()
            node.snd(PortID(node: gateway.nodeID, name: ""), ["time", .string(reply.description), "sync"])
            var it = replies.makeAsyncIterator()
            _ = try await next(&it, within: 10, "the gateway's time reply")

            // Every window has ended and been summarised (the gateway flushes once a second).
            try await Task.sleep(for: .seconds(interval + 1.5))
            let elapsed = Double((ContinuousClock.now - started).components.seconds) + 1
            let windows = Int((elapsed / interval).rounded(.up)) + 1
            let lines = gateway.log.split(separator: "\n").compactMap { line -> [String: Value]? in
                guard line.hasPrefix("{") else { return nil }
                return (try? JSONCodec.decode(Array(line.utf8)))?.objectValue
            }
            func written(_ message: String) -> Int { lines.count { $0["msg"]?.stringValue == message } }
            func summarised(_ message: String) -> Int {
                lines.filter { $0["like"]?.stringValue == message }.reduce(0) { $0 + Int($1["suppressed"]?.stringValue ?? "0")! }
            }
            let report = "log has \(lines.count) lines; last:\n\(gateway.log.suffix(3000))"
            for (message, total) in [
                ("request refused", httpEvals), ("refusing remote eval request", meshEvals), ("handshake failed", garbage + silent),
            ] {
                let n = written(message), left = summarised(message)
                #expect(n <= burst * windows, "\(message): \(n) lines written (at most \(burst) per \(interval) s): \(report)")
                #expect(n + left == total, "\(message): \(n) written + \(left) summarised, expected \(total)")
                #expect(left > 0, "\(message): no summary line")
            }
            let suppressed = lines.reduce(0) { $0 + (Int($1["suppressed"]?.stringValue ?? "") ?? 0) }
            let metrics = try await gateway.client().request("GET", "/metrics").text
            let counted = metrics.split(separator: "\n").first { $0.hasPrefix("aemp_gateway_log_lines_suppressed_total ") }
            #expect(counted.flatMap { Double($0.split(separator: " ").last!) } == Double(suppressed), "\(counted ?? "no counter"); summaries say \(suppressed)")
        }
    }
}
