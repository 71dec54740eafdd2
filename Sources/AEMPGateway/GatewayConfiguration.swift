import AEMP
import Logging

/// Everything the gateway is configured with (the executable fills it from flags, environment
/// and files; tests build it directly).
public struct GatewayConfiguration: Sendable {
    /// The gateway's own node: ID template, secret, seeds. With no seeds the gateway runs
    /// standalone: it binds `standaloneBind` and is its own seed and global node.
    public var node: NodeConfiguration
    /// Where a standalone gateway's node listens.
    public var standaloneBind: String = "127.0.0.1:4040"
    /// The HTTP listener and its limits.
    public var http = HTTPServerSettings()
    /// Further HTTP listen addresses, served with the same settings (one libmicrohttpd daemon
    /// each; the connection limit applies per address).
    public var additionalHTTPAddresses: [String] = []
    /// A listener of its own for `/healthz`, `/readyz` and `/metrics` (nil: none), with its own
    /// small connection limit: probes never wait behind clients (`--admin-http`).
    public var adminHTTPAddress: String?
    /// Connections the admin listener serves at once.
    public var adminMaxConnections: Int = 64

    /// Bytes a mesh peer's connection may hold unsent (the peer is reading slower than HTTP
    /// clients send to it) before `send` and `call` to its ports answer 503 peer_backlogged;
    /// well below the node's `maxUnsentBytes`, where the peer is cut off and what waits is lost.
    public var peerBacklog: Int = 32 << 20

    /// Mailboxes one gateway holds at most.
    public var maxMailboxes: Int = 100_000
    /// Names of deleted and expired mailboxes kept, so that clients get 410 mailbox_gone rather
    /// than 404 (under 100 bytes each).
    public var rememberedMailboxes: Int = 100_000
    /// Messages a mailbox keeps undelivered before it drops the oldest (default, and upper bound
    /// of `max_queue`).
    public var mailboxQueue: Int = 1_000
    public var maxMailboxQueue: Int = 100_000
    /// Bytes all mailboxes may hold together (estimated); at the limit a new message makes its
    /// mailbox give up its oldest messages, or is given up itself.
    public var maxMailboxBytes: Int = 256 << 20
    /// Idle time after which a mailbox expires (default, and upper bound of `ttl`), seconds.
    public var mailboxTTL: Int = 300
    public var maxMailboxTTL: Int = 86_400
    /// SSE and long-poll subscribers per family (and per mailbox).
    public var maxSubscribersPerFamily: Int = 20_000
    /// Change events a family feed keeps for resuming clients.
    public var feedHistory: Int = 1_000
    /// Seconds a family feed may go without clients before it gives up its `db_mon`.
    public var feedIdle: Double = 60
    /// Families whose idle feed's epoch and index are remembered (with a digest per value), so
    /// their clients' IDs stay valid; the oldest is forgotten first.
    public var feedMemory: Int = 10_000
    /// Long-poll wait: default and cap, seconds.
    public var defaultWait: Int = 30
    public var maxWait: Int = 120
    /// `call` timeout: default and cap, seconds.
    public var defaultCallTimeout: Double = 10
    public var maxCallTimeout: Double = 120
    /// Calls in flight at once.
    public var maxPendingCalls: Int = 10_000
    /// How long a database query may wait for the master, seconds.
    public var queryTimeout: Double = 10
    /// Seconds between SSE heartbeat comments.
    public var heartbeatInterval: Double = 15
    /// Bytes an SSE client may fall behind before it is cut off with a final event.
    public var streamBacklog: Int = 1 << 20
    /// Bytes all event streams may hold unsent together: beyond, pulled streams (mailboxes, feeds)
    /// wait for room, one event each at most, and a pushed stream (nodes) that is behind is cut off.
    public var maxStreamBytes: Int = 256 << 20
    /// Messages in one batch `send`.
    public var maxBatch: Int = 10_000
    /// Node-port tags HTTP clients may send; none by default. Only `Destination.harmlessNodePortTags`
    /// (`time`, `can`, `devnull`) are ever honoured, whatever else this holds.
    public var allowedNodePortTags: Set<String> = []
    /// Bearer tokens; empty = no authentication.
    public var tokens: [String: TokenScope] = [:]
    /// Whether `GET /metrics` is served without a token when `tokens` are configured (without
    /// tokens it is always open). Off by default: a scraper then sends a read-only token.
    public var metricsPublic = false
    /// Origins allowed by CORS (`*` = any); empty = no CORS headers. State-changing requests from
    /// pages of other origins are refused (`BrowserSafety`).
    public var corsOrigins: Set<String> = []
    /// Names allowed in `Host` besides addresses, localhost and the names the gateway listens on
    /// (`*` = any): DNS rebinding protection (`BrowserSafety`).
    public var allowedHosts: [String] = []
    /// Accept JSON bodies whatever their `Content-Type` (off: 415 unless `application/json`).
    public var allowAnyContentType = false
    public var logger = Logger(label: "aemp-gateway")
    /// Level and format of the executable's log lines (the executable builds `logger` from them).
    public var logLevel: Logger.Level = .notice
    public var logFormat: LogFormat = .text
    /// Lines of one kind (message, level, call site) written per `logInterval` before the rest are
    /// only counted and summarised (`--log-burst`; 0 = no limit). The executable builds
    /// `logRateLimiter` from them.
    public var logBurst: Int = 20
    /// Seconds of a rate-limiting window (`--log-interval`).
    public var logInterval: Double = 10
    /// The limiter `logger` writes through, if any: the gateway flushes its summaries every second
    /// and counts what it left out in `aemp_gateway_log_lines_suppressed_total`.
    public var logRateLimiter: LogRateLimiter?

    public init(node: NodeConfiguration) {
        self.node = node
    }

    /// Whether the gateway runs its own seed/global node (no seeds configured).
    public var isStandalone: Bool { node.seeds.isEmpty || node.seeds == [standaloneBind] && node.binds == [standaloneBind] }
}

/// What a bearer token may do.
public enum TokenScope: String, Sendable {
    /// Read routes only (GET, and long-poll/SSE).
    case readOnly = "ro"
    /// Everything.
    case readWrite = "rw"
}
