import AEMP
import AEMPGateway
import ArgumentParser
import Dispatch
import Logging
import Synchronization

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
            so other nodes can join it.
            """)

    @Option(name: .customLong("http"), help: "HTTP listen address host:port.")
    var http: String = env("AEMP_GATEWAY_HTTP") ?? "127.0.0.1:8080"

    @Option(help: "Comma-separated seed addresses host:port (none = standalone).")
    var seeds: String?

    @Option(help: "Node ID template (%n = host name, %u or trailing / = random suffix).")
    var nodeID: String = env("AEMP_GATEWAY_NODE_ID") ?? "aemp-gateway/%u"

    @Option(help: "Shared secret of the network (or --secret-file, AEMP_SECRET).")
    var secret: String?

    @Option(help: "File holding the shared secret.")
    var secretFile: String?

    @Option(help: "Where a standalone gateway's node listens.")
    var standaloneBind: String = env("AEMP_GATEWAY_STANDALONE_BIND") ?? "127.0.0.1:4040"

    @Option(help: "File of bearer tokens, one per line: '<token> rw' or '<token> ro'.")
    var tokenFile: String?

    @Option(help: "Origin allowed by CORS (repeatable; '*' = any).")
    var corsOrigin: [String] = []

    @Option(help: "Node-port tag HTTP clients may send, e.g. time or devnull (repeatable).")
    var allowNodePortTag: [String] = []

    @Option(help: "Largest request body in bytes.")
    var maxBody: Int = 1 << 20

    @Option(help: "HTTP connections served at once; more are answered 503 and closed.")
    var maxConnections: Int = 16_000

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = env("AEMP_GATEWAY_LOG_LEVEL") ?? "notice"

    // Limits that tests (and curious operators) shrink to reach their edges quickly.
    @Option(help: .hidden) var feedHistory: Int?
    @Option(help: .hidden) var maxMailboxes: Int?
    @Option(help: .hidden) var maxSubscribersPerFamily: Int?
    @Option(help: .hidden) var heartbeatInterval: Double?

    func run() async throws {
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("unknown log level \(logLevel)")
        }
        var logger = Logger(label: "aemp-gateway")
        logger.logLevel = level
        let seedList = (seeds ?? env("AEMP_GATEWAY_SEEDS") ?? "").split(separator: ",").map { trimmed(String($0)) }.filter { !$0.isEmpty }
        let secretText: String
        if let s = try readSecret() {
            secretText = s
        } else if seedList.isEmpty {
            // Standalone and no secret: never run an open network. Generate one once and keep it
            // where the next run finds it.
            secretText = try storedOrGeneratedSecret()
        } else {
            throw ValidationError("a shared secret is required to join a network: --secret, --secret-file or AEMP_SECRET")
        }
        var node = NodeConfiguration(secret: secretText)
        node.nodeID = nodeID
        node.seeds = seedList
        node.logger = logger
        var c = GatewayConfiguration(node: node)
        c.standaloneBind = standaloneBind
        c.http.address = http
        c.http.maxBodySize = maxBody
        c.logger = logger
        c.corsOrigins = Set(corsOrigin)
        c.allowedNodePortTags = Set(allowNodePortTag)
        guard maxConnections >= 1 else { throw ValidationError("--max-connections must be at least 1") }
        c.http.maxConnections = maxConnections
        if let feedHistory { c.feedHistory = max(1, feedHistory) }
        if let maxMailboxes { c.maxMailboxes = max(0, maxMailboxes) }
        if let maxSubscribersPerFamily { c.maxSubscribersPerFamily = max(0, maxSubscribersPerFamily) }
        if let heartbeatInterval { c.heartbeatInterval = max(0.05, heartbeatInterval) }
        if let tokenFile = tokenFile ?? env("AEMP_GATEWAY_TOKEN_FILE") { c.tokens = try readTokens(tokenFile) }

        let gateway = try Gateway(configuration: c)
        let address = try await gateway.start()
        let seedAddress = (await gateway.node.listenAddresses()).joined(separator: ",")
        writeLine("aemp-gateway \(gateway.node.id) serving http://\(address)\(c.isStandalone ? " (standalone seed on \(seedAddress))" : "")")
        await waitForTermination()
        await gateway.shutdown()
    }

    private func readSecret() throws -> String? {
        if let secret { return secret }
        if let secretFile = secretFile ?? env("AEMP_GATEWAY_SECRET_FILE") {
            guard let text = readFile(secretFile) else { throw ValidationError("cannot read secret file \(secretFile)") }
            let s = trimmed(text)
            guard !s.isEmpty else { throw ValidationError("secret file \(secretFile) is empty") }
            return s
        }
        return env("AEMP_SECRET")
    }

    private func readTokens(_ path: String) throws -> [String: TokenScope] {
        guard let text = readFile(path) else { throw ValidationError("cannot read token file \(path)") }
        var tokens: [String: TokenScope] = [:]
        for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if words.isEmpty || words[0].hasPrefix("#") { continue }
            guard words.count == 2, let scope = TokenScope(rawValue: String(words[1])) else {
                throw ValidationError("token file \(path) line \(n + 1): expected '<token> rw' or '<token> ro'")
            }
            tokens[String(words[0])] = scope
        }
        return tokens
    }
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
        let resumed = Mutex(false)
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

