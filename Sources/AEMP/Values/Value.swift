import BigInt

/// One value inside an AEMP message: what a Perl node can send in JSON or CBOR (aemp-protocol §5, §14).
///
/// Strings are Perl strings, sequences of characters: a CBOR byte string of N bytes is N Latin-1
/// characters, as in Perl. Integers stay exact at any size. Build integers with `integer(_:)` and
/// strings from code points with `string(codePoints:)`: they keep each value in its one canonical case.
public enum Value: Sendable, Hashable {
    case null
    case bool(Bool)
    case int(Int64)
    /// An integer outside `Int64` (Perl UVs up to 2^64−1, Math::BigInt), kept exact; never one that fits `.int`.
    /// Boxed (`indirect`): a `BigInt` is 33 bytes and would make every `Value` 40 bytes instead of 24.
    indirect case bigInteger(BigInt)
    case double(Double)
    case string(String)
    /// A Perl string with code points Unicode text cannot hold (lone surrogates U+D800–U+DFFF, above
    /// U+10FFFF), kept exact so it crosses the mesh unchanged; never one that fits `.string`.
    case codePoints([UInt32])
    case array([Value])
    case object([String: Value])
}

extension Value {
    /// An integer of any size, in `.int` when it fits an `Int64`, else `.bigInteger`.
    public static func integer(_ n: BigInt) -> Value {
        if let i = Int64(exactly: n) { return .int(i) }
        return .bigInteger(n)
    }

    /// A string of Perl code points: `.string` when every one is a Unicode scalar, else `.codePoints`.
    public static func string<C: Collection<UInt32>>(codePoints: C) -> Value {
        var scalars = String.UnicodeScalarView()
        for c in codePoints {
            guard let u = Unicode.Scalar(c) else { return .codePoints(Array(codePoints)) }
            scalars.append(u)
        }
        return .string(String(scalars))
    }

    /// The Perl characters of a string value (`.string` or `.codePoints`).
    public var perlCodePoints: [UInt32]? {
        switch self {
        case .string(let s): return s.unicodeScalars.map(\.value)
        case .codePoints(let c): return c
        default: return nil
        }
    }

    /// Unicode text for a string value; code points Unicode cannot hold become U+FFFD.
    public var textReplacingInvalid: String? {
        switch self {
        case .string(let s): return s
        case .codePoints(let c):
            return String(String.UnicodeScalarView(c.map { Unicode.Scalar($0) ?? "\u{FFFD}" }))
        default: return nil
        }
    }

    /// Nesting as Perl's decoders count it (aemp-protocol §14): a scalar is 0, an array or hash one
    /// more than its deepest element. A packet's depth is that of its array.
    public var nestingDepth: Int {
        switch self {
        case .array(let a): return 1 + (a.lazy.map(\.nestingDepth).max() ?? 0)
        case .object(let o): return 1 + (o.values.lazy.map(\.nestingDepth).max() ?? 0)
        default: return 0
        }
    }

    /// Whether this value nests deeper than `limit`; stops looking as soon as it knows.
    public func nests(deeperThan limit: Int) -> Bool {
        switch self {
        case .array(let a):
            guard limit > 0 else { return true }
            return a.contains { $0.nests(deeperThan: limit - 1) }
        case .object(let o):
            guard limit > 0 else { return true }
            return o.values.contains { $0.nests(deeperThan: limit - 1) }
        default: return false
        }
    }
}

extension Value {
    /// The string, if this is a string.
    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    /// The array, if this is an array.
    public var arrayValue: [Value]? {
        if case .array(let a) = self { return a }
        return nil
    }

    /// The object, if this is an object.
    public var objectValue: [String: Value]? {
        if case .object(let o) = self { return o }
        return nil
    }

    /// Whether this is `.null`.
    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    /// A number read leniently, the way Perl produces them: ints, doubles and numeric strings
    /// (aemp-protocol §5.4).
    public var numberValue: Double? {
        switch self {
        case .int(let i): return Double(i)
        case .bigInteger(let b): return Double(b)
        case .double(let d): return d
        case .string(let s): return Double(s.trimmingWhitespace())
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }

    /// An integer read leniently (ints, integral doubles, numeric strings).
    public var integerValue: Int64? {
        switch self {
        case .int(let i): return i
        case .double(let d):
            guard d.rounded() == d, let i = Int64(exactly: d) else { return nil }
            return i
        case .string(let s):
            let t = s.trimmingWhitespace()
            if let i = Int64(t) { return i }
            if let d = Double(t), d.rounded() == d { return Int64(exactly: d) }
            return nil
        default: return nil
        }
    }

    /// Perl's truth: `undef`, `""`, `"0"` and `0` are false (aemp-protocol §5.2 on booleans).
    public var perlTruth: Bool {
        switch self {
        case .null: return false
        case .bool(let b): return b
        case .int(let i): return i != 0
        case .bigInteger: return true
        case .double(let d): return d != 0
        case .string(let s): return !(s.isEmpty || s == "0")
        case .codePoints, .array, .object: return true
        }
    }
}

extension Value: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
    ExpressibleByBooleanLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int64) { self = .int(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(arrayLiteral elements: Value...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, Value)...) {
        self = .object(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
    public init(nilLiteral: ()) { self = .null }
}

extension Value: CustomStringConvertible {
    /// Compact JSON, for logs and error messages.
    public var description: String {
        JSONCodec.encodeString(self)
    }
}

extension String {
    fileprivate func trimmingWhitespace() -> Substring {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return s
    }
}
