import CJansson
import NIOCore

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
    /// A value JSON cannot carry (NaN or an infinity).
    case unencodable(String)
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
        }
    }
}

/// JSON for AEMP values, built on jansson (aemp-protocol §5.1).
public enum JSONCodec {
    /// Decodes one complete JSON text (any value at top level).
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(JSONCodecError) -> Value {
        var error = json_error_t()
        let flags = JSON_DECODE_ANY | JSON_ALLOW_NUL
        guard let base = bytes.baseAddress?.assumingMemoryBound(to: CChar.self),
            let root = json_loadb(base, bytes.count, Int(flags), &error)
        else {
            if bytes.isEmpty {
                throw .syntax(message: "empty input", line: 1, column: 0, position: 0)
            }
            throw syntaxError(error)
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

    /// Encodes a value as compact UTF-8 JSON into `buffer`.
    public static func encode(_ value: Value, into buffer: inout ByteBuffer) throws(JSONCodecError) {
        let root = try makeJSON(value)
        defer { json_decref(root) }
        let flags = JSON_COMPACT | JSON_ENCODE_ANY
        guard let text = json_dumps(root, Int(flags)) else {
            throw .unencodable("jansson could not serialise the value")
        }
        defer { free(text) }
        let length = strlen(text)
        text.withMemoryRebound(to: UInt8.self, capacity: length) { p in
            _ = buffer.writeBytes(UnsafeRawBufferPointer(start: p, count: length))
        }
    }

    /// Encodes a value as compact UTF-8 JSON bytes.
    public static func encodeBytes(_ value: Value) throws(JSONCodecError) -> [UInt8] {
        let root = try makeJSON(value)
        defer { json_decref(root) }
        guard let text = json_dumps(root, Int(JSON_COMPACT | JSON_ENCODE_ANY)) else {
            throw .unencodable("jansson could not serialise the value")
        }
        defer { free(text) }
        return text.withMemoryRebound(to: UInt8.self, capacity: strlen(text)) {
            Array(UnsafeBufferPointer(start: $0, count: strlen(text)))
        }
    }

    /// Encodes a value as a compact JSON string.
    public static func encodeString(_ value: Value) throws(JSONCodecError) -> String {
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        try encode(value, into: &buffer)
        return buffer.readString(length: buffer.readableBytes) ?? ""
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
                out[key] = value(of: json_object_iter_value(it))
                iter = json_object_iter_next(json, it)
            }
            return .object(out)
        default:
            return .null
        }
    }

    private static func makeString(_ s: String) -> UnsafeMutablePointer<json_t> {
        var s = s
        return s.withUTF8 { utf8 in
            utf8.withMemoryRebound(to: CChar.self) { json_stringn_nocheck($0.baseAddress, $0.count) }
        }
    }

    private static func makeJSON(_ value: Value) throws(JSONCodecError) -> UnsafeMutablePointer<json_t> {
        switch value {
        case .null: return json_null()
        case .bool(let b): return b ? json_true() : json_false()
        case .int(let i): return json_integer(json_int_t(i))
        case .double(let d):
            guard d.isFinite, let r = json_real(d) else { throw .unencodable("\(d) is not a finite number") }
            return r
        case .string(let s): return makeString(s)
        case .bigInteger(let b): throw .unencodable("\(b) is beyond 64 bits")
        case .codePoints: return makeString(value.textReplacingInvalid ?? "")
        case .array(let a):
            let arr = json_array()!
            for element in a {
                let child: UnsafeMutablePointer<json_t>
                do { child = try makeJSON(element) } catch {
                    json_decref(arr)
                    throw error
                }
                json_array_append_new(arr, child)
            }
            return arr
        case .object(let o):
            let obj = json_object()!
            for (key, element) in o {
                let child: UnsafeMutablePointer<json_t>
                do { child = try makeJSON(element) } catch {
                    json_decref(obj)
                    throw error
                }
                var k = key
                k.withUTF8 { utf8 in
                    utf8.withMemoryRebound(to: CChar.self) {
                        _ = json_object_setn_new_nocheck(obj, $0.baseAddress, $0.count, child)
                    }
                }
            }
            return obj
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
    private var inString = false
    private var escaped = false

    /// A decoder that refuses packets longer than `maxPacketSize` bytes.
    public init(maxPacketSize: Int = 64 << 20) {
        self.maxPacketSize = maxPacketSize
    }

    /// Returns the next complete packet and consumes it from `buffer`, or `nil` when more bytes are needed.
    /// Whitespace between packets is consumed as it arrives.
    public mutating func next(from buffer: inout ByteBuffer) throws(JSONCodecError) -> Value? {
        let result = buffer.withUnsafeReadableBytes { bytes -> Result<(Value?, Int), JSONCodecError> in
            Result { () throws(JSONCodecError) -> (Value?, Int) in try scan(bytes) }
        }
        let (value, consumed) = try result.get()
        buffer.moveReaderIndex(forwardBy: consumed)
        return value
    }

    /// The packet completed by `bytes` (if any) and how many bytes to consume.
    private mutating func scan(_ bytes: UnsafeRawBufferPointer) throws(JSONCodecError) -> (Value?, Int) {
        var i = scanned
        let n = bytes.count
        if depth == 0 {
            // Skip whitespace between texts; the next text must be an array.
            while i < n, bytes[i] == 0x20 || bytes[i] == 0x0A || bytes[i] == 0x0D || bytes[i] == 0x09 { i += 1 }
            if i == n {
                // Only whitespace so far: consume it, so a peer sending nothing but whitespace cannot
                // grow the buffer without bound.
                scanned = 0
                return (nil, n)
            }
            guard bytes[i] == UInt8(ascii: "[") else { throw .notAnArray(found: bytes[i], offset: i) }
            packetStart = i
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
            case UInt8(ascii: "["), UInt8(ascii: "{"): depth += 1
            case UInt8(ascii: "]"), UInt8(ascii: "}"):
                depth -= 1
                if depth == 0 {
                    scanned = 0
                    // The limit holds however the packet arrived, whole or in pieces.
                    if i - packetStart > maxPacketSize { throw .packetTooLarge(limit: maxPacketSize) }
                    let text = UnsafeRawBufferPointer(rebasing: bytes[packetStart..<i])
                    return (try JSONCodec.decode(text), i)
                }
            default: break
            }
        }
        if i - packetStart > maxPacketSize { throw .packetTooLarge(limit: maxPacketSize) }
        scanned = i
        return (nil, 0)
    }
}
