import AEMP
import NIOCore
import ArgumentParser

/// What a message argument means; shared by `snd` and `cal` help.
private let messageArgumentsHelp = """
    Each <element> argument is one element of the message. An argument that starts with [, { or " \
    must be JSON and is decoded (a bad one is an error naming it); other JSON texts (42, -1.5, \
    true, false, null) are decoded too; anything else is sent as a string. So \
    `aemp snd node#p ping '{"a":1}' 42 '"42"'` sends ["ping",{"a":1},42,"42"]. Put `--` before \
    an element that starts with '-'.
    """

/// `aemp snd PORT ELEMENT…`: sends one message and exits once the target node has processed it.
struct Snd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send a message to a port and wait until its node has it.",
        discussion: messageArgumentsHelp + """


            The command monitors the port, sends the message and then asks the port's node to \
            relay a receipt back (the node-port `snd` request, as Perl's aemp does). One connection \
            delivers in order, so the receipt proves the node has processed the message. Prints \
            nothing and exits 0 on success; exits 1 if the port does not exist, is killed before \
            the receipt comes (e.g. by an unhandled message), its node cannot be reached, or \
            --timeout passes.
            """)

    @OptionGroup var options: NodeOptions
    @OptionGroup var client: ClientOptions

    @Argument(help: "The target port, node#name (a node ID alone is its node port).")
    var port: String

    @Argument(help: "The message elements.")
    var element: [String] = []

    private enum Outcome: Sendable {
        case delivered
        case died([Value])
        case timedOut
    }

    func run() async throws {
        let target = try ArgumentValue.port(port)
        let message = try ArgumentValue.message(element)
        let session = try await Session.join(options, client)
        let node = session.node
        let outcome = OneShot<Outcome>()
        let receipt = node.port { _ in outcome.resolve(.delivered) }
        // Monitor first: a port that does not exist then answers no_such_port before the message.
        node.mon(target) { reason in outcome.resolve(.died(reason)) }
        node.snd(target, message)
        node.snd(PortID(node: target.node, name: ""), ["snd", .string(receipt.description), "delivered"])
        outcome.resolve(after: session.timeout, with: .timedOut)
        let result = await outcome.value()
        await session.leave()
        switch result {
        case .delivered:
            return
        case .died(let reason):
            throw ToolError.portDied(target, reason: reason, while: "message not delivered")
        case .timedOut:
            throw ToolError.timedOut("no delivery receipt from node \(target.node) within \(formatSeconds(session.timeout)) s")
        }
    }
}

/// `aemp cal PORT ELEMENT…`: sends a message with a reply port appended and prints the first reply.
struct Cal: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send a message with a reply port appended; print the first reply.",
        discussion: messageArgumentsHelp + """


            The ID of a fresh local port is appended to the message as a string (like Perl's \
            `cal`); the first message that arrives there is printed as one JSON array line and \
            the command exits 0. It exits 1 if no reply comes within --timeout, or if the target \
            port is killed or does not exist (the kill reason is printed). \
            Example: `aemp cal <node> time` asks a node's node port for its clock.
            """)

    @OptionGroup var options: NodeOptions
    @OptionGroup var client: ClientOptions

    @Argument(help: "The target port, node#name (a node ID alone is its node port).")
    var port: String

    @Argument(help: "The message elements; the reply port ID is appended.")
    var element: [String] = []

    func run() async throws {
        let target = try ArgumentValue.port(port)
        let message = try ArgumentValue.message(element)
        let session = try await Session.join(options, client)
        let node = session.node
        // The library's cal: its reply port, monitor and timer are released however it ends.
        let result: Result<[Value], RequestError>
        do throws(RequestError) {
            result = .success(try await node.cal(target, message, timeout: .nanoseconds(Int64(session.timeout * 1e9))))
        } catch {
            result = .failure(error)
        }
        if case .success(let reply) = result { writeLine(renderJSON(.array(reply))) }
        await session.leave()
        switch result {
        case .success:
            return
        case .failure(.portDied(let reason)):
            throw ToolError.portDied(target, reason: reason, while: "no reply")
        case .failure(.timedOut):
            throw ToolError.timedOut("no reply from \(target) within \(formatSeconds(session.timeout)) s")
        case .failure(let other):
            throw ToolError.failed("cal \(target): \(other)")
        }
    }
}
