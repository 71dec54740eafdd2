import AEMP
import AEMPGateway
import Foundation
import Testing

/// `/readyz` and `/metrics` against real processes: readiness follows the master as the seed
/// goes away and comes back; the metrics move under real requests.
@Suite("gateway: readiness and metrics", .serialized, .timeLimit(.minutes(4)))
struct OperationsTests {

    @Test("/readyz is 200 while attached, 503 not_ready when the seed dies, 200 again when a seed returns on its address")
    func readinessFollowsTheMaster() async throws {
        try await Cleanup.scope { cleanup in
            let address = "127.0.0.1:\(try freePort())"
            let seed = try await Self.startSeed(at: address)
            cleanup.add { seed.child.stop() }
            let gateway = try await GatewayProcess.start(seeds: [address])
            cleanup.add { gateway.child.stop() }
            let http = try await gateway.client()
            cleanup.add { await http.close() }

            let ready = try await waitFor(within: 20, "/readyz 200") { () async throws -> HTTPTestResponse? in
                let r = try await http.request("GET", "/readyz")
                return r.status == 200 ? r : nil
            }
            #expect(ready.json == ["status": "ready", "master": .string(seed.id)], "\(ready)")
            #expect(ready.header("Content-Type") == "application/json")

            // The seed (the only master) dies: not ready, with the reason and Retry-After.
            seed.child.stop()
            let down = try await waitFor(within: 15, "/readyz 503 after the seed died") { () async throws -> HTTPTestResponse? in
                let r = try await http.request("GET", "/readyz")
                return r.status == 503 ? r : nil
            }
            let problem = expectProblem(down, 503, "not_ready")
            // Once the node has redialled the dead seed, the detail also says why that failed
            // (`; seed <address>: cannot connect: …`, and a `seeds` member): which one this poll
            // sees depends on timing.
            let detail = problem["detail"]?.stringValue ?? ""
            #expect(
                detail == "not attached to a master node; seeds: \(address)"
                    || detail.hasPrefix("not attached to a master node; seeds: \(address); seed \(address): "), "\(down)")
            #expect(down.header("Retry-After") == "1")
            // Liveness is not readiness: the process still answers /healthz.
            #expect(try await http.request("GET", "/healthz").status == 200)

            // A seed comes back on the same address: the gateway's node reconnects (with backoff).
            let again = try await Self.startSeed(at: address)
            cleanup.add { again.child.stop() }
            let back = try await waitFor(within: 60, "/readyz 200 with the new seed") { () async throws -> HTTPTestResponse? in
                let r = try await http.request("GET", "/readyz")
                return r.status == 200 ? r : nil
            }
            #expect(back.json == ["status": "ready", "master": .string(again.id)], "\(back)")

            // The master attached, was lost and attached again.
            let metrics = try await MetricsSample.scrape(http)
            #expect(metrics["aemp_gateway_master_changes_total"] >= 3, "\(metrics)")
            #expect(metrics["aemp_gateway_master_attached"] == 1)
            #expect(metrics[requests("/readyz", 503)] >= 1)
        }
    }

    @Test("/metrics counters and gauges move under real requests")
    func metricsMove() async throws {
        try await GatewayNetwork.with(gatewayArguments: ["--heartbeat-interval", "0.3"]) { net in
            let before = try await MetricsSample.scrape(net.http)
            #expect(before["aemp_gateway_master_attached"] == 1)
            #expect(before["aemp_gateway_mesh_connections"] >= 2, "seed and public node: \(before)")
            #expect(before["aemp_gateway_master_changes_total"] >= 1)
            #expect(before["aemp_gateway_http_connections"] >= 1)

            // A mailbox that holds two entries; five messages sent through the gateway.
            let (name, port) = try await net.createMailbox(["max_queue": 2])
            let n = 5
            var bodyBytes = 0
            var requestIDs: Set<String> = []
            for i in 1...n {
                let body = JSONCodec.encodeBytes(["port": .string(port), "message": ["m", .int(Int64(i))]])
                bodyBytes += body.count
                let r = try await net.http.request("POST", "/v1/send", headers: [("Content-Type", "application/json")], body: body)
                #expect(r.status == 202, "\(r)")
                // The quick path of /v1/send (no request object) still names each answer.
                if let id = r.header("X-Request-ID") { requestIDs.insert(id) }
            }
            #expect(requestIDs.count == n)
            let after = try await waitFor("five deliveries and three drops counted") { () async throws -> MetricsSample? in
                let m = try await MetricsSample.scrape(net.http)
                let delivered = m["aemp_gateway_mailbox_delivered_messages_total"] - before["aemp_gateway_mailbox_delivered_messages_total"]
                return delivered >= Double(n) && m["aemp_gateway_mailbox_dropped_messages_total"] >= 3 ? m : nil
            }
            #expect(after[requests("/v1/send", 202)] - before[requests("/v1/send", 202)] == Double(n), "\(after)")
            #expect(after[requests("/v1/ports", 201)] - before[requests("/v1/ports", 201)] == 1)
            #expect(
                after[#"aemp_gateway_http_request_duration_seconds_count{route="/v1/send"}"#]
                    - before[#"aemp_gateway_http_request_duration_seconds_count{route="/v1/send"}"#] == Double(n))
            #expect(after["aemp_gateway_messages_sent_total"] - before["aemp_gateway_messages_sent_total"] == Double(n))
            #expect(after["aemp_gateway_mailbox_delivered_messages_total"] - before["aemp_gateway_mailbox_delivered_messages_total"] == Double(n))
            #expect(after["aemp_gateway_mailbox_dropped_messages_total"] - before["aemp_gateway_mailbox_dropped_messages_total"] == 3)
            #expect(after["aemp_gateway_mailboxes"] - before["aemp_gateway_mailboxes"] == 1)
            #expect(after["aemp_gateway_mailbox_queued_messages"] == 2, "two messages (the dropped entry is not one): \(after)")
            // Request bodies: at least the five sends (the mailbox's options body too).
            #expect(after["aemp_gateway_http_request_body_bytes_total"] - before["aemp_gateway_http_request_body_bytes_total"] >= Double(bodyBytes))
            #expect(after["aemp_gateway_http_response_body_bytes_total"] > before["aemp_gateway_http_response_body_bytes_total"])
            // The raw mailbox name is never a label: the route is its template.
            let text = try await net.get("/metrics").text
            #expect(!text.contains(name), "the mailbox name leaked into a label")

            // An open event stream counts while it is open, and its bytes count as response bytes.
            let sse = try await net.sse("/v1/ports/\(name)/messages")
            _ = try await sse.next(3)
            let streaming = try await waitFor("the stream counted") { () async throws -> MetricsSample? in
                let m = try await MetricsSample.scrape(net.http)
                return m["aemp_gateway_sse_streams"] == before["aemp_gateway_sse_streams"] + 1 ? m : nil
            }
            #expect(streaming[requests("/v1/ports/{name}/messages", 200)] - before[requests("/v1/ports/{name}/messages", 200)] == 1)
            let sent = streaming["aemp_gateway_http_response_body_bytes_total"]
            _ = try await net.post("/v1/send", json: ["port": .string(port), "message": ["live"]])
            _ = try await sse.next()
            try await eventually("the stream's bytes counted") {
                try await MetricsSample.scrape(net.http)["aemp_gateway_http_response_body_bytes_total"] > sent
            }
            await sse.close()
            // A suspended stream notices the hang-up at its next heartbeat (0.3 s here).
            try await eventually("the closed stream no longer counts") {
                try await MetricsSample.scrape(net.http)["aemp_gateway_sse_streams"] == before["aemp_gateway_sse_streams"]
            }

            // A parked long-poll counts until a message answers it.
            let empty = try await net.createMailbox()
            let waiting = try await net.client()
            let poll = Task { try await waiting.request("GET", "/v1/ports/\(empty.name)/messages?wait=20", timeout: 25) }
            try await eventually("the long-poll is parked") {
                try await MetricsSample.scrape(net.http)["aemp_gateway_long_polls_parked"] == before["aemp_gateway_long_polls_parked"] + 1
            }
            _ = try await net.post("/v1/send", json: ["port": .string(empty.port), "message": ["wake"]])
            #expect(try await poll.value.status == 200)
            try await eventually("the long-poll no longer counts") {
                try await MetricsSample.scrape(net.http)["aemp_gateway_long_polls_parked"] == before["aemp_gateway_long_polls_parked"]
            }

            // Errors count under their route and status.
            #expect(try await net.get("/v1/ports/\(name).nope/messages?wait=0").status == 404)
            let errors = try await MetricsSample.scrape(net.http)
            #expect(errors[requests("/v1/ports/{name}/messages", 404)] == 1, "\(errors)")
            #expect(try await net.get("/no/such/route").status == 404)
            #expect(try await MetricsSample.scrape(net.http)[requests("other", 404)] == 1)
        }
    }

    @Test("with tokens, /metrics needs one unless metrics are public; /readyz never does")
    func metricsAccess() async throws {
        for isPublic in [false, true] {
            var node = NodeConfiguration(secret: gatewayTestSecret)
            node.nodeID = "ops-\(isPublic ? "public" : "private")-%u"
            node.logger.logLevel = testLogLevel
            var c = GatewayConfiguration(node: node)
            c.standaloneBind = "127.0.0.1:\(try freePort())"
            c.http.address = "127.0.0.1:0"
            c.logger.logLevel = testLogLevel
            c.tokens = ["ops-read-only-token": .readOnly]
            c.metricsPublic = isPublic
            let gateway = try Gateway(configuration: c)
            let address = try await gateway.start()
            let http = try await HTTPTestClient(port: Int(address.split(separator: ":").last!)!)
            do {
                let anonymous = try await http.request("GET", "/metrics")
                if isPublic {
                    #expect(anonymous.status == 200 && anonymous.text.contains("aemp_gateway_"), "\(anonymous)")
                } else {
                    expectProblem(anonymous, 401, "unauthorized")
                }
                let withToken = try await http.request("GET", "/metrics", headers: [("Authorization", "Bearer ops-read-only-token")])
                #expect(withToken.status == 200)
                let ready = try await waitFor("/readyz without a token") { () async throws -> HTTPTestResponse? in
                    let r = try await http.request("GET", "/readyz")
                    return r.status == 200 ? r : nil
                }
                #expect(ready.json?.objectValue?["master"] == .string(gateway.node.id))
                // Each gateway counts its own requests (one registry per gateway, not a global one).
                let own = try MetricsSample(try await http.request("GET", "/metrics", headers: [("Authorization", "Bearer ops-read-only-token")]).text)
                #expect(own[requests("/metrics", 200)] == (isPublic ? 2 : 1), "\(own)")
            } catch {
                await http.close()
                await gateway.shutdown()
                throw error
            }
            await http.close()
            await gateway.shutdown()
        }
    }

    // MARK: - Helpers

    /// An `aemp seed` child listening on `address` (so that a second one can take its place).
    static func startSeed(at address: String) async throws -> SeedProcess {
        let child = try ChildProcess(
            "aemp",
            ["seed", "--bind", address, "--secret", gatewayTestSecret, "--node-id", "ops-seed-%u", "--log-level", "\(testLogLevel)"])
        do {
            let words = try await child.readLine().split(separator: " ").map(String.init)
            guard words.count == 5, words[0] == "node", words[2] == "listening" else {
                throw ChildProcess.ChildError.noLine("unexpected line from aemp seed: \(words)")
            }
            return SeedProcess(child: child, id: words[1], address: address)
        } catch {
            child.stop()
            throw error
        }
    }
}

/// The series key of the request counter for `route` and `status`.
private func requests(_ route: String, _ status: Int) -> String {
    "aemp_gateway_http_requests_total{route=\"\(route)\",status=\"\(status)\"}"
}

/// One scrape of `/metrics`: every sample by its series (`name{labels}` as printed).
struct MetricsSample: Sendable, CustomStringConvertible {
    let values: [String: Double]

    init(_ text: String) throws {
        var values: [String: Double] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else {
                throw SpecFailure("not a sample line: \(line)")
            }
            values[String(line[..<space])] = value
        }
        self.values = values
    }

    /// Scrapes the gateway through `client` (the answer must be 200).
    static func scrape(_ client: HTTPTestClient, headers: [(String, String)] = []) async throws -> MetricsSample {
        let r = try await client.request("GET", "/metrics", headers: headers)
        guard r.status == 200 else { throw SpecFailure("GET /metrics: \(r)") }
        return try MetricsSample(r.text)
    }

    /// The sample's value (0 when the series is not there yet, as for a counter never incremented).
    subscript(_ series: String) -> Double { values[series] ?? 0 }

    var description: String { values.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: "\n") }
}
