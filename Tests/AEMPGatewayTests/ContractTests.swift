import AEMP
import AEMPGateway
import Foundation
import Testing

// Issue 16, "The contract generates clients that work": the contract is one a generator can use
// (checked here without a server; scripts/client-contract generates a Python client and runs it
// against a gateway process), and the promises it makes about requests and responses hold.

/// The contract the gateway was built with.
private let document: Value = {
    do {
        return try JSONCodec.decode(Array(OpenAPIDocument.json.utf8))
    } catch {
        fatalError("the embedded OpenAPI document is not JSON: \(error)")
    }
}()

@Suite("openapi/openapi.yaml: what client generators need")
struct GeneratorFriendlyContractTests {
    let contract = OpenAPIValidator(document: document)

    /// Every (where, schema) below `value`, following no `$ref`.
    static func schemas(in value: Value, at path: String) -> [(String, [String: Value])] {
        guard case .object(let o) = value else { return [] }
        var out = [(path, o)]
        for (name, sub) in (o["properties"]?.objectValue ?? [:]).sorted(by: { $0.key < $1.key }) {
            out += schemas(in: sub, at: "\(path)/properties/\(name)")
        }
        for key in ["items", "additionalProperties"] { if let sub = o[key] { out += schemas(in: sub, at: "\(path)/\(key)") } }
        for key in ["allOf", "anyOf", "oneOf"] {
            for (i, sub) in (o[key]?.arrayValue ?? []).enumerated() { out += schemas(in: sub, at: "\(path)/\(key)/\(i)") }
        }
        return out
    }

    /// The component schemas a schema refers to, transitively (names).
    func referenced(from roots: [Value]) -> Set<String> {
        var seen: Set<String> = []
        var queue = roots
        while let next = queue.popLast() {
            for (_, s) in Self.schemas(in: next, at: "#") {
                guard let ref = s["$ref"]?.stringValue, ref.hasPrefix("#/components/schemas/") else { continue }
                let name = String(ref.dropFirst("#/components/schemas/".count))
                if seen.insert(name).inserted, let target = contract.schemas.resolve(ref) { queue.append(target) }
            }
        }
        return seen
    }

    /// The Response Objects of every operation, `$ref`s resolved.
    var responses: [(String, [String: Value])] {
        contract.operations.flatMap { op in
            op.statuses.compactMap { status -> (String, [String: Value])? in
                guard let r = contract.response(of: op, status: Int(status) ?? 0)?.objectValue else { return nil }
                return ("\(op.id) \(status)", r)
            }
        }
    }

    @Test("no operation is OPTIONS (a generated client would get a function per path); the preflight is documented once")
    func noOptionsOperations() throws {
        let options = contract.operations.filter { $0.method == "options" }.map(\.template)
        #expect(options.isEmpty, "OPTIONS operations: \(options)")
        let description = try #require(document.objectValue?["info"]?.objectValue?["description"]?.stringValue)
        #expect(description.contains("`OPTIONS` on any path answers the preflight"))
        #expect(contract.schemas.resolve("#/components/responses/Preflight") != nil, "the preflight's answer is documented")
    }

