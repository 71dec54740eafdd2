import AEMP
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// The gateway's settings from every source, resolved and validated in one place.
///
/// Precedence: command-line flag, then environment variable (`AEMP_GATEWAY_<NAME>`), then the
/// `--config` file (a JSON object keyed by flag name), then the AnyEvent::MP profile (secret,
/// seeds and cert only), then the default. Every problem is reported, one line each, not just the first.
public struct GatewaySettings: Sendable {
    /// One setting: its flag name (also the config-file key) and how it lands in the configuration.
    public struct Definition: Sendable {
        public let name: String
        public let help: String
        public let isList: Bool
        let apply: @Sendable (_ values: [String], _ c: inout GatewayConfiguration, _ problems: inout [String]) -> Void

        /// `AEMP_GATEWAY_MAX_BODY` for `max-body`.
        public var environmentName: String {
            "AEMP_GATEWAY_" + name.uppercased().replacingDashes()
        }
    }

    /// Raw values by setting name (lists keep every value; scalars use the last).
    public var values: [String: [String]] = [:]
    /// Where each value came from, for messages.
    public var origins: [String: String] = [:]
    /// The PEM text of the AnyEvent::MP profile's `cert` (the profile holds the text itself, not a
    /// file name) and where it came from; used when no `mesh-cert` is given.
    public var profileCertificate: (pem: String, origin: String)?

    public init() {}

    // MARK: - Sources

    /// Values from the command line (already split by the argument parser).
    public mutating func addFlags(_ flags: [String: [String]]) {
        let lists = Set(Self.definitions.filter(\.isList).map(\.name))
        for (name, v) in flags where !v.isEmpty && values[name] == nil {
            // A list may be given as repeated flags or comma-separated (or both).
            values[name] = lists.contains(name)
                ? v.flatMap { $0.split(separator: ",").map { trim(String($0)) } }.filter { !$0.isEmpty } : v
            origins[name] = "--\(name)"
        }
    }

    /// Values from `AEMP_GATEWAY_*` variables (lists are comma-separated).
    public mutating func addEnvironment(_ environment: [String: String]) {
        for d in Self.definitions where values[d.name] == nil {
            guard let raw = environment[d.environmentName] else { continue }
            values[d.name] = d.isList ? raw.split(separator: ",").map { trim(String($0)) }.filter { !$0.isEmpty } : [raw]
            origins[d.name] = d.environmentName
        }
    }

    /// Values from a JSON config file; unknown keys and wrong types are problems.
    public mutating func addConfigFile(path: String, problems: inout [String]) {
        guard let bytes = readBytes(path) else {
            problems.append("config file \(path): cannot read it (\(String(cString: strerror(errno))))")
            return
        }
        let json: Value
        do {
            json = try JSONCodec.decode(bytes)
        } catch {
            problems.append("config file \(path): not valid JSON: \(error)")
            return
        }
        guard case .object(let object) = json else {
            problems.append("config file \(path): must be a JSON object keyed by option name")
            return
        }
        let known = Set(Self.definitions.map(\.name))
        for (key, value) in object.sorted(by: { $0.key < $1.key }) {
            guard known.contains(key), key != "config" else {
                problems.append("config file \(path): unknown option \(key.debugDescription)")
                continue
            }
            guard values[key] == nil else { continue }
            var list: [String] = []
            var valid = true
            for item in value.arrayValue ?? [value] {
                switch item {
                case .string(let s): list.append(s)
                case .int(let n): list.append(String(n))
                case .double(let d): list.append(String(d))
                case .bool(let b): list.append(b ? "true" : "false")
                default: valid = false
                }
            }
            guard valid else {
                problems.append("config file \(path): \(key) must be a string, number or list of them")
                continue
            }
            values[key] = list
            origins[key] = "\(path): \(key)"
        }
    }

