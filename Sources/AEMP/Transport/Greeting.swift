/// The first greeting line of the handshake, `aemp;1;<node>;<auth methods>;<framings>;k=v…`
/// (aemp-protocol §4.2).
package struct Greeting: Sendable, Equatable {
    /// Field 1; `aemp` for a node connection.
    package var protocolName: String
    /// Field 2; must be 1.
    package var version: String
    /// Field 3: the sender's node ID.
    package var nodeID: String
    /// Field 4: auth methods the sender accepts, in preference order.
    package var authMethods: [String]
    /// Field 5: framings the sender accepts, in preference order.
    package var framings: [String]
    /// Fields 6…: `key=value` pairs (order is not significant).
    package var pairs: [String: String]

    /// A greeting with the given fields.
    package init(
        protocolName: String = "aemp", version: String = "1", nodeID: String, authMethods: [String],
        framings: [String], pairs: [String: String] = [:]
    ) {
        self.protocolName = protocolName
        self.version = version
        self.nodeID = nodeID
        self.authMethods = authMethods
        self.framings = framings
        self.pairs = pairs
    }

    /// Parses a greeting line (without its terminator); `nil` when it has fewer than five fields.
    package init?(line: Substring) {
        let fields = line.split(separator: ";", omittingEmptySubsequences: false)
        guard fields.count >= 5 else { return nil }
        protocolName = String(fields[0])
        version = String(fields[1])
        nodeID = String(fields[2])
        authMethods = fields[3].split(separator: ",").map(String.init)
        framings = fields[4].split(separator: ",").map(String.init)
        var pairs: [String: String] = [:]
        for field in fields.dropFirst(5) {
            if let eq = field.firstIndex(of: "=") {
                pairs[String(field[..<eq])] = String(field[field.index(after: eq)...])
            } else {
                pairs[String(field)] = ""
            }
        }
        self.pairs = pairs
    }

    /// The version field read as Perl does (numerically, aemp-protocol §4.1).
    package var numericVersion: Double? { Double(version) }

    /// The sender wants TLS: its `tls` pair is 1 as Perl reads it (`1 == int $tls`, aemp-protocol
    /// §4.5). A Perl node with a certificate sends `tls=1.0`.
    package var requestsTLS: Bool {
        guard let value = pairs["tls"] else { return false }
        return perlNumericPrefix(value).rounded(.towardZero) == 1
    }

    /// The line as sent, without the terminating LF. Pairs are written in a stable order.
    package var line: String {
        var fields = [protocolName, version, nodeID, authMethods.joined(separator: ","), framings.joined(separator: ",")]
        for key in pairs.keys.sorted() { fields.append("\(key)=\(pairs[key]!)") }
        return fields.joined(separator: ";")
    }
}
