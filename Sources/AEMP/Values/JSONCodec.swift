import CJansson
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why JSON could not be decoded or encoded.
public enum JSONCodecError: Error, Equatable, Sendable {
    /// jansson rejected the text; `line`/`column`/`position` locate the problem.
    case syntax(message: String, line: Int, column: Int, position: Int)
    /// A packet in the stream did not start with `[` (aemp-protocol §5.1: every packet is an array).
    case notAnArray(found: UInt8, offset: Int)
    /// A packet grew beyond the configured limit before it was complete.
    case packetTooLarge(limit: Int)
    /// A value JSON cannot carry.
    case unencodable(String)
    /// Containers nested deeper than the limit (Perl's 512 on the mesh, jansson's 2048 over HTTP).
    case tooDeep(limit: Int)
}

extension JSONCodecError: CustomStringConvertible {
    public var description: String {
        switch self {
        case .syntax(let message, let line, let column, let position):
            return "\(message) (line \(line), column \(column), byte \(position))"
        case .notAnArray(let found, let offset):
            return "a packet must be a JSON array, found byte 0x\(String(found, radix: 16)) at offset \(offset)"
        case .packetTooLarge(let limit):
            return "packet larger than \(limit) bytes"
        case .unencodable(let why):
            return why
        case .tooDeep(let limit):
            return "nested deeper than the maximum depth of \(limit) levels"
        }
    }
}

/// JSON for AEMP values (aemp-protocol §5.1, §14): read with jansson, and with `JSONReader` for
/// the legal texts jansson refuses (integers beyond 64 bits, lone surrogates, and on the mesh
/// JSON::XS's `inf`/`nan` and lax UTF-8); written with `JSONWriter`.
public enum JSONCodec {
    /// jansson's own nesting limit (JSON_PARSER_MAX_DEPTH); HTTP input deeper than it is refused.
    public static let janssonMaxDepth = 2048

    /// Decodes one complete JSON text (any value at top level) from an HTTP client or a file:
    /// RFC 8259 JSON, with integers of any size kept exact and `\uD800`-style escapes kept.
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(JSONCodecError) -> Value {
        try decode(bytes, dialect: .http, maxDepth: janssonMaxDepth)
    }

    /// Decodes one complete JSON text in `dialect`, nested at most `maxDepth` deep. The second
    /// reader (for what jansson refuses) recurses, so it stops at `readerMaxDepth`, by default
    /// what the mesh carries: give more only on a thread with a big stack.
    public static func decode(
        _ bytes: UnsafeRawBufferPointer, dialect: JSONDialect, maxDepth: Int, readerMaxDepth: Int? = nil
    ) throws(JSONCodecError) -> Value {
        var janssonError = json_error_t()
        let flags = JSON_DECODE_ANY | JSON_ALLOW_NUL
        guard let base = bytes.baseAddress?.assumingMemoryBound(to: CChar.self),
            let root = json_loadb(base, bytes.count, Int(flags), &janssonError)
        else {
            if bytes.isEmpty {
                throw .syntax(message: "empty input", line: 1, column: 0, position: 0)
            }
            let janssonMessage = syntaxError(janssonError)
            if case .syntax(let message, _, _, _) = janssonMessage, message.contains("maximum parsing depth") {
                throw .tooDeep(limit: min(maxDepth, janssonMaxDepth))
            }
            // Legal JSON jansson does not take (aemp-protocol §14), or really malformed: the
            // second reader tells which, and jansson's message stays the one reported. It
            // recurses, so it goes no deeper than the mesh carries (a small thread stack, a
            // sanitizer's big frames); HTTP input beyond that is refused on the mesh anyway.
            do {
                return try JSONReader.decode(bytes, dialect: dialect, maxDepth: min(maxDepth, readerMaxDepth ?? MeshLimits.maxDepth))
            } catch {
                if case .tooDeep(let limit) = error { throw .tooDeep(limit: limit) }
                throw janssonMessage
            }
        }
        defer { json_decref(root) }
        return value(of: root)
    }