    /// Secret, seeds and cert from an AnyEvent::MP profile file (`~/.perl-anyevent-mp`, JSON): the top
    /// level, overridden by the parent chain of the named profile, then the profile itself.
    public mutating func addProfile(name: String, path: String, problems: inout [String]) {
        guard let bytes = readBytes(path) else {
            problems.append("AnyEvent::MP profile file \(path): cannot read it (\(String(cString: strerror(errno))))")
            return
        }
        guard case .object(let root)? = try? JSONCodec.decode(bytes) else {
            problems.append("AnyEvent::MP profile file \(path): not a JSON object")
            return
        }
        var merged = root
        if !name.isEmpty {
            var chain: [[String: Value]] = []
            var next: String? = name
            while let n = next, chain.count < 32 {
                guard case .object(let p)? = root["profile"]?.objectValue?[n] else {
                    problems.append("AnyEvent::MP profile file \(path): no profile \(n.debugDescription)")
                    return
                }
                chain.insert(p, at: 0)
                next = p["parent"]?.stringValue
            }
            for p in chain { merged.merge(p) { _, new in new } }
        }
        if values["secret"] == nil, values["secret-file"] == nil, let secret = merged["secret"]?.stringValue {
            values["secret"] = [secret]
            origins["secret"] = "\(path) profile \(name.isEmpty ? "(top level)" : name)"
        }
        if values["seeds"] == nil, let seeds = merged["seeds"]?.arrayValue?.compactMap(\.stringValue), !seeds.isEmpty {
            values["seeds"] = seeds
            origins["seeds"] = "\(path) profile \(name.isEmpty ? "(top level)" : name)"
        }
        // Perl turns TLS on whenever the key exists (`aemp setcert` stores the file's text there).
        if values["mesh-cert"] == nil, let pem = merged["cert"]?.stringValue {
            profileCertificate = (pem, "\(path) profile \(name.isEmpty ? "(top level)" : name) key cert")
        }
    }

    // MARK: - Result

    /// Builds the configuration; returns every problem found (empty = valid).
    public func configuration(environment: [String: String]) -> (GatewayConfiguration?, [String]) {
        var problems: [String] = []
        var c = GatewayConfiguration(node: NodeConfiguration(secret: "unset"))
        c.node.nodeID = "aemp-gateway/%u"
        c.http.address = "127.0.0.1:8080"
        c.node.secret = []
        for d in Self.definitions {
            guard let v = values[d.name] else { continue }
            var local: [String] = []
            d.apply(v, &c, &local)
            let origin = origins[d.name] ?? "--\(d.name)"
            problems += local.map { "\(origin): \($0)" }
        }
        if c.node.secret.isEmpty, values["secret"] == nil, values["secret-file"] == nil,
            let s = environment["AEMP_SECRET"], !trim(s).isEmpty
        {
            c.node.secret = Array(s.utf8)
        }
        if values["mesh-cert"] == nil, let profile = profileCertificate {
            do {
                c.node.certificate = try MeshCertificate(pem: profile.pem, source: profile.origin)
            } catch {
                problems.append("\(error)")
            }
        }
        // A certificate alone authenticates (a Perl node with a `cert` and no `secret` talks TLS only).
        let certificateGiven = values["mesh-cert"] != nil || profileCertificate != nil
        if c.node.secret.isEmpty && !certificateGiven && !c.node.seeds.isEmpty && values["secret"] == nil
            && values["secret-file"] == nil
        {
            problems.append(
                "a shared secret or a mesh certificate is required to join a network (--secret, --secret-file, AEMP_SECRET, --mesh-cert or --profile)")
        }
        if (c.http.tlsCertificate == nil) != (c.http.tlsKey == nil) {
            problems.append("--tls-cert and --tls-key go together")
        }
        if c.defaultWait > c.maxWait { problems.append("--default-wait (\(c.defaultWait)) exceeds --max-wait (\(c.maxWait))") }
        if c.mailboxQueue > c.maxMailboxQueue {
            problems.append("--mailbox-queue (\(c.mailboxQueue)) exceeds --max-mailbox-queue (\(c.maxMailboxQueue))")
        }
        if c.mailboxTTL > c.maxMailboxTTL { problems.append("--mailbox-ttl (\(c.mailboxTTL)) exceeds --max-mailbox-ttl (\(c.maxMailboxTTL))") }
        if c.defaultCallTimeout > c.maxCallTimeout {
            problems.append("--call-timeout (\(c.defaultCallTimeout)) exceeds --max-call-timeout (\(c.maxCallTimeout))")
        }
        return problems.isEmpty ? (c, []) : (nil, problems)
    }

