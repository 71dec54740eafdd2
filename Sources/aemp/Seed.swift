import AEMP
import ArgumentParser

/// `aemp seed --bind 127.0.0.1:4040`: runs a seed (global) node until interrupted.
struct Seed: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a seed/global node until interrupted.",
        discussion: """
            Prints `node <id> listening on <addresses>` once it listens, then runs until SIGINT \
            or SIGTERM (exit status 0).
            """)

    @OptionGroup var options: NodeOptions

    @Option(help: "Listen address host:port (port 0 picks a free port); repeatable.")
    var bind: [String] = ["127.0.0.1:4040"]

    func run() async throws {
        let stop = terminationSignal()
        var c = try options.configuration(defaultLogLevel: .notice)
        c.binds = bind
        // A seed lists itself among the seeds, which makes it global (aemp-protocol §10.3).
        c.seeds = bind + c.seeds.filter { !bind.contains($0) }
        let node: Node
        do {
            node = try Node(configuration: c)
        } catch let error as NodeError {
            throw ToolError.configuration("\(error)")
        }
        do {
            try await node.start()
        } catch {
            throw ToolError.failed("\(error)")
        }
        let addresses = await node.listenAddresses()
        writeLine("node \(node.id) listening on \(addresses.joined(separator: ","))")
        _ = await stop.value()
        await node.shutdown()
    }
}