    /// Decodes one complete JSON text held in bytes.
    public static func decode<Bytes: Collection<UInt8>>(_ bytes: Bytes) throws(JSONCodecError) -> Value {
        if let r = bytes.withContiguousStorageIfAvailable({ buf in
            Result { () throws(JSONCodecError) -> Value in try decode(UnsafeRawBufferPointer(buf)) }
        }) {
            return try r.get()
        }
        let copy = Array(bytes)
        let r = copy.withUnsafeBytes { buf in
            Result { () throws(JSONCodecError) -> Value in try decode(buf) }
        }
        return try r.get()
    }

    /// Decodes one complete JSON text.
    public static func decode(_ text: String) throws(JSONCodecError) -> Value {
        try decode(Array(text.utf8))
    }

    /// Encodes a value as compact JSON for a Perl peer into `buffer` (aemp-protocol §14): NaN and
    /// ±Inf become strings (counted in `ValueEvents`), nesting beyond `MeshLimits.maxDepth` is refused.
    public static func encode(_ value: Value, into buffer: inout ByteBuffer) throws(JSONCodecError) {
        var conversions = JSONConversions()
        do {
            try JSONWriter.write(value, dialect: .perl, into: &buffer, conversions: &conversions)
        } catch {
            switch error {
            case .tooDeep(let limit): throw .tooDeep(limit: limit)
            }
        }
        ValueEvents.record(conversions)
    }

    /// Encodes a value as compact JSON for HTTP clients and logs (see `JSONWriter` for what is
    /// converted; conversions are counted in `ValueEvents`). Never fails.
    public static func encodeBytes(_ value: Value) -> [UInt8] {
        var conversions = JSONConversions()
        let bytes = JSONWriter.httpBytes(value, conversions: &conversions)
        ValueEvents.record(conversions)
        return bytes
    }

    /// Encodes a value as a compact JSON string, as `encodeBytes`.
    public static func encodeString(_ value: Value) -> String {
        String(decoding: encodeBytes(value), as: UTF8.self)
    }

    // MARK: - jansson <-> Value

    private static func syntaxError(_ error: json_error_t) -> JSONCodecError {
        var e = error
        let message = withUnsafeBytes(of: &e.text) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        return .syntax(message: message, line: Int(error.line), column: Int(error.column), position: Int(error.position))
    }

    private static func value(of json: UnsafeMutablePointer<json_t>) -> Value {
        switch json.pointee.type {
        case JSON_NULL: return .null
        case JSON_TRUE: return .bool(true)
        case JSON_FALSE: return .bool(false)
        case JSON_INTEGER: return .int(Int64(json_integer_value(json)))
        case JSON_REAL: return .double(json_real_value(json))
        case JSON_STRING:
            let length = json_string_length(json)
            guard let p = json_string_value(json) else { return .string("") }
            return p.withMemoryRebound(to: UInt8.self, capacity: length) {
                .string(String(decoding: UnsafeBufferPointer(start: $0, count: length), as: UTF8.self))
            }
        case JSON_ARRAY:
            let n = json_array_size(json)
            var out: [Value] = []
            out.reserveCapacity(n)
            for i in 0..<n {
                out.append(value(of: json_array_get(json, i)))
            }
            return .array(out)
        case JSON_OBJECT:
            var out: [String: Value] = [:]
            out.reserveCapacity(json_object_size(json))
            var iter = json_object_iter(json)
            while let it = iter {
                let keyLength = json_object_iter_key_len(it)
                let key = json_object_iter_key(it).withMemoryRebound(to: UInt8.self, capacity: keyLength) {
                    String(decoding: UnsafeBufferPointer(start: $0, count: keyLength), as: UTF8.self)
                }
                out.insertCountingMerges(value(of: json_object_iter_value(it)), forKey: key)
                iter = json_object_iter_next(json, it)
            }
            return .object(out)
        default:
            return .null
        }
    }
}

