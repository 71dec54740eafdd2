import AEMP
import AEMPGateway
import ArgumentParser
import Dispatch
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// `aemp-gateway`: HTTP/JSON access to an AnyEvent::MP network.
@main
struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "aemp-gateway",
        abstract: "HTTP/JSON gateway to an AnyEvent::MP network.",
        discussion: """
            With --seeds the gateway joins the network as a private node. Without seeds it runs \
            standalone: its node listens on --standalone-bind and is its own seed and global node, \
            so other nodes can join it. Every option can also be given as an environment variable \
            AEMP_GATEWAY_<OPTION> (e.g. AEMP_GATEWAY_MAX_BODY; lists comma-separated) or as a key of \
            the JSON --config file; flags win over the environment, which wins over the file. \
            Invalid settings are reported one line each, with exit status 2.
            """)

    @Option(name: .customLong("http"), help: ArgumentHelp(GatewaySettings.help("http")))
    var http: [String] = []
    @Option(name: .customLong("admin-http"), help: ArgumentHelp(GatewaySettings.help("admin-http")))
    var adminHTTP: [String] = []

    @Option(name: .customLong("seeds"), help: ArgumentHelp(GatewaySettings.help("seeds")))
    var seeds: [String] = []

    @Option(name: .customLong("node-id"), help: ArgumentHelp(GatewaySettings.help("node-id")))
    var nodeID: [String] = []

    @Option(name: .customLong("secret"), help: ArgumentHelp(GatewaySettings.help("secret")))
    var secret: [String] = []

    @Option(name: .customLong("secret-file"), help: ArgumentHelp(GatewaySettings.help("secret-file")))
    var secretFile: [String] = []

    @Option(name: .customLong("mesh-cert"), help: ArgumentHelp(GatewaySettings.help("mesh-cert")))
    var meshCert: [String] = []

    @Option(name: .customLong("standalone-bind"), help: ArgumentHelp(GatewaySettings.help("standalone-bind")))
    var standaloneBind: [String] = []

    @Option(name: .customLong("handshake-timeout"), help: ArgumentHelp(GatewaySettings.help("handshake-timeout")))
    var handshakeTimeout: [String] = []

    @Option(name: .customLong("token-file"), help: ArgumentHelp(GatewaySettings.help("token-file")))
    var tokenFile: [String] = []

    @Option(name: .customLong("cors-origin"), help: ArgumentHelp(GatewaySettings.help("cors-origin")))
    var corsOrigin: [String] = []

    @Option(name: .customLong("allowed-host"), help: ArgumentHelp(GatewaySettings.help("allowed-host")))
    var allowedHost: [String] = []

    @Flag(name: .customLong("allow-any-content-type"), help: ArgumentHelp(GatewaySettings.help("allow-any-content-type")))
    var allowAnyContentType = false

    @Option(name: .customLong("allow-node-port-tag"), help: ArgumentHelp(GatewaySettings.help("allow-node-port-tag")))
    var allowNodePortTag: [String] = []

    @Option(name: .customLong("max-body"), help: ArgumentHelp(GatewaySettings.help("max-body")))
    var maxBody: [String] = []

    @Option(name: .customLong("max-packet"), help: ArgumentHelp(GatewaySettings.help("max-packet")))
    var maxPacket: [String] = []

    @Option(name: .customLong("max-connections"), help: ArgumentHelp(GatewaySettings.help("max-connections")))
    var maxConnections: [String] = []

    @Option(name: .customLong("connection-memory"), help: ArgumentHelp(GatewaySettings.help("connection-memory")))
    var connectionMemory: [String] = []

    @Option(name: .customLong("connection-timeout"), help: ArgumentHelp(GatewaySettings.help("connection-timeout")))
    var connectionTimeout: [String] = []

    @Option(name: .customLong("stream-backlog"), help: ArgumentHelp(GatewaySettings.help("stream-backlog")))
    var streamBacklog: [String] = []

    @Option(name: .customLong("peer-backlog"), help: ArgumentHelp(GatewaySettings.help("peer-backlog")))
    var peerBacklog: [String] = []

    @Option(name: .customLong("max-mailboxes"), help: ArgumentHelp(GatewaySettings.help("max-mailboxes")))
    var maxMailboxes: [String] = []
    @Option(name: .customLong("max-mailbox-bytes"), help: ArgumentHelp(GatewaySettings.help("max-mailbox-bytes")))
    var maxMailboxBytes: [String] = []
    @Option(name: .customLong("max-mesh-handshakes"), help: ArgumentHelp(GatewaySettings.help("max-mesh-handshakes")))
    var maxMeshHandshakes: [String] = []
    @Option(
        name: .customLong("max-mesh-handshakes-per-address"), help: ArgumentHelp(GatewaySettings.help("max-mesh-handshakes-per-address")))
    var maxMeshHandshakesPerAddress: [String] = []
    @Option(name: .customLong("max-stream-bytes"), help: ArgumentHelp(GatewaySettings.help("max-stream-bytes")))
    var maxStreamBytes: [String] = []
    @Option(name: .customLong("max-pending-calls"), help: ArgumentHelp(GatewaySettings.help("max-pending-calls")))
    var maxPendingCalls: [String] = []

    @Option(name: .customLong("remembered-mailboxes"), help: ArgumentHelp(GatewaySettings.help("remembered-mailboxes")))
    var rememberedMailboxes: [String] = []

    @Option(name: .customLong("max-subscribers-per-family"), help: ArgumentHelp(GatewaySettings.help("max-subscribers-per-family")))
    var maxSubscribersPerFamily: [String] = []

    @Option(name: .customLong("mailbox-queue"), help: ArgumentHelp(GatewaySettings.help("mailbox-queue")))
    var mailboxQueue: [String] = []

    @Option(name: .customLong("max-mailbox-queue"), help: ArgumentHelp(GatewaySettings.help("max-mailbox-queue")))
    var maxMailboxQueue: [String] = []

    @Option(name: .customLong("mailbox-ttl"), help: ArgumentHelp(GatewaySettings.help("mailbox-ttl")))
    var mailboxTTL: [String] = []

    @Option(name: .customLong("max-mailbox-ttl"), help: ArgumentHelp(GatewaySettings.help("max-mailbox-ttl")))
    var maxMailboxTTL: [String] = []

    @Option(name: .customLong("default-wait"), help: ArgumentHelp(GatewaySettings.help("default-wait")))
    var defaultWait: [String] = []

    @Option(name: .customLong("max-wait"), help: ArgumentHelp(GatewaySettings.help("max-wait")))
    var maxWait: [String] = []

    @Option(name: .customLong("call-timeout"), help: ArgumentHelp(GatewaySettings.help("call-timeout")))
    var callTimeout: [String] = []

    @Option(name: .customLong("max-call-timeout"), help: ArgumentHelp(GatewaySettings.help("max-call-timeout")))
    var maxCallTimeout: [String] = []

    @Option(name: .customLong("feed-history"), help: ArgumentHelp(GatewaySettings.help("feed-history")))
    var feedHistory: [String] = []
    @Option(name: .customLong("feed-idle"), help: ArgumentHelp(GatewaySettings.help("feed-idle")))
    var feedIdle: [String] = []
    @Option(name: .customLong("feed-memory"), help: ArgumentHelp(GatewaySettings.help("feed-memory")))
    var feedMemory: [String] = []

    @Option(name: .customLong("heartbeat-interval"), help: ArgumentHelp(GatewaySettings.help("heartbeat-interval")))
    var heartbeatInterval: [String] = []

    @Option(name: .customLong("tls-cert"), help: ArgumentHelp(GatewaySettings.help("tls-cert")))
    var tlsCert: [String] = []

    @Option(name: .customLong("tls-key"), help: ArgumentHelp(GatewaySettings.help("tls-key")))
    var tlsKey: [String] = []

    @Option(name: .customLong("log-level"), help: ArgumentHelp(GatewaySettings.help("log-level")))
    var logLevel: [String] = []

    @Option(name: .customLong("log-format"), help: ArgumentHelp(GatewaySettings.help("log-format")))
    var logFormat: [String] = []

    @Option(name: .customLong("log-burst"), help: ArgumentHelp(GatewaySettings.help("log-burst")))
    var logBurst: [String] = []

    @Option(name: .customLong("log-interval"), help: ArgumentHelp(GatewaySettings.help("log-interval")))
    var logInterval: [String] = []

    @Flag(name: .customLong("metrics-public"), help: ArgumentHelp(GatewaySettings.help("metrics-public")))
    var metricsPublic = false

    @Option(name: .customLong("profile"), help: ArgumentHelp(GatewaySettings.help("profile")))
    var profile: [String] = []

    @Option(name: .customLong("aemp-rc"), help: ArgumentHelp(GatewaySettings.help("aemp-rc")))
    var aempRC: [String] = []

    @Option(name: .customLong("config"), help: ArgumentHelp(GatewaySettings.help("config")))
    var config: [String] = []

    func run() async throws {
        Gateway.limitMallocArenas()
        let environment = ProcessInfoEnvironment.all()
        var settings = GatewaySettings()
        settings.addFlags([
            "http": http,
            "admin-http": adminHTTP,
            "seeds": seeds,
            "node-id": nodeID,
            "secret": secret,
            "secret-file": secretFile,
            "mesh-cert": meshCert,
            "standalone-bind": standaloneBind,
            "handshake-timeout": handshakeTimeout,
            "token-file": tokenFile,
            "cors-origin": corsOrigin,
            "allowed-host": allowedHost,
            "allow-any-content-type": allowAnyContentType ? ["true"] : [],
            "allow-node-port-tag": allowNodePortTag,
            "max-body": maxBody,
            "max-packet": maxPacket,
            "max-connections": maxConnections,
            "connection-memory": connectionMemory,
            "connection-timeout": connectionTimeout,
            "stream-backlog": streamBacklog,
            "peer-backlog": peerBacklog,
            "max-mailboxes": maxMailboxes,
            "max-mailbox-bytes": maxMailboxBytes,
            "max-mesh-handshakes": maxMeshHandshakes,
            "max-mesh-handshakes-per-address": maxMeshHandshakesPerAddress,
            "max-stream-bytes": maxStreamBytes,
            "max-pending-calls": maxPendingCalls,
            "max-subscribers-per-family": maxSubscribersPerFamily,
            "remembered-mailboxes": rememberedMailboxes,
            "mailbox-queue": mailboxQueue,
            "max-mailbox-queue": maxMailboxQueue,
            "mailbox-ttl": mailboxTTL,
            "max-mailbox-ttl": maxMailboxTTL,
            "default-wait": defaultWait,
            "max-wait": maxWait,
            "call-timeout": callTimeout,
            "max-call-timeout": maxCallTimeout,
            "feed-history": feedHistory,
            "feed-idle": feedIdle,
            "feed-memory": feedMemory,
            "heartbeat-interval": heartbeatInterval,
            "tls-cert": tlsCert,
            "tls-key": tlsKey,
            "log-level": logLevel,
            "log-format": logFormat,
            "log-burst": logBurst,
            "log-interval": logInterval,
            "metrics-public": metricsPublic ? ["true"] : [],
            "profile": profile,
            "aemp-rc": aempRC,
            "config": config
        ])
        settings.addEnvironment(environment)
        var problems: [String] = []
        if let file = settings.values["config"]?.last { settings.addConfigFile(path: file, problems: &problems) }
        if let name = settings.values["profile"]?.last {
            let rc = settings.values["aemp-rc"]?.last ?? environment["PERL_ANYEVENT_MP_RC"]
                ?? (environment["HOME"] ?? ".") + "/.perl-anyevent-mp"
            settings.addProfile(name: name, path: rc, problems: &problems)
        }
        let (resolved, invalid) = settings.configuration(environment: environment)
        problems += invalid
        guard var c = resolved, problems.isEmpty else {
            for p in problems { writeError("aemp-gateway: error: \(p)") }
            throw ExitCode(2)
        }
        // Repeated lines (the library's and the gateway's alike) pass a rate limiter; its summary
        // lines go straight to standard error.
        let format = c.logFormat, level = c.logLevel
        var summaries = Logger(label: "aemp-gateway") { LineLogHandler(label: $0, format: format, level: .trace) }
        summaries.logLevel = .trace
        let limiter = LogRateLimiter(burst: c.logBurst, interval: .nanoseconds(Int64(c.logInterval * 1e9)), summaries: summaries)
        c.logRateLimiter = limiter
        var logger = Logger(label: "aemp-gateway") { label in
            RateLimitedLogHandler(wrapping: LineLogHandler(label: label, format: format, level: level), limiter: limiter)
        }
        logger.logLevel = c.logLevel
        c.logger = logger
        c.node.logger = logger
        if c.node.secret.isEmpty && c.node.certificate == nil {
            // Standalone and neither a secret nor a certificate: never run an open network.
            // Generate a secret once and keep it where the next run finds it. (With a certificate
            // the network is closed already: peers need the same file.)
            do {
                c.node.secret = Array(try storedOrGeneratedSecret().utf8)
            } catch {
                writeError("aemp-gateway: error: \(error)")
                throw ExitCode(2)
            }
        }
        reserveDescriptors(for: c)
        let gateway: Gateway
        let address: String
        do {
            gateway = try Gateway(configuration: c)
            address = try await gateway.start()
        } catch {
            writeError("aemp-gateway: error: \(error)")
            throw ExitCode(1)
        }
        let seedAddress = (await gateway.node.listenAddresses()).joined(separator: ",")
        let scheme = c.http.tlsCertificate == nil ? "http" : "https"
        let more = gateway.httpAddresses.dropFirst().map { "\(scheme)://\($0)" }
        writeLine(
            "aemp-gateway \(gateway.node.id) serving \(scheme)://\(address)"
                + (c.isStandalone ? " (standalone seed on \(seedAddress))" : "")
                + (more.isEmpty ? "" : " (also serving \(more.joined(separator: " ")))")
                + (gateway.adminHTTPAddress.map { " (admin \(scheme)://\($0))" } ?? ""))
        await waitForTermination()
        await gateway.shutdown()
    }
}

