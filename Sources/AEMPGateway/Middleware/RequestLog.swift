import Logging

/// The log of refused requests (and of bodies too large): one line each, never the body (it may hold secrets); 5xx at
/// warning, the rest at info. Rate-limited by the logger's handler (`--log-rate`). The one place
/// a refusal is logged, wherever it was refused.
struct RequestLog: Sendable {
    let logger: Logger

    /// A body over `--max-body` (answered 413 before it was read whole): a notice, it may be an
    /// attack or a misconfigured client.
    func tooLarge(_ request: HTTPRequest) {
        logger.notice("request body too large", metadata: ["request": "\(request.requestID)", "path": "\(request.path)"])
    }

    func refused(_ request: HTTPRequest, _ problem: Problem) {
        let level: Logger.Level = problem.status >= 500 ? .warning : .info
        logger.log(
            level: level, "request refused",
            metadata: [
                "request": "\(request.requestID)", "method": "\(request.method)", "path": "\(request.path)",
                "status": "\(problem.status)", "code": "\(problem.code)", "detail": "\(problem.detail)",
            ])
    }
}
