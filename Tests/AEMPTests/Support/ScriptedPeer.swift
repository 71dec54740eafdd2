import Foundation
import NIOCore
import NIOPosix
import Testing

@testable import AEMP

// A scripted AEMP peer for tests: real TCP on 127.0.0.1 (SwiftNIO), playing the Perl side of the
// handshake (aemp-protocol §4) and of the data phase (§5-§7) byte by byte, so tests can replay
// captured Perl conversations against a Swift node and feed it malformed input.
//
// Every read takes a deadline; nothing here sleeps to synchronise.

// MARK: - Errors

/// Why a scripted read or write did not deliver what the test wanted.
enum ScriptedPeerError: Error, CustomStringConvertible {
    /// Nothing suitable arrived before the deadline.
    case timeout(String)
    /// The connection closed before `what` arrived; `unread` is what was left in the buffer.
    case closed(String, unread: [UInt8], error: String?)
    /// The other side sent something the peer cannot use.
    case protocolViolation(String)

    var description: String {
        switch self {
        case .timeout(let what): return "timed out waiting for \(what)"
        case .closed(let what, let unread, let error):
            return "connection closed while waiting for \(what) (\(unread.count) unread bytes"
                + (error.map { ", error: \($0)" } ?? "") + ")"
        case .protocolViolation(let why): return "protocol violation: \(why)"
        }
    }
}

// MARK: - Connection state

/// What a scripted connection has received, and its data-phase codecs.
struct ScriptedInbox: Sendable {
    /// Received bytes not yet consumed by a read.
    var buffer = ByteBuffer()
    /// Bytes received in total.
    var received = 0
    /// The connection is closed (EOF, reset or local close).
    var closed = false
    /// The error that closed it, if any (e.g. "Connection reset by peer").
    var error: String?
    /// Decoder for the other side's packets, set by the handshake from its auth line.
    var decoder: PacketDecoder?
    /// Framing this peer sends in, set by the handshake (its own auth line).
    var sendFraming: Framing?
}

/// Feeds a channel's bytes and its end into a `Watched<ScriptedInbox>`.
final class ScriptedPeerHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    let inbox: Watched<ScriptedInbox>
    let onActive: (@Sendable (any Channel) -> Void)?

    init(inbox: Watched<ScriptedInbox>, onActive: (@Sendable (any Channel) -> Void)? = nil) {
        self.inbox = inbox
        self.onActive = onActive
    }

    func channelActive(context: ChannelHandlerContext) {
        onActive?(context.channel)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        inbox.update { s in
            s.received += bytes.readableBytes
            s.buffer.writeBuffer(&bytes)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        inbox.update { $0.closed = true }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        inbox.update { s in
            if s.error == nil { s.error = "\(error)" }
        }
        context.close(promise: nil)
    }
}

/// How a scripted peer runs its side of the handshake.
struct ScriptedHandshakeOptions: Sendable {
    /// Our greeting line 1 (e.g. Perl's recorded one, peeraddr rewritten).
    var greeting1: String
    /// Our greeting line 2 (the nonce).
    var greeting2: String
    /// The secret we compute tokens with.
    var secret: String = testSecret
    /// The auth method named in our auth line.
    var authMethod: AuthMethod = .hmacSHA3_512
    /// The framing named in our auth line; nil = Perl's rule: the first entry of the node's list that
    /// our own list (field 5 of `greeting1`) contains (aemp-protocol §4.1 step 5).
    var sendFraming: String?
    /// Send this token instead of the computed one.
    var tokenOverride: String?
    /// Line terminator for everything we send.
    var lineEnding = "\n"
    /// Appended to our auth line (Perl ignores fields after the third).
    var authSuffix = ""
}

/// What the Swift node sent during a scripted handshake.
struct ScriptedHandshake: Sendable {
    var ourLines: (String, String)
    var nodeLines: (String, String)
    /// The node's greeting line 1, parsed.
    var nodeGreeting: Greeting?
    var nodeAuthLine: String
    var nodeAuthMethod: String
    var nodeToken: String
    /// The framing the node named in its auth line (it sends in it).
    var nodeFraming: String
    /// The node's token equals the one `options.secret` predicts over the real lines.
    var nodeTokenValid: Bool
    /// The framing we named in our auth line.
    var ourFraming: String
}

