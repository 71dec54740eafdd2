import BigInt
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

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

/// CBOR for AEMP values (aemp-protocol §5.2, §14), read as CBOR::XS reads it:
/// - a byte string of N bytes is N Latin-1 characters (a Perl string without the UTF-8 flag);
///   a text string is UTF-8, Perl's lax form included (surrogates, code points above U+10FFFF);
/// - integers of every width and bignums (tags 2 and 3) stay exact; other tags are skipped;
/// - arrays and maps nest at most `MeshLimits.maxDepth` deep, the packet counted.
///
/// Writes the shortest integer and float forms, and a string as a byte string when every
/// character is below U+0100 and one is not ASCII (byte-exact for what a Perl node sent as
/// bytes; the same characters to Perl either way), else as a text string.
public enum CBORCodec {
    /// Maximum nesting accepted by the decoder and written by the encoder.
    public static let maxDepth = MeshLimits.maxDepth

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

    /// Encodes `value` into `buffer`; refuses nesting deeper than `maxDepth` (leaving `buffer` as it was).
    public static func encode(_ value: Value, into buffer: inout ByteBuffer) throws(CBORCodecError) {
        let mark = buffer.writerIndex
        do {
            try write(value, depth: 0, into: &buffer)
        } catch {
            buffer.moveWriterIndex(to: mark)
            throw error
        }
    }

    /// Encodes `value` to bytes (nesting beyond `maxDepth` included: for tests and tools).
    public static func encode(_ value: Value) -> [UInt8] {
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        try? write(value, depth: -Int.max / 2, into: &buffer)
        return buffer.readBytes(length: buffer.readableBytes) ?? []
    }

