import AEMP
import Foundation
import Testing

/// A subscriber that stops reading must not hold up the others, nor make the gateway buffer
/// without bound (issue 7).
@Suite("gateway: slow consumers", .serialized, .timeLimit(.minutes(5)))
struct SlowConsumerTests {

    @Test("an SSE client that stops reading is cut off with a final overflow event; the family's other subscriber gets every change promptly")
    func slowSubscriber() async throws {
        // Takes turns with the tests that load the machine or check promptness (MachineLoad).
        try await takingTurns {
            let backlog = 1 << 20
            try await GatewayNetwork.with(gatewayArguments: ["--stream-backlog", "\(backlog)"]) { net in
                // The slow one: a raw socket that reads nothing until the end. (Its receive buffer is left
                // alone: a tiny TCP window would make the final read crawl at one window per delayed ACK.)
                let slow = try StalledReader(port: net.gateway.port)
                defer { slow.close() }
                try slow.send("GET /v1/db/slowfam/watch HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
                let fast = try await net.sse("/v1/db/slowfam/watch")
                #expect(try await fast.next().event == "snapshot")

                // 2,000 changes of 8 KB (16 MB): far beyond the kernel's socket buffers and the backlog.
                let pad = String(repeating: "x", count: 8 << 10)
                var lag: Duration = .zero
                for burst in 0..<40 {
                    let sent = ContinuousClock.now
                    for i in (burst * 50)..<(burst * 50 + 50) {
                        net.node.dbSet("slowfam", "k\(i % 16)", .string("\(i) \(pad)"))
                    }
                    for i in (burst * 50)..<(burst * 50 + 50) {
                        let change = try await fast.next(within: 10)
                        let o = change.json?.objectValue ?? [:]
                        let values = (o["added"]?.objectValue ?? [:]).merging(o["changed"]?.objectValue ?? [:]) { a, _ in a }
                        #expect(change.event == "change" && values["k\(i % 16)"]?.stringValue?.hasPrefix("\(i) ") == true,
                                "change \(i): \(change.event)")
                    }
                    lag = max(lag, ContinuousClock.now - sent)
                }
                // Each burst of 50 changes (400 KB, within the backlog) reached the reading subscriber
                // while the other one was stalled.
                #expect(lag < promptly(.seconds(3)), "the reading subscriber took \(lag) for a burst")

                // The stalled one finds, once it reads, an overflow event and then the end of its stream.
                let (bytes, ended) = slow.readAll(within: 20)
                let text = String(decoding: bytes, as: UTF8.self)
                #expect(text.contains("event: overflow"), "no overflow event in \(bytes.count) bytes")
                #expect(ended, "the stalled stream was not ended")
                // What it got is bounded by its backlog plus the kernel's buffers, not the 16 MB sent.
                #expect(bytes.count < 8 << 20, "the stalled client got \(bytes.count) bytes")

                // The gateway keeps serving.
                #expect(try await net.get("/healthz").status == 200)
            }
        }
    }
}

/// A client socket that connects and writes, then reads only when asked (blocking, with timeouts).
final class StalledReader: @unchecked Sendable {
    // Used from one task only; @unchecked because it holds a plain descriptor.
    private let fd: Int32

    /// `receiveBuffer`: SO_RCVBUF, set before connecting (a small window fills with little data).
    init(port: Int, receiveBuffer: Int32? = nil) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        if var size = receiveBuffer {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(port).bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard ok == 0 else { throw TestTimeout(what: "connect to 127.0.0.1:\(port): errno \(errno)") }
    }

    func send(_ text: String) throws {
        let bytes = Array(text.utf8)
        guard write(fd, bytes, bytes.count) == bytes.count else { throw TestTimeout(what: "write") }
    }

    /// Reads until the server closes (true) or `seconds` pass without data (false).
    /// Lets the kernel buffer more for this socket from now on (a stalled reader that starts
    /// reading with a tiny window crawls at one window per delayed ACK).
    func widen() {
        var size: Int32 = 1 << 20
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }

    func readAll(within seconds: Int, until done: (([UInt8]) -> Bool)? = nil) -> (bytes: [UInt8], ended: Bool) {
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n == 0 { return (out, true) }
            if n < 0 { return (out, false) }
            out += buffer[0..<n]
            if let done, done(out) { return (out, false) }
            // A chunked stream's end is its last chunk, even if the connection stays open.
            if out.count >= 5, out.suffix(5) == Array("0\r\n\r\n".utf8) { return (out, true) }
        }
    }

    func close() { Glibc.close(fd) }
}
