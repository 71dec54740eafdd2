import AEMP

/// Bearer tokens (`--token`, `--read-token`): the one place a request's `Authorization` is
/// checked, for the general path and the quick one alike (`Gateway.checkAccess`).
struct Authentication: Sendable {
    /// The configured tokens, reduced once for `ConstantTime` comparison.
    private let digests: [(digest: ConstantTime.Digest, scope: TokenScope)]

    init(tokens: [String: TokenScope]) {
        digests = tokens.map { (ConstantTime.digest($0.key.utf8), $0.value) }
    }

    /// No tokens configured: every request may do everything.
    var isOff: Bool { digests.isEmpty }

    /// Refuses a request without a valid token (401, with `WWW-Authenticate`), and a change with a
    /// read-only token (403).
    func authorize(method: String, authorization: String?) throws(Problem) {
        guard !digests.isEmpty else { return }
        guard let header = authorization, header.lowercased().hasPrefix("bearer "),
            let scope = lookup(String(header.dropFirst(7)))  // constant time, see lookup
        else {
            var p = Problem(401, "unauthorized", "Unauthorized", "A valid bearer token is required (Authorization: Bearer <token>)")
            p.headers["WWW-Authenticate"] = "Bearer realm=\"aemp-gateway\""
            throw p
        }
        if scope == .readOnly && method != "GET" && method != "HEAD" {
            throw Problem(403, "read_only_token", "Read-only token", "This token may only read (GET)")
        }
    }

    /// Compares the presented token with every configured one, always all of them, each with
    /// `ConstantTime.equal` (never String equality or a dictionary lookup): the time taken tells
    /// neither which token matched nor where, or by how many characters, a wrong one differs. The
    /// configured tokens are reduced once, the presented one once per request.
    private func lookup(_ presented: String) -> TokenScope? {
        let given = ConstantTime.digest(Destination.trimmed(presented).utf8)
        var found: TokenScope?
        for (token, scope) in digests where ConstantTime.equal(token, given) {
            found = scope
        }
        return found
    }
}
