import AEMP

#if canImport(Glibc)
import Glibc
#endif

/// Writes a line to standard output at once (no buffering: tests and scripts read it live).
func writeLine(_ line: String) {
    write(line + "\n", to: 1)
}

/// Writes a line to standard error at once.
func writeError(_ line: String) {
    write(line + "\n", to: 2)
}

private func write(_ text: String, to fd: Int32) {
    let bytes = Array(text.utf8)
    var offset = 0
    while offset < bytes.count {
        let n = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        if n < 0, errno == EINTR { continue }
        if n <= 0 { return }
        offset += n
    }
}

/// Compact JSON with object keys sorted, so the same data always prints the same way (jansson
/// keeps insertion order, and a Swift dictionary has none). Non-finite doubles, which only CBOR
/// can carry, print as `null`.
func renderJSON(_ value: Value) -> String {
    switch value {
    case .array(let elements):
        return "[" + elements.map(renderJSON).joined(separator: ",") + "]"
    case .object(let members):
        return "{" + members.keys.sorted().map { key in
            renderJSON(.string(key)) + ":" + renderJSON(members[key]!)
        }.joined(separator: ",") + "}"
    default:
        return JSONCodec.encodeString(value)
    }
}
