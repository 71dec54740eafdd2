import AEMP

/// How `aemp` reads ports, message elements and values from its command line.
///
/// Perl's `aemp` decodes an argument as JSON when it starts with `[`, `{` or `"` and passes every
/// other argument as a string. `aemp` does the same, and in addition reads the JSON scalars
/// (`42`, `-1.5`, `true`, `false`, `null`) as what they are, so a Swift receiver gets a number and
/// not the string `"42"` (Perl receivers cannot tell the difference). Write `'"42"'` for the string.
enum ArgumentValue {
    /// One argument as a value. `what` names it in errors ("message element 2").
    static func parse(_ text: String, what: String) throws -> Value {
        let mustBeJSON = text.first.map { "[{\"".contains($0) } ?? false
        do {
            return try JSONCodec.decode(text)
        } catch {
            guard mustBeJSON else { return .string(text) }
            throw ToolError.badArgument("\(what) \(quoted(text)) is not valid JSON: \(explain(error))")
        }
    }

    /// The message elements, one per argument; a message nested deeper than the network carries
    /// (`MeshLimits.maxMessageDepth`, the message array counted as one level) is refused.
    static func message(_ arguments: [String]) throws -> [Value] {
        let message = try arguments.enumerated().map { i, text in try parse(text, what: "message element \(i + 1)") }
        let limit = MeshLimits.maxMessageDepth
        if message.contains(where: { $0.nests(deeperThan: limit - 1) }) {
            throw ToolError.badArgument(
                "the message nests \(Value.array(message).nestingDepth) levels deep (its list counted as one); "
                    + "the network carries at most \(limit): Perl would lose it and everything after it on the connection")
        }
        return message
    }

    /// A database value; one nested deeper than `MeshLimits.maxDatabaseValueDepth` (the depth that
    /// fits `g_slave`, the deepest packet carrying it) is refused.
    static func databaseValue(_ text: String) throws -> Value {
        let value = try parse(text, what: "value")
        let limit = MeshLimits.maxDatabaseValueDepth
        if value.nests(deeperThan: limit) {
            throw ToolError.badArgument(
                "the value nests \(value.nestingDepth) levels deep; the network carries at most \(limit) "
                    + "(a node's whole database travels 3 levels down in g_slave)")
        }
        return value
    }

    /// A port ID `node#name`; a node ID alone (or `node#`) is that node's node port.
    /// Like Perl's `aemp`, the argument's bytes are the characters (a Perl node started as `pérl`
    /// from a UTF-8 shell has the 5-character ID `p\u{C3}\u{A9}rl`, aemp-protocol §14), so a
    /// non-ASCII node ID names the same node here as in Perl's tool.
    static func port(_ text: String) throws -> PortID {
        guard let parsed = PortID(text) else {
            throw ToolError.badArgument("invalid port ID \(quoted(text)): the node part before '#' is empty")
        }
        let node = String(String.UnicodeScalarView(parsed.node.utf8.map { Unicode.Scalar($0) }))
        let port = PortID(node: node, name: parsed.name)
        if let problem = NodeIDTemplate.addressProblem(with: port.node) {
            throw ToolError.badArgument("invalid port ID \(quoted(text)): \(problem)")
        }
        return port
    }

    private static func explain(_ error: JSONCodecError) -> String {
        switch error {
        case .syntax(let message, let line, let column, _):
            return line > 1 ? "\(message) (line \(line), column \(column))" : "\(message) (column \(column))"
        default:
            return "\(error)"
        }
    }

    /// The argument as the user typed it, shortened if long.
    static func quoted(_ text: String) -> String {
        let short = text.count > 60 ? String(text.prefix(57)) + "..." : text
        return "'\(short)'"
    }
}
