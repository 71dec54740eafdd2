import Foundation
import HTTPTypes
import OpenAPIRuntime

/// Adds a member the request schema does not list to the JSON object body of one operation's
/// requests. The generated models cannot carry such a member (the request schemas are closed), so
/// this is how the client sends one to get `422 unknown_field`; the answer is still decoded by the
/// generated client.
struct ExtraMember: ClientMiddleware {
    /// The operation whose requests get the member (`send`).
    let operationID: String
    /// The member's name and its value, as JSON text.
    let name: String
    let json: String

    func intercept(
        _ request: HTTPRequest,
        body: HTTPBody?,
        baseURL: URL,
        operationID: String,
        next: @Sendable (HTTPRequest, HTTPBody?, URL) async throws -> (HTTPResponse, HTTPBody?)
    ) async throws -> (HTTPResponse, HTTPBody?) {
        guard operationID == self.operationID, let body else { return try await next(request, body, baseURL) }
        let sent = try await Data(collecting: body, upTo: 1 << 20)
        guard var object = try JSONSerialization.jsonObject(with: sent) as? [String: Any] else {
            throw Refusal(detail: "the \(operationID) body is not a JSON object: \(String(decoding: sent, as: UTF8.self))")
        }
        object[name] = try JSONSerialization.jsonObject(with: Data(json.utf8), options: .fragmentsAllowed)
        let changed = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        var request = request
        request.headerFields[.contentLength] = nil
        return try await next(request, HTTPBody(changed), baseURL)
    }

    /// The body could not be changed.
    struct Refusal: Error, CustomStringConvertible {
        let detail: String
        var description: String { "ExtraMember: \(detail)" }
    }
}