// MARK: - Peer

/// One scripted TCP connection (dialed or accepted).
final class ScriptedPeer: Sendable {
    let channel: any Channel
    let inbox: Watched<ScriptedInbox>
    /// Our end, `127.0.0.1:port`.
    let localAddress: String
    /// The other end, `127.0.0.1:port`.
    let remoteAddress: String

    init(channel: any Channel, inbox: Watched<ScriptedInbox>) {
        self.channel = channel
        self.inbox = inbox
        localAddress = Self.format(channel.localAddress)
        remoteAddress = Self.format(channel.remoteAddress)
    }

    static func format(_ address: SocketAddress?) -> String {
        guard let address, let ip = address.ipAddress, let port = address.port else { return "?" }
        return "\(ip):\(port)"
    }

    /// Dials `host:port` (127.0.0.1 in tests).
    /// `receiveBufferSize` fixes the socket's receive buffer (set before connecting, so the kernel
    /// does not grow it: with autotuning a loopback socket can take 32 MB and more unread).
    static func dial(_ address: String, sendBufferSize: Int? = nil, receiveBufferSize: Int? = nil) async throws -> ScriptedPeer {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
            throw ScriptedPeerError.protocolViolation("bad address \(address)")
        }
        let host = String(address[..<colon])
        let inbox = Watched(ScriptedInbox())
        let handler = ScriptedPeerHandler(inbox: inbox)
        var bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(5))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
        if let sendBufferSize {
            bootstrap = bootstrap.channelOption(.socketOption(.so_sndbuf), value: SocketOptionValue(sendBufferSize))
        }
        if let receiveBufferSize {
            bootstrap = bootstrap.channelOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(receiveBufferSize))
        }
        let channel = try await bootstrap.connect(host: host, port: port).get()
        return ScriptedPeer(channel: channel, inbox: inbox)
    }

    /// Stops taking bytes from the socket: its receive buffer fills, then the node's writes wait.
    func stopReading() async throws {
        try await channel.setOption(.autoRead, value: false).get()
    }

    /// Takes bytes from the socket again (after `stopReading`).
    func resumeReading() async throws {
        try await channel.setOption(.autoRead, value: true).get()
        channel.read()
    }

    /// Closes the connection (idempotent).
    func close() async {
        try? await channel.close()
    }

    // MARK: Writing

    /// Writes raw bytes and waits until they are handed to the socket.
    func write(_ bytes: [UInt8]) async throws {
        var buffer = channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        try await channel.writeAndFlush(buffer).get()
    }

    /// Writes a string's UTF-8 bytes.
    func write(_ text: String) async throws {
        try await write(Array(text.utf8))
    }

    /// Writes one packet in our send framing (Perl-style CBOR: ASCII strings as byte strings).
    func send(_ packet: [Value]) async throws {
        guard let framing = inbox.read({ $0.sendFraming }) else {
            throw ScriptedPeerError.protocolViolation("send before the handshake chose a framing")
        }
        try await write(ScriptedCodec.encode(packet, framing: framing))
    }

    // MARK: Reading

    /// Runs `parse` on the inbox until it returns a value; throws on timeout or when the connection
    /// closed first (`parse` still sees what was received before the close). Every read waits for
    /// something that must come, so the wait is stretched under a sanitizer.
    func read<R: Sendable>(
        _ what: String, within seconds: Double, _ parse: (inout ScriptedInbox) throws -> R?
    ) async throws -> R {
        let deadline = NIODeadline.now() + .milliseconds(Int64(seconds * sanitizerSlowdown * 1000))
        let result = try await inbox.wait(until: deadline) { s -> R? in
            if let r = try parse(&s) { return r }
            if s.closed {
                throw ScriptedPeerError.closed(what, unread: Array(s.buffer.readableBytesView), error: s.error)
            }
            return nil
        }
        guard let result else { throw ScriptedPeerError.timeout(what) }
        return result
    }

    /// The next line (LF-terminated, a CR before the LF removed).
    func readLine(within seconds: Double = 5, _ what: String = "a line") async throws -> String {
        try await read(what, within: seconds) { s -> String? in
            let view = s.buffer.readableBytesView
            guard let lf = view.firstIndex(of: 0x0A) else { return nil }
            var bytes = Array(view[view.startIndex..<lf])
            s.buffer.moveReaderIndex(forwardBy: bytes.count + 1)
            if bytes.last == 0x0D { bytes.removeLast() }
            return String(decoding: bytes, as: UTF8.self)
        }
    }

    /// The next packet from the node, decoded in the framing its auth line named.
    func readPacket(within seconds: Double = 5, _ what: String = "a packet") async throws -> [Value] {
        try await read(what, within: seconds) { s in try Self.nextPacket(&s, skippingNoOps: false) }
    }

    /// The next packet that is not a no-op (`[]`, `[""]`, `["",""]`, `["","devnull",…]`), which
    /// Perl ignores and a node may send as keepalive (aemp-protocol §3).
    func readMeaningfulPacket(within seconds: Double = 5, _ what: String = "a packet") async throws -> [Value] {
        try await read(what, within: seconds) { s in try Self.nextPacket(&s, skippingNoOps: true) }
    }

    /// The next decodable packet in the inbox (no-ops skipped if asked), or nil for now.
    private static func nextPacket(_ s: inout ScriptedInbox, skippingNoOps: Bool) throws -> [Value]? {
        guard var decoder = s.decoder else {
            throw ScriptedPeerError.protocolViolation("reading a packet before the handshake")
        }
        defer { s.decoder = decoder }
        // Like Perl's JSON::XS and CBOR::XS this peer decodes 512 levels and no more (aemp-protocol
        // §14); a Perl node would lose a deeper packet and every later one, so one is a failure.
        func perlWouldWedge() throws {
            let skipped = decoder.takeNotes().skipped
            if !skipped.isEmpty {
                throw ScriptedPeerError.protocolViolation("a Perl node would be wedged by \(skipped.joined(separator: "; "))")
            }
        }
        while let p = try decoder.next(from: &s.buffer) {
            try perlWouldWedge()
            if !skippingNoOps || !isNoOp(p) { return p }
        }
        try perlWouldWedge()
        return nil
    }

    static func isNoOp(_ p: [Value]) -> Bool {
        if p.isEmpty { return true }
        guard p[0] == "" else { return false }
        if p.count == 1 { return true }
        return p[1] == "" || p[1] == "devnull"
    }

    /// Waits for the connection to close, discarding nothing: returns the unread bytes and the error.
    func waitForClose(within seconds: Double = 5) async throws -> (unread: [UInt8], error: String?) {
        try await read("the connection to close", within: seconds) { s -> ScriptedClosed? in
            guard s.closed else { return nil }
            return ScriptedClosed(unread: Array(s.buffer.readableBytesView), error: s.error)
        }.tuple
    }

    /// Whether the connection has closed.
    var isClosed: Bool { inbox.read { $0.closed } }

    /// The bytes received and not read yet.
    func inboxBytes() -> [UInt8] { inbox.read { Array($0.buffer.readableBytesView) } }

    // MARK: Handshake (the Perl side of aemp-protocol §4.1)

    /// Sends our greetings at once (as Perl does), reads the node's two lines and its auth line,
    /// verifies its token, then sends our auth line and sets up the packet codecs.
    func handshake(_ options: ScriptedHandshakeOptions, within seconds: Double = 5) async throws -> ScriptedHandshake {
        try await sendGreeting(options)
        let nodeLines = try await readGreeting(within: seconds)
        return try await completeHandshake(options, nodeLines: nodeLines, within: seconds)
    }

    /// Writes greeting lines 1 and 2.
    func sendGreeting(_ options: ScriptedHandshakeOptions) async throws {
        try await write(options.greeting1 + options.lineEnding + options.greeting2 + options.lineEnding)
    }

    /// Reads the node's two greeting lines.
    func readGreeting(within seconds: Double = 5) async throws -> (String, String) {
        let l1 = try await readLine(within: seconds, "the node's greeting line 1")
        let l2 = try await readLine(within: seconds, "the node's greeting line 2")
        return (l1, l2)
    }

    /// Reads and checks the node's auth line, then sends ours.
    func completeHandshake(
        _ options: ScriptedHandshakeOptions, nodeLines: (String, String), within seconds: Double = 5
    ) async throws -> ScriptedHandshake {
        let ours = (options.greeting1, options.greeting2)
        let nodeGreeting = Greeting(line: Substring(nodeLines.0))
        let authLine = try await readLine(within: seconds, "the node's auth line")
        let fields = authLine.split(separator: ";", omittingEmptySubsequences: false).map(String.init)
        guard fields.count >= 3 else { throw ScriptedPeerError.protocolViolation("auth line \(authLine)") }
        let auth = Authenticator(secret: options.secret)
        var valid = false
        if let method = AuthMethod(rawValue: fields[0]) {
            let expected = auth.tokenExpected(method, local: ours, remote: nodeLines)
            valid = expected == fields[1]
        }
        let ourList = Greeting(line: Substring(options.greeting1))?.framings ?? []
        let framing =
            options.sendFraming
            ?? nodeGreeting?.framings.first(where: { ourList.contains($0) && Framing(rawValue: $0) != nil })
            ?? "json"
        let token = options.tokenOverride ?? auth.tokenToSend(options.authMethod, local: ours, remote: nodeLines)
        inbox.update { s in
            s.decoder = Framing(rawValue: fields[2]).map { PacketDecoder($0, maxPacketSize: 64 << 20) }
            s.sendFraming = Framing(rawValue: framing)
        }
        try await write("\(options.authMethod.rawValue);\(token);\(framing)\(options.authSuffix)" + options.lineEnding)
        return ScriptedHandshake(
            ourLines: ours, nodeLines: nodeLines, nodeGreeting: nodeGreeting, nodeAuthLine: authLine,
            nodeAuthMethod: fields[0], nodeToken: fields[1], nodeFraming: fields[2], nodeTokenValid: valid,
            ourFraming: framing)
    }

    /// A greeting line 1 with its `peeraddr=` pair replaced (Perl puts the address it sees there).
    static func rewritePeerAddr(_ greeting1: String, to address: String) -> String {
        greeting1.split(separator: ";", omittingEmptySubsequences: false).map { field in
            field.hasPrefix("peeraddr=") ? "peeraddr=\(address)" : String(field)
        }.joined(separator: ";")
    }

    /// A fresh 88-character nonce like Perl's (Base64 of 66 random bytes).
    static func nonce() -> String {
        var rng = SystemRandomNumberGenerator()
        return Base64.encode((0..<66).map { _ in UInt8.random(in: 0...255, using: &rng) })
    }

    /// A Perl-like greeting line 1 for `nodeID`.
    static func perlGreeting(nodeID: String, framings: String = "json", peerAddr: String) -> String {
        "aemp;1;\(nodeID);tls_sha3_512,hmac_sha3_512,tls_anon,cleartext;\(framings);"
            + "peeraddr=\(peerAddr);gproto=1;provider=AE-2.02;mproto=1"
    }
}

