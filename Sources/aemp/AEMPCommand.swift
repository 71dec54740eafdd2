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
            Every command except `seed` and `cert` runs a short-lived private node (no listener, \
            node ID `anon/<random>` unless --node-id says otherwise): it joins the network through \
            --seeds, waits up to --connect-timeout seconds for a master, does its job and exits. \
            A node authenticates with the shared secret (--secret, --secret-file, AEMP_SECRET), the \
            network's certificate (--cert, AEMP_CERT: mesh TLS), or both.

            Output is JSON, one value per line, with object keys sorted. Errors are one line on \
            standard error, `aemp: error: …`. Exit status: 0 success; 1 the network said no or \
            did not answer (no master, wrong secret, timeout, dead or missing port); 64 bad \
            command line or configuration (bad JSON, bad port ID, no secret and no certificate, an \
            unusable certificate file, no seeds).
            """,
        subcommands: [Seed.self, Snd.self, Cal.self, DB.self, Nodes.self, Sink.self, Cert.self]
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
