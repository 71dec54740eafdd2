import AEMP
@_exported import AEMPTestSupport
import Foundation
import Logging
import NIOCore
import Testing

// The built `aemp` and `aemp-gateway` executables as child processes (`ChildProcess`, from the
// ChildProcesses target through AEMPTestSupport), and a test network made of an `aemp seed` child,
// an in-process public `Node` and an `aemp-gateway` child, every one of them stopped at the end of
// the test, also when it fails.

/// The secret of every gateway test network.
let gatewayTestSecret = "aemp-gateway-test-secret"

/// Log level of test nodes and children: `AEMP_TEST_LOG=debug swift test` shows what they do.
let testLogLevel: Logger.Level = {
    guard let raw = getenv("AEMP_TEST_LOG") else { return .error }
    return Logger.Level(rawValue: String(cString: raw)) ?? .error
}()

/// An `aemp seed` child: a seed and global node on an ephemeral port of 127.0.0.1.
struct SeedProcess: Sendable {
    let child: ChildProcess
    let id: String
    let address: String

    /// `bind` picks the address (e.g. a dead seed's, to bring one back where the others look);
    /// `certificate` a mesh certificate file (`--cert`; with `secret` nil the seed talks TLS only).
    static func start(
        id: String = "gw-seed-%u", secret: String? = gatewayTestSecret, certificate: String? = nil, seeds: [String] = [],
        bind: String = "127.0.0.1:0", logLevel: Logger.Level = testLogLevel
    ) async throws -> SeedProcess {
        let child = try ChildProcess(
            "aemp",
            ["seed", "--bind", bind, "--node-id", id, "--log-level", "\(logLevel)"]
                + (secret.map { ["--secret", $0] } ?? []) + (certificate.map { ["--cert", $0] } ?? [])
                + (seeds.isEmpty ? [] : ["--seeds", seeds.joined(separator: ",")]),
            unset: ["AEMP_SECRET", "AEMP_CERT"])
        do {
            let line = try await child.readLine()
            // node <id> listening on <addr>[,<addr>…]
            let words = line.split(separator: " ").map(String.init)
            guard words.count == 5, words[0] == "node", words[2] == "listening",
                let address = words[4].split(separator: ",").first
            else { throw ChildProcess.ChildError.noLine("unexpected line from aemp seed: \(line.debugDescription)") }
            return SeedProcess(child: child, id: words[1], address: String(address))
        } catch {
            child.stop()
            throw error
        }
    }
}

/// An `aemp-gateway` child serving HTTP on an ephemeral port of 127.0.0.1.
struct GatewayProcess: Sendable {
    let child: ChildProcess
    /// The gateway's node ID, as printed.
    let nodeID: String
    /// The HTTP port it reported.
    let port: Int
    /// The whole "serving" line.
    let line: String
    /// Lines printed before the "serving" line (e.g. a generated secret).
    let earlierLines: [String]

    /// Starts the gateway with `--http 127.0.0.1:0`; `seeds` nil = standalone. Waits for its
    /// "serving" line.
    static func start(
        seeds: [String]?, secret: String? = gatewayTestSecret, arguments: [String] = [],
        environment: [String: String] = [:]
    ) async throws -> GatewayProcess {
        // A standalone gateway without a secret stores a generated one in its state directory:
        // never the user's (~/.local/state).
        precondition(
            secret != nil || seeds != nil || environment["AEMP_GATEWAY_STATE_DIR"] != nil,
            "a standalone gateway without --secret needs AEMP_GATEWAY_STATE_DIR in a temporary directory")
        var args = ["--http", "127.0.0.1:0", "--log-level", "\(testLogLevel)"]
        if let seeds { args += ["--seeds", seeds.joined(separator: ",")] }
        if let secret { args += ["--secret", secret] }
        // The gateway also reads its settings from the environment: none may leak in from the shell.
        let child = try ChildProcess(
            "aemp-gateway", args + arguments, environment: environment,
            unset: (["AEMP_SECRET", "XDG_STATE_HOME", "PERL_ANYEVENT_MP_RC"]
                + ProcessInfo.processInfo.environment.keys.filter { $0.hasPrefix("AEMP_GATEWAY_") })
                .filter { environment[$0] == nil })
        do {
            var earlier: [String] = []
            for _ in 0..<5 {
                let line = try await child.readLine()
                // aemp-gateway <node-id> serving http://<host:port>[ (standalone seed on …)]
                let words = line.split(separator: " ").map(String.init)
                if words.count >= 4, words[0] == "aemp-gateway", words[2] == "serving", words[3].hasPrefix("http://") || words[3].hasPrefix("https://"),
                    let colon = words[3].lastIndex(of: ":"), let port = Int(words[3][words[3].index(after: colon)...])
                {
                    return GatewayProcess(child: child, nodeID: words[1], port: port, line: line, earlierLines: earlier)
                }
                earlier.append(line)
            }
            throw ChildProcess.ChildError.noLine("aemp-gateway never printed its serving line: \(earlier)")
        } catch {
            child.stop()
            throw error
        }
    }