/// Sendable carrier for `waitForClose`.
struct ScriptedClosed: Sendable {
    var unread: [UInt8]
    var error: String?
    var tuple: (unread: [UInt8], error: String?) { (unread, error) }
}

// MARK: - Listener

/// A listening socket on 127.0.0.1:0 that hands out accepted connections as `ScriptedPeer`s.
final class ScriptedListener: Sendable {
    let channel: any Channel
    private let accepted: Watched<[ScriptedPeer]>
    private let taken = Locked(0)
    /// `127.0.0.1:<port>`.
    let address: String

    private init(channel: any Channel, accepted: Watched<[ScriptedPeer]>) {
        self.channel = channel
        self.accepted = accepted
        address = ScriptedPeer.format(channel.localAddress)
    }

    static func start() async throws -> ScriptedListener {
        let accepted = Watched<[ScriptedPeer]>([])
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { child in
                child.eventLoop.makeCompletedFuture {
                    let inbox = Watched(ScriptedInbox())
                    let handler = ScriptedPeerHandler(inbox: inbox) { channel in
                        let peer = ScriptedPeer(channel: channel, inbox: inbox)
                        accepted.update { $0.append(peer) }
                    }
                    try child.pipeline.syncOperations.addHandler(handler)
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return ScriptedListener(channel: channel, accepted: accepted)
    }

    /// The next accepted connection (in order of arrival).
    func accept(within seconds: Double = 10) async throws -> ScriptedPeer {
        let index = taken.withLock { n -> Int in
            n += 1
            return n - 1
        }
        let deadline = NIODeadline.now() + .milliseconds(Int64(seconds * sanitizerSlowdown * 1000))
        guard let peer = try await accepted.wait(until: deadline, { list in index < list.count ? list[index] : nil })
        else { throw ScriptedPeerError.timeout("an incoming connection") }
        return peer
    }

    /// Closes the listener and every connection it accepted.
    func close() async {
        try? await channel.close()
        for peer in accepted.read({ $0 }) { await peer.close() }
    }
}

// MARK: - Codecs

/// Packet encoding as a Perl node does it (aemp-protocol §5).
enum ScriptedCodec {
    static func encode(_ packet: [Value], framing: Framing) throws -> [UInt8] {
        switch framing {
        case .json:
            var buffer = ByteBuffer()
            try JSONCodec.encode(.array(packet), into: &buffer)
            return Array(buffer.readableBytesView)
        case .cbor:
            return perlCBOR(.array(packet))
        }
    }

    /// CBOR the way CBOR::XS encodes Perl data: strings without the UTF-8 flag (here: pure ASCII)
    /// as byte strings (major 2), others as text strings; floats as float32 when exact; definite
    /// lengths, no tags (aemp-protocol §5.2).
    static func perlCBOR(_ value: Value) -> [UInt8] {
        var out: [UInt8] = []
        perlCBOR(value, into: &out)
        return out
    }

    private static func perlCBOR(_ value: Value, into out: inout [UInt8]) {
        func head(_ major: UInt8, _ n: UInt64) {
            let m = major << 5
            switch n {
            case 0..<24: out.append(m | UInt8(n))
            case 24...0xFF: out += [m | 24, UInt8(n)]
            case 0x100...0xFFFF: out += [m | 25] + withUnsafeBytes(of: UInt16(n).bigEndian, Array.init)
            case 0x10000...0xFFFF_FFFF: out += [m | 26] + withUnsafeBytes(of: UInt32(n).bigEndian, Array.init)
            default: out += [m | 27] + withUnsafeBytes(of: n.bigEndian, Array.init)
            }
        }
        func string(_ s: String) {
            let bytes = Array(s.utf8)
            head(bytes.allSatisfy { $0 < 0x80 } ? 2 : 3, UInt64(bytes.count))
            out += bytes
        }
        switch value {
        case .null: out.append(0xF6)
        case .bool(let b): out.append(b ? 0xF5 : 0xF4)
        case .int(let i):
            if i >= 0 { head(0, UInt64(i)) } else { head(1, UInt64(-1 - i)) }
        case .double(let d):
            if let f = Float(exactly: d) {
                out.append(0xFA)
                out += withUnsafeBytes(of: f.bitPattern.bigEndian, Array.init)
            } else {
                out.append(0xFB)
                out += withUnsafeBytes(of: d.bitPattern.bigEndian, Array.init)
            }
        case .string(let s): string(s)
        case .bigInteger, .codePoints: out += CBORCodec.encode(value)
        case .array(let a):
            head(4, UInt64(a.count))
            for e in a { perlCBOR(e, into: &out) }
        case .object(let o):
            head(5, UInt64(o.count))
            for key in o.keys.sorted() {
                string(key)
                perlCBOR(o[key]!, into: &out)
            }
        }
    }

    static func unhex(_ hex: String) -> [UInt8] {
        var out: [UInt8] = []
        var high: UInt8?
        for c in hex.utf8 {
            let v: UInt8
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): v = c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): v = c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): v = c - UInt8(ascii: "A") + 10
            default: continue
            }
            if let h = high {
                out.append(h << 4 | v)
                high = nil
            } else {
                high = v
            }
        }
        return out
    }
}

