import AEMP
@testable import AEMPGateway
import Foundation
import Logging
import Testing

#if canImport(Glibc)
import Glibc
#endif

// Issue 7, "Security": each promise of the README's Security section as a test that fails when the
// promise is broken. Real processes (`aemp seed`, `aemp-gateway`) and a real in-process node on
// 127.0.0.1; the routes come from openapi/openapi.yaml, so a new route is covered (or the test
// says it is not).

@Suite("gateway: security", .serialized, .timeLimit(.minutes(3)))
struct SecurityTests {
    /// The contract as compiled into the gateway (the build converts openapi/openapi.yaml).
    static let contract: OpenAPIValidator = {
        do {
            return try OpenAPIValidator(json: Array(OpenAPIDocument.json.utf8))
        } catch {
            fatalError("the embedded OpenAPI document is not JSON: \(error)")
        }
    }()

    // MARK: - Spellings of a node port

    /// How the gateway must refuse a spelling of a node port in a JSON body.
    enum Refusal: String, Sendable {
        /// `403 node_port_forbidden`: it names a node port.
        case forbidden = "node_port_forbidden"
        /// `422 invalid_port`: it is no port ID at all.
        case invalid = "invalid_port"

        var status: Int { self == .forbidden ? 403 : 422 }
    }

    /// One way to write a port in a JSON body: `json` is the literal as sent (so JSON escapes such
    /// as `\u0023` can be tried), `text` the string it decodes to (nil: not a string).
    struct PortSpelling: Sendable, CustomStringConvertible {
        let json: String
        let text: String?
        let refusal: Refusal
        var description: String { json }
    }

    /// `s` as a JSON string literal.
    static func literal(_ s: String) -> String {
        String(decoding: JSONCodec.encodeBytes(.string(s)), as: UTF8.self)
    }