    /// A new keep-alive client for this gateway.
    func client() async throws -> HTTPTestClient {
        try await HTTPTestClient(port: port)
    }

    /// An event stream from this gateway.
    func sse(_ path: String, headers: [(String, String)] = []) async throws -> SSEStream {
        try await SSEStream(port: port, path: path, headers: headers)
    }

    /// Polls `GET /v1/node` until `condition` holds for its body; fails the test after `seconds`.
    @discardableResult
    func waitForNodeInfo(
        within seconds: Double = 20, _ what: String, headers: [(String, String)] = [],
        sourceLocation: SourceLocation = #_sourceLocation, _ condition: @Sendable ([String: Value]) -> Bool
    ) async throws -> [String: Value] {
        let client = try await client()
        let seconds = seconds * sanitizerSlowdown
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        var last: HTTPTestResponse?
        while ContinuousClock.now < deadline {
            let r: HTTPTestResponse
            do {
                r = try await client.request("GET", "/v1/node", headers: headers)
            } catch {
                await client.close()
                throw error
            }
            last = r
            if r.status == 200, let info = r.json?.objectValue, condition(info) {
                await client.close()
                return info
            }
            try? await Task.sleep(nanoseconds: 50_000_000)
        }
        await client.close()
        Issue.record("gateway: \(what) not within \(seconds) s; last /v1/node: \(last.map(\.description) ?? "none")", sourceLocation: sourceLocation)
        throw TestTimeout(what: what)
    }

    /// Waits until the gateway is attached to a master.
    func waitForMaster(within seconds: Double = 20, headers: [(String, String)] = []) async throws {
        try await waitForNodeInfo(within: seconds, "a master", headers: headers) { $0["master"]?.stringValue != nil }
    }

    /// Waits until the gateway has a connection to `node`.
    func waitForConnection(to node: String, within seconds: Double = 20, headers: [(String, String)] = []) async throws {
        try await waitForNodeInfo(within: seconds, "a connection to \(node)", headers: headers) { info in
            info["up_nodes"]?.arrayValue?.contains(.string(node)) == true
        }
    }

    /// The gateway's log so far.
    var log: String { child.errorText }
}

/// Things to stop at the end of a test, in reverse order, whatever happened.
final class Cleanup: Sendable {
    private let actions = Locked<[@Sendable () async -> Void]>([])

    func add(_ action: @escaping @Sendable () async -> Void) {
        actions.withLock { $0.append(action) }
    }

    func run() async {
        let list = actions.withLock { a -> [@Sendable () async -> Void] in
            defer { a.removeAll() }
            return a
        }
        for action in list.reversed() { await action() }
    }

    /// Runs `body` with a fresh cleanup list and runs the list afterwards, also when `body` throws.
    static func scope<T>(_ body: (Cleanup) async throws -> T) async throws -> T {
        let cleanup = Cleanup()
        do {
            let result = try await body(cleanup)
            await cleanup.run()
            return result
        } catch {
            await cleanup.run()
            throw error
        }
    }
}

extension Node {
    /// `dbFamily`, failing the test instead of hanging it when no answer comes within 10 s.
    func family(_ family: String) async throws -> [String: Value] {
        try await bounded(10, "db_family \(family) from node \(id)") { try await self.dbFamily(family) }
    }

    /// `dbKeys`, bounded like `family`.
    func keys(_ family: String) async throws -> [String] {
        try await bounded(10, "db_keys \(family) from node \(id)") { try await self.dbKeys(family) }
    }
}

