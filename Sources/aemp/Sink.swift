import AEMP
import ArgumentParser
import Synchronization

/// `aemp sink`: a port that counts what it receives (for benchmarks and load tests).
struct Sink: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Count the messages sent to a port (benchmarks).",
        discussion: """
            Joins through --seeds, prints `sink <port id>` and then, once per --report seconds and at \
            SIGINT/SIGTERM, a line `count <n>` with the messages received so far.
            """,
        shouldDisplay: false)

    @OptionGroup var options: NodeOptions

    @Option(help: "Seconds between count lines.")
    var report: Double = 1

    func run() async throws {
        let stop = terminationSignal()
        let c = try options.configuration(defaultNodeID: "sink/%u", defaultLogLevel: .error)
        let node = try Node(configuration: c)
        try await node.start()
        guard await node.waitForMaster(timeout: .seconds(10)) != nil else {
            throw ToolError.failed("no master within 10 s")
        }
        let count = Atomic<Int>(0)
        let port = node.port { _ in count.wrappingAdd(1, ordering: .relaxed) }
        writeLine("sink \(port)")
        let reporter = Task {
            while !Task.isCancelled {
                try? await Task.sleep(nanoseconds: UInt64(report * 1e9))
                writeLine("count \(count.load(ordering: .relaxed))")
            }
        }
        _ = await stop.value()
        reporter.cancel()
        writeLine("count \(count.load(ordering: .relaxed))")
        await node.shutdown()
    }
}
