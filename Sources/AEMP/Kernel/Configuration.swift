import Logging
import NIOCore

/// What Perl's `configure` takes (aemp-protocol §2, §10): identity, secret, listeners and seeds.
public struct NodeConfiguration: Sendable {
    /// Node ID template; `%n` = host name, `%u` or a trailing `/` = random suffix.
    /// The default, `"<host>/<random>"`, is unique per process like Perl's.
    public var nodeID: String = "%n/"
    /// The shared secret (raw bytes are used as the HMAC key). May be empty when `certificate` is
    /// set: such a node authenticates only with TLS, as a Perl node with a `cert` and no `secret`.
    public var secret: [UInt8]
    /// The network's certificate (Perl's profile `cert`): with it the node asks for TLS in its
    /// greeting, and every connection to a peer that asks too is TLS, both sides presenting and
    /// verifying certificates (aemp-protocol §4.5).
    public var certificate: MeshCertificate?
    /// Listen addresses `host:port` (port 0 picks a free one); empty = private node.
    public var binds: [String] = []
    /// Seed addresses `host:port`.
    public var seeds: [String] = []
    /// Framings we accept from peers, in preference order (aemp-protocol §4.1 step 5). CBOR first,
    /// as Perl's default `cbor,json,storable`: it is also the cheaper one to encode and decode.
    public var framings: [Framing] = [.cbor, .json]
    /// Handshake deadline (Perl's `monitor_timeout`, 30 s).
    public var handshakeTimeout: TimeAmount = .seconds(30)
    /// How long queued messages wait for a connection before they are dropped and monitors fire,
    /// while the node's address is being looked up (no master yet, `g_find` unanswered) or dialed.
    /// When the network answers that the node has no address, they fail at once with
    /// `transport_error <node> "no known address"`, as in Perl (aemp-protocol §9).
    public var connectTimeout: TimeAmount = .seconds(10)
    /// Interval between dial attempts to a node's different addresses (Perl's `connect_interval`).
    public var connectInterval: TimeAmount = .seconds(2)
    /// Upper bound of the seed reconnect backoff.
    public var seedBackoffLimit: TimeAmount = .seconds(30)
    /// How long a global node keeps the keys a dead global carried for its slaves, so that they
    /// stay visible while those slaves re-register with another global (Perl drops them at once,
    /// leaving a window, aemp-protocol §10.2). Zero restores Perl's behaviour.
    public var globalLossGrace: TimeAmount = .seconds(5)
    /// Largest packet accepted from a peer; a peer that sends a larger one is cut off. Perl has no
    /// limit, and `g_slave` carries a node's whole database in one packet: see
    /// `MeshLimits.defaultMaxPacketSize`. Give every Swift node of a network the same value.
    public var maxPacketSize: Int = MeshLimits.defaultMaxPacketSize
    /// Bytes sent to a peer and not yet taken by it beyond which it counts as no longer reading:
    /// its connection is closed with a logged reason and its monitors fire with transport_error,
    /// instead of buffering without bound. Four times the largest packet, so that a peer that reads
    /// is not cut off by a burst of big packets.
    public var maxUnsentBytes: Int = 256 << 20
    /// Accepted connections still in their handshake (not authenticated) at once, from anyone;
    /// beyond, a new one is closed at once. Silent or slow peers cannot take every descriptor.
    public var maxPendingHandshakes: Int = 256
    /// The same, from one IP address.
    public var maxPendingHandshakesPerAddress: Int = 32
    /// Logger for the node; connections add their own metadata.
    public var logger: Logger = Logger(label: "aemp")

    /// A configuration with the given secret (string form).
    public init(secret: String) {
        self.secret = Array(secret.utf8)
    }

    /// A configuration with the given secret bytes.
    public init(secretBytes: [UInt8]) {
        self.secret = secretBytes
    }
}

/// Why a node could not start.
public enum NodeError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The configured node ID is not usable.
    case invalidNodeID(String)
    /// A bind or seed address is not `host:port`.
    case invalidAddress(String)
    /// Listening on an address failed.
    case bindFailed(address: String, reason: String)
    /// Neither a secret nor a certificate was configured (Perl cannot authenticate without one,
    /// aemp-protocol §4.4-4.5).
    case missingSecret
    /// The certificate cannot be used (its key does not match, TLS refuses it).
    case invalidCertificate(String)
    /// The node has been shut down.
    case shutDown

    public var description: String {
        switch self {
        case .invalidNodeID(let why): return "invalid node ID: \(why)"
        case .invalidAddress(let a): return "invalid address \(a.debugDescription): expected host:port"
        case .bindFailed(let a, let r): return "cannot listen on \(a): \(r)"
        case .missingSecret: return "no shared secret and no mesh certificate configured: a node needs one to authenticate"
        case .invalidCertificate(let why): return why
        case .shutDown: return "the node has been shut down"
        }
    }
}

/// Splits `host:port` (IPv6 as `[addr]:port`).
func splitHostPort(_ address: String) -> (host: String, port: Int)? {
    var host: Substring
    let portPart: Substring
    if address.hasPrefix("[") {
        guard let close = address.firstIndex(of: "]") else { return nil }
        host = address[address.index(after: address.startIndex)..<close]
        let after = address[address.index(after: close)...]
        guard after.hasPrefix(":") else { return nil }
        portPart = after.dropFirst()
    } else {
        guard let colon = address.lastIndex(of: ":") else { return nil }
        host = address[..<colon]
        portPart = address[address.index(after: colon)...]
    }
    guard let port = Int(portPart), (0...65535).contains(port), !host.isEmpty else { return nil }
    if host == "*" { host = "0.0.0.0" }
    return (String(host), port)
}