/// Builds an in-process node on 127.0.0.1 with short timeouts for tests; with a `certificate`
/// and an empty `secret` it talks TLS only.
func makeNode(
    id: String, binds: [String] = [], seeds: [String] = [], secret: String = gatewayTestSecret, certificate: MeshCertificate? = nil
) throws -> Node {
    var c = NodeConfiguration(secret: secret)
    c.certificate = certificate
    c.nodeID = id
    c.binds = binds
    c.seeds = seeds
    c.handshakeTimeout = stretched(.seconds(5))
    c.connectTimeout = .milliseconds(Int64(3000 * sanitizerSlowdown))  // connects are slower under a sanitizer
    c.connectInterval = .milliseconds(300)
    c.seedBackoffLimit = .seconds(2)
    c.logger.logLevel = testLogLevel
    return try Node(configuration: c)
}

/// A test network: an `aemp seed` child, an in-process public node joined to it (optional), and an
/// `aemp-gateway` child joined to the seed, attached to the master and connected to the node.
struct GatewayNetwork: Sendable {
    let seed: SeedProcess
    /// The public in-process node (binds 127.0.0.1:0).
    let node: Node
    let gateway: GatewayProcess
    /// A keep-alive client of the gateway.
    let http: HTTPTestClient
    let cleanup: Cleanup
    /// Headers every helper request carries (e.g. a bearer token).
    let authHeaders: [(String, String)]

    /// Runs `body` with a fresh network; everything is stopped afterwards, also when `body` throws.
    static func with(
        gatewayArguments: [String] = [], authHeaders: [(String, String)] = [], seedLogLevel: Logger.Level = testLogLevel,
        _ body: (GatewayNetwork) async throws -> Void
    ) async throws {
        try await Cleanup.scope { cleanup in
            let net = try await start(
                gatewayArguments: gatewayArguments, authHeaders: authHeaders, seedLogLevel: seedLogLevel, cleanup: cleanup)
            do {
                try await body(net)
            } catch {
                // The gateway's log explains most failures (AEMP_TEST_LOG=debug for more of it).
                let log = net.gateway.log
                if !log.isEmpty { Issue.record("gateway log:\n\(log.suffix(4000))") }
                throw error
            }
        }
    }

    static func start(
        gatewayArguments: [String], authHeaders: [(String, String)], seedLogLevel: Logger.Level = testLogLevel, cleanup: Cleanup
    ) async throws -> GatewayNetwork {
        let seed = try await SeedProcess.start(logLevel: seedLogLevel)
        cleanup.add { seed.child.stop() }
        let node = try makeNode(id: "gw-node-%u", binds: ["127.0.0.1:0"], seeds: [seed.address])
        cleanup.add { await node.shutdown() }
        try await node.start()
        let master = try await node.waitForMaster(timeout: stretched(.seconds(15)))
        try #require(master == seed.id, "the public node did not attach to the seed")
        let gateway = try await GatewayProcess.start(seeds: [seed.address], arguments: gatewayArguments)
        cleanup.add { gateway.child.stop() }
        try await gateway.waitForMaster(headers: authHeaders)
        try await gateway.waitForConnection(to: node.id, headers: authHeaders)
        let http = try await gateway.client()
        cleanup.add { await http.close() }
        return GatewayNetwork(
            seed: seed, node: node, gateway: gateway, http: http, cleanup: cleanup, authHeaders: authHeaders)
    }

    /// Starts another public node joined to the seed (stopped with the network).
    func startNode(id: String = "gw-late-%u") async throws -> Node {
        let n = try makeNode(id: id, binds: ["127.0.0.1:0"], seeds: [seed.address])
        cleanup.add { await n.shutdown() }
        try await n.start()
        let master = try await n.waitForMaster(timeout: stretched(.seconds(15)))
        try #require(master == seed.id, "node \(n.id) did not attach to the seed")
        return n
    }

    /// Another keep-alive client (closed with the network).
    func client() async throws -> HTTPTestClient {
        let c = try await gateway.client()
        cleanup.add { await c.close() }
        return c
    }

    /// An event stream (closed with the network).
    func sse(_ path: String, headers: [(String, String)] = []) async throws -> SSEStream {
        let s = try await gateway.sse(path, headers: authHeaders + headers)
        cleanup.add { await s.close() }
        return s
    }

    // MARK: - Request shortcuts

    func get(_ path: String, headers: [(String, String)] = [], timeout: Double = 10) async throws -> HTTPTestResponse {
        try await http.request("GET", path, headers: authHeaders + headers, timeout: timeout)
    }

    func post(_ path: String, json: Value, headers: [(String, String)] = [], timeout: Double = 10) async throws -> HTTPTestResponse {
        try await http.request("POST", path, json: json, headers: authHeaders + headers, timeout: timeout)
    }

