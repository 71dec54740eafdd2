import BigInt

/// Reads the JSON that jansson refuses but a peer may legally send (aemp-protocol §14), and is
/// the codec's second try after jansson: integers beyond 64 bits (Perl UVs, Math::BigInt as
/// digits), NUL in object keys, `\uD800`-style lone surrogate escapes, and for `.perl` also
/// JSON::XS's bare `inf`/`-inf`/`nan` and strings in Perl's lax UTF-8 (surrogates, code points
/// above U+10FFFF).
///
/// Strict about everything else: a text it accepts is one JSON value with nothing after it.
public enum JSONReader {
    /// Most digits an integer may have (its decimal conversion is quadratic; CPython's limit too).
    public static let maxIntegerDigits = 4300

    /// Decodes one complete JSON text; containers nested deeper than `maxDepth` are refused.
    public static func decode(
        _ bytes: UnsafeRawBufferPointer, dialect: JSONDialect, maxDepth: Int
    ) throws(JSONReaderError) -> Value {
        var parser = Parser(bytes: bytes, dialect: dialect, maxDepth: maxDepth)
        parser.skipSpace()
        let v = try parser.value(depth: 0)
        parser.skipSpace()
        guard parser.i == bytes.count else { throw parser.error("unexpected text after the value") }
        return v
    }

    private struct Parser {
        let bytes: UnsafeRawBufferPointer
        let dialect: JSONDialect
        let maxDepth: Int
        var i = 0

        func error(_ why: String) -> JSONReaderError { .syntax(message: why, position: i) }

        mutating func skipSpace() {
            while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x0A || bytes[i] == 0x0D || bytes[i] == 0x09 { i += 1 }
        }

        /// Consumes `word` if it is next: exactly, or ignoring ASCII case (Perl's `inf`, `Inf`, `NaN`).
        mutating func literal(_ word: String, anyCase: Bool = false) -> Bool {
            let w = Array(word.utf8)
            guard bytes.count - i >= w.count else { return false }
            for k in 0..<w.count {
                let b = bytes[i + k]
                guard anyCase ? b | 0x20 == w[k] | 0x20 : b == w[k] else { return false }
            }
            i += w.count
            return true
        }