/// The process environment as a dictionary.
enum ProcessInfoEnvironment {
    static func all() -> [String: String] {
        var out: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if let eq = s.firstIndex(of: "=") { out[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
            p += 1
        }
        return out
    }
}

func writeError(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}

func env(_ name: String) -> String? {
    getenv(name).map { String(cString: $0) }
}

func trimmed(_ s: String) -> String {
    var v = Substring(s)
    while let c = v.first, c.isWhitespace { v.removeFirst() }
    while let c = v.last, c.isWhitespace { v.removeLast() }
    return String(v)
}

func readFile(_ path: String) -> String? {
    guard let f = fopen(path, "r") else { return nil }
    defer { fclose(f) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = fread(&buffer, 1, buffer.count, f)
        if n <= 0 { break }
        bytes += buffer[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// `$AEMP_GATEWAY_STATE_DIR` (or `$XDG_STATE_HOME/aemp-gateway`, or `~/.local/state/aemp-gateway`):
/// where a standalone gateway keeps its generated secret.
func stateDirectory() -> String {
    if let dir = env("AEMP_GATEWAY_STATE_DIR") { return dir }
    if let xdg = env("XDG_STATE_HOME") { return xdg + "/aemp-gateway" }
    return (env("HOME") ?? ".") + "/.local/state/aemp-gateway"
}

/// The secret stored by an earlier standalone run, or a new one (printed once, stored 0600).
func storedOrGeneratedSecret() throws -> String {
    let dir = stateDirectory()
    let path = dir + "/secret"
    if let text = readFile(path) {
        let s = trimmed(text)
        if !s.isEmpty { return s }
    }
    let secret = randomSecret()
    var prefix = dir.hasPrefix("/") ? "" : "."
    for part in dir.split(separator: "/") {
        prefix += "/" + part
        mkdir(prefix, 0o700)  // EEXIST is fine; open() reports real failures
    }
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    guard fd >= 0 else { throw ValidationError("cannot store the generated secret in \(path): \(String(cString: strerror(errno)))") }
    let bytes = Array((secret + "\n").utf8)
    let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
    guard written == bytes.count else { throw ValidationError("cannot write \(path)") }
    writeLine("aemp-gateway: generated the network secret \(secret) (stored in \(path); other nodes need it to join)")
    return secret
}

func randomSecret() -> String {
    var rng = SystemRandomNumberGenerator()
    let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
    return String((0..<40).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &rng)] })
}

/// Writes a line to standard output at once (scripts and tests read it live).
func writeLine(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    var offset = 0
    while offset < bytes.count {
        let n = bytes[offset...].withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
        if n <= 0 { return }
        offset += n
    }
}

/// Suspends until SIGINT or SIGTERM.
func waitForTermination() async {
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        let resumed = Locked(false)
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler {
                _ = source
                let first = resumed.withLock { r in
                    defer { r = true }
                    return !r
                }
                if first { continuation.resume() }
            }
            source.resume()
        }
    }
}


/// Raises this process's descriptor limit to its hard limit (the soft one is often 1,024) and
/// warns when even that cannot hold every connection the configuration allows at once: HTTP
/// clients (and the 64 answered 503), the admin listener, mesh handshakes and peers, with room
/// for files and the node's own sockets. Short of descriptors, libmicrohttpd's accept fails in a
/// loop (EMFILE) and every client is refused.
func reserveDescriptors(for c: GatewayConfiguration) {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        _ = getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }
    let headroom = HTTPServerSettings.refusedConnectionHeadroom
    let http = (c.http.maxConnections + headroom) * (1 + c.additionalHTTPAddresses.count)
    let needed = http + (c.adminHTTPAddress == nil ? 0 : c.adminMaxConnections + headroom) + c.node.maxPendingHandshakes + 1024
    if limit.rlim_cur < UInt(needed) {
        writeError(
            "aemp-gateway: warning: the descriptor limit is \(limit.rlim_cur), below the \(needed) the configuration may use at once "
                + "(--max-connections, the admin listener, --max-mesh-handshakes, 1,024 for peers and files); raise LimitNOFILE / ulimit -n "
                + "or lower --max-connections")
    }
}
