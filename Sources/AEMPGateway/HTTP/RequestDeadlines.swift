import AEMP

#if canImport(Glibc)
import Glibc
#endif

/// Slow-request protection (slowloris): a request must arrive completely, header and body, within
/// the connection timeout of its start (its connection's opening, or the previous answer on a
/// keep-alive connection). libmicrohttpd's own timeout closes only connections that are idle, so a
/// client that sends a byte a second would keep its connection, and its share of the connection
/// limit, for ever. An overdue connection's socket is shut down; libmicrohttpd then sees the end of
/// the stream and closes the connection as usual (before the request is complete there is nothing
/// to answer it with).
///
/// Used on the polling thread only (libmicrohttpd's callbacks and `sweep`); the lock makes it
/// `Sendable` and is never contended.
final class RequestDeadlines: Sendable {
    private struct Entry {
        let fd: Int32
        /// When the request now arriving started; nil while none is arriving (being answered).
        var since: ContinuousClock.Instant?
    }

    private let entries = Locked<[UInt: Entry]>([:])
    private let nextSweep = Locked<ContinuousClock.Instant>(.now)
    let limit: Duration

    init(seconds: Int) {
        limit = .seconds(seconds)
    }

    /// A connection was accepted: its first request starts now.
    func opened(_ connection: UInt, fd: Int32) {
        guard fd >= 0 else { return }
        entries.withLock { $0[connection] = Entry(fd: fd, since: .now) }
    }

    /// The connection's request has arrived completely.
    func arrived(_ connection: UInt) {
        entries.withLock { $0[connection]?.since = nil }
    }

    /// The connection's request was answered: the next one on it starts now.
    func answered(_ connection: UInt) {
        entries.withLock { $0[connection]?.since = .now }
    }

    /// The connection was answered before its request arrived completely, and is closing: it is
    /// cut off `seconds` from now (time for the client to read the answer), not after the timeout.
    func linger(_ connection: UInt, seconds: Int) {
        entries.withLock { $0[connection]?.since = .now - limit + .seconds(seconds) }
    }

    func closed(_ connection: UInt) {
        entries.withLock { _ = $0.removeValue(forKey: connection) }
    }

    /// At most once a second: shuts down the sockets of connections whose request is overdue.
    /// Returns how many it cut off.
    func sweep() -> Int {
        let now = ContinuousClock.now
        let due = nextSweep.withLock { next -> Bool in
            guard now >= next else { return false }
            next = now + .seconds(1)
            return true
        }
        guard due else { return 0 }
        return entries.withLock { entries -> Int in
            let overdue = entries.filter { _, entry in entry.since.map { now - $0 > limit } ?? false }
            for (key, entry) in overdue {
                // Shut down, not closed: libmicrohttpd closes the socket, so no descriptor is
                // reused under its feet.
                shutdown(entry.fd, Int32(SHUT_RDWR))
                entries[key]?.since = nil
            }
            return overdue.count
        }
    }
}