    // MARK: - The settings

    public static let definitions: [Definition] = [
        list("http", "HTTP listen address host:port (port 0 picks a free one; repeatable).") { v, c, p in
            for a in v where !isAddress(a) { p.append("\(a.debugDescription) is not host:port") }
            if let first = v.first { c.http.address = first }
            c.additionalHTTPAddresses = Array(v.dropFirst())
        },
        text(
            "admin-http",
            "Listen address host:port for /healthz, /readyz and /metrics alone, with its own connection limit (64): probes never wait behind clients."
        ) { v, c, p in
            guard isAddress(v) else { return p.append("\(v.debugDescription) is not host:port") }
            c.adminHTTPAddress = v
        },
        list("seeds", "Seed addresses host:port (none = standalone: the gateway is its own seed).") { v, c, p in
            for a in v where !isAddress(a) { p.append("seed \(a.debugDescription) is not host:port") }
            c.node.seeds = v
        },
        text("node-id", "Node ID (%n = host name, %u or a trailing / = random suffix).") { v, c, p in
            if let problem = NodeIDTemplate.problem(with: v) {
                p.append("\(v.debugDescription) is not a usable node ID: \(problem)")
            } else {
                c.node.nodeID = v
            }
        },
        text("secret", "Shared secret of the network (prefer --secret-file).") { v, c, p in
            if trim(v).isEmpty { p.append("the secret is empty") } else { c.node.secret = Array(v.utf8) }
        },
        text("secret-file", "File holding the shared secret (trailing newline ignored).") { v, c, p in
            guard let bytes = readBytes(v) else { return p.append("cannot read \(v) (\(String(cString: strerror(errno))))") }
            let s = trim(String(decoding: bytes, as: UTF8.self))
            if s.isEmpty { p.append("\(v) is empty") } else { c.node.secret = Array(s.utf8) }
        },
        text(
            "mesh-cert",
            "PEM file of the network's certificate, as AnyEvent::MP's `aemp gencert` writes it (key, certificate, CA certificates): mesh connections use TLS; with it no shared secret is needed. Default: the profile's cert."
        ) { v, c, p in
            do {
                c.node.certificate = try MeshCertificate(contentsOfFile: v)
            } catch {
                p.append("\(error)")
            }
        },
        number(
            "handshake-timeout",
            "Seconds a mesh connection may take to authenticate; a peer that accepts and never answers is cut off after it.",
            0.1...3600
        ) { $1.node.handshakeTimeout = .nanoseconds(Int64($0 * 1e9)) },
        text("standalone-bind", "Where a standalone gateway's node listens.") { v, c, p in
            if isAddress(v) { c.standaloneBind = v } else { p.append("\(v.debugDescription) is not host:port") }
        },
        text("token-file", "Bearer tokens, one per line: '<token> rw' or '<token> ro'.") { v, c, p in
            guard let bytes = readBytes(v) else { return p.append("cannot read \(v) (\(String(cString: strerror(errno))))") }
            for (n, line) in String(decoding: bytes, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
                if words.isEmpty || words[0].hasPrefix("#") { continue }
                guard words.count == 2, let scope = TokenScope(rawValue: String(words[1])) else {
                    p.append("\(v) line \(n + 1): expected '<token> rw' or '<token> ro'")
                    continue
                }
                if words[0].count < 16 { p.append("\(v) line \(n + 1): a token needs at least 16 characters") }
                c.tokens[String(words[0])] = scope
            }
            if c.tokens.isEmpty { p.append("\(v) holds no token") }
        },
        list("cors-origin", "Origin allowed by CORS (repeatable; * = any); state-changing requests from pages of other origins get 403.") {
            v, c, _ in c.corsOrigins = Set(v)
        },
        list(
            "allowed-host",
            "Name allowed in the Host header besides IP addresses, localhost and the names the gateway listens on (repeatable; * = any): other names get 403 (DNS rebinding)."
        ) { v, c, p in
            let bad = v.filter { $0.isEmpty || $0.contains("/") || $0.contains(" ") }
            if bad.isEmpty { c.allowedHosts = v } else { p.append("\(bad[0].debugDescription) is not a host name") }
        },
        text(
            "allow-any-content-type",
            "Accept JSON bodies sent with any Content-Type (true/false; default false: 415 unless application/json, as a page of any site can send text/plain without asking)."
        ) { v, c, p in
            switch v.lowercased() {
            case "true", "1", "yes": c.allowAnyContentType = true
            case "false", "0", "no", "": c.allowAnyContentType = false
            default: p.append("\(v.debugDescription) is not true or false")
            }
        },
        list("allow-node-port-tag", "Node-port tag HTTP clients may send: time, can or devnull (repeatable).") { v, c, p in
            let harmful = v.filter { !Destination.harmlessNodePortTags.contains($0) }
            for tag in harmful {
                p.append("\(tag.debugDescription) cannot be allowed: only time, can and devnull run no code and change nothing on a node")
            }
            if harmful.isEmpty { c.allowedNodePortTags = Set(v) }
        },
        integer(
            "max-body",
            "Largest request body in bytes (default 1114112: a 1 MiB message and its envelope; each upload is held whole in memory).",
            1...(1 << 30)
        ) { $1.http.maxBodySize = $0 },
        integer(
            "max-packet",
            "Largest AEMP packet in bytes: the node cuts off a peer that sends a larger one, and HTTP input that would make one gets 413 message_too_large (default 67108864; Perl has no limit, and a node's whole database travels in one packet).",
            65_536...(256 << 20)
        ) { n, c in
            c.node.maxPacketSize = n
            c.node.maxUnsentBytes = max(c.node.maxUnsentBytes, 4 * n)  // a peer that reads is never cut off for a few big packets
        },
        integer("max-connections", "HTTP connections served at once (more get 503).", 1...19_000) { $1.http.maxConnections = $0 },
        integer(
            "max-mesh-handshakes",
            "Accepted mesh connections still in their handshake at once (default 256); beyond, a new one is closed at once.",
            1...100_000
        ) { $1.node.maxPendingHandshakes = $0 },
        integer(
            "max-mesh-handshakes-per-address",
            "The same, from one IP address (default 32).", 1...100_000
        ) { $1.node.maxPendingHandshakesPerAddress = $0 },
        integer(
            "connection-memory",
            "Bytes libmicrohttpd keeps per HTTP connection (request header block included); 4096 cuts an idle SSE subscriber from about 14 to 10 KB but refuses header blocks over about 3 KB (431).",
            2048...1_048_576
        ) { $1.http.connectionMemory = $0 },
        integer(
            "connection-timeout",
            "Seconds an HTTP request may take to arrive completely (header and body), and an idle keep-alive connection may stay open.",
            1...86_400
        ) { $1.http.connectionTimeout = $0 },
        integer(
            "peer-backlog",
            "Bytes a mesh node may leave unread before sends and calls to its ports get 503 peer_backlogged (it is cut off at 256 MiB).",
            65_536...(128 << 20)
        ) { $1.peerBacklog = $0 },
        integer("max-mailboxes", "Mailboxes the gateway holds at most.", 0...10_000_000) { $1.maxMailboxes = $0 },
        integer("max-pending-calls", "Calls (POST /v1/call) waiting for their reply at once; beyond, 503 over_capacity.", 1...10_000_000) {
            $1.maxPendingCalls = $0
        },
        integer("max-subscribers-per-family", "SSE and long-poll clients per family.", 1...1_000_000) {
            $1.maxSubscribersPerFamily = $0
        },
        integer(
            "remembered-mailboxes",
            "Names of deleted and expired mailboxes kept for 410 mailbox_gone answers (under 100 bytes each; older ones get 404).",
            0...10_000_000
        ) { $1.rememberedMailboxes = $0 },
        integer("mailbox-queue", "Default max_queue of a mailbox.", 1...10_000_000) { $1.mailboxQueue = $0 },
        integer(
            "max-mailbox-bytes",
            "Bytes all mailboxes may hold together (estimated; default 256 MiB): at the limit a new message makes its mailbox give up its oldest messages, or is given up itself, with a dropped entry.",
            1024...(1 << 40)
        ) { $1.maxMailboxBytes = $0 },
        integer("max-mailbox-queue", "Largest max_queue a client may ask for.", 1...10_000_000) { $1.maxMailboxQueue = $0 },
        integer("mailbox-ttl", "Default idle TTL of a mailbox, seconds.", 1...31_536_000) { $1.mailboxTTL = $0 },
        integer("max-mailbox-ttl", "Largest TTL a client may ask for, seconds.", 1...31_536_000) { $1.maxMailboxTTL = $0 },
        integer("default-wait", "Long-poll wait when none is given, seconds.", 0...3600) { $1.defaultWait = $0 },
        integer("max-wait", "Cap of the long-poll wait, seconds.", 0...3600) { $1.maxWait = $0 },
        number("call-timeout", "Default timeout of /v1/call, seconds.", 0.001...3600) { $1.defaultCallTimeout = $0 },
        number("max-call-timeout", "Largest timeout of /v1/call, seconds.", 0.001...3600) { $1.maxCallTimeout = $0 },
        integer("feed-history", "Changes a family feed keeps for resuming clients.", 1...1_000_000) { $1.feedHistory = $0 },
        number(
            "feed-idle", "Seconds a family feed may go without clients before it unsubscribes (its epoch and index are kept).",
            0.5...86_400
        ) { $1.feedIdle = $0 },
        integer(
            "feed-memory", "Idle families whose feed epoch and index are kept, so resuming clients get changes, not a reset.",
            0...10_000_000
        ) { $1.feedMemory = $0 },
        integer(
            "stream-backlog",
            "Bytes queued for one SSE client; replays go out in pieces of this size, and a feed client that stops reading is cut off with an overflow event.",
            1024...(1 << 30)
        ) { $1.streamBacklog = $0 },
        integer(
            "max-stream-bytes",
            "Bytes all event streams may hold unsent together (default 256 MiB): beyond, mailbox and feed streams wait for room (one event each at most), and a nodes stream that is behind is cut off.",
            1024...(1 << 40)
        ) { $1.maxStreamBytes = $0 },
        number("heartbeat-interval", "Seconds between SSE heartbeat comments.", 0.05...3600) { $1.heartbeatInterval = $0 },
        text("tls-cert", "PEM certificate (chain): serve HTTPS (with --tls-key).") { v, c, p in
            guard let bytes = readBytes(v) else { return p.append("cannot read \(v) (\(String(cString: strerror(errno))))") }
            if !String(decoding: bytes, as: UTF8.self).contains("-----BEGIN CERTIFICATE-----") {
                p.append("\(v) holds no PEM certificate")
            }
            c.http.tlsCertificate = bytes
        },
        text("tls-key", "PEM private key of --tls-cert.") { v, c, p in
            guard let bytes = readBytes(v) else { return p.append("cannot read \(v) (\(String(cString: strerror(errno))))") }
            if !String(decoding: bytes, as: UTF8.self).contains("PRIVATE KEY-----") { p.append("\(v) holds no PEM private key") }
            c.http.tlsKey = bytes
        },
        text("log-level", "trace, debug, info, notice, warning, error or critical.") { v, c, p in
            if let level = Logger.Level(rawValue: v) { c.logLevel = level } else { p.append("unknown log level \(v.debugDescription)") }
        },
        text("log-format", "Log lines as text, logfmt or json.") { v, c, p in
            if let f = LogFormat(rawValue: v) { c.logFormat = f } else { p.append("unknown log format \(v.debugDescription) (text, logfmt, json)") }
        },
        integer(
            "log-burst",
            "Log lines of one kind (same message, level and origin) written per --log-interval; the rest are counted and summarised in one line when the interval ends (0 = no limit; default 20).",
            0...1_000_000
        ) { $1.logBurst = $0 },
        number("log-interval", "Seconds of the log rate-limiting window of --log-burst (default 10).", 0.1...86_400) {
            $1.logInterval = $0
        },
        text("metrics-public", "Serve /metrics without a token even when tokens are configured (true/false).") { v, c, p in
            switch v.lowercased() {
            case "true", "1", "yes": c.metricsPublic = true
            case "false", "0", "no", "": c.metricsPublic = false
            default: p.append("\(v.debugDescription) is not true or false")
            }
        },
        text("profile", "Read secret, seeds and cert from this AnyEvent::MP profile ('' = top level).") { _, _, _ in },
        text("aemp-rc", "AnyEvent::MP profile file (default $PERL_ANYEVENT_MP_RC or ~/.perl-anyevent-mp).") { _, _, _ in },
        text("config", "JSON config file keyed by option name.") { _, _, _ in },
    ]