/// Pulls concatenated JSON arrays out of a byte stream, keeping the partial rest
/// (aemp-protocol §5.1). Scans each byte once, however the stream is split.
public struct JSONStreamDecoder: Sendable {
    /// Largest packet accepted, in bytes.
    public let maxPacketSize: Int
    private var scanned = 0
    private var packetStart = 0
    private var depth = 0
    private var deepest = 0
    private var inString = false
    private var escaped = false

    /// Packets skipped and packets whose values were changed, for the log (`DecoderNotes`).
    public var notes = DecoderNotes()

    /// A decoder that refuses packets longer than `maxPacketSize` bytes.
    public init(maxPacketSize: Int = 64 << 20) {
        self.maxPacketSize = maxPacketSize
    }

    /// Returns the next complete packet and consumes it from `buffer`, or `nil` when more bytes are needed.
    /// Whitespace between packets is consumed as it arrives; a packet too deep to decode is
    /// consumed and noted in `notes`, and the next one returned.
    public mutating func next(from buffer: inout ByteBuffer) throws(JSONCodecError) -> Value? {
        while true {
            let result = buffer.withUnsafeReadableBytes { bytes -> Result<(Value?, Int, Bool), JSONCodecError> in
                Result { () throws(JSONCodecError) -> (Value?, Int, Bool) in try scan(bytes) }
            }
            let (value, consumed, tooDeep) = try result.get()
            buffer.moveReaderIndex(forwardBy: consumed)
            guard tooDeep else { return value }
            ValueEvents.record(.packetTooDeepSkipped)
            notes.skip("a \(consumed)-byte packet nested deeper than \(MeshLimits.maxDepth) levels")
        }
    }

    /// The packet completed by `bytes` (if any), how many bytes to consume, and whether the packet
    /// was too deep to decode.
    private mutating func scan(_ bytes: UnsafeRawBufferPointer) throws(JSONCodecError) -> (Value?, Int, Bool) {
        var i = scanned
        let n = bytes.count
        if depth == 0 {
            // Skip whitespace between texts; the next text must be an array.
            while i < n, bytes[i] == 0x20 || bytes[i] == 0x0A || bytes[i] == 0x0D || bytes[i] == 0x09 { i += 1 }
            if i == n {
                // Only whitespace so far: consume it, so a peer sending nothing but whitespace cannot
                // grow the buffer without bound.
                scanned = 0
                return (nil, n, false)
            }
            guard bytes[i] == UInt8(ascii: "[") else { throw .notAnArray(found: bytes[i], offset: i) }
            packetStart = i
            deepest = 0
        }
        while i < n {
            let b = bytes[i]
            i += 1
            if inString {
                if escaped {
                    escaped = false
                } else if b == UInt8(ascii: "\\") {
                    escaped = true
                } else if b == UInt8(ascii: "\"") {
                    inString = false
                }
                continue
            }
            switch b {
            case UInt8(ascii: "\""): inString = true
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                depth += 1
                if depth > deepest { deepest = depth }
            case UInt8(ascii: "]"), UInt8(ascii: "}"):
                depth -= 1
                if depth == 0 {
                    scanned = 0
                    // The limit holds however the packet arrived, whole or in pieces.
                    if i - packetStart > maxPacketSize { throw .packetTooLarge(limit: maxPacketSize) }
                    if deepest > MeshLimits.maxDepth { return (nil, i, true) }
                    let text = UnsafeRawBufferPointer(rebasing: bytes[packetStart..<i])
                    let changedBefore = ValueEvents.readConversions.load(ordering: .relaxed)
                    let value = try JSONCodec.decode(text, dialect: .perl, maxDepth: MeshLimits.maxDepth)
                    notes.noteChanges(since: changedBefore, packetBytes: text.count)
                    return (value, i, false)
                }
            default: break
            }
        }
        if i - packetStart > maxPacketSize { throw .packetTooLarge(limit: maxPacketSize) }
        scanned = i
        return (nil, 0, false)
    }
}
