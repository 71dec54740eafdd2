import NIOCore

/// Why CBOR could not be decoded or encoded.
public enum CBORCodecError: Error, Equatable, Sendable {
    /// The bytes end inside an item; more input is needed (only thrown by the one-shot decoder).
    case truncated
    /// A byte that starts no valid item, or an invalid additional-information value, at `offset`.
    case malformed(reason: String, offset: Int)
    /// Nesting deeper than the decoder allows.
    case tooDeep(limit: Int)
    /// A packet grew beyond the configured limit before it was complete.
    case packetTooLarge(limit: Int)
    /// A packet in the stream was not an array (aemp-protocol §5.2).
    case notAnArray(offset: Int)
    /// A map key that is not a string.
    case nonStringKey(offset: Int)
}

/// CBOR for AEMP values (aemp-protocol §5.2): definite lengths, byte and text strings both
/// decode to strings, float16/32/64, integers of all widths; tags are skipped. Encodes text
/// strings and the shortest integer and float forms.
public enum CBORCodec {
    /// Maximum nesting accepted by the decoder.
    public static let maxDepth = 512

    /// Decodes exactly one item from the start of `bytes`; returns it and the number of bytes used.
    public static func decodePrefix(_ bytes: UnsafeRawBufferPointer) throws(CBORCodecError) -> (Value, Int) {
        var reader = Reader(bytes: bytes)
        let v = try reader.item(depth: 0)
        return (v, reader.offset)
    }

    /// Decodes one complete item that must fill `bytes`.
    public static func decode<Bytes: Collection<UInt8>>(_ bytes: Bytes) throws(CBORCodecError) -> Value {
        let copy = Array(bytes)
        let r = copy.withUnsafeBytes { buf in
            Result { () throws(CBORCodecError) -> Value in
                let (v, used) = try decodePrefix(buf)
                guard used == buf.count else { throw .malformed(reason: "trailing bytes after item", offset: used) }
                return v
            }
        }
        return try r.get()
    }

    /// Encodes `value` into `buffer`.
    public static func encode(_ value: Value, into buffer: inout ByteBuffer) {
        switch value {
        case .null: buffer.writeInteger(UInt8(0xF6))
        case .bool(let b): buffer.writeInteger(UInt8(b ? 0xF5 : 0xF4))
        case .int(let i):
            if i >= 0 {
                writeHead(major: 0, UInt64(i), into: &buffer)
            } else {
                writeHead(major: 1, UInt64(bitPattern: -1 - i), into: &buffer)
            }
        case .double(let d):
            let f = Float(d)
            if Double(f) == d || d.isNaN {
                buffer.writeInteger(UInt8(0xFA))
                buffer.writeInteger(f.bitPattern)
            } else {
                buffer.writeInteger(UInt8(0xFB))
                buffer.writeInteger(d.bitPattern)
            }
        case .string(let s):
            var s = s
            s.withUTF8 { utf8 in
                writeHead(major: 3, UInt64(utf8.count), into: &buffer)
                buffer.writeBytes(utf8)
            }
        case .bigInteger(let b):
            encode(.double(Double(b)), into: &buffer)
        case .codePoints:
            encode(.string(value.textReplacingInvalid ?? ""), into: &buffer)
        case .array(let a):
            writeHead(major: 4, UInt64(a.count), into: &buffer)
            for element in a { encode(element, into: &buffer) }
        case .object(let o):
            writeHead(major: 5, UInt64(o.count), into: &buffer)
            for (k, v) in o {
                encode(.string(k), into: &buffer)
                encode(v, into: &buffer)
            }
        }
    }

    /// Encodes `value` to bytes.
    public static func encode(_ value: Value) -> [UInt8] {
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        encode(value, into: &buffer)
        return buffer.readBytes(length: buffer.readableBytes) ?? []
    }

    private static func writeHead(major: UInt8, _ n: UInt64, into buffer: inout ByteBuffer) {
        let m = major << 5
        switch n {
        case 0..<24: buffer.writeInteger(m | UInt8(n))
        case 24...0xFF:
            buffer.writeInteger(m | 24)
            buffer.writeInteger(UInt8(n))
        case 0x100...0xFFFF:
            buffer.writeInteger(m | 25)
            buffer.writeInteger(UInt16(n))
        case 0x1_0000...0xFFFF_FFFF:
            buffer.writeInteger(m | 26)
            buffer.writeInteger(UInt32(n))
        default:
            buffer.writeInteger(m | 27)
            buffer.writeInteger(n)
        }
    }