    private static func write(_ value: Value, depth: Int, into buffer: inout ByteBuffer) throws(CBORCodecError) {
        switch value {
        case .null: buffer.writeInteger(UInt8(0xF6))
        case .bool(let b): buffer.writeInteger(UInt8(b ? 0xF5 : 0xF4))
        case .int(let i):
            if i >= 0 {
                writeHead(major: 0, UInt64(i), into: &buffer)
            } else {
                writeHead(major: 1, UInt64(bitPattern: -1 - i), into: &buffer)
            }
        case .bigInteger(let b):
            if b.sign == .plus {
                if let u = UInt64(exactly: b) { return writeHead(major: 0, u, into: &buffer) }
                writeHead(major: 6, 2, into: &buffer)
                writeBytes(Self.bigEndian(b.magnitude), into: &buffer)
            } else {
                let m = b.magnitude - 1  // -1 - b
                if let u = UInt64(exactly: m) { return writeHead(major: 1, u, into: &buffer) }
                // Tag 3 as CBOR::XS reads it: the magnitude |b|, not RFC 8949's -1 - b (its
                // filter is `-Math::BigInt->new("0x" . unpack "H*", ...)`, aemp-protocol §14).
                writeHead(major: 6, 3, into: &buffer)
                writeBytes(Self.bigEndian(b.magnitude), into: &buffer)
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
        case .string(let s): writeString(s, into: &buffer)
        case .codePoints(let c):
            var utf8: [UInt8] = []
            utf8.reserveCapacity(c.count)
            for cp in c { PerlUTF8.append(cp, to: &utf8) }
            writeHead(major: 3, UInt64(utf8.count), into: &buffer)
            buffer.writeBytes(utf8)
        case .array(let a):
            guard depth < maxDepth else { throw .tooDeep(limit: maxDepth) }
            writeHead(major: 4, UInt64(a.count), into: &buffer)
            for element in a { try write(element, depth: depth + 1, into: &buffer) }
        case .object(let o):
            guard depth < maxDepth else { throw .tooDeep(limit: maxDepth) }
            writeHead(major: 5, UInt64(o.count), into: &buffer)
            for (k, v) in o {
                writeString(k, into: &buffer)
                try write(v, depth: depth + 1, into: &buffer)
            }
        }
    }

    /// The magnitude's bytes, most significant first, without leading zeros (a bignum's content).
    static func bigEndian(_ n: BigUInt) -> [UInt8] {
        var out: [UInt8] = []
        for word in n.words.reversed() {
            for shift in stride(from: UInt.bitWidth - 8, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: word >> UInt(shift))) }
        }
        return Array(out.drop(while: { $0 == 0 }))
    }

    private static func writeBytes(_ data: some Collection<UInt8>, into buffer: inout ByteBuffer) {
        writeHead(major: 2, UInt64(data.count), into: &buffer)
        buffer.writeBytes(data)
    }

    /// ASCII and text beyond Latin-1 as a text string; Latin-1 text with a non-ASCII character as
    /// a byte string, the form Perl uses for its byte strings.
    private static func writeString(_ s: String, into buffer: inout ByteBuffer) {
        var s = s
        s.withUTF8 { utf8 in
            // UTF-8 lead bytes 0xC2/0xC3 start exactly the characters U+0080-U+00FF.
            if utf8.allSatisfy({ $0 < 0x80 }) || utf8.contains(where: { $0 >= 0xC4 && $0 & 0xC0 != 0x80 }) {
                writeHead(major: 3, UInt64(utf8.count), into: &buffer)
                buffer.writeBytes(utf8)
                return
            }
            var latin1: [UInt8] = []
            latin1.reserveCapacity(utf8.count)
            var i = 0
            while i < utf8.count {
                let b = utf8[i]
                if b < 0x80 {
                    latin1.append(b)
                    i += 1
                } else {
                    latin1.append((b & 0x03) << 6 | (utf8[i + 1] & 0x3F))
                    i += 2
                }
            }
            writeBytes(latin1, into: &buffer)
        }
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
        /// Tags open around the current item.
        var tags = 0

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

        mutating func bytes(_ info: UInt8, at start: Int) throws(CBORCodecError) -> UnsafeRawBufferPointer {
            let n = try length(info, at: start, minimumItemSize: 1)
            let slice = UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + n])
            offset += n
            return slice
        }

        /// A byte string: N bytes are N Latin-1 characters, as in Perl (aemp-protocol §14).
        static func latin1(_ raw: UnsafeRawBufferPointer) -> String {
            if raw.allSatisfy({ $0 < 0x80 }) { return String(decoding: raw, as: UTF8.self) }
            return String(String.UnicodeScalarView(raw.map { Unicode.Scalar($0) }))
        }

        /// A text string: UTF-8, or Perl's lax UTF-8 kept exact; malformed bytes become U+FFFD (counted).
        static func text(_ raw: UnsafeRawBufferPointer) -> Value {
            // ASCII (almost every string on the mesh) takes String's contiguous fast path.
            if raw.allSatisfy({ $0 < 0x80 }) { return .string(String(decoding: raw, as: UTF8.self)) }
            if let s = String(validating: raw, as: UTF8.self) { return .string(s) }
            if let cps = PerlUTF8.decode(raw) { return .string(codePoints: cps) }
            ValueEvents.record(.malformedTextReplaced)
            return .string(String(decoding: raw, as: UTF8.self))
        }

        /// The item at `offset`; `depth` counts the arrays and maps around it.
        mutating func item(depth: Int) throws(CBORCodecError) -> Value {
            let start = offset
            let initial = try byte()
            let major = initial >> 5
            let info = initial & 0x1F
            switch major {
            case 0:
                let n = try argument(info, at: start)
                return n <= UInt64(Int64.max) ? .int(Int64(n)) : .bigInteger(BigInt(n))
            case 1:
                let n = try argument(info, at: start)
                return n <= UInt64(Int64.max) ? .int(-1 - Int64(n)) : .bigInteger(-1 - BigInt(n))
            case 2: return .string(Self.latin1(try bytes(info, at: start)))
            case 3: return Self.text(try bytes(info, at: start))
            case 4:
                guard depth < CBORCodec.maxDepth else { throw .tooDeep(limit: CBORCodec.maxDepth) }
                let n = try length(info, at: start, minimumItemSize: 1)
                var out: [Value] = []
                out.reserveCapacity(n)
                for _ in 0..<n { out.append(try item(depth: depth + 1)) }
                return .array(out)
            case 5:
                guard depth < CBORCodec.maxDepth else { throw .tooDeep(limit: CBORCodec.maxDepth) }
                let n = try length(info, at: start, minimumItemSize: 2)
                var out: [String: Value] = [:]
                out.reserveCapacity(n)
                for _ in 0..<n {
                    let key = try item(depth: depth + 1)
                    let value = try item(depth: depth + 1)
                    if let k = Self.hashKey(key) { out.insertCountingMerges(value, forKey: k) }
                }
                return .object(out)
            case 6:
                let tag = try argument(info, at: start)
                // Tags do not nest data, but a chain of them must not exhaust the stack either.
                tags += 1
                defer { tags -= 1 }
                guard tags <= CBORCodec.maxDepth else { throw .tooDeep(limit: CBORCodec.maxDepth) }
                let tagged = try item(depth: depth)
                // Bignums as CBOR::XS reads them: tag 2 is n, tag 3 is -n (not RFC 8949's -1 - n:
                // a Perl receiver sees -n, so that is what the value is). Other tags mean nothing
                // to AEMP and are skipped (aemp-protocol §14).
                if tag == 2 || tag == 3, case .string(let s) = tagged, s.unicodeScalars.allSatisfy({ $0.value < 0x100 }) {
                    let bytes = s.unicodeScalars.map { UInt8($0.value) }
                    let magnitude = bytes.withUnsafeBytes { BigUInt($0) }
                    return .integer(tag == 2 ? BigInt(magnitude) : -BigInt(magnitude))
                }
                return tagged
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

        /// A number as Perl stringifies it: `%.15g`, `Inf`, `-Inf`, `NaN`.
        static func perlString(_ d: Double) -> String {
            if d.isNaN { return "NaN" }
            if d.isInfinite { return d < 0 ? "-Inf" : "Inf" }
            var buffer = [CChar](repeating: 0, count: 40)
            let n = withVaList([d]) { vsnprintf(&buffer, buffer.count, "%.15g", $0) }
            return String(decoding: buffer.prefix(Int(max(0, n))).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }

        /// A map key as Perl makes it a hash key: strings as they are, numbers, booleans and null
        /// stringified; arrays and maps cannot be keys, and the pair is dropped (counted).
        static func hashKey(_ key: Value) -> String? {
            switch key {
            case .string(let s): return s
            case .codePoints:
                ValueEvents.record(.hashKeyReplaced)
                return key.textReplacingInvalid
            case .int(let i): return String(i)
            case .bigInteger(let b): return b.description
            case .double(let d): return perlString(d)
            case .bool(let b): return b ? "1" : "0"  // Types::Serialiser numifies, and stringifies as its number
            case .null: return ""
            case .array, .object:
                ValueEvents.record(.hashKeyDropped)
                return nil
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

    /// Packets skipped and packets whose values were changed, for the log (`DecoderNotes`).
    public var notes = DecoderNotes()

    /// Returns the next complete packet and consumes it from `buffer`, or `nil` when more bytes are needed.
    /// A packet too deep to decode is consumed and noted in `notes`, and the next one returned.
    public mutating func next(from buffer: inout ByteBuffer) throws(CBORCodecError) -> Value? {
        while true {
            let result = buffer.withUnsafeReadableBytes { bytes -> Result<(Value?, Int)?, CBORCodecError> in
                Result { () throws(CBORCodecError) -> (Value?, Int)? in
                    guard let end = try scan(bytes) else { return nil }
                    let value: Value
                    let used: Int
                    let changedBefore = ValueEvents.readConversions.load(ordering: .relaxed)
                    defer { notes.noteChanges(since: changedBefore, packetBytes: end) }
                    do throws(CBORCodecError) {
                        (value, used) = try CBORCodec.decodePrefix(UnsafeRawBufferPointer(rebasing: bytes[0..<end]))
                    } catch {
                        if case .tooDeep = error { return (nil, end) }  // skipped below
                        throw error
                    }
                    guard used == end else { throw .malformed(reason: "packet length mismatch", offset: used) }
                    return (value, end)
                }
            }
            guard let (value, used) = try result.get() else { return nil }
            buffer.moveReaderIndex(forwardBy: used)
            if let value { return value }
            ValueEvents.record(.packetTooDeepSkipped)
            notes.skip("a \(used)-byte packet nested deeper than \(CBORCodec.maxDepth) levels")
        }
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
