import AEMP
import CMicroHTTPD

#if canImport(Glibc)
import Glibc
#endif

/// Notices clients that hang up while their connection is suspended (a parked long-poll or call,
/// an idle event stream). libmicrohttpd takes a suspended connection out of its own polling, so
/// it would hold the connection, its descriptor and whatever the request waits on until the wait
/// ends (120 s for a long-poll), however many clients sent a request and closed at once. Each
/// suspended socket is watched here for `EPOLLRDHUP` (the peer's FIN) in an epoll set of our own,
/// which the polling thread polls beside libmicrohttpd's; the connection's action then answers it
/// or ends its stream, which resumes it, and libmicrohttpd closes it.
///
/// A client that half-closes its sending side after the request counts as gone (no HTTP/1.1
/// client of ours does; nginx treats it alike with `proxy_ignore_client_abort off`).
///
/// Used on the polling thread only: `watch` when a connection is suspended (libmicrohttpd's
/// callbacks), `unwatch` just before it is resumed (`Resumer.drain`), `drain` in the poll loop.
final class Hangups: Sendable {
    /// The epoll descriptor: readable when a watched client hung up.
    let fd: Int32
    private let watched = Locked<[UInt: (socket: Int32, action: @Sendable () -> Void)]>([:])

    init() throws {
        fd = aemp_hangups_create()
        guard fd >= 0 else {
            throw HTTPServerError.listenFailed(address: "epoll", reason: String(cString: strerror(errno)))
        }
    }

    deinit { close(fd) }

    /// Watches the suspended `connection`; `action` runs once if its client hangs up first.
    func watch(_ connection: OpaquePointer, _ action: @escaping @Sendable () -> Void) {
        let socket = aemp_mhd_connection_fd(connection)
        guard socket >= 0 else { return }
        let key = UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(connection)))
        watched.withLock { $0[key] = (socket, action) }
        _ = aemp_hangups_watch(fd, socket, UInt64(key))
    }

    /// The connection is about to be resumed: libmicrohttpd polls it again (and may close it).
    func unwatch(_ connection: OpaquePointer) {
        let key = UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(connection)))
        guard let entry = watched.withLock({ $0.removeValue(forKey: key) }) else { return }
        _ = aemp_hangups_unwatch(fd, entry.socket)
    }

    /// Runs the action of every watched connection whose client hung up; returns how many.
    func drain() -> Int {
        var keys = [UInt64](repeating: 0, count: AEMP_HANGUPS_BATCH)
        var total = 0
        while true {
            let n = Int(aemp_hangups_ready(fd, &keys, Int32(keys.count)))
            guard n > 0 else { return total }
            for key in keys.prefix(n) {
                guard let entry = watched.withLock({ $0.removeValue(forKey: UInt(key)) }) else { continue }
                // Out of the set before the action resumes it: libmicrohttpd may close the socket.
                _ = aemp_hangups_unwatch(fd, entry.socket)
                entry.action()
                total += 1
            }
            if n < keys.count { return total }
        }
    }

    /// Connections watched now.
    var count: Int { watched.withLock { $0.count } }
}
