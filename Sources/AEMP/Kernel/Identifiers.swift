#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A port ID, `"<node>#<name>"` (aemp-protocol §2.2). The node port has the empty name.
public struct PortID: Hashable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    /// The node that owns the port.
    public let node: String
    /// The port name inside that node (`""` for the node port).
    public let name: String

    /// A port ID from its parts.
    public init(node: String, name: String) {
        self.node = node
        self.name = name
    }

    /// Parses `node#name`; a string without `#` is the node port of that node (aemp-protocol §1).
    /// Returns nil for an empty node part.
    public init?(_ string: String) {
        if let hash = string.firstIndex(of: "#") {
            node = String(string[..<hash])
            name = String(string[string.index(after: hash)...])
        } else {
            node = string
            name = ""
        }
        if node.isEmpty { return nil }
    }

    /// A port ID written in the source (`"node#name"`). A literal that is no port ID (its node
    /// part is empty, as in `"#name"` or `""`) is a programming error and stops the program; parse
    /// strings that come from elsewhere with `PortID(_:)`, which returns nil for them.
    public init(stringLiteral value: String) {
        guard let id = PortID(value) else {
            preconditionFailure("\(value.debugDescription) is not a port ID: the node part (before #) is empty")
        }
        self = id
    }

    /// Whether this names a node's node port (monitoring it monitors the node).
    public var isNodePort: Bool { name.isEmpty }

    /// `node#name`.
    public var description: String { "\(node)#\(name)" }
}

/// Node ID construction the way Perl's `configure` does it (aemp-protocol §2.1).
public enum NodeIDTemplate {
    /// The host name, as `uname -n` prints it.
    public static var hostName: String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count) == 0 else { return "localhost" }
        return String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Ten random characters from `[0-9A-Za-z]`, the last one upper-cased (Perl's `$RUNIQ`).
    public static func randomSuffix() -> String {
        let alphabet = Array("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
        var rng = SystemRandomNumberGenerator()
        var chars = (0..<10).map { _ in alphabet.randomElement(using: &rng)! }
        chars[9] = Character(chars[9].uppercased())
        return String(chars)
    }

    /// Expands `%n` (host name), `%u` and a trailing `/` (random suffix). Returns the ID and
    /// whether it was randomised.
    public static func expand(_ template: String) -> (id: String, randomised: Bool) {
        var id = template.replacingAll("%n", with: hostName)
        var randomised = false
        if id.contains("%u") {
            id = id.replacingAll("%u", with: randomSuffix())
            randomised = true
        }
        if id.hasSuffix("/") {
            id += randomSuffix()
            randomised = true
        }
        return (id, randomised)
    }

    /// Why `id` cannot be *our own* node ID, or nil if it can: it must be addressable
    /// (`addressProblem(with:)`) and printable ASCII (aemp-protocol §2.1, §14).
    public static func problem(with id: String) -> String? {
        if let problem = addressProblem(with: id) { return problem }
        // Perl carries a node ID as raw bytes in the greeting and as a string in packets; only
        // ASCII means the same in both for every peer (aemp-protocol §14). Peers' non-ASCII IDs
        // are still reached (read as Latin-1 bytes, as Perl sends them): see `addressProblem`.
        if id.unicodeScalars.contains(where: { !$0.isASCII || $0.value < 0x20 || $0.value == 0x7F }) {
            return "node ID \(id.debugDescription) is not printable ASCII (Perl nodes could not answer it)"
        }
        return nil
    }

    /// Why `id` cannot name any node, a peer's included, or nil if it can (aemp-protocol §2.1):
    /// empty, or containing '#', ';' or a line break. A Perl peer's non-ASCII ID (Latin-1
    /// characters, as its greeting's bytes are read) is fine.
    public static func addressProblem(with id: String) -> String? {
        if id.isEmpty { return "node ID is empty" }
        if id.contains("#") { return "node ID \(id.debugDescription) contains '#'" }
        if id.contains(";") { return "node ID \(id.debugDescription) contains ';'" }
        if id.contains(where: { $0 == "\n" || $0 == "\r" || $0 == "\r\n" }) {
            return "node ID \(id.debugDescription) contains a line break"
        }
        return nil
    }
}

extension String {
    func replacingAll(_ target: String, with replacement: String) -> String {
        guard !target.isEmpty else { return self }
        var out = ""
        var rest = Substring(self)
        while let range = rest.firstRange(of: target) {
            out += rest[..<range.lowerBound]
            out += replacement
            rest = rest[range.upperBound...]
        }
        out += rest
        return out
    }
}
