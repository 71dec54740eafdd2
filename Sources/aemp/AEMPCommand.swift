import ArgumentParser

#if canImport(Glibc)
import Glibc
#endif

/// `aemp`: a command-line AnyEvent::MP node for operators and tests (in the spirit of Perl's `bin/aemp`).
@main
struct AEMPCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "aemp",
        abstract: "A command-line AnyEvent::MP node.",
        discussion: """
            Every command except `seed` runs a short-lived private node (no listener, node ID \
            `anon/<random>` unless --node-id says otherwise): it joins the network through --seeds, \
            waits up to --connect-timeout seconds for a master, does its job and exits.

            Output is JSON, one value per line, with object keys sorted. Errors are one line on \
            standard error, `aemp: error: …`. Exit status: 0 success; 1 the network said no or \
            did not answer (no master, wrong secret, timeout, dead or missing port); 64 bad \
            command line or configuration (bad JSON, bad port ID, no secret, no seeds).
            """,
        subcommands: [Seed.self, Snd.self, Cal.self, DB.self, Nodes.self, Sink.self]
    )

    /// Parses and runs a subcommand; a `ToolError` becomes one `aemp: error: …` line and its exit status.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error as ToolError {
            writeError("aemp: error: \(error)")
            Glibc.exit(error.exitStatus)
        } catch {
            exit(withError: error)
        }
    }
}
