import AEMP

/// The handler of the admin listener (`--admin-http`): `/healthz`, `/readyz` and `/metrics`
/// answered by the gateway as on its other listeners (same tokens, same metrics), anything else
/// `404 route_not_found`. The listener has its own small connection limit, so a probe never
/// waits behind the clients that fill the gateway's.
final class AdminHandler: HTTPHandler {
    static let paths: Set<String> = ["/healthz", "/readyz", "/metrics"]
    /// Strong, as the other listeners hold the gateway: `Gateway.shutdown` lets go of the listener.
    let gateway: Gateway

    init(gateway: Gateway) { self.gateway = gateway }

    func handle(_ request: HTTPRequest, _ exchange: Exchange) {
        guard Self.paths.contains(request.path) else {
            var p = Problem(
                404, "route_not_found", "Not found",
                "the admin listener serves /healthz, /readyz and /metrics only; the API is on --http")
            p.extra["path"] = .string(request.path)
            return exchange.respond(p.response(requestID: request.requestID))
        }
        gateway.handle(request, exchange)
    }

    func bodyTooLarge(_ request: HTTPRequest, limit: Int) -> HTTPResponse { gateway.bodyTooLarge(request, limit: limit) }
    func shuttingDown(_ request: HTTPRequest) -> HTTPResponse { gateway.shuttingDown(request) }
    func tooManyConnections(_ request: HTTPRequest, limit: Int) -> HTTPResponse { gateway.tooManyConnections(request, limit: limit) }
    func ambiguousFraming(_ request: HTTPRequest, _ why: String) -> HTTPResponse { gateway.ambiguousFraming(request, why) }
    func clientClosed(_ request: HTTPRequest) -> HTTPResponse { gateway.clientClosed(request) }
    func unsupportedTransferCoding(_ request: HTTPRequest, _ codings: String) -> HTTPResponse {
        gateway.unsupportedTransferCoding(request, codings)
    }
    func tooManyArguments(_ request: HTTPRequest, count: Int, limit: Int) -> HTTPResponse {
        gateway.tooManyArguments(request, count: count, limit: limit)
    }
    func commonHeaders(for request: HTTPRequest) -> [(String, String)] { gateway.commonHeaders(for: request) }
    func answered(_ exchange: Exchange, _ response: HTTPResponse) { gateway.answered(exchange, response) }
}
