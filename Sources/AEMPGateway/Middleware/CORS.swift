/// Cross-origin access for browsers (`--cors-origin`): the one place its headers are made, for
/// every answer (`HTTPHandler.commonHeaders`) and the preflight (`OPTIONS` on any path).
struct CORSPolicy: Sendable {
    let origins: Set<String>

    /// No origin configured: no CORS header is ever sent.
    var isOff: Bool { origins.isEmpty }

    /// Whether pages of `origin` may use the gateway.
    func allows(_ origin: String) -> Bool { origins.contains("*") || origins.contains(origin) }

    /// The headers for an answer to a request from `origin` (none for an origin not allowed).
    func headers(origin: String?) -> [(String, String)] {
        guard !origins.isEmpty, let origin else { return [] }
        let any = origins.contains("*")
        guard any || origins.contains(origin) else { return [] }
        return [
            ("Access-Control-Allow-Origin", any ? "*" : origin),
            ("Access-Control-Expose-Headers", "X-Request-ID, X-AEMP-Index, X-AEMP-Last, Retry-After"),
            ("Vary", "Origin"),
        ]
    }

    /// The answer to a preflight (the origin headers come with `headers(origin:)`).
    func preflight() -> HTTPResponse {
        HTTPResponse(
            status: 204,
            headers: [
                ("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS"),
                ("Access-Control-Allow-Headers", "Authorization, Content-Type, Last-Event-ID"),
                ("Access-Control-Max-Age", "600"),
            ])
    }
}
