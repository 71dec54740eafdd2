import CMicroHTTPD
import Synchronization

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

    private let state = Mutex(State())
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
/// `@unchecked Sendable`: the pointer is only used for `MHD_resume_connection` (documented as
/// callable from any thread) and, on the polling thread, for suspend and queueing.
struct ConnectionRef: @unchecked Sendable {
    let pointer: OpaquePointer
    let waker: Waker

    /// Resumes the suspended connection and wakes the polling thread to serve it.
    func resume() {
        MHD_resume_connection(pointer)
        waker.wake()
    }
}

/// An eventfd the polling thread waits on besides libmicrohttpd's epoll descriptor: resumes
/// from other threads write it, once per pass however many there are.
final class Waker: Sendable {
    let fd: Int32
    private let pending = Atomic<Bool>(false)

    init() throws {
        fd = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard fd >= 0 else { throw HTTPServerError.listenFailed(address: "eventfd", reason: String(cString: strerror(errno))) }
    }

    deinit { close(fd) }

    func wake() {
        guard !pending.exchange(true, ordering: .acquiringAndReleasing) else { return }
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }

    /// On the polling thread, before a pass: later wakes write again.
    func reset() {
        var value: UInt64 = 0
        _ = read(fd, &value, 8)
        pending.store(false, ordering: .releasing)
    }
}