    private struct Reader {
        let bytes: UnsafeRawBufferPointer
        var offset = 0

        mutating func byte() throws(CBORCodecError) -> UInt8 {
            guard offset < bytes.count else { throw .truncated }
            defer { offset += 1 }
            return bytes[offset]
        }

        mutating func bigEndian(_ count: Int) throws(CBORCodecError) -> UInt64 {
            guard bytes.count - offset >= count else { throw .truncated }
            var v: UInt64 = 0
            for k in 0..<count { v = v << 8 | UInt64(bytes[offset + k]) }
            offset += count
            return v
        }

        /// The argument of a head whose additional information is `info`.
        mutating func argument(_ info: UInt8, at start: Int) throws(CBORCodecError) -> UInt64 {
            switch info {
            case 0..<24: return UInt64(info)
            case 24: return try bigEndian(1)
            case 25: return try bigEndian(2)
            case 26: return try bigEndian(4)
            case 27: return try bigEndian(8)
            case 31: throw .malformed(reason: "indefinite length is not supported", offset: start)
            default: throw .malformed(reason: "reserved additional information \(info)", offset: start)
            }
        }

        mutating func length(_ info: UInt8, at start: Int, minimumItemSize: Int) throws(CBORCodecError) -> Int {
            let n = try argument(info, at: start)
            // A declared length that cannot fit in what is left is either truncated input or garbage;
            // both need more bytes, and the stream decoder's size limit bounds the wait.
            let remaining = UInt64(bytes.count - offset)
            guard n <= remaining / UInt64(minimumItemSize) else { throw .truncated }
            return Int(n)
        }

        mutating func text(_ info: UInt8, at start: Int, isText: Bool) throws(CBORCodecError) -> String {
            let n = try length(info, at: start, minimumItemSize: 1)
            let slice = UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + n])
            offset += n
            if isText {
                return String(decoding: slice, as: UTF8.self)
            }
            // Perl byte strings: UTF-8 if valid, else Latin-1 (aemp-protocol §5.2).
            if let s = String(validating: slice, as: UTF8.self) { return s }
            return String(slice.map { Character(Unicode.Scalar($0)) })
        }

        mutating func item(depth: Int) throws(CBORCodecError) -> Value {
            guard depth <= CBORCodec.maxDepth else { throw .tooDeep(limit: CBORCodec.maxDepth) }
            let start = offset
            let initial = try byte()
            let major = initial >> 5
            let info = initial & 0x1F
            switch major {
            case 0:
                let n = try argument(info, at: start)
                return n <= UInt64(Int64.max) ? .int(Int64(n)) : .double(Double(n))
            case 1:
                let n = try argument(info, at: start)
                return n <= UInt64(Int64.max) ? .int(-1 - Int64(n)) : .double(-1 - Double(n))
            case 2: return .string(try text(info, at: start, isText: false))
            case 3: return .string(try text(info, at: start, isText: true))
            case 4:
                let n = try length(info, at: start, minimumItemSize: 1)
                var out: [Value] = []
                out.reserveCapacity(n)
                for _ in 0..<n { out.append(try item(depth: depth + 1)) }
                return .array(out)
            case 5:
                let n = try length(info, at: start, minimumItemSize: 2)
                var out: [String: Value] = [:]
                out.reserveCapacity(n)
                for _ in 0..<n {
                    let keyOffset = offset
                    let key = try item(depth: depth + 1)
                    let value = try item(depth: depth + 1)
                    switch key {
                    case .string(let s): out[s] = value
                    case .int(let i): out[String(i)] = value  // Perl stringifies hash keys
                    default: throw .nonStringKey(offset: keyOffset)
                    }
                }
                return .object(out)
            case 6:
                _ = try argument(info, at: start)  // tag number: not meaningful to AEMP, skip it
                return try item(depth: depth + 1)
            default:  // major 7
                switch info {
                case 20: return .bool(false)
                case 21: return .bool(true)
                case 22, 23: return .null
                case 25:
                    let bits = UInt16(try bigEndian(2))
                    return .double(Double(Float16Bits.decode(bits)))
                case 26: return .double(Double(Float(bitPattern: UInt32(try bigEndian(4)))))
                case 27: return .double(Double(bitPattern: try bigEndian(8)))
                case 0..<20: return .null  // unassigned simple values
                case 24:
                    _ = try byte()
                    return .null
                default:
                    throw .malformed(reason: "unexpected simple/break byte 0x\(String(initial, radix: 16))", offset: start)
                }
            }
        }
    }
}

