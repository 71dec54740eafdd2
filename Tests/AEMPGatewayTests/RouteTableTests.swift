import AEMP
@testable import AEMPGateway
import Testing

/// Issue 16: the route table is the only place a route exists. These hold it equal to the
/// contract and check its matching without a server (the served behaviour is in ProblemTests,
/// HTTPEdgeTests and OpenAPIConformanceTests).
@Suite("gateway: route table")
struct RouteTableTests {
    let table = Gateway.routes

    @Test("the route table and openapi/openapi.yaml list the same paths and methods, both ways")
    func tableMatchesContract() throws {
        let contract = try OpenAPIValidator(json: Array(OpenAPIDocument.json.utf8))
        // OPTIONS (the CORS preflight of every path) is documented once, not per path; HEAD is GET's (routed as GET).
        #expect(!contract.operations.contains { $0.method == "options" || $0.method == "head" })
        let documented = Set(contract.operations.map { "\($0.method.uppercased()) \($0.template)" })
        let routed = Set(table.routes.map { "\($0.method) \($0.path.template)" })
        #expect(routed.subtracting(documented).isEmpty, "routed, not documented: \(routed.subtracting(documented).sorted())")
        #expect(documented.subtracting(routed).isEmpty, "documented, not routed: \(documented.subtracting(routed).sorted())")
        #expect(routed.count == table.routes.count, "a route is listed twice")
        // Every documented path is a metrics label, and nothing else is (besides `other`).
        #expect(Set(table.paths.map(\.template)) == Set(contract.paths.keys))
    }

    @Test("reads are open, metrics or read access; everything else needs a read-write token")
    func accessFollowsMethod() {
        for route in table.routes {
            if route.method == "GET" {
                #expect(route.access != .write, "\(route.method) \(route.path.template)")
            } else {
                #expect(route.access == .write, "\(route.method) \(route.path.template)")
            }
        }
        let open = table.routes.filter { $0.access == .open }.map(\.path.template).sorted()
        #expect(open == ["/healthz", "/openapi.json", "/readyz"])
    }

    func matched(_ method: String, _ path: String) -> String {
        let segments = path.split(separator: "/").map(String.init)
        switch table.match(method: method, segments: segments) {
        case .route(let route, let label, let parameters):
            #expect(table.paths[label] == route.path)
            return "\(route.method) \(route.path.template) \(parameters)"
        case .methodNotAllowed(let label, let allowed):
            return "405 \(table.template(label)) \(allowed.joined(separator: ","))"
        case .notFound:
            return "404"
        }
    }

    @Test("literal segments win over parameters, for their own methods only; parameters come out in order")
    func matching() {
        #expect(matched("POST", "/v1/send") == "POST /v1/send []")
        #expect(matched("GET", "/v1/ports/box-1") == #"GET /v1/ports/{name} ["box-1"]"#)
        #expect(matched("GET", "/v1/ports/box-1/messages") == #"GET /v1/ports/{name}/messages ["box-1"]"#)
        #expect(matched("GET", "/v1/db/fam/keys") == #"GET /v1/db/{family}/keys ["fam"]"#)
        // A subkey named like a sub-route is that sub-route only for the sub-route's method.
        #expect(matched("PUT", "/v1/db/fam/keys") == #"PUT /v1/db/{family}/{subkey} ["fam", "keys"]"#)
        #expect(matched("DELETE", "/v1/db/fam/reg") == #"DELETE /v1/db/{family}/{subkey} ["fam", "reg"]"#)
        #expect(matched("PUT", "/v1/db/fam/a b") == #"PUT /v1/db/{family}/{subkey} ["fam", "a b"]"#)
        #expect(matched("GET", "/v1/db/fam/k") == #"GET /v1/db/{family}/{subkey} ["fam", "k"]"#)
        #expect(matched("GET", "/v1/db/fam/reg") == #"GET /v1/db/{family}/{subkey} ["fam", "reg"]"#)
        #expect(matched("GET", "/v1/db/fam/watch") == #"GET /v1/db/{family}/watch ["fam"]"#)
        #expect(matched("GET", "/v1/nodes/events") == "GET /v1/nodes/events []")
    }

    @Test("a path with other methods is 405 with every method of every template it fits, in a fixed order; else 404")
    func methodsAndMisses() {
        #expect(matched("POST", "/v1/db/fam/keys") == "405 /v1/db/{family}/keys GET,PUT,DELETE")
        #expect(matched("PATCH", "/v1/db/fam/reg") == "405 /v1/db/{family}/reg GET,POST,PUT,DELETE")
        #expect(matched("PATCH", "/v1/db/fam/k") == "405 /v1/db/{family}/{subkey} GET,PUT,DELETE")
        #expect(matched("POST", "/v1/ports/x") == "405 /v1/ports/{name} GET,DELETE")
        #expect(matched("GET", "/v1/send") == "405 /v1/send POST")
        #expect(matched("POST", "/healthz") == "405 /healthz GET")
        for path in ["/", "/v1", "/v2/send", "/v1/ports/a/b/c", "/v1/db", "/v1/db/f/k/extra", "/v1/node/x", "/healthz/x"] {
            #expect(matched("GET", path) == "404", "\(path)")
            #expect(table.label(method: "GET", segments: path.split(separator: "/").map(String.init)) == table.paths.count)
        }
        #expect(table.template(table.paths.count) == "other")
    }

    @Test("the quick answer is found by method and exact raw path only")
    func quickRoutes() {
        func quick(_ method: String, _ path: String) -> String? {
            path.withCString { p in table.quickRoute(method: method, path: p).map { "\($0.route.method) \(table.template($0.label))" } }
        }
        #expect(quick("POST", "/v1/send") == "POST /v1/send")
        #expect(quick("GET", "/v1/send") == nil)
        #expect(quick("POST", "/v1/send/") == nil)
        #expect(quick("POST", "/v1/sen") == nil)
        #expect(quick("POST", "/v1/call") == nil)
    }
}
