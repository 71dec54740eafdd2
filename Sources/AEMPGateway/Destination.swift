import AEMP

/// Turns a port ID given by an HTTP client into a destination, refusing node ports whatever the
/// spelling: a Perl node runs `eval` and function-call requests that arrive at its node port.
enum Destination {
    /// The node-port requests an operator may open to HTTP clients (`--allow-node-port-tag`): those
    /// that run no code and change nothing (aemp-protocol §7.1). Every other tag runs code (`eval`,
    /// any function name), relays (`snd`), or kills or monitors ports for the gateway's node.
    static let harmlessNodePortTags: Set<String> = ["time", "can", "devnull"]

    /// Where an allowed node-port request names the port its answer goes to (`time @reply`,
    /// `can tag @reply`): a node port there would make the node send `eval` on the client's behalf.
    private static let replyPortIndex: [String: Int] = ["time": 1, "can": 2]

    /// Parses `node#name`. Node ports (`node`, `node#`, blanks, percent-encoded `#`) are refused
    /// unless the message's tag is a harmless one the operator allowed and its reply port (if any)
    /// is not a node port either.
    static func parse(_ raw: Value, message: [Value]? = nil, allowedTags: Set<String> = []) throws(Problem) -> PortID {
        guard case .string(let given) = raw else {
            throw .invalidPort("\"port\" must be a string \"node#name\"")
        }
        if let plain = plainPortID(given) { return plain }
        var text = trimmed(given)
        // Undo percent-encoding (repeatedly: %2523 is a '#' encoded twice) so that no spelling of
        // a node port slips through.
        for _ in 0..<4 where text.contains("%") {
            guard let decoded = percentDecoded(text) else { break }
            text = trimmed(decoded)
        }
        guard !text.isEmpty else { throw .invalidPort("\"port\" is empty") }
        if text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            throw .invalidPort("\(given.debugDescription) contains control characters")
        }
        let node: Substring, name: Substring
        if let hash = text.firstIndex(of: "#") {
            node = text[..<hash]
            name = text[text.index(after: hash)...]
        } else {
            node = Substring(text)
            name = ""
        }
        let portName = trimmed(String(name))
        let nodeID = trimmed(String(node))
        guard !nodeID.isEmpty else { throw .invalidPort("\(given.debugDescription) has no node ID before '#'") }
        if portName.isEmpty {
            if let message, let tag = message.first?.stringValue, allowedTags.contains(tag), harmlessNodePortTags.contains(tag) {
                if let i = replyPortIndex[tag], i < message.count {
                    // `["time", "perl#", "eval", "code"]` would answer into a node port: Perl runs that.
                    _ = try parse(message[i])
                }
                return PortID(node: nodeID, name: "")
            }
            throw .nodePortForbidden(given, bareNode: text.contains("#") ? nil : nodeID)
        }
        guard !portName.contains("#") else {
            throw .invalidPort("\(given.debugDescription) has more than one '#'")
        }
        return PortID(node: nodeID, name: portName)
    }

    /// The common spelling, checked byte by byte: printable ASCII without blanks or `%`, one `#`
    /// with text on both sides. Anything else takes the full path above.
    private static func plainPortID(_ s: String) -> PortID? {
        var hash: Int?
        var count = 0
        for b in s.utf8 {
            guard b > 0x20, b < 0x7F, b != UInt8(ascii: "%") else { return nil }
            if b == UInt8(ascii: "#") {
                guard hash == nil else { return nil }
                hash = count
            }
            count += 1
        }
        guard let hash, hash > 0, hash < count - 1 else { return nil }
        let utf8 = s.utf8
        let split = utf8.index(utf8.startIndex, offsetBy: hash)
        return PortID(node: String(s[..<split]), name: String(s[utf8.index(after: split)...]))
    }

    static func trimmed(_ s: String) -> String {
        var v = Substring(s)
        while let c = v.first, c.isWhitespace { v.removeFirst() }
        while let c = v.last, c.isWhitespace { v.removeLast() }
        return String(v)
    }

    /// Decodes `%XX` sequences; nil if they are malformed or not UTF-8.
    static func percentDecoded(_ s: String) -> String? {
        var out: [UInt8] = []
        var bytes = Array(s.utf8)[...]
        while let b = bytes.popFirst() {
            if b == UInt8(ascii: "%") {
                guard bytes.count >= 2, let hi = hexValue(bytes[bytes.startIndex]),
                    let lo = hexValue(bytes[bytes.startIndex + 1])
                else { return nil }
                out.append(hi << 4 | lo)
                bytes.removeFirst(2)
            } else {
                out.append(b)
            }
        }
        return String(validating: out, as: UTF8.self)
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}

extension Value {
    /// An integer given as a JSON number (an integral float counts); strings and booleans do not.
    var strictInteger: Int64? {
        switch self {
        case .int(let n): return n
        case .double(let d) where d.rounded() == d && abs(d) < 9.0e15: return Int64(d)
        default: return nil
        }
    }

    /// What kind of JSON value this is, for a problem's detail ("a string", "an object", …).
    var kindDescription: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .int, .bigInteger, .double: return "a number"
        case .string, .codePoints: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }

    /// A JSON number; strings and booleans do not count.
    var strictNumber: Double? {
        switch self {
        case .int(let n): return Double(n)
        case .double(let d): return d
        default: return nil
        }
    }
}
