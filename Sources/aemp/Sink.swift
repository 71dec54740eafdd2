import AEMP
import ArgumentParser
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `aemp sink`: a port that counts what it receives (for benchmarks and load tests).
struct Sink: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Count the messages sent to a port (benchmarks).",
        discussion: """
            Joins through --seeds, prints `sink <port id>` and then, once per --report seconds and at \
            SIGINT/SIGTERM, a line `count <n>` with the messages received so far. With --expect N it \
            also prints `reached <N> <ns>` when the N-th message arrives (ns: CLOCK_MONOTONIC, so a \
            sender on the same machine can time the run). With --bind it listens (with the same \
            address in --seeds it is its own seed), and --framings sets what it accepts from peers \
            (json, cbor: peers send in the first one they support). With --echo it also prints \
            `echo <port id>`: a port that answers each message whose last element is a port ID by \
            sending the other elements there (what `cal` expects; soak tests call it).
            """,
        shouldDisplay: false)

    @OptionGroup var options: NodeOptions

    @Option(help: "Seconds between count lines.")
    var report: Double = 1

    @Option(help: "Print `reached N <monotonic ns>` when the N-th message arrives.")
    var expect: Int?

    @Option(help: "Listen address host:port (default: none, a private node).")
    var bind: [String] = []

    @Option(help: "Framings accepted from peers, in order of preference (comma-separated: json, cbor).")
    var framings: String = "cbor,json"

    @Flag(help: "Also create an echo port (printed as `echo <port id>`) that replies to `cal` requests.")
    var echo = false

    func run() async throws {
        let stop = terminationSignal()
        var c = try options.configuration(defaultNodeID: "sink/%u", defaultLogLevel: .error)
        c.binds = bind
        c.framings = try framings.split(separator: ",").map { name in
            guard let f = Framing(rawValue: String(name)) else {
                throw ToolError.configuration("unknown framing '\(name)' (use json or cbor)")
            }
            return f
        }
        let node = try Node(configuration: c)
        try await node.start()
        guard (try? await node.waitForMaster(timeout: .seconds(10))) != nil else {
            throw ToolError.failed("no master within 10 s")
        }
        let count = Atomic<Int>(0)
        let expected = expect ?? -1
        let port = node.port { _ in
            if count.wrappingAdd(1, ordering: .relaxed).newValue == expected {
                var now = timespec()
                clock_gettime(CLOCK_MONOTONIC, &now)
                writeLine("reached \(expected) \(Int(now.tv_sec) * 1_000_000_000 + now.tv_nsec)")
            }
        }
        writeLine("sink \(port)")
        if echo {
            let echoPort = node.port { message in
                guard let last = message.last?.stringValue, let reply = PortID(last) else { return }
                node.snd(reply, Array(message.dropLast()))
            }
            writeLine("echo \(echoPort)")
        }
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
