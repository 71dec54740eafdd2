import AEMP
import Foundation
import Testing

/// Issue 15, item 5: clients that send a long-poll, a call or open a stream and hang up at once
/// hold no slot, descriptor or call once they are gone. A real gateway process; raw TCP clients.
@Suite("gateway: hang-ups of waiting clients", .serialized, .timeLimit(.minutes(5)))
struct HangupTests {

    static func scrape(_ http: HTTPTestClient) async throws -> MetricsSample {
        try await MetricsSample.scrape(http)
    }

    /// Opens `count` raw connections, each sending `request`; returns them once `parked` says the
    /// gateway holds them all waiting.
    static func open(
        _ count: Int, _ request: String, gateway: GatewayProcess, http: HTTPTestClient, waiting: String
    ) async throws -> [RawConnection] {
        let before = try await scrape(http)[waiting]
        var open: [RawConnection] = []
        for _ in 0..<count {
            let c = try await RawConnection(port: gateway.port)
            await c.send(Array(request.utf8))
            open.append(c)
        }
        try await eventually("\(count) requests waiting (\(waiting))") {
            try await scrape(http)[waiting] - before >= Double(count)
        }
        return open
    }

    @Test("long-polls, calls and event streams whose clients hang up free their connections, waiters and call slots at once, not when their wait ends")
    func waitingClientsHangUp() async throws {
        // Takes turns with the tests that load the machine or check promptness (MachineLoad).
        try await takingTurns {
            // Under a sanitizer half the clients (the full load starved suites running beside it).
            let polls = underSanitizer ? 50 : 100, calls = underSanitizer ? 25 : 50, streamsPer = underSanitizer ? 20 : 40
            try await HostileInputTests.withGateway([
                "--max-connections", "\(polls + 20)", "--max-pending-calls", "\(calls + 10)", "--heartbeat-interval", "600",
                "--max-wait", "120",
            ]) { gateway, http in
                let box = try await gateway.createMailbox(http)
                let hangupsBefore = try await Self.scrape(http)["aemp_gateway_http_hangups_total"]

                // Three rounds of long-polls of 120 s that hang up: each round needs the slots of the
                // one before (20 more connections than a round at most).
                for round in 1...3 {
                    let opened = try await Self.open(
                        polls, "GET /v1/ports/\(box.name)/messages?wait=120 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", gateway: gateway, http: http,
                        waiting: "aemp_gateway_long_polls_parked")
                    for c in opened { c.close() }
                    try await eventually(within: 5, "round \(round): the hung-up long-polls are gone") {
                        let m = try await Self.scrape(http)
                        return m["aemp_gateway_long_polls_parked"] == 0 && m["aemp_gateway_http_connections"] == 1
                    }
                }

                // Calls to a port that never answers (the mailbox's), 120 s: all but 10 slots, twice.
                let call = "{\"port\":\"\(box.port)\",\"message\":[\"q\"],\"timeout\":120}"
                let request = "POST /v1/call HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: \(call.utf8.count)\r\n\r\n\(call)"
                for round in 1...2 {
                    let opened = try await Self.open(calls, request, gateway: gateway, http: http, waiting: "aemp_gateway_calls_in_flight")
                    for c in opened { c.close() }
                    try await eventually(within: 5, "round \(round): the hung-up calls are gone") {
                        let m = try await Self.scrape(http)
                        return m["aemp_gateway_calls_in_flight"] == 0 && m["aemp_gateway_http_connections"] == 1
                    }
                }
                // Their reply ports went with them: a late reply finds no port (nothing is delivered
                // into the mailbox either way), and a real call still gets its answer.
                let timed = try await http.request("POST", "/v1/call", json: ["port": .string(box.port), "message": ["q"], "timeout": 0.2])
                #expect(timed.status == 504, "\(timed)")

                // Event streams (mailbox and feed) whose clients hang up while idle: ended at once,
                // although the next heartbeat is 10 minutes away.
                var streams: [RawConnection] = []
                for path in ["/v1/ports/\(box.name)/messages", "/v1/db/hangup/watch"] {
                    for _ in 0..<streamsPer {
                        let c = try await RawConnection(port: gateway.port)
                        await c.send(Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".utf8))
                        streams.append(c)
                    }
                }
                try await eventually("\(2 * streamsPer) streams open") {
                    try await Self.scrape(http)["aemp_gateway_sse_streams"] == Double(2 * streamsPer)
                }
                for c in streams { c.close() }
                try await eventually(within: 5, "the hung-up streams are gone") {
                    let m = try await Self.scrape(http)
                    return m["aemp_gateway_sse_streams"] == 0 && m["aemp_gateway_http_connections"] == 1
                }
                let m = try await Self.scrape(http)
                #expect(m["aemp_gateway_http_hangups_total"] - hangupsBefore == Double(3 * polls + 2 * calls + 2 * streamsPer), "\(m)")
                #expect(m[#"aemp_gateway_http_requests_total{route="/v1/ports/{name}/messages",status="499"}"#] == Double(3 * polls), "\(m)")
            }
        }
    }
}

/// Issue 15, item 6: probes and scrapers on `--admin-http` answer at once while clients hold
/// every connection of `--http`.
@Suite("gateway: the admin listener", .serialized, .timeLimit(.minutes(2)))
struct AdminListenerTests {