    /// Creates a mailbox; returns its name and port ID.
    func createMailbox(_ options: Value? = nil, sourceLocation: SourceLocation = #_sourceLocation) async throws -> (name: String, port: String) {
        let r: HTTPTestResponse
        if let options {
            r = try await http.request("POST", "/v1/ports", json: options, headers: authHeaders)
        } else {
            r = try await http.request("POST", "/v1/ports", headers: authHeaders)
        }
        try #require(r.status == 201, "create mailbox: \(r)", sourceLocation: sourceLocation)
        let o = try #require(r.json?.objectValue, sourceLocation: sourceLocation)
        let name = try #require(o["name"]?.stringValue, sourceLocation: sourceLocation)
        let port = try #require(o["port"]?.stringValue, sourceLocation: sourceLocation)
        return (name, port)
    }

    /// Long-polls a mailbox once.
    func poll(_ name: String, query: String = "wait=0", timeout: Double = 15) async throws -> HTTPTestResponse {
        try await get("/v1/ports/\(name)/messages?\(query)", timeout: timeout)
    }

    /// Sends a message through the gateway to a port of the node and waits for it: whatever the
    /// gateway sent the node before (e.g. a monitor request) has arrived, since both travel the
    /// one connection in order.
    func syncGatewayToNode(sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let (port, inbox) = node.mailbox()
        defer { node.kil(port) }
        var messages = inbox.makeAsyncIterator()
        let r = try await post("/v1/send", json: ["port": .string(port.description), "message": ["sync"]])
        try #require(r.status == 202, "sync message: \(r)", sourceLocation: sourceLocation)
        _ = try await next(&messages, "the sync message", sourceLocation: sourceLocation)
    }

    /// The message payloads (`message` members) of a long-poll answer.
    static func messages(_ r: HTTPTestResponse) -> [Value] {
        (r.json?.objectValue?["messages"]?.arrayValue ?? []).compactMap { $0.objectValue?["message"] }
    }
}

/// Polls `condition` until it holds or `seconds` pass; records an issue and returns false then.
@discardableResult
func eventually(
    within seconds: Double = 10, _ what: String, sourceLocation: SourceLocation = #_sourceLocation,
    _ condition: @Sendable () async throws -> Bool
) async throws -> Bool {
    let seconds = seconds * sanitizerSlowdown  // what must happen may take longer under a sanitizer
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(nanoseconds: 30_000_000)
    }
    Issue.record("condition not met within \(seconds) s: \(what)", sourceLocation: sourceLocation)
    return false
}

/// Polls `body` until it returns a value; records an issue and throws after `seconds`.
func waitFor<T: Sendable>(
    within seconds: Double = 10, _ what: String, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: @Sendable () async throws -> T?
) async throws -> T {
    let seconds = seconds * sanitizerSlowdown  // what must happen may take longer under a sanitizer
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while ContinuousClock.now < deadline {
        if let value = try await body() { return value }
        try? await Task.sleep(nanoseconds: 30_000_000)
    }
    Issue.record("not within \(seconds) s: \(what)", sourceLocation: sourceLocation)
    throw TestTimeout(what: what)
}

/// Checks that `r` is an RFC 9457 problem with `status` and `code`: `application/problem+json`,
/// and the members type, title, status (= the HTTP status), detail and code.
@discardableResult
func expectProblem(
    _ r: HTTPTestResponse, _ status: Int, _ code: String, sourceLocation: SourceLocation = #_sourceLocation
) -> [String: Value] {
    #expect(r.status == status, "expected \(status) \(code), got \(r)", sourceLocation: sourceLocation)
    #expect(
        r.header("Content-Type")?.hasPrefix("application/problem+json") == true, "content type of \(r)",
        sourceLocation: sourceLocation)
    guard let o = r.json?.objectValue else {
        Issue.record("problem body is not a JSON object: \(r)", sourceLocation: sourceLocation)
        return [:]
    }
    #expect(o["code"] == .string(code), "code of \(r)", sourceLocation: sourceLocation)
    #expect(o["status"]?.integerValue == Int64(status), "status member of \(r)", sourceLocation: sourceLocation)
    #expect(o["type"]?.stringValue?.isEmpty == false, "type member of \(r)", sourceLocation: sourceLocation)
    #expect(o["title"]?.stringValue?.isEmpty == false, "title member of \(r)", sourceLocation: sourceLocation)
    #expect(o["detail"]?.stringValue?.isEmpty == false, "detail member of \(r)", sourceLocation: sourceLocation)
    return o
}
