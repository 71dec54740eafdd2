import AEMP
import CMicroHTTPD
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// The body of a Server-Sent-Events response, written from any thread and read by
/// libmicrohttpd. When the client has everything, the connection is suspended; a write
/// resumes it (conventions: suspend under the lock the publisher takes).
public final class EventStream: Sendable {
    struct State {
        var pending: [UInt8] = []
        var offset = 0
        /// No more events will be added; the stream ends once `pending` is drained.
        var finished = false
        /// The client went away (or the response was destroyed).
        var closed = false
        var suspended = false
        var connection: ConnectionRef?
        var onClose: (@Sendable () -> Void)?
    }

    private let state = Locked(State())
    /// Bytes a slow client may fall behind before it is cut off.
    public let limit: Int

    public init(limit: Int = 1 << 20) {
        self.limit = limit
    }

    /// Runs `action` once when the client disconnects or the stream has ended.
    public func onClose(_ action: @escaping @Sendable () -> Void) {
        let runNow = state.withLock { s -> Bool in
            if s.closed { return true }
            s.onClose = action
            return false
        }
        if runNow { action() }
    }

    /// Queues bytes (whole events) for the client. Returns false when the stream is over, or when
    /// the client fell more than `limit` bytes behind: then `finalEvent` (if any) is queued and
    /// the stream ends after it.
    @discardableResult
    public func send(_ bytes: [UInt8], orEndWith finalEvent: [UInt8]? = nil) -> Bool {
        state.withLock { s in
            guard !s.finished, !s.closed else { return false }
            if s.pending.count - s.offset + bytes.count > limit {
                s.finished = true
                if let finalEvent { s.pending += finalEvent }
                Self.wake(&s)
                return false
            }
            s.pending += bytes
            Self.wake(&s)
            return true
        }
    }

    /// Ends the stream after what is queued, optionally with one last event.
    public func finish(with finalEvent: [UInt8]? = nil) {
        state.withLock { s in
            guard !s.finished, !s.closed else { return }
            if let finalEvent { s.pending += finalEvent }
            s.finished = true
            Self.wake(&s)
        }
    }

    /// Whether the stream still accepts events.
    public var isOpen: Bool { state.withLock { !$0.finished && !$0.closed } }

    private static func wake(_ s: inout State) {
        if s.suspended, let connection = s.connection {
            s.suspended = false
            connection.resume()
        }
    }

    // MARK: - libmicrohttpd side (its thread)

    func attach(_ connection: ConnectionRef) {
        state.withLock { $0.connection = connection }
    }

    /// The content reader: copies queued bytes, ends the stream, or suspends the connection.
    func read(into buffer: UnsafeMutablePointer<CChar>, max: Int) -> Int {
        state.withLock { s in
            let available = s.pending.count - s.offset
            if available > 0 {
                let n = min(available, max)
                s.pending.withUnsafeBufferPointer { p in
                    UnsafeMutableRawPointer(buffer).copyMemory(from: p.baseAddress! + s.offset, byteCount: n)
                }
                s.offset += n
                if s.offset == s.pending.count {
                    s.pending.removeAll(keepingCapacity: s.pending.capacity <= 4096)
                    s.offset = 0
                } else if s.offset > 65536 {
                    s.pending.removeFirst(s.offset)
                    s.offset = 0
                }
                return n
            }
            if s.finished || s.closed { return -1 }  // MHD_CONTENT_READER_END_OF_STREAM
            guard let connection = s.connection else { return -1 }
            s.suspended = true
            MHD_suspend_connection(connection.pointer)
            return 0
        }
    }

    /// The response was destroyed: the client is gone or the stream ended.
    func closed() {
        let action = state.withLock { s -> (@Sendable () -> Void)? in
            s.closed = true
            s.suspended = false
            s.connection = nil
            s.pending = []
            defer { s.onClose = nil }
            return s.onClose
        }
        action?()
    }
}

/// A libmicrohttpd connection handle that may cross threads.
///
/// `@unchecked Sendable`: other threads only hand the pointer to `resumer`; libmicrohttpd calls
/// with it (suspend, resume, queueing) are made on the polling thread.
struct ConnectionRef: @unchecked Sendable {
    let pointer: OpaquePointer
    let resumer: Resumer

    /// Has the polling thread resume the suspended connection (from any thread).
    func resume() { resumer.resume(self) }
}

/// Resumes suspended connections on the polling thread, in bulk: other threads queue them, and
/// the poller, woken through an eventfd, resumes all queued ones before its next pass. A thread of
/// an event loop (the node delivering a read's worth of messages) wakes the poller once, at the end
/// of its loop tick, so that libmicrohttpd resumes them in one pass (each pass that resumes any
/// walks its whole list of suspended connections).
final class Resumer: Sendable {
    /// Readable when connections wait to be resumed.
    let fd: Int32
    private let queue = Locked<(connections: [ConnectionRef], signalled: Bool)>(([], false))

    init() throws {
        fd = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard fd >= 0 else { throw HTTPServerError.listenFailed(address: "eventfd", reason: String(cString: strerror(errno))) }
    }

    deinit { close(fd) }

    func resume(_ connection: ConnectionRef) {
        let first = queue.withLock { q -> Bool in
            q.connections.append(connection)
            defer { q.signalled = true }
            return !q.signalled
        }
        guard first else { return }
        if let loop = MultiThreadedEventLoopGroup.currentEventLoop {
            loop.execute { self.signal() }
        } else {
            signal()
        }
    }

    /// Wakes the poller (also used to make it notice `stop`).
    func signal() {
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }

    /// On the polling thread (or after it ended): resumes every queued connection.
    func drain() {
        var value: UInt64 = 0
        _ = read(fd, &value, 8)
        let connections = queue.withLock { q -> [ConnectionRef] in
            q.signalled = false
            defer { q.connections.removeAll(keepingCapacity: q.connections.count <= 1024) }
            return q.connections
        }
        for c in connections { MHD_resume_connection(c.pointer) }
    }
}