    @Test("with --max-connections and 64 more held on --http, /healthz, /readyz and /metrics answer at once on --admin-http; nothing else is served there")
    func probesNeverWait() async throws {
        let admin = try freePort()
        try await HostileInputTests.withGateway(["--max-connections", "40", "--admin-http", "127.0.0.1:\(admin)"]) { gateway, http in
            // The gateway's limit (the suite's client is one of the 40), the 64 answered 503 and
            // closed, and 60 more that libmicrohttpd does not accept: all held open.
            var held: [RawConnection] = []
            defer { for c in held { c.close() } }
            for _ in 0..<(39 + 64 + 60) {
                if let c = try? await RawConnection(port: gateway.port, connectTimeout: 2) { held.append(c) }
            }
            // A probe on --http now waits (or is refused); on --admin-http it is answered at once.
            let probe = try await HTTPTestClient(port: admin)
            defer { Task { await probe.close() } }
            for path in ["/healthz", "/readyz", "/metrics"] {
                let started = ContinuousClock.now
                let r = try await probe.request("GET", path, timeout: 5)
                #expect(r.status == 200, "\(path): \(r)")
                #expect(ContinuousClock.now - started < promptly(.seconds(1)), "\(path) took \(ContinuousClock.now - started)")
            }
            // The admin listener's connection is in no client gauge: --http's 40 and the 64 it
            // accepted to answer 503 are (they sent no request, so they wait for their timeout).
            try await eventually("--http's 104 connections counted, the admin one not") {
                try await probe.request("GET", "/metrics").text.contains("aemp_gateway_http_connections 104.0")
            }
            expectProblem(try await probe.request("GET", "/v1/node"), 404, "route_not_found")
            expectProblem(try await probe.request("POST", "/v1/ports"), 404, "route_not_found")
            for c in held { c.close() }
            held = []
        }
    }
}

/// Issue 15, item 7: silent connections to the mesh port cannot take the gateway's descriptors.
@Suite("gateway: mesh handshakes in progress", .serialized, .timeLimit(.minutes(5)))
struct MeshHandshakeCapTests {

    @Test("1,100 silent connections to the standalone mesh port: at most --max-mesh-handshakes wait, the rest are closed and counted; HTTP keeps answering at once; few log lines")
    func silentMeshConnections() async throws {
        // Takes turns with the tests that load the machine or check promptness (MachineLoad).
        try await takingTurns {
            let mesh = try freePort()
            try await HostileInputTests.withGateway([
                "--standalone-bind", "127.0.0.1:\(mesh)", "--max-mesh-handshakes", "200", "--max-mesh-handshakes-per-address", "150",
                "--handshake-timeout", "60", "--log-level", "info",
            ]) { gateway, http in
                var silent: [RawConnection] = []
                defer { for c in silent { c.close() } }
                // Under a sanitizer fewer: 1,100 connects there starved the node tests running beside
                // this one (their own connects timed out). 400 still go 250 beyond the cap.
                let attempts = underSanitizer ? 400 : 1_100
                for _ in 0..<attempts {
                    if let c = try? await RawConnection(port: mesh, connectTimeout: 2) { silent.append(c) }
                }
                // Beyond the per-address cap (one address here), connections are closed on arrival.
                let opened = silent
                // (Connects that timed out under a sanitizer never reached the gateway: count the others.)
                try await eventually("the ones beyond the cap are closed") {
                    opened.filter(\.isClosed).count >= opened.count - 160
                }
                #expect(silent.filter { !$0.isClosed }.count <= 160)
                let started = ContinuousClock.now
                #expect(try await http.request("GET", "/healthz").status == 200)
                #expect(ContinuousClock.now - started < promptly(.seconds(1)))
                let m = try await MetricsSample.scrape(http)
                #expect(m["aemp_gateway_mesh_handshakes_refused_total"] >= Double(opened.count - 160), "\(m["aemp_gateway_mesh_handshakes_refused_total"]) of \(opened.count)")
                #expect(opened.count >= attempts * 8 / 10, "\(opened.count) of \(attempts) connects succeeded")
                // One warning line per refused connection would be 950 lines; the log limiter keeps
                // a handful and a summary.
                let refusals = gateway.log.components(separatedBy: "too many handshakes in progress").count - 1
                #expect(refusals < 100, "\(refusals) refusal lines")
                for c in silent { c.close() }
            }
        }
    }
}
