import NIOCore

/// Who reads the JSON a `JSONWriter` writes: a Perl node on the mesh or an HTTP client.
public enum JSONDialect: Sendable {
    /// JSON::XS on a Perl node (aemp-protocol §14): strings are Perl characters written in Perl's
    /// lax UTF-8 (lone surrogates and code points above U+10FFFF included), and nesting deeper
    /// than `MeshLimits.maxDepth` is refused, since it would wedge the link.
    case perl
    /// RFC 8259 JSON for HTTP clients: code points Unicode cannot hold become U+FFFD.
    case http
}

/// What a `JSONWriter` had to convert because JSON cannot say it, counted per kind.
public struct JSONConversions: Sendable, Equatable {
    /// NaN and ±Inf, written as the strings `"NaN"`, `"Infinity"`, `"-Infinity"`.
    public var nonFinite = 0
    /// Lone surrogates and code points above U+10FFFF, written as U+FFFD (HTTP only).
    public var invalidCodePoints = 0

    public init() {}

    /// Whether anything was converted.
    public var isEmpty: Bool { nonFinite == 0 && invalidCodePoints == 0 }
}

/// Why a value could not be written for the mesh.
public enum JSONWriterError: Error, Equatable, Sendable {
    /// Nesting deeper than `MeshLimits.maxDepth` (the packet array counted).
    case tooDeep(limit: Int)
}

/// Writes values as compact JSON, converting per value what JSON cannot carry instead of failing
/// the whole document (aemp-protocol §14):
/// - NaN and ±Inf become the strings `"NaN"`, `"Infinity"` and `"-Infinity"` (the spelling of
///   protobuf's JSON mapping; Perl reads them back as the same numbers in numeric context);
/// - integers of any size are written exactly;
/// - `.codePoints` strings keep their code points for Perl and become U+FFFD for HTTP;
/// - for HTTP, object members are sorted by key (the same value always writes the same bytes).
public enum JSONWriter {
    /// Appends `value` as JSON to `buffer`. Throws only for `.perl` nesting beyond the mesh limit,
    /// leaving `buffer` as it was.
    public static func write(
        _ value: Value, dialect: JSONDialect, into buffer: inout ByteBuffer, conversions: inout JSONConversions
    ) throws(JSONWriterError) {
        var out: [UInt8] = []
        out.reserveCapacity(128)
        var writer = Writer(dialect: dialect, out: out, conversions: conversions)
        try writer.value(value, depth: 0)
        conversions = writer.conversions
        buffer.writeBytes(writer.out)
    }

    /// `value` as JSON bytes for an HTTP client; never fails.
    public static func httpBytes(_ value: Value, conversions: inout JSONConversions) -> [UInt8] {
        var writer = Writer(dialect: .http, out: [], conversions: conversions)
        writer.out.reserveCapacity(128)
        // The HTTP dialect has no depth limit, so this cannot throw.
        try? writer.value(value, depth: 0)
        conversions = writer.conversions
        return writer.out
    }

    private struct Writer {
        let dialect: JSONDialect
        var out: [UInt8]
        var conversions: JSONConversions

        mutating func value(_ v: Value, depth: Int) throws(JSONWriterError) {
            switch v {
            case .null: append("null")
            case .bool(let b): append(b ? "true" : "false")
            case .int(let i): append(String(i))
            case .bigInteger(let b): append(b.description)
            case .double(let d): double(d)
            case .string(let s): string(s)
            case .codePoints(let c): codePoints(c)
            case .array(let a):
                try enter(depth)
                out.append(UInt8(ascii: "["))
                var first = true
                for element in a {
                    if !first { out.append(UInt8(ascii: ",")) }
                    first = false
                    try value(element, depth: depth + 1)
                }
                out.append(UInt8(ascii: "]"))
            case .object(let o):
                try enter(depth)
                out.append(UInt8(ascii: "{"))
                var first = true
                if dialect == .http && o.count > 1 {
                    // HTTP clients get the members sorted by key: a dictionary's order depends on
                    // the process's hash seed, and the same value must write the same bytes.
                    for (key, element) in o.sorted(by: { $0.key < $1.key }) { try member(key, element, &first, depth: depth) }
                } else {
                    for (key, element) in o { try member(key, element, &first, depth: depth) }
                }
                out.append(UInt8(ascii: "}"))
            }
        }

        /// One `"key":value` of an object at `depth`, after a comma unless it is the `first`.
        mutating func member(_ key: String, _ element: Value, _ first: inout Bool, depth: Int) throws(JSONWriterError) {
            if !first { out.append(UInt8(ascii: ",")) }
            first = false
            string(key)
            out.append(UInt8(ascii: ":"))
            try value(element, depth: depth + 1)
        }

        /// A container at `depth` (0 = the outermost) opens nesting level `depth + 1`.
        func enter(_ depth: Int) throws(JSONWriterError) {
            if dialect == .perl, depth >= MeshLimits.maxDepth { throw .tooDeep(limit: MeshLimits.maxDepth) }
        }

        mutating func append(_ s: String) {
            out.append(contentsOf: s.utf8)
        }