// MARK: - Captured conversations

/// One connection of a captured scenario (`shared/aemp-vectors/<scenario>/transcript.json`).
struct ReplayCapture: Sendable {
    struct Packet: Sendable {
        /// `c2s` or `s2c`.
        var dir: String
        var framing: String
        var raw: [UInt8]
        var decoded: Value
    }

    var clientNode: String
    var serverNode: String
    /// Greeting lines by direction (`c2s`, `s2c`).
    var greeting1: [String: String]
    var greeting2: [String: String]
    var auth: [String: String]
    var packets: [Packet]

    /// Connection `id` (e.g. `conn03`) of `scenario` (e.g. `json`).
    static func load(_ scenario: String, _ id: String) throws -> ReplayCapture {
        let path = "\(scenario)/transcript.json"
        let root = try Vectors.json(path)
        guard let conn = root.objectValue?["connections"]?.arrayValue?.first(where: { $0.objectValue?["id"] == .string(id) }),
            let c = conn.objectValue
        else { throw ScriptedPeerError.protocolViolation("\(scenario)/\(id) not in \(path)") }
        var g1: [String: String] = [:], g2: [String: String] = [:], auth: [String: String] = [:]
        for dir in ["c2s", "s2c"] {
            let h = c["handshake"]?.objectValue?[dir]?.objectValue
            g1[dir] = h?["greeting1"]?.stringValue
            g2[dir] = h?["greeting2"]?.stringValue
            auth[dir] = h?["auth"]?.stringValue
        }
        let packets = (c["packets"]?.arrayValue ?? []).compactMap { p -> Packet? in
            guard let o = p.objectValue, let dir = o["dir"]?.stringValue, let hex = o["raw_hex"]?.stringValue else {
                return nil
            }
            return Packet(dir: dir, framing: o["framing"]?.stringValue ?? "", raw: ScriptedCodec.unhex(hex),
                          decoded: o["decoded"] ?? .null)
        }
        return ReplayCapture(
            clientNode: c["client_node"]?.stringValue ?? "", serverNode: c["server_node"]?.stringValue ?? "",
            greeting1: g1, greeting2: g2, auth: auth, packets: packets)
    }
}

