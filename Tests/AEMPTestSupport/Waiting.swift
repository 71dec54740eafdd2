import Foundation
import Testing

/// A test step that did not happen in time.
public struct TestTimeout: Error, CustomStringConvertible {
    public let what: String
    public init(what: String) { self.what = what }
    public var description: String { "timed out waiting for \(what)" }
}

/// Waits for the next element of an async stream; records an issue and throws after `seconds`.
public func next<T: Sendable>(
    _ iterator: inout AsyncStream<T>.Iterator, within seconds: Double = 10, _ what: String = "message",
    sourceLocation: SourceLocation = #_sourceLocation
) async throws -> T {
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

/// A free TCP port on 127.0.0.1 (bound, read and released; for addresses that must be known
/// before a node starts, such as seeds).
public func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    let bound = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0 else { throw POSIXError(.EADDRINUSE) }
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    return Int(UInt16(bigEndian: addr.sin_port))
}
