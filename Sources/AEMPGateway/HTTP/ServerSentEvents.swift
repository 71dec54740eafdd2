import AEMP

/// Formatting of Server-Sent Events (WHATWG HTML §9.2): one event is `id`, `event` and a
/// single-line JSON `data` field, then a blank line.
enum ServerSentEvent {
    static func encode(id: String?, event: String, data: Value) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(128)
        if let id {
            out += Array("id: ".utf8) + Array(id.utf8) + [0x0A]
        }
        out += Array("event: ".utf8) + Array(event.utf8) + [0x0A]
        out += Array("data: ".utf8) + JSONBody.encode(data) + [0x0A, 0x0A]  // compact JSON has no newlines
        return out
    }

    /// A comment line: keeps proxies and the client's idle timers quiet.
    static let heartbeat: [UInt8] = Array(": heartbeat\n\n".utf8)

    /// Asks the client to wait `milliseconds` before reconnecting.
    static func retry(_ milliseconds: Int) -> [UInt8] { Array("retry: \(milliseconds)\n\n".utf8) }
}