// MARK: - Cleanup

/// Collects things to close at the end of a test, success or failure.
final class ScriptedResources: Sendable {
    private let closers = Locked<[@Sendable () async -> Void]>([])

    func add(_ closer: @escaping @Sendable () async -> Void) {
        closers.withLock { $0.append(closer) }
    }

    @discardableResult
    func node(_ node: Node) -> Node {
        add { await node.shutdown() }
        return node
    }

    @discardableResult
    func peer(_ peer: ScriptedPeer) -> ScriptedPeer {
        add { await peer.close() }
        return peer
    }

    @discardableResult
    func listener(_ listener: ScriptedListener) -> ScriptedListener {
        add { await listener.close() }
        return listener
    }

    /// Closes everything, newest first.
    func closeAll() async {
        let all = closers.withLock { c -> [@Sendable () async -> Void] in
            let all = c
            c.removeAll()
            return all
        }
        for closer in all.reversed() { await closer() }
    }

    /// Runs `body`, then closes everything it registered (also when it throws).
    static func with<T: Sendable>(_ body: (ScriptedResources) async throws -> T) async throws -> T {
        let resources = ScriptedResources()
        do {
            let result = try await body(resources)
            await resources.closeAll()
            return result
        } catch {
            await resources.closeAll()
            throw error
        }
    }
}

/// Builds a node configuration for scripted tests (127.0.0.1 only, short timeouts).
func scriptedNodeConfiguration(
    id: String, binds: [String] = [], seeds: [String] = [], framings: [Framing] = [.json, .cbor],
    handshakeTimeout: TimeAmount = stretched(.seconds(5))
) -> NodeConfiguration {
    var c = NodeConfiguration(secret: testSecret)
    c.nodeID = id
    c.binds = binds
    c.seeds = seeds
    c.framings = framings
    c.handshakeTimeout = handshakeTimeout
    c.connectTimeout = .seconds(5)
    c.seedBackoffLimit = .seconds(2)
    c.logger.logLevel = .notice
    return c
}
