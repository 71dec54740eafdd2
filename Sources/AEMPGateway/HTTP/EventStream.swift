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
        /// Called (outside the lock) when the client has read everything queued: a pulled stream's
        /// owner queues what comes next, as much as `room` allows.
        var source: (@Sendable () -> Void)?
    }

    private let state = Locked(State())
    /// Bytes a slow client may fall behind before it is cut off.
    public let limit: Int
    /// Unsent bytes of all streams together (`--max-stream-bytes`; nil: no such limit).
    let budget: ByteBudget?

    public init(limit: Int = 1 << 20) {
        self.limit = limit
        self.budget = nil
    }

    init(limit: Int, budget: ByteBudget?) {
        self.limit = limit
        self.budget = budget
    }

    /// Queues `bytes` (under the lock), counted in the budget.
    private func enqueue(_ bytes: [UInt8], _ s: inout State) {
        s.pending += bytes
        budget?.add(bytes.count)
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
            let backlog = s.pending.count - s.offset
            // Behind by more than its own limit, or (not caught up) when all streams together
            // hold their limit: the client is cut off. One event always fits a caught-up stream.
            if backlog + bytes.count > limit || (backlog > 0 && bytes.count > (budget?.remaining ?? Int.max)) {
                s.finished = true
                if let finalEvent { enqueue(finalEvent, &s) }
                Self.wake(&s)
                return false
            }
            enqueue(bytes, &s)
            Self.wake(&s)
            return true
        }
    }

    /// Makes this a pulled stream: `source` runs (on libmicrohttpd's thread, outside the stream's
    /// lock) whenever the client has read everything queued, and queues what comes next with
    /// `append`, so a replay of any size goes out in pieces as the client reads.
    public func pull(from source: @escaping @Sendable () -> Void) {
        state.withLock { $0.source = source }
    }

    /// Bytes that may still be queued before the client counts as `limit` behind, and whether
    /// nothing is queued now.
    public var room: (bytes: Int, empty: Bool) {
        state.withLock { s in
            let backlog = s.pending.count - s.offset
            return (Swift.max(0, Swift.min(limit - backlog, budget?.remaining ?? Int.max)), backlog == 0)
        }
    }

    /// Queues bytes that the caller sized with `room` (no limit check). False when the stream is over.
    @discardableResult
    public func append(_ bytes: [UInt8]) -> Bool {
        state.withLock { s in
            guard !s.finished, !s.closed else { return false }
            enqueue(bytes, &s)
            Self.wake(&s)
            return true
        }
    }

    /// Queues a heartbeat comment, unless bytes are queued already (they keep the connection busy;
    /// a heartbeat on top of a full backlog would cut off a client that is merely slow).
    public func heartbeat() {
        state.withLock { s in
            guard !s.finished, !s.closed, s.pending.count == s.offset else { return }
            enqueue(ServerSentEvent.heartbeat, &s)
            Self.wake(&s)
        }
    }

    /// Ends the stream after what is queued, optionally with one last event.
    public func finish(with finalEvent: [UInt8]? = nil) {
        state.withLock { s in
            guard !s.finished, !s.closed else { return }
            if let finalEvent { enqueue(finalEvent, &s) }
            s.finished = true
            Self.wake(&s)
        }
    }

    /// The client hung up while the stream was idle: it ends (libmicrohttpd, resumed, finds the
    /// end and closes the connection; `closed` then lets the owner go).
    func hangUp() {
        state.withLock { s in
            s.finished = true
            s.closed = true
            Self.wake(&s)
        }
    }

    private static func wake(_ s: inout State) {
        if s.suspended, let connection = s.connection {
            s.suspended = false
            connection.resume()
        }
    }

    // MARK: - libmicrohttpd side (its thread)

    /// Bounds what the kernel buffers for this client to about the stream's own backlog (at least
    /// 16 KiB, at most 4 MiB; the kernel doubles it). Left to autotuning, a loopback socket whose
    /// client stopped reading took 400 KB and more: memory no limit of ours counted, and a stalled
    /// client looked like a reader for that long.
    func boundKernelBuffer(fd: Int32) {
        guard fd >= 0 else { return }
        var size = Int32(Swift.min(Swift.max(limit, 16 << 10), 4 << 20))
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }

    func attach(_ connection: ConnectionRef) {
        state.withLock { $0.connection = connection }
    }

    private enum ReadStep {
        case copied(Int)
        case end
        case suspended
        case refill(@Sendable () -> Void)
    }

    /// The content reader: copies queued bytes, ends the stream, or suspends the connection. A
    /// pulled stream with nothing queued asks its source once before suspending.
    func read(into buffer: UnsafeMutablePointer<CChar>, max: Int) -> Int {
        var refilled = false
        while true {
            switch step(into: buffer, max: max, mayRefill: !refilled) {
            case .copied(let n): return n
            case .end: return AEMP_MHD_CONTENT_READER_END_OF_STREAM
            case .suspended: return 0
            case .refill(let source):
                refilled = true
                source()  // takes its owner's lock, then this one through `append`
            }
        }
    }

    private func step(into buffer: UnsafeMutablePointer<CChar>, max: Int, mayRefill: Bool) -> ReadStep {
        state.withLock { s in
            let available = s.pending.count - s.offset
            if available > 0 {
                let n = min(available, max)
                s.pending.withUnsafeBufferPointer { p in
                    UnsafeMutableRawPointer(buffer).copyMemory(from: p.baseAddress! + s.offset, byteCount: n)
                }
                s.offset += n
                budget?.give(n)
                if s.offset == s.pending.count {
                    s.pending.removeAll(keepingCapacity: s.pending.capacity <= 4096)
                    s.offset = 0
                } else if s.offset > 65536 {
                    s.pending.removeFirst(s.offset)
                    s.offset = 0
                }
                return .copied(n)
            }
            if s.finished || s.closed { return .end }
            if mayRefill, let source = s.source { return .refill(source) }
            guard let connection = s.connection else { return .end }
            // Under the lock `append` and `send` take: whatever they queue after this wakes us.
            s.suspended = true
            MHD_suspend_connection(connection.pointer)
            connection.watchHangup { [self] in hangUp() }
            return .suspended
        }
    }

    /// The response was destroyed: the client is gone or the stream ended.
    func closed() {
        let action = state.withLock { s -> (@Sendable () -> Void)? in
            s.closed = true
            s.suspended = false
            s.connection = nil
            budget?.give(s.pending.count - s.offset)
            s.pending = []
            s.offset = 0
            s.source = nil
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

    /// On the polling thread, right after suspending: `action` runs if the client hangs up while
    /// the connection is suspended (it must resume the connection, by answering or ending it).
    func watchHangup(_ action: @escaping @Sendable () -> Void) { resumer.hangups.watch(pointer, action) }
}

/// Resumes suspended connections on the polling thread, in bulk: other threads queue them, and
/// the poller, woken through an eventfd, resumes all queued ones before its next pass. A thread of
/// an event loop (the node delivering a read's worth of messages) wakes the poller once, at the end
/// of its loop tick, so that libmicrohttpd resumes them in one pass (each pass that resumes any
/// walks its whole list of suspended connections).
final class Resumer: Sendable {
    /// Readable when connections wait to be resumed.
    let fd: Int32
    /// The suspended connections watched for their clients hanging up (unwatched on resume).
    let hangups: Hangups
    private let queue = Locked<(connections: [ConnectionRef], signalled: Bool)>(([], false))

    init() throws {
        hangups = try Hangups()
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
        _ = write(fd, &one, MemoryLayout<UInt64>.size)  // an eventfd counts in one 8-byte integer
    }

    /// On the polling thread (or after it ended): resumes every queued connection.
    func drain() {
        var value: UInt64 = 0
        _ = read(fd, &value, MemoryLayout<UInt64>.size)
        let connections = queue.withLock { q -> [ConnectionRef] in
            q.signalled = false
            defer { q.connections.removeAll(keepingCapacity: q.connections.count <= 1024) }
            return q.connections
        }
        for c in connections {
            hangups.unwatch(c.pointer)
            MHD_resume_connection(c.pointer)
        }
    }
}