        mutating func double(_ d: Double) {
            guard d.isFinite else {
                conversions.nonFinite += 1
                append(d.isNaN ? "\"NaN\"" : d < 0 ? "\"-Infinity\"" : "\"Infinity\"")
                return
            }
            // Swift's shortest round-trip form is valid JSON ("0.1", "1e+300", "-0.0", "5e-324").
            append(d.description)
        }

        mutating func string(_ s: String) {
            out.append(UInt8(ascii: "\""))
            var s = s
            s.withUTF8 { utf8 in
                var runStart = 0
                for (i, b) in utf8.enumerated() where b < 0x20 || b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") {
                    out.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart..<i]))
                    escape(b)
                    runStart = i + 1
                }
                out.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart...]))
            }
            out.append(UInt8(ascii: "\""))
        }

        mutating func escape(_ b: UInt8) {
            switch b {
            case UInt8(ascii: "\""): append("\\\"")
            case UInt8(ascii: "\\"): append("\\\\")
            case 0x0A: append("\\n")
            case 0x0D: append("\\r")
            case 0x09: append("\\t")
            case 0x08: append("\\b")
            case 0x0C: append("\\f")
            default:
                let hex = Array("0123456789abcdef".utf8)
                out.append(contentsOf: Array("\\u00".utf8))
                out.append(hex[Int(b >> 4)])
                out.append(hex[Int(b & 0xF)])
            }
        }

        mutating func codePoints(_ c: [UInt32]) {
            switch dialect {
            case .http:
                var text = String.UnicodeScalarView()
                for cp in c {
                    if let u = Unicode.Scalar(cp) {
                        text.append(u)
                    } else {
                        conversions.invalidCodePoints += 1
                        text.append("\u{FFFD}")
                    }
                }
                string(String(text))
            case .perl:
                out.append(UInt8(ascii: "\""))
                for cp in c {
                    if cp < 0x20 || cp == 0x22 || cp == 0x5C {
                        escape(UInt8(cp))
                    } else {
                        PerlUTF8.append(cp, to: &out)
                    }
                }
                out.append(UInt8(ascii: "\""))
            }
        }
    }
}

/// Perl's lax UTF-8 (aemp-protocol §14): the UTF-8 pattern extended to surrogates and to code
/// points above U+10FFFF (up to 2^31−1 in six bytes), as JSON::XS and CBOR::XS write them.
public enum PerlUTF8 {
    /// Appends the encoding of `cp`.
    public static func append(_ cp: UInt32, to out: inout [UInt8]) {
        switch cp {
        case 0..<0x80:
            out.append(UInt8(cp))
        case 0x80..<0x800:
            out.append(0xC0 | UInt8(cp >> 6))
            out.append(0x80 | UInt8(cp & 0x3F))
        case 0x800..<0x1_0000:
            out.append(0xE0 | UInt8(cp >> 12))
            out.append(0x80 | UInt8((cp >> 6) & 0x3F))
            out.append(0x80 | UInt8(cp & 0x3F))
        case 0x1_0000..<0x20_0000:
            out.append(0xF0 | UInt8(cp >> 18))
            out.append(0x80 | UInt8((cp >> 12) & 0x3F))
            out.append(0x80 | UInt8((cp >> 6) & 0x3F))
            out.append(0x80 | UInt8(cp & 0x3F))
        case 0x20_0000..<0x400_0000:
            out.append(0xF8 | UInt8(cp >> 24))
            for shift in stride(from: 18, through: 0, by: -6) { out.append(0x80 | UInt8((cp >> UInt32(shift)) & 0x3F)) }
        default:
            out.append(0xFC | UInt8((cp >> 30) & 0x01))
            for shift in stride(from: 24, through: 0, by: -6) { out.append(0x80 | UInt8((cp >> UInt32(shift)) & 0x3F)) }
        }
    }

    /// Decodes lax UTF-8: the code points, or nil at the first malformed sequence (a stray
    /// continuation byte, a truncated sequence, an overlong form, a 0xFE/0xFF lead byte).
    public static func decode(_ bytes: UnsafeRawBufferPointer) -> [UInt32]? {
        var out: [UInt32] = []
        out.reserveCapacity(bytes.count)
        var i = 0
        let n = bytes.count
        while i < n {
            let lead = bytes[i]
            let length: Int
            var cp: UInt32
            switch lead {
            case 0..<0x80:
                out.append(UInt32(lead))
                i += 1
                continue
            case 0xC0..<0xE0: (length, cp) = (2, UInt32(lead & 0x1F))
            case 0xE0..<0xF0: (length, cp) = (3, UInt32(lead & 0x0F))
            case 0xF0..<0xF8: (length, cp) = (4, UInt32(lead & 0x07))
            case 0xF8..<0xFC: (length, cp) = (5, UInt32(lead & 0x03))
            case 0xFC..<0xFE: (length, cp) = (6, UInt32(lead & 0x01))
            default: return nil
            }
            guard n - i >= length else { return nil }
            for k in 1..<length {
                let b = bytes[i + k]
                guard b & 0xC0 == 0x80 else { return nil }
                cp = cp << 6 | UInt32(b & 0x3F)
            }
            let minimum: [UInt32] = [0, 0, 0x80, 0x800, 0x1_0000, 0x20_0000, 0x400_0000]
            guard cp >= minimum[length] else { return nil }
            out.append(cp)
            i += length
        }
        return out
    }
}
