import Foundation
import OpenAPIURLSession

/// The README's example of a generated Swift client ("A generated client"), so that it compiles
/// against the client the contract generates; `scripts/client-contract` holds every Swift block of
/// that section to appear here verbatim (hence the body's indentation). Never run.
func readmeExample() async throws {
let gw = Client(serverURL: URL(string: "http://127.0.0.1:8080")!, transport: URLSessionTransport())
let box = try await gw.createMailbox(body: .json(.init(ttl: 600))).created.body.json
_ = try await gw.send(body: .json(.Envelope(.init(port: box.port, message: ["hello"])))).accepted
let poll = try await gw.readMailbox(
    path: .init(name: box.name), query: .init(after: 0, wait: 30),
    headers: .init(accept: [.init(contentType: .json)])
).ok.body.json
print(poll.messages, poll.last)                                   // entries, the next `after`
switch try await gw.call(body: .json(.init(port: "mynode#echo", message: ["ping"], timeout: 5))) {
case .ok(let answer): print(try answer.body.json.reply)
case .badGateway(let failed): print(try failed.body.application_problem_plus_json.code)  // port_died, …
default: break                                                    // every error is a Problem
}
}