    private static func text(
        _ name: String, _ help: String, _ apply: @escaping @Sendable (String, inout GatewayConfiguration, inout [String]) -> Void
    ) -> Definition {
        Definition(name: name, help: help, isList: false) { v, c, p in apply(v.last ?? "", &c, &p) }
    }

    private static func list(
        _ name: String, _ help: String, _ apply: @escaping @Sendable ([String], inout GatewayConfiguration, inout [String]) -> Void
    ) -> Definition {
        Definition(name: name, help: help, isList: true, apply: apply)
    }

    private static func integer(
        _ name: String, _ help: String, _ range: ClosedRange<Int>, _ apply: @escaping @Sendable (Int, inout GatewayConfiguration) -> Void
    ) -> Definition {
        Definition(name: name, help: help, isList: false) { v, c, p in
            guard let raw = v.last, let n = Int(trim(raw)), range.contains(n) else {
                return p.append("\((v.last ?? "").debugDescription) is not an integer in \(range.lowerBound)...\(range.upperBound)")
            }
            apply(n, &c)
        }
    }

    private static func number(
        _ name: String, _ help: String, _ range: ClosedRange<Double>, _ apply: @escaping @Sendable (Double, inout GatewayConfiguration) -> Void
    ) -> Definition {
        Definition(name: name, help: help, isList: false) { v, c, p in
            guard let raw = v.last, let n = Double(trim(raw)), range.contains(n) else {
                return p.append("\((v.last ?? "").debugDescription) is not a number in \(range.lowerBound)...\(range.upperBound)")
            }
            apply(n, &c)
        }
    }
}

/// How log lines are written.
public enum LogFormat: String, Sendable {
    case text, logfmt, json
}

private func isAddress(_ s: String) -> Bool {
    guard let colon = s.lastIndex(of: ":"), let port = Int(s[s.index(after: colon)...]), (0...65535).contains(port) else {
        return false
    }
    return colon != s.startIndex
}

func trim(_ s: String) -> String {
    var v = Substring(s)
    while let c = v.first, c.isWhitespace { v.removeFirst() }
    while let c = v.last, c.isWhitespace { v.removeLast() }
    return String(v)
}

func readBytes(_ path: String) -> [UInt8]? {
    guard let f = fopen(path, "r") else { return nil }
    defer { fclose(f) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&buffer, 1, buffer.count, f)
        if n <= 0 { break }
        bytes += buffer[0..<n]
    }
    return bytes
}

extension String {
    fileprivate func replacingDashes() -> String {
        String(map { $0 == "-" ? "_" : $0 })
    }
}

extension GatewaySettings {
    /// The help text of a setting.
    public static func help(_ name: String) -> String {
        definitions.first { $0.name == name }?.help ?? ""
    }
}