    @Test("every problem response is the one Problem schema, and names the codes it can carry")
    func oneProblemSchema() {
        var count = 0
        for (where_, response) in responses {
            guard let media = response["content"]?.objectValue?["application/problem+json"]?.objectValue else { continue }
            count += 1
            #expect(media["schema"] == ["$ref": "#/components/schemas/Problem"], "\(where_): \(media["schema"] ?? .null)")
            let codes = media["x-problem-codes"]?.arrayValue ?? []
            #expect(!codes.isEmpty && codes.allSatisfy { $0.stringValue != nil }, "\(where_): no x-problem-codes")
            let description = response["description"]?.stringValue ?? ""
            for code in codes.compactMap(\.stringValue) {
                #expect(description.contains("`\(code)`"), "\(where_): the description does not explain \(code)")
            }
        }
        #expect(count > 50)
        let all = Set((contract.schemas.resolve("#/components/schemas/ProblemCode")?.objectValue?["enum"]?.arrayValue ?? []).compactMap(\.stringValue))
        for (where_, response) in responses {
            let media = response["content"]?.objectValue?["application/problem+json"]?.objectValue
            for code in (media?["x-problem-codes"]?.arrayValue ?? []).compactMap(\.stringValue) {
                #expect(all.contains(code), "\(where_): \(code) is not in ProblemCode")
            }
        }
        // A code a client does not know yet must not break it: `code` is a string, not an enum.
        let code = contract.schemas.resolve("#/components/schemas/Problem")?.objectValue?["properties"]?.objectValue?["code"]
        #expect(code?.objectValue?["type"] == "string" && code?.objectValue?["enum"] == nil && code?.objectValue?["$ref"] == nil, "\(code ?? .null)")
    }

    @Test("response schemas are open (clients tolerate new members); request schemas are closed")
    func openResponsesClosedRequests() {
        var roots: [Value] = []
        for (_, response) in responses {
            for (_, media) in response["content"]?.objectValue ?? [:] {
                if let s = media.objectValue?["schema"] { roots.append(s) }
                if let s = media.objectValue?["x-sse-event"] { roots.append(s) }
            }
        }
        var closed: [String] = []
        let names = referenced(from: roots)
        for (i, root) in roots.enumerated() {
            for (path, s) in Self.schemas(in: root, at: "response \(i)") where s["additionalProperties"] == false { closed.append(path) }
        }
        for name in names.sorted() {
            let s = contract.schemas.resolve("#/components/schemas/\(name)") ?? .null
            for (path, sub) in Self.schemas(in: s, at: name) where sub["additionalProperties"] == false { closed.append(path) }
        }
        #expect(closed.isEmpty, "response schemas with additionalProperties: false: \(closed)")

        for op in contract.operations {
            guard let body = op.object["requestBody"]?.objectValue?["content"]?.objectValue?["application/json"]?.objectValue?["schema"] else { continue }
            for (path, s) in Self.schemas(in: body, at: "\(op.id) body") {
                var target = s
                if let ref = s["$ref"]?.stringValue { target = contract.schemas.resolve(ref)?.objectValue ?? [:] }
                if target["properties"] != nil {
                    #expect(target["additionalProperties"] == false, "\(path): a request object must refuse unknown members")
                }
            }
        }
    }

    @Test("every array schema says what its items are")
    func arraysHaveItems() {
        var missing: [String] = []
        func walk(_ v: Value, _ path: String) {
            switch v {
            case .object(let o):
                if o["type"] == "array" || o["type"]?.arrayValue?.contains("array") == true, o["items"] == nil { missing.append(path) }
                for (k, sub) in o { walk(sub, "\(path)/\(k)") }
            case .array(let a): for (i, sub) in a.enumerated() { walk(sub, "\(path)/\(i)") }
            default: break
            }
        }
        walk(document, "#")
        #expect(missing.isEmpty, "arrays without items: \(missing.sorted())")
    }
}

/// The promises about requests and responses, against a standalone `aemp-gateway` process.
@Suite("gateway: the contract's promises", .serialized, .timeLimit(.minutes(3)))
struct ContractPromiseTests {

    /// A standalone gateway process (its own seed) and a client of it.
    static func withGateway(_ body: (GatewayProcess, HTTPTestClient) async throws -> Void) async throws {
        try await Cleanup.scope { cleanup in
            let bind = "127.0.0.1:\(try freePort())"
            let gateway = try await GatewayProcess.start(seeds: nil, arguments: ["--standalone-bind", bind])
            cleanup.add { gateway.child.stop() }
            _ = try await gateway.waitForNodeInfo("its own master") { $0["master"]?.stringValue == gateway.nodeID }
            let http = try await gateway.client()
            cleanup.add { await http.close() }
            try await body(gateway, http)
        }
    }

