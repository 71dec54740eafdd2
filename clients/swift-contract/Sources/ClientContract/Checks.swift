import Foundation

/// The tally of one run: every expectation is counted, and a failed one is reported at once and
/// the run carries on, so one run shows every mismatch (as `scripts/client-contract.py` does).
final class Checks {
    private(set) var count = 0
    private(set) var failures: [String] = []

    /// Records `condition` as one check; `what` says what was expected and what came.
    @discardableResult
    func check(_ condition: Bool, _ what: @autoclosure () -> String) -> Bool {
        count += 1
        if !condition { fail(what()) }
        return condition
    }

    /// Records a step that could not be taken at all (an unexpected answer, a decoding error).
    func fail(_ what: String) {
        failures.append(what)
        FileHandle.standardError.write(Data("client-contract-swift: FAIL: \(what)\n".utf8))
    }

    /// Runs one part of the contract; an error thrown by it (the generated client's
    /// "unexpected response", a decoding error, a timeout) counts as a failed check.
    func part<T>(_ name: String, _ body: () async throws -> T) async -> T? {
        do {
            return try await body()
        } catch {
            count += 1
            fail("\(name): \(error)")
            return nil
        }
    }
}