        mutating func value(depth: Int) throws(JSONReaderError) -> Value {
            guard i < bytes.count else { throw error("unexpected end of input") }
            switch bytes[i] {
            case UInt8(ascii: "["):
                guard depth < maxDepth else { throw .tooDeep(limit: maxDepth) }
                i += 1
                var out: [Value] = []
                skipSpace()
                if i < bytes.count, bytes[i] == UInt8(ascii: "]") {
                    i += 1
                    return .array(out)
                }
                while true {
                    skipSpace()
                    out.append(try value(depth: depth + 1))
                    skipSpace()
                    guard i < bytes.count else { throw error("unexpected end of input in an array") }
                    if bytes[i] == UInt8(ascii: ",") {
                        i += 1
                    } else if bytes[i] == UInt8(ascii: "]") {
                        i += 1
                        return .array(out)
                    } else {
                        throw error("expected ',' or ']'")
                    }
                }
            case UInt8(ascii: "{"):
                guard depth < maxDepth else { throw .tooDeep(limit: maxDepth) }
                i += 1
                var out: [String: Value] = [:]
                skipSpace()
                if i < bytes.count, bytes[i] == UInt8(ascii: "}") {
                    i += 1
                    return .object(out)
                }
                while true {
                    skipSpace()
                    guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw error("expected a string key") }
                    let key = try string()
                    skipSpace()
                    guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw error("expected ':'") }
                    i += 1
                    skipSpace()
                    out.insertCountingMerges(try value(depth: depth + 1), forKey: PerlKey.text(of: key))
                    skipSpace()
                    guard i < bytes.count else { throw error("unexpected end of input in an object") }
                    if bytes[i] == UInt8(ascii: ",") {
                        i += 1
                    } else if bytes[i] == UInt8(ascii: "}") {
                        i += 1
                        return .object(out)
                    } else {
                        throw error("expected ',' or '}'")
                    }
                }
            case UInt8(ascii: "\""):
                return try string()
            case UInt8(ascii: "t"):
                guard literal("true") else { throw error("invalid literal") }
                return .bool(true)
            case UInt8(ascii: "f"):
                guard literal("false") else { throw error("invalid literal") }
                return .bool(false)
            case UInt8(ascii: "n") where dialect == .perl && literal("nan", anyCase: true):
                return .double(.nan)
            case UInt8(ascii: "n"):
                guard literal("null") else { throw error("invalid literal") }
                return .null
            case UInt8(ascii: "i") where dialect == .perl, UInt8(ascii: "I") where dialect == .perl:
                guard literal("infinity", anyCase: true) || literal("inf", anyCase: true) else { throw error("invalid literal") }
                return .double(.infinity)
            case UInt8(ascii: "N") where dialect == .perl:
                guard literal("nan", anyCase: true) else { throw error("invalid literal") }
                return .double(.nan)
            default:
                return try number()
            }
        }

        mutating func number() throws(JSONReaderError) -> Value {
            let start = i
            if i < bytes.count, bytes[i] == UInt8(ascii: "-") {
                i += 1
                if dialect == .perl {
                    if literal("infinity", anyCase: true) || literal("inf", anyCase: true) { return .double(-.infinity) }
                    if literal("nan", anyCase: true) { return .double(.nan) }
                }
            }
            let digitsStart = i
            while i < bytes.count, bytes[i] >= 0x30, bytes[i] <= 0x39 { i += 1 }
            guard i > digitsStart else { throw error("invalid value") }
            guard bytes[digitsStart] != 0x30 || i - digitsStart == 1 else { throw error("leading zero in a number") }
            var isInteger = true
            if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
                isInteger = false
                i += 1
                let f = i
                while i < bytes.count, bytes[i] >= 0x30, bytes[i] <= 0x39 { i += 1 }
                guard i > f else { throw error("invalid number") }
            }
            if i < bytes.count, bytes[i] | 0x20 == UInt8(ascii: "e") {
                isInteger = false
                i += 1
                if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
                let e = i
                while i < bytes.count, bytes[i] >= 0x30, bytes[i] <= 0x39 { i += 1 }
                guard i > e else { throw error("invalid number") }
            }
            let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<i]), as: UTF8.self)
            if isInteger {
                if let n = Int64(text) { return .int(n) }
                // Decimal conversion is quadratic in the digits: bound it (CPython's limit).
                guard text.utf8.count <= JSONReader.maxIntegerDigits + 1 else {
                    throw error("integer of more than \(JSONReader.maxIntegerDigits) digits")
                }
                guard let big = BigInt(text) else { throw error("invalid integer") }
                return .integer(big)
            }
            guard let d = Double(text) else { throw error("invalid number") }
            if !d.isFinite, dialect == .http { throw error("real number overflow") }
            return .double(d)
        }

        /// A string token (at its opening quote): `.string`, or `.codePoints` when it holds lone
        /// surrogates or (Perl's lax UTF-8) code points above U+10FFFF.
        mutating func string() throws(JSONReaderError) -> Value {
            i += 1
            var cps: [UInt32] = []
            var run = i
            func flush(_ p: inout Parser, upTo end: Int) throws(JSONReaderError) {
                guard end > run else { return }
                let raw = UnsafeRawBufferPointer(rebasing: p.bytes[run..<end])
                if p.dialect == .http {
                    guard let s = String(validating: raw, as: UTF8.self) else { throw p.error("invalid UTF-8 in a string") }
                    cps.append(contentsOf: s.unicodeScalars.map(\.value))
                } else {
                    guard let decoded = PerlUTF8.decode(raw) else { throw p.error("malformed UTF-8 in a string") }
                    cps.append(contentsOf: decoded)
                }
            }
            while i < bytes.count {
                let b = bytes[i]
                if b == UInt8(ascii: "\"") {
                    try flush(&self, upTo: i)
                    i += 1
                    return .string(codePoints: cps)
                }
                if b < 0x20 { throw error("control character in a string") }
                guard b == UInt8(ascii: "\\") else {
                    i += 1
                    continue
                }
                try flush(&self, upTo: i)
                i += 1
                guard i < bytes.count else { break }
                let e = bytes[i]
                i += 1
                switch e {
                case UInt8(ascii: "\""): cps.append(0x22)
                case UInt8(ascii: "\\"): cps.append(0x5C)
                case UInt8(ascii: "/"): cps.append(0x2F)
                case UInt8(ascii: "b"): cps.append(0x08)
                case UInt8(ascii: "f"): cps.append(0x0C)
                case UInt8(ascii: "n"): cps.append(0x0A)
                case UInt8(ascii: "r"): cps.append(0x0D)
                case UInt8(ascii: "t"): cps.append(0x09)
                case UInt8(ascii: "u"):
                    var unit = try hex4()
                    if (0xD800..<0xDC00).contains(unit), bytes.count - i >= 6, bytes[i] == UInt8(ascii: "\\"),
                        bytes[i + 1] == UInt8(ascii: "u")
                    {
                        let save = i
                        i += 2
                        let low = try hex4()
                        if (0xDC00..<0xE000).contains(low) {
                            unit = 0x1_0000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                        } else {
                            i = save
                        }
                    }
                    cps.append(unit)
                default: throw error("invalid escape")
                }
                run = i
            }
            throw error("unterminated string")
        }

        mutating func hex4() throws(JSONReaderError) -> UInt32 {
            guard bytes.count - i >= 4 else { throw error("truncated \\u escape") }
            var v: UInt32 = 0
            for _ in 0..<4 {
                let c = bytes[i]
                let d: UInt8
                switch c {
                case 0x30...0x39: d = c - 0x30
                case 0x41...0x46: d = c - 0x41 + 10
                case 0x61...0x66: d = c - 0x61 + 10
                default: throw error("invalid \\u escape")
                }
                v = v << 4 | UInt32(d)
                i += 1
            }
            return v
        }
    }
}

/// Why `JSONReader` refused a text.
public enum JSONReaderError: Error, Equatable, Sendable {
    case syntax(message: String, position: Int)
    /// Containers nested deeper than the limit.
    case tooDeep(limit: Int)
}

extension Dictionary where Key == String, Value == AEMP.Value {
    /// Sets `value` for `key`, last one winning as in Perl; counts a key that replaced a different
    /// Perl key which is the same Swift string (canonically equivalent, "é" and "e\u{301}").
    mutating func insertCountingMerges(_ value: AEMP.Value, forKey key: String) {
        guard updateValue(value, forKey: key) != nil, let i = index(forKey: key),
            !self[i].key.unicodeScalars.elementsEqual(key.unicodeScalars)
        else { return }
        ValueEvents.record(.hashKeyMerged)
    }
}

/// Hash keys are Swift strings: a key value holding code points Unicode cannot hold is written
/// with U+FFFD in their place (aemp-protocol §14; the only lossy conversion of a Perl key).
enum PerlKey {
    static func text(of key: Value) -> String {
        switch key {
        case .string(let s): return s
        default:
            ValueEvents.record(.hashKeyReplaced)
            return key.textReplacingInvalid ?? ""
        }
    }
}
