import Foundation
import NIOCore
import Synchronization
import Testing

/// A test step that did not happen in time.
public struct TestTimeout: Error, CustomStringConvertible {
    public let what: String
    public init(what: String) { self.what = what }
    public var description: String { "timed out waiting for \(what)" }
}

/// Waits for the next element of an async stream; records an issue and throws after `seconds`
/// (stretched by `sanitizerSlowdown`: what must arrive may take longer under a sanitizer). The
/// default bound says "it arrives", not "promptly": when the suite starts, some 300 tests start at
/// once on 2 cores and the first 10-20 s crawl.
public func next<T: Sendable>(
    _ iterator: inout AsyncStream<T>.Iterator, within seconds: Double = 30, _ what: String = "message",
    sourceLocation: SourceLocation = #_sourceLocation
) async throws -> T {
    let seconds = seconds * sanitizerSlowdown
    let box = IteratorBox(iterator)
    let result = try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { await box.next() }
        group.addTask {
            try? await Task.sleep(nanoseconds: UInt64(seconds * 1e9))
            return nil
        }
        let first = try await group.next()!
        group.cancelAll()
        return first
    }
    iterator = box.iterator
    guard let result else {
        Issue.record("timed out after \(seconds) s waiting for \(what)", sourceLocation: sourceLocation)
        throw TestTimeout(what: what)
    }
    return result
}

/// Lets a task group move an iterator in and out.
final class IteratorBox<T: Sendable>: @unchecked Sendable {
    // Only touched by one task at a time: `next(_:within:)` awaits the task before reading it back.
    var iterator: AsyncStream<T>.Iterator
    init(_ iterator: AsyncStream<T>.Iterator) { self.iterator = iterator }
    func next() async -> T? { await iterator.next() }
}

/// A free TCP port on 127.0.0.1 (for addresses that must be known before a node starts, such as
/// seeds). Drawn below the kernel's ephemeral range (`ip_local_port_range`, 32768 and up here) and
/// checked by binding it: a port the kernel handed out (port 0) is released to the same pool that
/// outgoing connections draw from, and another test's connection could take it before it is bound.
public func freePort() throws -> Int {
    let high = ephemeralRangeStart()
    let low = max(1024, high - 12_000)
    for _ in 0..<200 {
        // Never the same port twice in one test process: a node of an earlier test that still
        // dials its old seed (same secret) would otherwise join whatever a later test put there.
        let port = low + portCursor.add(1, ordering: .relaxed).oldValue % (high - low)
        if canBind(port) { return port }
    }
    throw POSIXError(.EADDRINUSE)
}

/// Where `freePort` goes on from; starts at a random place, so concurrent test processes rarely meet.
private let portCursor = Atomic<Int>(Int.random(in: 0..<12_000))

/// Where the kernel's ephemeral ports start (32768 if unknown).
private func ephemeralRangeStart() -> Int {
    guard let f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r") else { return 32768 }
    defer { fclose(f) }
    var buffer = [UInt8](repeating: 0, count: 64)
    let n = fread(&buffer, 1, buffer.count, f)
    let text = String(decoding: buffer.prefix(n), as: UTF8.self)
    guard let first = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).first,
        let low = Int(first), low > 2048
    else { return 32768 }
    return low
}

private func canBind(_ port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = UInt16(port).bigEndian
    return withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    } == 0
}

/// How much slower than a plain debug build this test process runs: 1, or more under a sanitizer
/// (`scripts/sanitize` sets `AEMP_SANITIZER`). ThreadSanitizer makes every memory access several
/// times dearer, and every process of a test pays it, so scheduling latencies grow with it.
public let sanitizerSlowdown: Double = {
    switch ProcessInfo.processInfo.environment["AEMP_SANITIZER"] {
    case "thread": 6
    case "address": 3
    case nil: 1
    default: 3
    }
}()

/// An upper bound on how long something may take, for a check of promptness ("at once": an
/// event loop's latency, a reply under load), against failures that take the whole timeout or
/// longer. Doubled in a plain run: some 60 suites run side by side on 2 cores, and bounds written
/// for a quiet machine (a 414 in under 2 s) missed by a fraction of a second. Stretched by
/// `sanitizerSlowdown` too: under a sanitizer the suite checks memory and thread safety, and a
/// bound that holds only at full speed would fail it for the wrong reason. Bounds the product
/// promises use `promised` instead.
public func promptly(_ bound: Duration) -> Duration {
    bound * 2 * sanitizerSlowdown
}

/// A bound the product promises (the 5 s master failover): exact in the plain run, stretched only
/// under a sanitizer.
public func promised(_ bound: Duration) -> Duration {
    bound * sanitizerSlowdown
}

/// A node timeout a test relies on not firing (the handshake), stretched the same way.
public func stretched(_ timeout: TimeAmount) -> TimeAmount {
    .nanoseconds(Int64(Double(timeout.nanoseconds) * sanitizerSlowdown))
}
