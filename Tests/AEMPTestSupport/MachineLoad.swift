/// Tests that load the whole machine (thousands of connections) and tests that check promptness
/// (a message "at once", a failover within seconds) take turns: on a 2-core machine a flood in one
/// test made another's 2 s bound take 7 s. Everything else runs beside them as before.
public actor MachineLoad {
    public static let shared = MachineLoad()

    private var busy = false
    private var waiting: [CheckedContinuation<Void, Never>] = []

    func acquire() async {
        guard busy else {
            busy = true
            return
        }
        await withCheckedContinuation { waiting.append($0) }
    }

    func release() {
        if waiting.isEmpty { busy = false } else { waiting.removeFirst().resume() }
    }
}

/// Runs `body` while no other load-making or promptness-checking test runs (see `MachineLoad`).
public func takingTurns<T>(_ body: () async throws -> T) async throws -> T {
    await MachineLoad.shared.acquire()
    do {
        let result = try await body()
        await MachineLoad.shared.release()
        return result
    } catch {
        await MachineLoad.shared.release()
        throw error
    }
}