    /// Every spelling of node `id`'s node port we could think of, each with the refusal it gets.
    static func nodePortSpellings(_ id: String) -> [PortSpelling] {
        func s(_ text: String, _ r: Refusal = .forbidden) -> PortSpelling { PortSpelling(json: literal(text), text: text, refusal: r) }
        func raw(_ json: String, _ text: String?, _ r: Refusal = .forbidden) -> PortSpelling {
            PortSpelling(json: json, text: text, refusal: r)
        }
        let encoded = id.utf8.map { String(format: "%%%02X", $0) }.joined()
        let escaped = id.unicodeScalars.map { String(format: "\\u%04x", $0.value) }.joined()
        return [
            // The node ID alone addresses the node port (aemp-protocol §1), as does an empty name.
            s(id), s("\(id)#"),
            // Blanks around and inside, ASCII and Unicode (trimmed alike).
            s(" \(id)# "), s("\t\(id)#\n"), s("\(id)#\t"), s("\r\n\(id)"), s("\(id) #"), s("\(id)# "), s("  \(id)  #  "),
            s("\u{00A0}\(id)#\u{2003}"), s("\(id)#\u{3000}"), s("\u{2028}\(id)#\u{85}"),
            // Percent-encoding: once, twice, thrice, five times, mixed, of the whole ID, of blanks.
            s("\(id)%23"), s("\(id)%2523"), s("\(id)%252523"), s("\(id)%2525252523"), s("\(id)%25%32%33"),
            s("%20\(id)%23%20"), s("\(id)#%20"), s("\(id)#%2520"), s("\(id)%252523%252520"), s("\(id)%23%09"),
            s("\(encoded)%23"), s(encoded), s("\(id)%09"), s("\(id)%2F%23"),
            // Case, a trailing slash or dot, '#' look-alikes, a combining mark on the '#', a BOM:
            // other node IDs, so node ports all the same.
            s(id.uppercased()), s("\(id.uppercased())#"), s("\(id.lowercased())#"), s("\(id)/"), s("\(id)/#"), s("\(id).#"),
            s("\(id)."), s("\(id)\u{FF03}"), s("\(id)\u{FE5F}"), s("\(id)%EF%BC%83"), s("\(id)#\u{0301}"), s("\u{FEFF}\(id)#"),
            // A malformed escape stops the decoding: what is left has no port name either.
            s("\(id)%2"), s("\(id)%zz%23"), s("%\(id)"),
            // JSON escapes are undone before the gateway looks.
            raw("\"\(id)\\u0023\"", "\(id)#"), raw("\"\\u0020\(id)\\u0023\\u0009\"", " \(id)#\t"), raw("\"\(escaped)\\u0023\"", "\(id)#"),
            raw("\"\(escaped)\"", id), raw("\"\(id)\\\\u0023\"", "\(id)\\u0023"), raw("\"\(id)\\u0025\\u0032\\u0033\"", "\(id)%23"),
            // Malformed: a second '#', control characters, no node ID, not a string.
            s("\(id)%23%23", .invalid), s("\(id)#%23", .invalid), s("\(id)##", .invalid), s("\(id)%00", .invalid),
            s("\(id)\u{0}#", .invalid), s("\(id)#\u{7F}", .invalid), s("#", .invalid), s(" # ", .invalid), s("%23", .invalid),
            s("", .invalid), s("   ", .invalid),
            raw("[\(literal("\(id)#"))]", nil, .invalid), raw("{\"node\": \(literal(id))}", nil, .invalid),
            raw("null", nil, .invalid), raw("42", nil, .invalid),
        ]
    }

    /// Spellings that look like node `id`'s node port but name another port (a name of an invisible
    /// or punctuation character): the gateway may send them, and no node port sees anything.
    static func lookalikes(_ id: String) -> [String] {
        ["\(id)#\u{200B}", "\(id)#\u{FEFF}", "\(id)#\u{00AD}", "\(id)#/", "\(id)#.", "\(id)#%"]
    }

    /// Percent-encodes everything but unreserved characters (a path segment).
    static func pathSegment(_ s: String) -> String {
        s.utf8.map { b -> String in
            let c = Character(UnicodeScalar(b))
            return b < 0x80 && (c.isLetter || c.isNumber || "-._~".contains(c)) ? String(c) : String(format: "%%%02X", b)
        }.joined()
    }

    // MARK: - Where the contract takes a port

    /// The schemas that name a port: a port ID anywhere, a mailbox (a port of the gateway) by name.
    static let portSchemas = ["#/components/schemas/PortID", "#/components/schemas/MailboxName"]

    /// Every place a request may name a port, per the contract: `"METHOD /template where"`, where
    /// is `path:<name>`, `query:<name>`, `header:<name>` or a body pointer such as `body/[]/port`.
    /// A parameter or member counts when its schema is (a `$ref` to) one of `portSchemas`, or when
    /// it is called `port`. CORS preflights (`OPTIONS`) are answered before anything is read.
    static func portLocations(_ spec: OpenAPIValidator) -> Set<String> {
        var out: Set<String> = []
        for op in spec.operations where op.method != "options" {
            let key = "\(op.method.uppercased()) \(op.template)"
            for p in parameters(op, spec) {
                guard let name = p["name"]?.stringValue, let place = p["in"]?.stringValue else { continue }
                if name == "port" || names(p["schema"], spec) { out.insert("\(key) \(place):\(name)") }
            }
            guard var body = op.object["requestBody"] else { continue }
            if let ref = body.objectValue?["$ref"]?.stringValue, let r = spec.schemas.resolve(ref) { body = r }
            if let schema = body.objectValue?["content"]?.objectValue?["application/json"]?.objectValue?["schema"] {
                walk(schema, "body", spec, depth: 0) { out.insert("\(key) \($0)") }
            }
        }
        return out
    }

    /// The operation's parameters, path-level ones included, `$ref`s resolved.
    static func parameters(_ op: OpenAPIValidator.Operation, _ spec: OpenAPIValidator) -> [[String: Value]] {
        let list = (spec.paths[op.template]?.objectValue?["parameters"]?.arrayValue ?? []) + (op.object["parameters"]?.arrayValue ?? [])
        return list.compactMap { p in
            if let ref = p.objectValue?["$ref"]?.stringValue { return spec.schemas.resolve(ref)?.objectValue }
            return p.objectValue
        }
    }

    /// Whether `schema` is (a reference to) a port schema.
    private static func names(_ schema: Value?, _ spec: OpenAPIValidator) -> Bool {
        guard let ref = schema?.objectValue?["$ref"]?.stringValue else { return false }
        return portSchemas.contains(ref)
    }

    private static func walk(_ schema: Value, _ at: String, _ spec: OpenAPIValidator, depth: Int, _ found: (String) -> Void) {
        guard depth < 32, let s = schema.objectValue else { return }
        if let ref = s["$ref"]?.stringValue {
            if portSchemas.contains(ref) { return found(at) }
            if let target = spec.schemas.resolve(ref) { walk(target, at, spec, depth: depth + 1, found) }
        }
        for (name, sub) in (s["properties"]?.objectValue ?? [:]).sorted(by: { $0.key < $1.key }) {
            if name == "port" { found("\(at)/\(name)") } else { walk(sub, "\(at)/\(name)", spec, depth: depth + 1, found) }
        }
        if let items = s["items"] { walk(items, "\(at)/[]", spec, depth: depth + 1, found) }
        if let more = s["additionalProperties"], more.objectValue != nil { walk(more, "\(at)/*", spec, depth: depth + 1, found) }
        for key in ["oneOf", "anyOf", "allOf"] {
            for sub in s[key]?.arrayValue ?? [] { walk(sub, at, spec, depth: depth + 1, found) }
        }
    }

    /// Whether `value` holds `marker` anywhere (strings, keys, nested).
    static func mentions(_ value: Value, _ marker: String) -> Bool {
        switch value {
        case .string(let s): return s.contains(marker)
        case .array(let a): return a.contains { mentions($0, marker) }
        case .object(let o): return o.contains { $0.key.contains(marker) || mentions($0.value, marker) }
        default: return false
        }
    }

    /// Log lines a node writes when a node-port request asks it to run code or to send to a node
    /// port (Sources/AEMP/Kernel/Kernel.swift `handleNodeRequest`).
    static let refusalLogLines = [
        "refusing remote eval request", "ignoring unknown node-port request", "refusing to send to a node port",
    ]

    // MARK: - 1. No HTTP request reaches a node port

    /// What a route that names a mailbox (not a port ID) may answer: never anything but a refusal.
    static let mailboxNameRefusals: Set<String> = [
        "422 invalid_mailbox_name", "422 invalid_request", "404 unknown_mailbox", "410 mailbox_gone", "404 route_not_found",
        "400 invalid_path",
    ]

    @Test("no HTTP request reaches a node port: every route that takes a port (from the contract) x every spelling of the gateway's, a node's and the seed's node port")
    func nodePortsUnreachable() async throws {
        let level = min(testLogLevel, .notice)  // the nodes' refusal lines are warnings and notices
        try await GatewayNetwork.with(gatewayArguments: ["--log-level", "\(level)"], seedLogLevel: level) { net in
            let node = net.node
            let marker = "sec-marker-\(UUID().uuidString)"
            // The observers: a port of the node that every relay or reply below names, and the
            // node's node port itself (every request that arrives there, from anyone).
            let observed = Watched<[Value]>([])
            let obs = node.port { m in observed.update { $0.append(.array(m)) } }
            let nodePortSeen = Watched<[Value]>([])
            await node.observeNodePort { request, source in
                nodePortSeen.update { $0.append(["from": .string(source), "request": .array(request)]) }
            }
            let box = try await net.createMailbox()
            let obsLit = Self.literal(obs.description), markerLit = Self.literal(marker)

            func raw(_ method: String, _ path: String, _ body: String? = nil) async throws -> HTTPTestResponse {
                try await net.http.request(
                    method, path, headers: [("Content-Type", "application/json")], body: body.map { Array($0.utf8) })
            }
            enum Kind { case portID, mailboxName }
            // One exerciser per place the contract takes a port. The messages name the observer
            // port, so a node port that got one would relay or answer there (Swift nodes do `snd`
            // and `time`), and carry the marker, so any arrival is recognised.
            let exercisers: [String: (Kind, (PortSpelling) async throws -> HTTPTestResponse?)] = [
                "POST /v1/send body/port": (.portID, { p in
                    try await raw("POST", "/v1/send", #"{"port": \#(p.json), "message": ["snd", \#(obsLit), \#(markerLit)]}"#)
                }),
                "POST /v1/send body/[]/port": (.portID, { p in
                    try await raw("POST", "/v1/send", #"[{"port": \#(obsLit), "message": ["batch-first", \#(markerLit)]}, {"port": \#(p.json), "message": ["eval", "die", \#(obsLit), \#(markerLit)]}]"#)
                }),
                "POST /v1/call body/port": (.portID, { p in
                    try await raw("POST", "/v1/call", #"{"port": \#(p.json), "message": ["time", \#(obsLit), \#(markerLit)], "timeout": 1}"#)
                }),
                "POST /v1/ports/{name}/monitor body/port": (.portID, { p in
                    try await raw("POST", "/v1/ports/\(box.name)/monitor", #"{"port": \#(p.json)}"#)
                }),
                "POST /v1/db/{family}/reg body/port": (.mailboxName, { p in
                    try await raw("POST", "/v1/db/sec-reg/reg", #"{"port": \#(p.json), "value": \#(markerLit)}"#)
                }),
                "GET /v1/ports/{name} path:name": (.mailboxName, { p in
                    guard let t = p.text, !t.isEmpty else { return nil }
                    return try await raw("GET", "/v1/ports/\(Self.pathSegment(t))")
                }),
                "DELETE /v1/ports/{name} path:name": (.mailboxName, { p in
                    guard let t = p.text, !t.isEmpty else { return nil }
                    return try await raw("DELETE", "/v1/ports/\(Self.pathSegment(t))")
                }),
                "GET /v1/ports/{name}/messages path:name": (.mailboxName, { p in
                    guard let t = p.text, !t.isEmpty else { return nil }
                    return try await raw("GET", "/v1/ports/\(Self.pathSegment(t))/messages?wait=0")
                }),
                "POST /v1/ports/{name}/monitor path:name": (.mailboxName, { p in
                    guard let t = p.text, !t.isEmpty else { return nil }
                    return try await raw("POST", "/v1/ports/\(Self.pathSegment(t))/monitor", #"{"port": \#(obsLit)}"#)
                }),
            ]
            // The contract decides which routes take a port; each must be exercised, and nothing
            // is exercised that the contract does not have.
            let derived = Self.portLocations(Self.contract)
            #expect(derived.contains("POST /v1/send body/port"), "the contract walk found nothing: \(derived.sorted())")
            let missing = derived.subtracting(exercisers.keys), stale = Set(exercisers.keys).subtracting(derived)
            #expect(missing.isEmpty, "routes that take a port but are not exercised here: \(missing.sorted())")
            #expect(stale.isEmpty, "exercised here but not in the contract: \(stale.sorted())")

            var requests = 0
            let targets = [net.gateway.nodeID, node.id, net.seed.id]
            for id in targets {
                for spelling in Self.nodePortSpellings(id) {
                    for key in exercisers.keys.sorted() {
                        let (kind, run) = exercisers[key]!
                        guard let r = try await run(spelling) else { continue }
                        requests += 1
                        switch kind {
                        case .portID:
                            let code = r.json?.objectValue?["code"]?.stringValue
                            #expect(r.status == spelling.refusal.status && code == spelling.refusal.rawValue,
                                    "\(key) with \(spelling): expected \(spelling.refusal.status) \(spelling.refusal.rawValue), got \(r)")
                            #expect(r.header("Content-Type")?.hasPrefix("application/problem+json") == true, "\(key) \(spelling): \(r)")
                        case .mailboxName:
                            let answer = "\(r.status) \(r.json?.objectValue?["code"]?.stringValue ?? "-")"
                            #expect(Self.mailboxNameRefusals.contains(answer), "\(key) with \(spelling): \(r)")
                        }
                    }
                }
                // Look-alikes name other ports: sent or refused, but never at a node port.
                for spelling in Self.lookalikes(id) {
                    let r = try await raw("POST", "/v1/send", #"{"port": \#(Self.literal(spelling)), "message": ["eval", "die", \#(obsLit), \#(markerLit)]}"#)
                    #expect([202, 403, 422].contains(r.status), "look-alike \(spelling.debugDescription): \(r)")
                    requests += 1
                }
            }
            #expect(requests > 1000, "only \(requests) requests were made")
            try await net.syncGatewayToNode()
            let gatewayLogOfPhase = net.gateway.log, seedLogOfPhase = net.seed.child.errorText

            // Controls: the same observers do see what reaches a node port. The gateway's monitor
            // request arrives at the node's node port over the real connection; relays through the
            // seed's and the gateway's node ports arrive at the observer port; their eval refusals
            // are logged.
            let control = "sec-control-\(UUID().uuidString)"
            let watched = node.port { _ in }
            #expect(try await net.post("/v1/ports/\(box.name)/monitor", json: ["port": .string(watched.description)]).status == 200)
            let gatewayID = net.gateway.nodeID
            _ = try await waitFor("the node-port observer sees the gateway's mon1") {
                nodePortSeen.read { seen in
                    seen.contains { $0 == ["from": .string(gatewayID), "request": ["mon1", .string(watched.name)]] } ? true : nil
                }
            }
            for id in [net.gateway.nodeID, net.seed.id] {
                node.snd(PortID(node: id, name: ""), ["snd", .string(obs.description), .string(control), .string(id)])
                node.snd(PortID(node: id, name: ""), ["eval", "die", .string(obs.description), .string(control)])
            }
            node.snd(PortID(node: node.id, name: ""), ["devnull", .string(control)])
            _ = try await waitFor("both relays at the observer port") {
                let got = observed.read { $0 }
                return got.contains(.array([.string(control), .string(gatewayID)])) && got.contains(.array([.string(control), .string(net.seed.id)])) ? true : nil
            }
            _ = try await waitFor("the node's own request at its node port") {
                nodePortSeen.read { $0.contains { Self.mentions($0, control) } } ? true : nil
            }
            try await eventually("the gateway and the seed log the eval they refused") {
                net.gateway.log.contains("refusing remote eval request") && net.seed.child.errorText.contains("refusing remote eval request")
            }

            // Nothing of the HTTP phase arrived anywhere.
            let leaked = observed.read { $0 }.filter { Self.mentions($0, marker) }
            #expect(leaked.isEmpty, "messages from refused requests arrived: \(leaked)")
            let atNodePort = nodePortSeen.read { $0 }.filter { Self.mentions($0, marker) }
            #expect(atNodePort.isEmpty, "the node's node port saw requests from HTTP: \(atNodePort)")
            for line in Self.refusalLogLines {
                #expect(!gatewayLogOfPhase.contains(line), "the gateway's node port got a request from HTTP:\n\(gatewayLogOfPhase.suffix(2000))")
                #expect(!seedLogOfPhase.contains(line), "the seed's node port got a request from HTTP:\n\(seedLogOfPhase.suffix(2000))")
            }
        }
    }

    @Test("allowed node-port tags (time, can, devnull) never carry a reply into a node port; other tags cannot be allowed")
    func allowedTagsCannotReachEval() async throws {
        for tag in ["eval", "snd", "kil1", "kil0", "mon1", "g_slave", "AnyEvent::MP::_spawn", "CORE::system", "x;system('id');::y"] {
            var s = GatewaySettings()
            s.addFlags(["allow-node-port-tag": ["time", tag], "secret": ["x"]])
            let (c, problems) = s.configuration(environment: [:])
            #expect(c == nil && problems.count == 1 && problems.first?.contains("cannot be allowed") == true, "\(tag): \(problems)")
        }
        var ok = GatewaySettings()
        ok.addFlags(["allow-node-port-tag": ["time,can", "devnull"], "secret": ["x"]])
        #expect(ok.configuration(environment: [:]).0?.allowedNodePortTags == ["time", "can", "devnull"])

        try await GatewayNetwork.with(gatewayArguments: ["--allow-node-port-tag", "time,can,devnull"]) { net in
            let node = net.node
            let marker = "sec-reply-\(UUID().uuidString)"
            let (obs, inbox) = node.mailbox()
            var messages = inbox.makeAsyncIterator()
            let nodePortSeen = Watched<[Value]>([])
            await node.observeNodePort { request, source in
                nodePortSeen.update { $0.append(["from": .string(source), "request": .array(request)]) }
            }

            // What the operator allowed works, answering to a port.
            let time = try await net.post("/v1/send", json: ["port": .string(node.id), "message": ["time", .string(obs.description), "t"]])
            #expect(time.status == 202, "\(time)")
            #expect(try await next(&messages).first == "t")
            let can = try await net.post("/v1/send", json: ["port": .string("\(node.id)#"), "message": ["can", "eval", .string(obs.description), "c"]])
            #expect(can.status == 202, "\(can)")
            #expect(try await next(&messages) == ["c", ""])

            // A reply into a node port, in any spelling and to any node, would be `eval` there.
            var requests = 0
            for target in [node.id, net.gateway.nodeID] {
                let to = Self.literal("\(target)#")
                for id in [node.id, net.seed.id, net.gateway.nodeID] {
                    for spelling in Self.nodePortSpellings(id) {
                        let markerLit = Self.literal(marker)
                        let bodies = [
                            ("/v1/send", #"{"port": \#(to), "message": ["time", \#(spelling.json), "eval", \#(markerLit)]}"#),
                            ("/v1/send", #"{"port": \#(to), "message": ["can", "eval", \#(spelling.json), "eval", \#(markerLit)]}"#),
                            ("/v1/call", #"{"port": \#(to), "message": ["time", \#(spelling.json), "eval", \#(markerLit)], "timeout": 1}"#),
                        ]
                        for (path, body) in bodies {
                            let r = try await net.http.request("POST", path, headers: [("Content-Type", "application/json")], body: Array(body.utf8))
                            requests += 1
                            #expect(r.status == spelling.refusal.status && r.json?.objectValue?["code"] == .string(spelling.refusal.rawValue),
                                    "\(body): \(r)")
                        }
                    }
                }
            }
            #expect(requests > 500)
            // A reply port that is no port at all is refused too.
            let number = try await net.post("/v1/send", json: ["port": .string(node.id), "message": ["time", 5]])
            expectProblem(number, 422, "invalid_port")

            try await net.syncGatewayToNode()
            let seen = nodePortSeen.read { $0 }
            #expect(!seen.contains { Self.mentions($0, marker) }, "refused requests arrived: \(seen)")
            let requestsFromHTTP = seen.filter { entry in
                entry.objectValue?["from"] == .string(net.gateway.nodeID)
                    && ["time", "can", "devnull", "eval"].contains(entry.objectValue?["request"]?.arrayValue?.first?.stringValue ?? "")
            }
            #expect(requestsFromHTTP.count == 2, "only the two allowed requests reach the node port: \(requestsFromHTTP)")
        }
    }

    @Test("a call's reply port is as unguessable as a mailbox: another client cannot answer it")
    func callReplyPortUnguessable() async throws {
        try await GatewayNetwork.with { net in
            let asked = Watched<String?>(nil)
            let silent = net.node.port { m in
                if let reply = m.last?.stringValue { asked.update { $0 = reply } }
            }
            let caller = try await net.client()
            let call = Task {
                try await caller.request("POST", "/v1/call", json: ["port": .string(silent.description), "message": ["ask"], "timeout": 2], timeout: 15)
            }
            let reply = try await waitFor("the node gets the call") { asked.read { $0 } }
            let port = try #require(PortID(reply))
            #expect(port.node == net.gateway.nodeID)
            #expect(port.name.wholeMatch(of: /call-[A-Za-z0-9_-]{23}/) != nil, "reply port \(reply)")
            // Another client guesses the names a counter hands out (what `node.port()` does).
            let guesses: [Value] = (1...2000).map { n in
                ["port": .string("\(net.gateway.nodeID)#\(String(n, radix: 36))"), "message": ["forged"]]
            }
            #expect(try await net.post("/v1/send", json: .array(guesses)).status == 202)
            let answer = try await call.value
            expectProblem(answer, 504, "timeout")
        }
    }

    // MARK: - 2. The mesh secret is mandatory outside standalone mode

    @Test("with seeds, a missing, empty or blank secret is an error from every source")
    func secretRequiredSettings() throws {
        let dir = NSTemporaryDirectory() + "aemp-sec-\(UUID().uuidString)/"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func file(_ name: String, _ text: String) throws -> String {
            try text.write(toFile: dir + name, atomically: true, encoding: .utf8)
            return dir + name
        }
        let seeds = ["seeds": ["127.0.0.1:9"]]
        let cases: [(String, (inout GatewaySettings, inout [String]) throws -> Void, String)] = [
            ("nothing", { s, _ in s.addFlags(seeds) }, "a shared secret or a mesh certificate is required"),
            ("--secret ''", { s, _ in s.addFlags(seeds.merging(["secret": [""]]) { a, _ in a }) }, "--secret: the secret is empty"),
            ("--secret blank", { s, _ in s.addFlags(seeds.merging(["secret": [" \t "]]) { a, _ in a }) }, "--secret: the secret is empty"),
            ("AEMP_GATEWAY_SECRET ''", { s, _ in s.addFlags(seeds); s.addEnvironment(["AEMP_GATEWAY_SECRET": ""]) }, "AEMP_GATEWAY_SECRET: the secret is empty"),
            ("AEMP_SECRET blank", { s, _ in s.addFlags(seeds) }, "a shared secret or a mesh certificate is required"),
            ("config file ''", { s, p in s.addFlags(seeds); s.addConfigFile(path: try file("c.json", #"{"secret": ""}"#), problems: &p) }, "secret: the secret is empty"),
            ("config file seeds", { s, p in s.addConfigFile(path: try file("d.json", #"{"seeds": ["127.0.0.1:9"]}"#), problems: &p) }, "a shared secret or a mesh certificate is required"),
            ("empty secret file", { s, _ in s.addFlags(seeds.merging(["secret-file": [try file("empty", "")]]) { a, _ in a }) }, "is empty"),
            ("blank secret file", { s, _ in s.addFlags(seeds.merging(["secret-file": [try file("blank", " \n\t\n")]]) { a, _ in a }) }, "is empty"),
            ("profile without secret", { s, p in s.addProfile(name: "p", path: try file("rc", #"{"profile": {"p": {"seeds": ["127.0.0.1:9"]}}}"#), problems: &p) }, "a shared secret or a mesh certificate is required"),
        ]
        for (label, build, expected) in cases {
            var s = GatewaySettings()
            var problems: [String] = []
            try build(&s, &problems)
            let (c, invalid) = s.configuration(environment: label == "AEMP_SECRET blank" ? ["AEMP_SECRET": "  "] : [:])
            #expect(c == nil, "\(label): a configuration came out")
            #expect((problems + invalid).contains { $0.contains(expected) }, "\(label): \(problems + invalid)")
        }
        // The library refuses an empty secret too, whoever builds the configuration.
        #expect(throws: NodeError.missingSecret) { try Node(configuration: NodeConfiguration(secret: "")) }
        var joining = GatewayConfiguration(node: NodeConfiguration(secretBytes: []))
        joining.node.seeds = ["127.0.0.1:9"]
        #expect(throws: NodeError.missingSecret) { try Gateway(configuration: joining) }
    }

    @Test("aemp-gateway with seeds and no usable secret exits 2 with one clear line, before it opens a connection or a listener")
    func secretRequiredExecutable() async throws {
        let seed = try PendingListener()
        defer { seed.close() }
        let dir = NSTemporaryDirectory() + "aemp-sec-\(UUID().uuidString)/"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try #"{"secret": ""}"#.write(toFile: dir + "config.json", atomically: true, encoding: .utf8)
        try "\n".write(toFile: dir + "secret", atomically: true, encoding: .utf8)
        try "not a certificate\n".write(toFile: dir + "mesh.pem", atomically: true, encoding: .utf8)
        let required = "a shared secret or a mesh certificate is required to join a network (--secret, --secret-file, AEMP_SECRET, --mesh-cert or --profile)"
        let cases: [([String], [String: String], String)] = [
            ([], [:], required),
            (["--secret", ""], [:], "--secret: the secret is empty"),
            (["--secret", "   "], [:], "--secret: the secret is empty"),
            ([], ["AEMP_GATEWAY_SECRET": ""], "AEMP_GATEWAY_SECRET: the secret is empty"),
            ([], ["AEMP_SECRET": " "], required),
            (["--config", dir + "config.json"], [:], "\(dir)config.json: secret: the secret is empty"),
            (["--secret-file", dir + "secret"], [:], "--secret-file: \(dir)secret is empty"),
            // A certificate instead of a secret, but one the node cannot use (issue 14).
            (["--mesh-cert", dir + "mesh.pem"], [:],
             "--mesh-cert: mesh certificate \(dir)mesh.pem: no PEM blocks: expected a private key, then a certificate, then any CA certificates (as `aemp gencert` writes)"),
        ]
        let http = try freePort()
        for (arguments, environment, expected) in cases {
            let child = try ChildProcess(
                "aemp-gateway", ["--http", "127.0.0.1:\(http)", "--seeds", seed.address] + arguments, environment: environment,
                unset: (["AEMP_SECRET", "XDG_STATE_HOME", "PERL_ANYEVENT_MP_RC"]
                    + ProcessInfo.processInfo.environment.keys.filter { $0.hasPrefix("AEMP_GATEWAY_") })
                    .filter { environment[$0] == nil })
            defer { child.stop() }
            #expect(try await child.waitForExit(within: 20) == .exited(2), "\(arguments) \(environment): \(child.errorText)")
            #expect(child.errorText == "aemp-gateway: error: \(expected)\n", "\(arguments) \(environment)")
            let printed = try? await child.readLine(within: 1)
            #expect(printed == nil, "it printed \(printed ?? "")")
        }
        #expect(!seed.wasConnected, "a gateway without a secret connected to its seed")
        // Nothing listened on the HTTP address at any time: it is still free to bind.
        let probe = try PendingListener(port: http)
        probe.close()

        // Standalone, an explicitly empty secret is an error too, not "generate one".
        let standalone = try ChildProcess("aemp-gateway", ["--http", "127.0.0.1:0", "--secret", " "], unset: ["AEMP_SECRET"])
        defer { standalone.stop() }
        #expect(try await standalone.waitForExit(within: 20) == .exited(2))
        #expect(standalone.errorText == "aemp-gateway: error: --secret: the secret is empty\n", "\(standalone.errorText)")
    }

    // MARK: - 3. Tokens are compared in constant time

    @Test("tokens are compared with ConstantTime.equal, which is right for every length; the HTTP and the handshake code use it")
    func constantTimeComparison() throws {
        let token = "rw-token-0123456789abcdef"
        #expect(ConstantTime.equal(token, token))
        #expect(ConstantTime.equal("", ""))
        #expect(ConstantTime.equal(Array(token.utf8), token.utf8))
        for other in [
            "", "r", String(token.dropLast()), token + "0", token + "\0", "\0" + token, "x" + token.dropFirst(),
            String(token.dropLast()) + "g", token.uppercased(), String(repeating: "a", count: 10_000), " " + token,
        ] {
            #expect(!ConstantTime.equal(token, other), "\(other.debugDescription)")
            #expect(!ConstantTime.equal(other, token), "\(other.debugDescription)")
        }
        #expect(!ConstantTime.equal([0x00], []))
        #expect(Authenticator.constantTimeEqual(token, token) && !Authenticator.constantTimeEqual(token, token + "x"))

        // The function above is the one the code compares with: a timing measurement would be
        // flaky, so this reads the two places that compare secrets (and fails if `==` creeps in).
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        func function(_ name: String, in path: String) throws -> String {
            let text = try String(contentsOf: root.appendingPathComponent(path), encoding: .utf8)
            let start = try #require(text.range(of: "func \(name)("), "\(name) not found in \(path)")
            let end = try #require(text.range(of: "\n    }\n", range: start.upperBound..<text.endIndex), "end of \(name) in \(path)")
            return String(text[start.lowerBound..<end.upperBound])
        }
        for (name, path) in [("lookup", "Sources/AEMPGateway/Middleware/Authentication.swift"), ("verify", "Sources/AEMP/Transport/Connection.swift")] {
            let body = try function(name, in: path)
            #expect(body.contains("ConstantTime.equal("), "\(path) \(name) does not use ConstantTime.equal:\n\(body)")
            #expect(!body.contains("=="), "\(path) \(name) compares with ==:\n\(body)")
        }
        // Nothing looks a presented token up in the token table (a hash lookup compares with ==).
        for path in ["Sources/AEMPGateway/Routes/Router.swift", "Sources/AEMPGateway/Routes/SendRoutes.swift", "Sources/AEMPGateway/Gateway.swift"] {
            let text = try String(contentsOf: root.appendingPathComponent(path), encoding: .utf8)
            #expect(!text.contains("tokens["), "\(path) indexes the token table")
        }
    }

    // MARK: - 4. The gateway never runs code for a peer

    @Test("a peer's eval, function-call and spawn requests to the gateway's node are refused and logged; nothing runs, it keeps serving")
    func neverExecutesForPeers() async throws {
        try await GatewayNetwork.with(gatewayArguments: ["--log-level", "\(min(testLogLevel, .notice))"]) { net in
            let node = net.node
            let gateway = PortID(node: net.gateway.nodeID, name: "")
            let sentinel = NSTemporaryDirectory() + "aemp-sec-ran-\(UUID().uuidString)"
            let (obs, inbox) = node.mailbox()
            var messages = inbox.makeAsyncIterator()
            let nodePortSeen = Watched<[Value]>([])
            await node.observeNodePort { request, source in nodePortSeen.update { $0.append(["from": .string(source), "request": .array(request)]) } }
            let reply = Value.string(obs.description)
            let code = Value.string("open my $f, '>', '\(sentinel)'; 42")
            // What Perl would run (aemp-protocol §7): eval, function names (spawn, snd_to_func,
            // LogCatcher, DataConn, core functions, a name that is code), and requests that would
            // make the gateway's node send eval onwards (relay, replies into a node port).
            let requests: [[Value]] = [
                ["eval", code, reply, "eval-reply"],
                ["AnyEvent::MP::_spawn", "sec-spawned", "::spawned", "arg"],
                ["AnyEvent::MP::Kernel::snd_to_func", .string(node.id), "::f"],
                ["AnyEvent::MP::LogCatcher::connect", 0, reply, 9],
                ["AnyEvent::MP::DataConn::_expect", "x", reply],
                ["CORE::system", "touch", .string(sentinel)],
                ["POSIX::_exit", 0],
                [.string("x;open my $f, '>', '\(sentinel)';::y")],
                ["kil1", ""],
                ["snd", .string("\(node.id)#"), "eval", code, reply, "relayed-eval"],
                ["snd", .string(node.id), "eval", code],
                ["snd", .string("\(net.gateway.nodeID)#"), "eval", code, reply],
                ["time", .string("\(node.id)#"), "eval", code],
                ["can", "eval", .string(node.id), "eval", code],
            ]
            for r in requests { node.snd(gateway, r) }
            // A message to the port a Perl node would have spawned, and a monitor of it: no such port.
            node.snd(PortID(node: net.gateway.nodeID, name: "sec-spawned"), ["hello"])
            let (reasons, sink) = AsyncStream<[Value]>.makeStream()
            var reasonIterator = reasons.makeAsyncIterator()
            node.mon(PortID(node: net.gateway.nodeID, name: "sec-spawned")) { sink.yield($0) }
            let reason = try await next(&reasonIterator, "the monitor of the spawned port")
            #expect(reason.first == "no_such_port", "\(reason)")
            // Still serving on the mesh: a time request is answered, and it is the first answer.
            node.snd(gateway, ["time", reply, "after"])
            let answer = try await next(&messages, "the time reply")
            #expect(answer.first == "after", "\(answer)")
            #expect(try await net.get("/healthz").status == 200)
            #expect(net.gateway.child.isRunning, "the gateway exited")

            let log = net.gateway.log
            #expect(log.contains("refusing remote eval request"), "\(log)")
            for tag in ["AnyEvent::MP::_spawn", "AnyEvent::MP::Kernel::snd_to_func", "AnyEvent::MP::LogCatcher::connect", "CORE::system", "POSIX::_exit"] {
                #expect(log.contains("tag=\(tag) ignoring unknown node-port request (function calls are never executed)"), "\(tag): \(log)")
            }
            for what in ["request=snd", "request=time", "request=can"] {
                #expect(log.contains(what) && log.contains("refusing to send to a node port on request of a peer"), "\(what): \(log)")
            }
            #expect(!FileManager.default.fileExists(atPath: sentinel))
            let fromGateway = nodePortSeen.read { $0 }.filter { $0.objectValue?["from"] == .string(net.gateway.nodeID) }
            #expect(!fromGateway.contains { Self.mentions($0, "eval") }, "the gateway sent eval on: \(fromGateway)")
        }
    }

    // MARK: - 5. Mailbox names are unguessable

    @Test("mailbox names: a per-process prefix, then 136 bits from the system CSPRNG; 10,000 distinct, every position uniform")
    func mailboxNames() async throws {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        let registry = MailboxRegistry(limit: 1)
        let names = (0..<10_000).map { _ in registry.newName() }
        #expect(Set(names).count == names.count, "names repeat")
        #expect(registry.instance.count == 8 && registry.instance.allSatisfy { alphabet.contains($0) }, "\(registry.instance)")
        #expect(MailboxRegistry(limit: 1).instance != registry.instance, "the prefix is per process (per registry)")
        var counts = [[Int]](repeating: [Int](repeating: 0, count: 64), count: 23)
        for name in names {
            #expect(name.hasPrefix(registry.instance + "."), "\(name)")
            let random = Array(name.dropFirst(registry.instance.count + 1))
            #expect(random.count == 23, "\(name)")
            for (i, c) in random.prefix(23).enumerated() {
                guard let v = alphabet.firstIndex(of: c) else {
                    Issue.record("\(name): \(c) is not URL-safe base64")
                    continue
                }
                counts[i][v] += 1
            }
        }
        // 22 characters take all 64 values (6 bits each), the last 16 (4 bits): 136 bits. Each
        // value near its share (156 of 10,000 for 64 values): no position is fixed or skewed.
        var bits = 0.0
        for (i, position) in counts.enumerated() {
            let used = position.filter { $0 > 0 }.count
            bits += log2(Double(used))
            let share = 10_000 / used
            #expect(position.allSatisfy { $0 == 0 || ($0 > share / 2 && $0 < share * 2) }, "position \(i): \(position)")
        }
        #expect(counts.prefix(22).allSatisfy { $0.allSatisfy { $0 > 0 } }, "a position of the first 22 does not use all 64 values")
        #expect(bits >= 128, "mailbox names carry \(bits) random bits")

        // The gateway's mailboxes are named so.
        try await Cleanup.scope { cleanup in
            let gateway = try await GatewayProcess.start(seeds: nil, arguments: ["--standalone-bind", "127.0.0.1:\(try freePort())"])
            cleanup.add { gateway.child.stop() }
            let http = try await gateway.client()
            cleanup.add { await http.close() }
            var made: Set<String> = []
            var instance: String?
            for _ in 0..<200 {
                let r = try await http.request("POST", "/v1/ports", json: ["ttl": 60])
                let o = try #require(r.json?.objectValue, "\(r)")
                let name = try #require(o["name"]?.stringValue)
                let match = try #require(name.wholeMatch(of: /([A-Za-z0-9_-]{8})\.([A-Za-z0-9_-]{22}[AEIMQUYcgkosw048])/), "\(name)")
                #expect(instance == nil || instance == String(match.1), "\(name): another prefix than \(instance ?? "")")
                instance = String(match.1)
                #expect(o["port"] == .string("\(gateway.nodeID)#\(name)"))
                made.insert(name)
            }
            #expect(made.count == 200)
        }
    }

    // MARK: - 6. With tokens, every route but the health checks needs one; read-only ones cannot write

    /// Routes that answer without a token, and why; every other operation of the contract needs one.
    /// `/metrics` is public only with `--metrics-public`; CORS preflights (`OPTIONS`) carry no
    /// credentials by the Fetch standard, and only say which methods and headers are allowed.
    static let publicOperations: Set<String> = ["GET /healthz", "GET /readyz", "GET /openapi.json"]

    @Test("with --token-file, every operation of the contract but the health checks needs a token, and a read-only token cannot write")
    func tokensOnEveryRoute() async throws {
        let file = try TokenFile("# tokens for the test\nrw-token-0123456789 rw\n\nro-token-9876543210\tro\n")
        defer { file.remove() }
        let rw = [("Authorization", "Bearer rw-token-0123456789")]
        let ro = [("Authorization", "Bearer ro-token-9876543210")]
        let bad: [[(String, String)]] = [
            [], [("Authorization", "Bearer wrong")], [("Authorization", "Basic cnctdG9rZW4=")],
            [("Authorization", "Bearer rw-token-012345678")], [("Authorization", "Bearer rw-token-01234567890")],
            [("Authorization", "Bearer ")], [("Authorization", "Bearer RW-TOKEN-0123456789")], [("Authorization", "rw-token-0123456789")],
            [("Authorization", "Bearer ro-token-9876543210 rw-token-0123456789")], [("X-Token", "rw-token-0123456789")],
        ]
        let writes: Set<String> = ["post", "put", "delete", "patch"]
        let spec = Self.contract

        // The contract says the same: the public set is exactly the allow-list, writes need rw.
        let ops = spec.operations.filter { $0.method != "options" }
        let publicInSpec = Set(ops.filter { $0.object["x-token-scope"] == "none" }.map { "\($0.method.uppercased()) \($0.template)" })
        #expect(publicInSpec == Self.publicOperations, "public in the contract: \(publicInSpec.sorted())")
        for op in spec.operations {
            let scope = op.object["x-token-scope"]?.stringValue
            let expected = op.method == "options" || Self.publicOperations.contains("\(op.method.uppercased()) \(op.template)")
                ? "none" : writes.contains(op.method) ? "rw" : "ro"
            #expect(scope == expected, "\(op.method.uppercased()) \(op.template): x-token-scope \(scope ?? "missing"), expected \(expected)")
        }

        try await GatewayNetwork.with(gatewayArguments: ["--token-file", file.path], authHeaders: rw) { net in
            let http = net.http
            let box = try await net.createMailbox()
            // The key that GET /v1/db/{family}/{subkey} reads (404 unknown_key without it).
            #expect(try await http.request("PUT", "/v1/db/sec-tokens/k", json: "v", headers: rw).status == 200)
            try await eventually("the key is set") { try await http.request("GET", "/v1/db/sec-tokens/k", headers: rw).status == 200 }
            func concrete(_ op: OpenAPIValidator.Operation) -> String {
                var path = op.template.replacingOccurrences(of: "{name}", with: box.name)
                    .replacingOccurrences(of: "{family}", with: "sec-tokens").replacingOccurrences(of: "{subkey}", with: "k")
                if Self.parameters(op, spec).contains(where: { $0["name"] == "wait" && $0["in"] == "query" }) { path += "?wait=0" }
                return path
            }
            /// Only an event stream documented for 200: read with an SSE client.
            func streams(_ op: OpenAPIValidator.Operation) -> Bool {
                op.object["responses"]?.objectValue?["200"]?.objectValue?["content"]?.objectValue?.keys.sorted() == ["text/event-stream"]
            }
            func send(_ op: OpenAPIValidator.Operation, _ headers: [(String, String)]) async throws -> (Int, String?, String?) {
                let path = concrete(op)
                if streams(op) {
                    let s = try await net.gateway.sse(path, headers: headers)
                    await s.close()
                    return (s.status, nil, s.header("WWW-Authenticate"))
                }
                let body: [UInt8]? = writes.contains(op.method) ? Array("[]".utf8) : nil
                let r = try await http.request(op.method.uppercased(), path, headers: headers, body: body)
                return (r.status, r.json?.objectValue?["code"]?.stringValue, r.header("WWW-Authenticate"))
            }

            for op in ops {
                let what = "\(op.method.uppercased()) \(concrete(op))"
                if Self.publicOperations.contains("\(op.method.uppercased()) \(op.template)") {
                    let (status, _, _) = try await send(op, [])
                    #expect(status == 200, "\(what) without a token: \(status)")
                    continue
                }
                for headers in bad {
                    let (status, code, challenge) = try await send(op, headers)
                    #expect(status == 401 && (code == nil || code == "unauthorized"), "\(what) with \(headers): \(status) \(code ?? "")")
                    #expect(challenge?.hasPrefix("Bearer") == true, "\(what): WWW-Authenticate \(challenge ?? "missing")")
                }
                let (status, code, _) = try await send(op, ro)
                if writes.contains(op.method) {
                    #expect(status == 403 && code == "read_only_token", "\(what) with the read-only token: \(status) \(code ?? "")")
                } else {
                    #expect(status == 200, "\(what) with the read-only token: \(status) \(code ?? "")")
                }
            }
            // Methods a path does not document, and paths that do not exist: still 401 first, and
            // a read-only token is still refused any write.
            for template in spec.paths.keys.sorted() where !["/healthz", "/readyz", "/openapi.json"].contains(template) {
                let documented = Set(spec.operations.filter { $0.template == template }.map { $0.method })
                for method in ["get", "post", "put", "delete", "patch"] where !documented.contains(method) {
                    let op = OpenAPIValidator.Operation(template: template, method: method, object: [:])
                    let (status, _, _) = try await send(op, [])
                    #expect(status == 401, "\(method.uppercased()) \(concrete(op)) without a token: \(status)")
                    let (roStatus, roCode, _) = try await send(op, ro)
                    if method != "get" { #expect(roStatus == 403 && roCode == "read_only_token", "\(method) \(template) ro: \(roStatus)") }
                }
            }
            expectProblem(try await http.request("GET", "/v1/no-such-route"), 401, "unauthorized")
            expectProblem(try await http.request("GET", "/v1/no-such-route", headers: ro), 404, "route_not_found")
            expectProblem(try await http.request("PATCH", "/v1/no-such-route", headers: ro), 403, "read_only_token")

            // The refused writes changed nothing: the mailbox survived its refused DELETE, and the
            // read-write token writes what the read-only one reads.
            #expect(try await http.request("GET", "/v1/ports/\(box.name)", headers: ro).status == 200)
            let sent = try await http.request("POST", "/v1/send", json: ["port": .string(box.port), "message": ["rw"]], headers: rw)
            #expect(sent.status == 202, "\(sent)")
            #expect(GatewayNetwork.messages(try await http.request("GET", "/v1/ports/\(box.name)/messages?wait=5", headers: ro)) == [["rw"]])
            // A read-write token passes every write (whatever the request then answers).
            for op in ops where writes.contains(op.method) {
                let (status, code, _) = try await send(op, rw)
                #expect(status != 401 && status != 403, "\(op.method.uppercased()) \(concrete(op)) with the rw token: \(status) \(code ?? "")")
            }
        }
    }
}

struct ListenerError: Error, CustomStringConvertible {
    let description: String
}

/// A listening socket on 127.0.0.1 that never accepts: a connection attempt to it completes in
/// the kernel's backlog, so `wasConnected` tells whether anyone ever connected.
final class PendingListener: Sendable {
    let fd: Int32
    let address: String

    init(port: Int = 0) throws {
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(s, 16) == 0 else {
            let why = String(cString: strerror(errno))
            Glibc.close(s)
            throw ListenerError(description: "cannot listen on 127.0.0.1:\(port): \(why)")
        }
        _ = fcntl(s, F_SETFL, fcntl(s, F_GETFL) | O_NONBLOCK)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(s, $0, &length) }
        }
        fd = s
        address = "127.0.0.1:\(UInt16(bigEndian: addr.sin_port))"
    }

    /// Whether a connection is waiting in the backlog.
    var wasConnected: Bool {
        let c = accept(fd, nil, nil)
        if c >= 0 { Glibc.close(c) }
        return c >= 0
    }

    func close() { Glibc.close(fd) }
}
