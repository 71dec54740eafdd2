#if canImport(Glibc)
import Glibc
#endif

/// Safe defaults against web pages (issue 17). A gateway often runs without tokens, on a
/// developer's machine or a private network, where every page its users open can send it
/// requests. Three checks, one place each, used alike by the general and the quick path:
///
/// - **Host** (DNS rebinding): a page on `attacker.example` whose name the attacker re-points at
///   127.0.0.1 is, for the browser, the same origin as the gateway, so it may read the answers
///   too. Its requests carry `Host: attacker.example`. Allowed: any IP address (a page whose
///   origin is an address cannot be re-pointed), `localhost` and `*.localhost`, the names the
///   gateway listens on, the machine's host name, and `--allowed-host` (`*` = any).
/// - **Origin** (CSRF): a state-changing request (anything but GET, HEAD, OPTIONS) sent by a page
///   of another origin than those `--cors-origin` allows is refused, whether or not the page can
///   read the answer: an HTML form or a `no-cors` fetch needs no preflight. Programs (curl,
///   Python) send no `Origin`, and a page of the gateway's own origin is allowed.
/// - **Content-Type**: a JSON body must be sent as `application/json` (or `application/…+json`).
///   The types a page may send without a preflight (`text/plain`, forms) never are, and the
///   preflight is where CORS decides. `--allow-any-content-type` turns this off.
struct BrowserSafety: Sendable {
    /// Lowercased names (no port) allowed in `Host` besides addresses and localhost.
    let hosts: Set<String>
    let anyHost: Bool
    let cors: CORSPolicy
    let anyContentType: Bool

    init(allowedHosts: [String], listenAddresses: [String], cors: CORSPolicy, anyContentType: Bool) {
        var hosts = Set(allowedHosts.map { Self.normalized($0) })
        anyHost = hosts.contains("*")
        for address in listenAddresses {
            let name = Self.normalized(Self.hostPart(address))
            if !Self.isAddressLiteral(name) && !name.isEmpty { hosts.insert(name) }
        }
        var buffer = [CChar](repeating: 0, count: 256)
        if gethostname(&buffer, buffer.count) == 0 {
            let name = Self.normalized(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
            if !name.isEmpty { hosts.insert(name) }
        }
        self.hosts = hosts
        self.cors = cors
        self.anyContentType = anyContentType
    }

    // MARK: - Host

    /// Refuses a `Host` that names no address of the gateway (none at all is HTTP/1.0's, allowed).
    func checkHost(_ host: String?) throws(Problem) {
        guard !anyHost, let host, !Self.isIPv4Authority(host) else { return }
        let name = Self.normalized(Self.hostPart(host))
        if Self.isAddressLiteral(name) || name == "localhost" || name.hasSuffix(".localhost") || hosts.contains(name) { return }
        throw Problem(
            403, "host_not_allowed", "Host not allowed",
            "Host \(host.debugDescription) is not a name of this gateway (a web page on another name may have been pointed at it: DNS rebinding); "
                + "addresses, localhost and the names it listens on are allowed, --allowed-host adds a name (* allows any)")
    }

    // MARK: - Origin

    /// Refuses a state-changing request from a page of an origin that is neither allowed by CORS
    /// nor the gateway's own.
    func checkOrigin(method: String, origin: String?, host: String?) throws(Problem) {
        guard let origin, Self.changesState(method) else { return }
        if cors.allows(origin) { return }
        if let host, let hostPart = Self.originHost(origin), hostPart == host.lowercased() { return }
        throw Problem(
            403, "origin_not_allowed", "Origin not allowed",
            "A page of origin \(origin.debugDescription) may not change anything through this gateway (cross-site request); "
                + "allow its origin with --cors-origin")
    }

    static func changesState(_ method: String) -> Bool {
        method != "GET" && method != "HEAD" && method != "OPTIONS"
    }

    /// `host[:port]` of a serialized origin (`scheme://host[:port]`), lowercased; nil for `null`
    /// or anything else.
    static func originHost(_ origin: String) -> String? {
        guard let r = origin.range(of: "://") else { return nil }
        let rest = origin[r.upperBound...]
        guard !rest.isEmpty, !rest.contains("/") else { return nil }
        return rest.lowercased()
    }

    // MARK: - Content-Type

    /// Refuses a JSON body sent as anything but JSON in UTF-8.
    func checkContentType(_ contentType: String?) throws(Problem) {
        guard !anyContentType, !Self.isJSON(contentType) else { return }
        throw Problem(
            415, "unsupported_media_type", "Unsupported media type",
            "The body must be JSON sent with Content-Type: application/json, got "
                + (contentType.map { "Content-Type: \($0)" } ?? "no Content-Type")
                + " (curl: --json, or -H 'Content-Type: application/json')")
    }

    /// `application/json` or `application/…+json`, with no charset or UTF-8.
    static func isJSON(_ contentType: String?) -> Bool {
        guard let contentType else { return false }
        if contentType == "application/json" { return true }  // nearly every request: no parsing
        let parts = contentType.split(separator: ";", omittingEmptySubsequences: false)
        let type = trim(String(parts[0])).lowercased()
        guard type == "application/json" || (type.hasPrefix("application/") && type.hasSuffix("+json")) else { return false }
        for parameter in parts.dropFirst() {
            let kv = parameter.split(separator: "=", maxSplits: 1)
            guard kv.count == 2, trim(String(kv[0])).lowercased() == "charset" else { continue }
            let charset = trim(String(kv[1])).lowercased().trimmingQuotes
            if charset != "utf-8" && charset != "utf8" { return false }
        }
        return true
    }

    // MARK: - Names

    /// `a.b.c.d` or `a.b.c.d:port` (the common `Host` of programs), checked without allocating.
    static func isIPv4Authority(_ host: String) -> Bool {
        var dots = 0, digits = 0, value = 0, inPort = false, portDigits = 0
        for c in host.utf8 {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                if inPort {
                    portDigits += 1
                    if portDigits > 5 { return false }
                } else {
                    digits += 1
                    value = value * 10 + Int(c - UInt8(ascii: "0"))
                    if digits > 3 || value > 255 { return false }
                }
            case UInt8(ascii: "."):
                if inPort || digits == 0 { return false }
                dots += 1
                digits = 0
                value = 0
            case UInt8(ascii: ":"):
                if inPort || dots != 3 || digits == 0 { return false }
                inPort = true
            default:
                return false
            }
        }
        return dots == 3 && (inPort ? portDigits > 0 : digits > 0)
    }

    /// The host of `host[:port]` or `[v6]:port` (brackets kept off).
    static func hostPart(_ hostAndPort: String) -> String {
        let s = trim(hostAndPort)
        if s.hasPrefix("[") {
            guard let close = s.firstIndex(of: "]") else { return s }
            return String(s[s.index(after: s.startIndex)..<close])
        }
        // One colon: host:port. More: a bare IPv6 address (not valid in Host, kept whole).
        if let colon = s.firstIndex(of: ":"), s[s.index(after: colon)...].firstIndex(of: ":") == nil { return String(s[..<colon]) }
        return s
    }

    /// Lowercased, without a trailing dot (`localhost.` is `localhost`).
    static func normalized(_ name: String) -> String {
        var n = name.lowercased()
        if n.hasSuffix(".") { n.removeLast() }
        return n
    }

    /// An IPv4 or IPv6 address (not a name), including the wildcards.
    static func isAddressLiteral(_ host: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }
}

extension String {
    fileprivate var trimmingQuotes: String {
        count >= 2 && hasPrefix("\"") && hasSuffix("\"") ? String(dropFirst().dropLast()) : self
    }
}
