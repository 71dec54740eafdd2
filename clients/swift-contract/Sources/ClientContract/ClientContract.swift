import Foundation
import OpenAPIRuntime
import OpenAPIURLSession

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Drives a gateway through the client that swift-openapi-generator generated from
/// openapi/openapi.yaml at build time (issue 16), the Swift twin of `scripts/client-contract.py`:
/// every request goes through the generated `Client` and its typed operations, every answer is
/// decoded into the generated types, and any answer the contract does not promise exits non-zero.
/// Run by `scripts/client-contract`, which builds this package and starts the gateway.
///
///     client-contract --base http://127.0.0.1:PORT
///
/// The gateway must be standalone (its own seed and master) and allow the node-port tag `time`.
/// Every wait is bounded: long-polls ask for at most 10 s, each request gives up after 20 s of
/// silence, and the whole run after 60 s.
@main
struct ClientContract {
    /// The whole run's deadline, seconds.
    static let deadline = 60

    static func main() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        guard arguments.count == 2, arguments[0] == "--base", let base = URL(string: arguments[1]),
            base.scheme == "http" || base.scheme == "https"
        else {
            FileHandle.standardError.write(Data("usage: client-contract --base http://127.0.0.1:PORT\n".utf8))
            exit(2)
        }
        let watchdog = Task.detached {
            try await Task.sleep(for: .seconds(deadline))
            FileHandle.standardError.write(Data("client-contract-swift: FAIL: not done within \(deadline) s\n".utf8))
            exit(3)
        }

        let configuration = URLSessionConfiguration.ephemeral
        configuration.timeoutIntervalForRequest = 20
        configuration.timeoutIntervalForResource = 30
        let transport = URLSessionTransport(configuration: .init(session: URLSession(configuration: configuration)))
        let run = ContractRun(
            client: Client(serverURL: base, transport: transport),
            sendingUnknownMember: Client(
                serverURL: base,
                transport: transport,
                middlewares: [ExtraMember(operationID: Operations.send.id, name: "priorty", json: "1")]
            )
        )
        await run.all()
        watchdog.cancel()

        let checks = run.checks
        print("client-contract-swift: \(checks.count - checks.failures.count) passed, \(checks.failures.count) failed")
        exit(checks.failures.isEmpty ? 0 : 1)
    }
}