/// IEEE 754 half precision, decoded by hand so it works where `Float16` is unavailable.
enum Float16Bits {
    static func decode(_ h: UInt16) -> Float {
        let sign: Float = (h & 0x8000) != 0 ? -1 : 1
        let exponent = Int((h >> 10) & 0x1F)
        let mantissa = Float(h & 0x3FF)
        switch exponent {
        case 0: return sign * mantissa * Float(sign: .plus, exponent: -24, significand: 1)
        case 31: return mantissa == 0 ? sign * .infinity : .nan
        default: return sign * (1 + mantissa / 1024) * Float(sign: .plus, exponent: exponent - 15, significand: 1)
        }
    }
}

/// Pulls concatenated CBOR arrays out of a byte stream, keeping the partial rest (aemp-protocol §5.2).
///
/// A resumable structural scan finds where each packet ends (each byte is looked at once,
/// however the stream is split); only complete packets are decoded.
public struct CBORStreamDecoder: Sendable {
    /// Largest packet accepted, in bytes.
    public let maxPacketSize: Int
    /// Offset (from the reader index) up to which the current packet has been scanned.
    private var scanned = 0
    /// Items still expected by each open container, innermost last.
    private var open: [UInt64] = []

    /// A decoder that refuses packets longer than `maxPacketSize` bytes.
    public init(maxPacketSize: Int = 64 << 20) {
        self.maxPacketSize = maxPacketSize
    }

    /// Returns the next complete packet and consumes it from `buffer`, or `nil` when more bytes are needed.
    public mutating func next(from buffer: inout ByteBuffer) throws(CBORCodecError) -> Value? {
        let result = buffer.withUnsafeReadableBytes { bytes -> Result<(Value, Int)?, CBORCodecError> in
            Result { () throws(CBORCodecError) -> (Value, Int)? in
                guard let end = try scan(bytes) else { return nil }
                let (value, used) = try CBORCodec.decodePrefix(UnsafeRawBufferPointer(rebasing: bytes[0..<end]))
                guard used == end else { throw .malformed(reason: "packet length mismatch", offset: used) }
                return (value, end)
            }
        }
        guard let (value, used) = try result.get() else { return nil }
        buffer.moveReaderIndex(forwardBy: used)
        return value
    }

    /// Advances the scan; returns the packet's length once it is complete.
    private mutating func scan(_ bytes: UnsafeRawBufferPointer) throws(CBORCodecError) -> Int? {
        let n = bytes.count
        var pos = scanned
        defer { scanned = pos }
        if pos == 0 {
            guard n > 0 else { return nil }
            guard bytes[0] >> 5 == 4 else { throw .notAnArray(offset: 0) }
        }
        while pos < n {
            let initial = bytes[pos]
            let major = initial >> 5
            let info = initial & 0x1F
            let argBytes: Int
            switch info {
            case 0..<24: argBytes = 0
            case 24: argBytes = 1
            case 25: argBytes = 2
            case 26: argBytes = 4
            case 27: argBytes = 8
            default:
                throw .malformed(reason: "indefinite length or reserved additional information \(info)", offset: pos)
            }
            guard n - pos > argBytes else { break }
            var arg = UInt64(info)
            if argBytes > 0 {
                arg = 0
                for k in 1...argBytes { arg = arg << 8 | UInt64(bytes[pos + k]) }
            }
            var itemEnd = pos + 1 + argBytes
            var completes = true
            switch major {
            case 2, 3:
                guard arg <= UInt64(maxPacketSize) else { throw .packetTooLarge(limit: maxPacketSize) }
                itemEnd += Int(arg)
                guard itemEnd <= n else {
                    if itemEnd > maxPacketSize { throw .packetTooLarge(limit: maxPacketSize) }
                    return nil
                }
            case 4, 5:
                let count = major == 4 ? arg : arg.multipliedReportingOverflow(by: 2).partialValue
                guard arg <= UInt64(maxPacketSize) else { throw .packetTooLarge(limit: maxPacketSize) }
                if count > 0 {
                    open.append(count)
                    completes = false
                }
            case 6:
                completes = false  // a tag wraps the next item
            default:
                break
            }
            pos = itemEnd
            if pos > maxPacketSize { throw .packetTooLarge(limit: maxPacketSize) }
            if completes {
                // Close every container this item finished.
                while let last = open.last {
                    if last > 1 {
                        open[open.count - 1] = last - 1
                        break
                    }
                    open.removeLast()
                }
                if open.isEmpty {
                    let end = pos
                    pos = 0
                    return end
                }
            }
        }
        return nil
    }
}