    static func mailbox(_ http: HTTPTestClient) async throws -> (name: String, port: String) {
        let r = try await http.request("POST", "/v1/ports")
        try #require(r.status == 201, "\(r)")
        return (try #require(r.json?.objectValue?["name"]?.stringValue), try #require(r.json?.objectValue?["port"]?.stringValue))
    }

    @Test("a member a request schema does not know is 422 unknown_field naming it, on every route with a JSON object body; nothing happens")
    func unknownFields() async throws {
        try await Self.withGateway { gateway, http in
            let box = try await Self.mailbox(http)
            let port = Value.string(box.port)
            let cases: [(String, String, Value, String, Int64?)] = [
                ("POST", "/v1/send", ["port": port, "message": ["x"], "priority": 1], "priority", nil),
                ("POST", "/v1/send", [["port": port, "message": ["x"]], ["port": port, "message": ["y"], "mesage": []]], "mesage", 1),
                ("POST", "/v1/call", ["port": port, "message": ["x"], "timout": 1], "timout", nil),
                ("POST", "/v1/ports", ["ttl": 60, "maxqueue": 5], "maxqueue", nil),
                ("POST", "/v1/ports/\(box.name)/monitor", ["port": port, "reason": "x"], "reason", nil),
                ("POST", "/v1/db/contract-unknown/reg", ["port": .string(box.name), "value": 1, "ttl": 5], "ttl", nil),
            ]
            for (method, path, body, field, index) in cases {
                let r = try await http.request(method, path, json: body)
                let p = expectProblem(r, 422, "unknown_field")
                #expect(p["field"] == .string(field), "\(method) \(path): \(r)")
                #expect(p["detail"]?.stringValue?.contains("\"\(field)\"") == true, "\(method) \(path): \(r)")
                #expect(p["index"]?.integerValue == index, "\(method) \(path): \(r)")
            }
            // Nothing was sent (the batch's first item neither), created or registered.
            let polled = try await http.request("GET", "/v1/ports/\(box.name)/messages?wait=0")
            #expect(polled.json?.objectValue?["messages"] == [], "\(polled)")
            let family = try await http.request("GET", "/v1/db/contract-unknown")
            #expect(family.json?.objectValue?["values"] == [:], "\(family)")
            let node = try await http.request("GET", "/v1/node")
            #expect(node.json?.objectValue?["mailboxes"] == 1, "only the mailbox made first: \(node)")
            // PUT's body is the value itself: any members are the value's own.
            let put = try await http.request("PUT", "/v1/db/contract-unknown/k", json: ["anything": 1])
            #expect(put.status == 200, "\(put)")
        }
    }

    @Test("GET /v1/db/{family}/{subkey} reads one key: 200 with its value, 404 unknown_key when it is absent")
    func readOneKey() async throws {
        try await Self.withGateway { gateway, http in
            #expect(try await http.request("PUT", "/v1/db/contract-one/a%2Fb", json: ["x": [1, 2]]).status == 200)
            let got = try await waitFor("the key is set") { () -> HTTPTestResponse? in
                let r = try await http.request("GET", "/v1/db/contract-one/a%2Fb")
                return r.status == 200 ? r : nil
            }
            #expect(got.json == ["family": "contract-one", "subkey": "a/b", "value": ["x": [1, 2]]], "\(got)")
            #expect(got.header("Content-Type") == "application/json")
            let missing = try await http.request("GET", "/v1/db/contract-one/nope")
            let p = expectProblem(missing, 404, "unknown_key")
            #expect(p["detail"]?.stringValue?.contains("nope") == true, "\(missing)")
            expectProblem(try await http.request("GET", "/v1/db/%01/k"), 422, "invalid_family")
            // A null value is a value.
            #expect(try await http.request("PUT", "/v1/db/contract-one/n", json: nil).status == 200)
            try await eventually("the null key is read") {
                try await http.request("GET", "/v1/db/contract-one/n").json == ["family": "contract-one", "subkey": "n", "value": nil]
            }
        }
    }

    @Test("feed answers carry a type, as mailbox entries do: snapshot, changes of type change; the same in the stream's data")
    func feedTypes() async throws {
        try await Self.withGateway { gateway, http in
            let path = "/v1/db/contract-feed/watch"
            let snapshot = try await http.request("GET", "\(path)?wait=0")
            #expect(snapshot.json?.objectValue?["type"] == "snapshot", "\(snapshot)")
            let id = try #require(snapshot.json?.objectValue?["id"]?.stringValue)
            #expect(try await http.request("PUT", "/v1/db/contract-feed/k", json: 1).status == 200)
            let changes = try await http.request("GET", "\(path)?index=\(id)&wait=10", timeout: 15)
            #expect(changes.json?.objectValue?["type"] == "changes", "\(changes)")
            let list = changes.json?.objectValue?["changes"]?.arrayValue ?? []
            #expect(!list.isEmpty && list.allSatisfy { $0.objectValue?["type"] == "change" }, "\(changes)")

            let stream = try await gateway.sse(path, headers: [("Accept", "text/event-stream")])
            do {
                let first = try await stream.next()
                #expect(first.event == "snapshot" && first.json?.objectValue?["type"] == "snapshot", "\(first)")
                #expect(try await http.request("PUT", "/v1/db/contract-feed/k", json: 2).status == 200)
                let change = try await stream.next()
                #expect(change.event == "change" && change.json?.objectValue?["type"] == "change", "\(change)")
            } catch {
                await stream.close()
                throw error
            }
            await stream.close()
        }
    }

    @Test("errors say what is wrong: a port without '#' is a node port (missing #name?); a missing message is 'missing'")
    func clearerErrors() async throws {
        try await Self.withGateway { gateway, http in
            for path in ["/v1/send", "/v1/call"] {
                let bare = try await http.request("POST", path, json: ["port": "justname", "message": ["x"]])
                let p = expectProblem(bare, 403, "node_port_forbidden")
                let detail = p["detail"]?.stringValue ?? ""
                #expect(detail.contains("no '#'") && detail.contains("justname#"), "\(path): \(detail)")
                let noMessage = try await http.request("POST", path, json: ["port": "n#p"])
                let m = expectProblem(noMessage, 422, "invalid_request")
                #expect(m["detail"]?.stringValue?.contains("\"message\" is missing") == true, "\(path): \(noMessage)")
                let notList = try await http.request("POST", path, json: ["port": "n#p", "message": "x"])
                let l = expectProblem(notList, 422, "invalid_request")
                #expect(l["detail"]?.stringValue?.contains("must be a JSON array") == true, "\(path): \(notList)")
            }
            let box = try await Self.mailbox(http)
            let monitor = try await http.request("POST", "/v1/ports/\(box.name)/monitor", json: ["port": "justname"])
            #expect(expectProblem(monitor, 403, "node_port_forbidden")["detail"]?.stringValue?.contains("justname#") == true, "\(monitor)")
        }
    }

    @Test("a call to the gateway's own node port with an allowed tag (time) is answered, not 502 port_died")
    func callOwnNodePort() async throws {
        try await Cleanup.scope { cleanup in
            let bind = "127.0.0.1:\(try freePort())"
            let gateway = try await GatewayProcess.start(seeds: nil, arguments: ["--standalone-bind", bind, "--allow-node-port-tag", "time"])
            cleanup.add { gateway.child.stop() }
            _ = try await gateway.waitForNodeInfo("its own master") { $0["master"]?.stringValue == gateway.nodeID }
            let http = try await gateway.client()
            cleanup.add { await http.close() }
            let before = Date().timeIntervalSince1970
            let r = try await http.request("POST", "/v1/call", json: ["port": .string(gateway.nodeID), "message": ["time"], "timeout": 5])
            #expect(r.status == 200, "\(r)")
            let reply = r.json?.objectValue?["reply"]?.arrayValue ?? []
            let when: Double? = reply.count == 1 ? (reply[0].strictNumberForTests) : nil
            #expect(when.map { abs($0 - before) < 60 } == true, "\(r)")
            // Not allowed without the tag: refused as before.
            let eval = try await http.request("POST", "/v1/call", json: ["port": .string(gateway.nodeID), "message": ["eval", "1"]])
            expectProblem(eval, 403, "node_port_forbidden")
        }
    }

    /// The member names of a JSON object text at its top level, in the order written.
    static func topLevelKeys(_ bytes: [UInt8]) -> [String] {
        var keys: [String] = []
        var depth = 0, inString = false, escaped = false, start = 0
        for (i, b) in bytes.enumerated() {
            if inString {
                if escaped { escaped = false } else if b == UInt8(ascii: "\\") { escaped = true } else if b == UInt8(ascii: "\"") {
                    inString = false
                    let next = bytes[(i + 1)...].first { $0 != 0x20 }
                    if depth == 1 && next == UInt8(ascii: ":") { keys.append(String(decoding: bytes[(start + 1)..<i], as: UTF8.self)) }
                }
                continue
            }
            switch b {
            case UInt8(ascii: "\""):
                inString = true
                start = i
            case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
            case UInt8(ascii: "}"), UInt8(ascii: "]"): depth -= 1
            default: break
            }
        }
        return keys
    }

    @Test("object members come out sorted by key: the same answer has the same bytes twice and in another process")
    func stableKeyOrder() async throws {
        var members: [String: Value] = [:]
        for i in 0..<24 { members["k\(String(format: "%02d", (i * 7) % 24))"] = ["z": .int(Int64(i)), "a": nil, "m": [["y": 1, "b": 2]]] }
        let value = Value.object(members)
        let expected = "{\"family\":\"contract-order\",\"subkey\":\"k\",\"value\":{"
            + (0..<24).map { i -> String in
                let n = (0..<24).first { ($0 * 7) % 24 == i }!
                return "\"k\(String(format: "%02d", i))\":{\"a\":null,\"m\":[{\"b\":2,\"y\":1}],\"z\":\(n)}"
            }.joined(separator: ",") + "}}"
        var bodies: [String] = []
        for _ in 0..<2 {
            try await Self.withGateway { gateway, http in
                for _ in 0..<2 {
                    let r = try await http.request("PUT", "/v1/db/contract-order/k", json: value)
                    #expect(r.status == 200, "\(r)")
                    bodies.append(r.text)
                }
                // Other answers built from dictionaries: a mailbox, its state, a problem, the node.
                let created = try await http.request("POST", "/v1/ports")
                #expect(Self.topLevelKeys(created.body) == ["max_queue", "name", "port", "ttl"], "\(created)")
                let name = try #require(created.json?.objectValue?["name"]?.stringValue)
                let info = try await http.request("GET", "/v1/ports/\(name)")
                #expect(Self.topLevelKeys(info.body) == Self.topLevelKeys(info.body).sorted() && Self.topLevelKeys(info.body).count == 9, "\(info)")
                let problem = try await http.request("POST", "/v1/send", json: ["port": "a#b#c", "message": []])
                #expect(Self.topLevelKeys(problem.body) == ["code", "detail", "request_id", "status", "title", "type"], "\(problem)")
                let node = try await http.request("GET", "/v1/node")
                #expect(Self.topLevelKeys(node.body) == Self.topLevelKeys(node.body).sorted(), "\(node)")
            }
        }
        #expect(bodies.count == 4)
        for body in bodies { #expect(body == expected, "\(body)") }
    }
}

extension Value {
    /// A JSON number as a double (integers too).
    fileprivate var strictNumberForTests: Double? {
        switch self {
        case .int(let n): return Double(n)
        case .double(let d): return d
        default: return nil
        }
    }
}
