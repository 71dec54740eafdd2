import AEMP
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Who may use a route; checked before its handler runs.
enum RouteAccess: Sendable, Equatable {
    /// Health checks and the contract: no token, ever (probes and tooling have none).
    case open
    /// `/metrics`: a token unless the operator made it public (`--metrics-public`).
    case metrics
    /// Reads: any valid token.
    case read
    /// Changes: a read-write token.
    case write
}

/// A path template of the contract, such as `/v1/db/{family}/{subkey}`: what a route matches,
/// and the `route` label of its request metrics (a fixed, small set of values, never a raw path).
struct RoutePath: Sendable, Hashable {
    enum Piece: Sendable, Hashable {
        case literal(String)
        case parameter(String)
    }

    let template: String
    let pieces: [Piece]

    init(_ template: String) {
        self.template = template
        pieces = template.split(separator: "/").map { part in
            part.hasPrefix("{") && part.hasSuffix("}") ? .parameter(String(part.dropFirst().dropLast())) : .literal(String(part))
        }
    }

    /// The values of the template's parameters, in order, when `segments` (decoded) fit it.
    func parameters(of segments: [String]) -> [String]? {
        guard segments.count == pieces.count else { return nil }
        var values: [String] = []
        for (piece, segment) in zip(pieces, segments) {
            switch piece {
            case .literal(let text): if text != segment { return nil }
            case .parameter: values.append(segment)
            }
        }
        return values
    }

    /// More specific first: at the first place where one template has a literal and the other a
    /// parameter, the literal wins (`/v1/db/{family}/keys` before `/v1/db/{family}/{subkey}`).
    static func moreSpecific(_ a: RoutePath, _ b: RoutePath) -> Bool {
        for (x, y) in zip(a.pieces, b.pieces) {
            switch (x, y) {
            case (.literal, .parameter): return true
            case (.parameter, .literal): return false
            default: continue
            }
        }
        return false
    }
}

/// One route of the gateway: method, path template, access, handler. The table
/// (`Gateway.routes`) is the only place a route exists: dispatch, `Allow`, authorization and the
/// metrics label all come from it, and a test holds it equal to openapi/openapi.yaml.
struct Route: Sendable {
    /// Answers the request (nil: the answer comes later, through the exchange). The strings are
    /// the template's parameters, decoded, in order.
    typealias Handler = @Sendable (Gateway, HTTPRequest, Exchange, [String]) throws(Problem) -> HTTPResponse?
    /// A cheaper answer taken on libmicrohttpd's thread before the request object is made, from
    /// the body alone, once access is checked (`Gateway.quickAnswer`); nil sends the request the
    /// general way.
    typealias Quick = @Sendable (Gateway, [UInt8]) -> HTTPResponse?

    let method: String
    let path: RoutePath
    let access: RouteAccess
    let quick: Quick?
    let handler: Handler

    init(_ method: String, _ template: String, _ access: RouteAccess, quick: Quick? = nil, _ handler: @escaping Handler) {
        self.method = method
        self.path = RoutePath(template)
        self.access = access
        self.quick = quick
        self.handler = handler
    }
}

/// The routes, compiled for matching.
struct RouteTable: Sendable {
    let routes: [Route]
    /// The distinct path templates, in table order. A request's metrics label is an index here;
    /// `paths.count` stands for "no route" (`other`).
    let paths: [RoutePath]
    /// Indexes into `paths` by segment count, most specific first.
    private let bySegments: [Int: [Int]]
    /// Route indexes by (path index, method).
    private let byPathAndMethod: [Int: [String: Int]]
    /// The routes with a quick answer: method, NUL-terminated path, route index.
    private let quickRoutes: [(method: String, path: [CChar], route: Int, label: Int)]

    /// Methods in the order `Allow` lists them.
    static let methodOrder = ["GET", "POST", "PUT", "DELETE", "PATCH"]

    init(_ routes: [Route]) {
        self.routes = routes
        var paths: [RoutePath] = []
        var byPathAndMethod: [Int: [String: Int]] = [:]
        var quick: [(String, [CChar], Int, Int)] = []
        for (i, route) in routes.enumerated() {
            let p: Int
            if let existing = paths.firstIndex(of: route.path) {
                p = existing
            } else {
                p = paths.count
                paths.append(route.path)
            }
            precondition(byPathAndMethod[p]?[route.method] == nil, "route \(route.method) \(route.path.template) twice")
            byPathAndMethod[p, default: [:]][route.method] = i
            if route.quick != nil {
                precondition(!route.path.pieces.contains { if case .parameter = $0 { true } else { false } }, "a quick route has no parameters")
                quick.append((route.method, Array(route.path.template.utf8CString), i, p))
            }
        }
        var bySegments: [Int: [Int]] = [:]
        for (i, p) in paths.enumerated() { bySegments[p.pieces.count, default: []].append(i) }
        for (n, list) in bySegments {
            // A stable sort: templates equally specific keep table order.
            bySegments[n] = list.enumerated().sorted { a, b in
                if RoutePath.moreSpecific(paths[a.element], paths[b.element]) { return true }
                if RoutePath.moreSpecific(paths[b.element], paths[a.element]) { return false }
                return a.offset < b.offset
            }.map(\.element)
        }
        self.paths = paths
        self.bySegments = bySegments
        self.byPathAndMethod = byPathAndMethod
        self.quickRoutes = quick
    }

    /// What a request's decoded path segments and method match.
    enum Match {
        /// A route, with its template's parameters.
        case route(Route, path: Int, parameters: [String])
        /// The path exists, the method does not: the methods that do (for `Allow`, without HEAD).
        case methodNotAllowed(path: Int, allowed: [String])
        /// No template fits the path.
        case notFound
    }

    func match(method: String, segments: [String]) -> Match {
        var first: Int?
        var allowed: Set<String> = []
        for p in bySegments[segments.count] ?? [] {
            guard let parameters = paths[p].parameters(of: segments) else { continue }
            let methods = byPathAndMethod[p] ?? [:]
            if let r = methods[method] { return .route(routes[r], path: p, parameters: parameters) }
            if first == nil { first = p }
            allowed.formUnion(methods.keys)
        }
        guard let first else { return .notFound }
        return .methodNotAllowed(path: first, allowed: Self.methodOrder.filter(allowed.contains))
    }

    /// The metrics label index of a request (most specific template of its path, whatever the
    /// method; `paths.count` when none fits).
    func label(method: String, segments: [String]) -> Int {
        switch match(method: method, segments: segments) {
        case .route(_, let path, _), .methodNotAllowed(let path, _): return path
        case .notFound: return paths.count
        }
    }

    /// The route whose quick answer fits a request (method and raw path, before any decoding).
    func quickRoute(method: String, path: UnsafePointer<CChar>) -> (route: Route, label: Int)? {
        for q in quickRoutes where q.method == method {
            if q.path.withUnsafeBufferPointer({ strcmp($0.baseAddress!, path) }) == 0 { return (routes[q.route], q.label) }
        }
        return nil
    }

    /// Who may use the routes of a path (the first route's access: a path's routes share it, or
    /// differ only by read and write).
    func access(ofPath path: Int) -> RouteAccess {
        routes.first { $0.path == paths[path] }?.access ?? .write
    }

    /// The template of a metrics label index.
    func template(_ label: Int) -> String { label < paths.count ? paths[label].template : "other" }
}
