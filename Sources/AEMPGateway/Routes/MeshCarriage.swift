import AEMP

/// What the mesh can carry (`MeshLimits`, aemp-protocol §14), checked at every HTTP entry point
/// that puts client JSON on the mesh, before anything of the request is sent: a value deeper than
/// Perl decodes is lost on a Perl node with every later packet of the link, and a packet over
/// `--max-packet` gets the connection cut off by a Swift peer.
extension Gateway {

    /// Refuses a message (`snd` to `port`, with `appended` after it for `cal`) that nests deeper than
    /// `MeshLimits.maxMessageDepth` (422 too_deep) or whose packet exceeds the largest packet
    /// (413 message_too_large). `bodyBytes` bounds the packet cheaply: small bodies are not encoded.
    func requireCarriable(
        message: [Value], to port: PortID, appended: [Value] = [], bodyBytes: Int, counting: Bool = true
    ) throws(Problem) {
        let limit = MeshLimits.maxMessageDepth
        if message.contains(where: { $0.nests(deeperThan: limit - 1) }) {
            if counting { metrics.refusedTooDeep.increment() }
            let depth = 1 + (message.lazy.map(\.nestingDepth).max() ?? 0)
            throw .tooDeep("the message (its array counted as one level)", depth: depth, limit: limit)
        }
        let maxPacket = configuration.node.maxPacketSize
        guard MeshLimits.mayExceed(maxPacketSize: maxPacket, inputBytes: bodyBytes) else { return }
        let size = MeshLimits.encodedSize(ofPacket: [.string(port.name)] + message + appended)
        if size > maxPacket {
            if counting { metrics.refusedTooLarge.increment() }
            throw .messageTooLarge("the message to \(port)", size: size, limit: maxPacket)
        }
    }

    /// Refuses a database value (`db_set`, `db_reg`) that nests deeper than
    /// `MeshLimits.maxDatabaseValueDepth` (it must fit `g_slave`, the deepest packet carrying it) or
    /// whose `g_upd` packet exceeds the largest packet.
    func requireCarriable(databaseValue value: Value, family: String, subkey: String, bodyBytes: Int) throws(Problem) {
        let limit = MeshLimits.maxDatabaseValueDepth
        if value.nests(deeperThan: limit) {
            metrics.refusedTooDeep.increment()
            throw .tooDeep("the value", depth: value.nestingDepth, limit: limit)
        }
        let maxPacket = configuration.node.maxPacketSize
        guard MeshLimits.mayExceed(maxPacketSize: maxPacket, inputBytes: bodyBytes) else { return }
        let size = MeshLimits.encodedSize(ofPacket: ["", "g_upd", .string(family), .object([subkey: value])])
        if size > maxPacket {
            metrics.refusedTooLarge.increment()
            throw .messageTooLarge("the value of \(family)/\(subkey)", size: size, limit: maxPacket)
        }
    }
}

/// What a request body puts on the mesh, for a body too deep for the JSON parser itself.
enum MeshInput {
    /// `POST /v1/send`: one envelope `{"message": [...]}` or an array of them.
    case send
    /// `POST /v1/call`: one envelope.
    case call
    /// `PUT /v1/db/{family}/{subkey}`: the body is the value.
    case databaseValue
    /// `POST /v1/db/{family}/reg`: `{"value": ...}`.
    case registration

    /// 422 too_deep for a body the parser refused as too deep: the depth of the message or value
    /// is the body's minus the levels wrapped around it.
    func tooDeep(body: [UInt8]) -> Problem {
        let deepest = RawJSONDepth.deepest(body)
        switch self {
        case .send:
            let around = RawJSONDepth.firstByte(body) == UInt8(ascii: "[") ? 2 : 1
            return .tooDeep("the message (its array counted as one level)", depth: deepest - around, limit: MeshLimits.maxMessageDepth)
        case .call:
            return .tooDeep("the message (its array counted as one level)", depth: deepest - 1, limit: MeshLimits.maxMessageDepth)
        case .databaseValue:
            return .tooDeep("the value", depth: deepest, limit: MeshLimits.maxDatabaseValueDepth)
        case .registration:
            return .tooDeep("the value", depth: deepest - 1, limit: MeshLimits.maxDatabaseValueDepth)
        }
    }
}

/// Nesting of raw JSON the parser refused as too deep, to answer 422 too_deep with numbers.
enum RawJSONDepth {
    /// The deepest bracket nesting of `bytes`, strings skipped (the text need not be valid JSON).
    static func deepest(_ bytes: [UInt8]) -> Int {
        var depth = 0, deepest = 0, inString = false, escaped = false
        for b in bytes {
            if inString {
                if escaped { escaped = false } else if b == UInt8(ascii: "\\") { escaped = true } else if b == UInt8(ascii: "\"") { inString = false }
                continue
            }
            switch b {
            case UInt8(ascii: "\""): inString = true
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                depth += 1
                deepest = max(deepest, depth)
            case UInt8(ascii: "]"), UInt8(ascii: "}"): depth -= 1
            default: break
            }
        }
        return deepest
    }

    /// The first byte that is not JSON whitespace.
    static func firstByte(_ bytes: [UInt8]) -> UInt8? {
        bytes.first { ![0x20, 0x09, 0x0A, 0x0D].contains($0) }
    }
}
