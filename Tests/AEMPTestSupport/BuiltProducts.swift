@_exported import ChildProcesses

extension ChildProcess {
    /// Starts `product`, an executable of this package built next to the test bundle, with both
    /// output streams collected and every wait stretched under a sanitizer. `environment` adds or
    /// replaces variables, `unset` removes inherited ones.
    package convenience init(
        _ product: String, _ arguments: [String], environment: [String: String] = [:], unset: [String] = []
    ) throws {
        try self.init(
            executable: try ChildProcess.builtProduct(product), arguments, name: product, environment: environment,
            unset: unset, timeScale: sanitizerSlowdown)
    }

    /// Runs `product` to its end (at most `seconds`, stretched under a sanitizer; then it is killed
    /// and the call throws): how it exited and everything it wrote.
    package static func run(
        _ product: String, _ arguments: [String], environment: [String: String] = [:], unset: [String] = [],
        within seconds: Double = 30
    ) async throws -> ChildResult {
        try await run(
            executable: try builtProduct(product), arguments, environment: environment, unset: unset, within: seconds,
            timeScale: sanitizerSlowdown)
    }
}
