/// One value inside an AEMP message: what JSON and CBOR can both carry (aemp-protocol §5).
///
/// CBOR byte strings and text strings both decode to `.string` (§5.2); integers that do not fit
/// an `Int64` decode to `.double`.
public enum Value: Sendable, Hashable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([Value])
    case object([String: Value])
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
        case .double(let d): return d != 0
        case .string(let s): return !(s.isEmpty || s == "0")
        case .array, .object: return true
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
        (try? JSONCodec.encodeString(self)) ?? "<unencodable>"
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
