import Logging
import NIOCore
import NIOSSL
import Synchronization

/// What a connection tells its owner (the kernel) as the handshake and data phase progress.
/// Every call happens on the connection's event loop.
protocol ConnectionDelegate: AnyObject {
    /// The peer's first greeting line arrived; return a reason to refuse it, or `nil` to go on.
    func connection(_ connection: Connection, checkGreeting greeting: Greeting) -> String?
    /// Both auth lines checked out; the connection carries packets from now on.
    func connectionEstablished(_ connection: Connection)
    /// One packet arrived on an established connection.
    func connection(_ connection: Connection, received packet: [Value])
    /// The connection is gone (it may never have been established).
    func connectionClosed(_ connection: Connection, reason: String)
    /// Whether another connection with the same peer is up or in its handshake (crossing dials):
    /// then the peer closing this one after its greeting is routine.
    func connectionHasSibling(_ connection: Connection) -> Bool
}

extension ConnectionDelegate {
    func connectionHasSibling(_ connection: Connection) -> Bool { false }
}

/// A connection's bytes written but not yet taken by the peer: changed on the connection's loop,
/// read from any thread (an HTTP thread that decides whether to accept more for that peer).
final class UnsentBytes: Sendable {
    private let bytes = Atomic<Int>(0)
    var value: Int { bytes.load(ordering: .relaxed) }
    func add(_ n: Int) { bytes.add(n, ordering: .relaxed) }
}

/// The unsent bytes of each peer's live connection, by node ID: set and removed by the kernel as
/// connections come and go, read from any thread.
final class PeerBacklogs: Sendable {
    private let byPeer = Locked<[String: UnsentBytes]>([:])

    func set(_ id: String, _ counter: UnsentBytes) {
        byPeer.withLock { $0[id] = counter }
    }

    /// Forgets `id`'s counter if it is still `counter` (a newer connection may have replaced it).
    func remove(_ id: String, _ counter: UnsentBytes) {
        byPeer.withLock { if $0[id] === counter { $0[id] = nil } }
    }

    func bytes(_ id: String) -> Int {
        byPeer.withLock { $0[id]?.value ?? 0 }
    }
}

/// Handshake and packet settings of a connection (aemp-protocol §3-§5).
struct ConnectionSettings: Sendable {
    var nodeID: String
    var authenticator: Authenticator
    /// Framings we accept, in preference order; the peer sends in the first it supports.
    var framings: [Framing]
    var handshakeTimeout: TimeAmount
    var maxHandshakeBuffer = 4096
    var maxPacketSize: Int
    /// Bytes written to the socket but not yet taken by the peer beyond which the peer counts as
    /// no longer reading: the connection is closed (its monitors fire with transport_error).
    var maxUnsentBytes: Int = 256 << 20
    var provider = "AEMP-Swift-0.1"
    /// The network certificate's TLS contexts, when the node has one: the greeting then says
    /// `tls=1.0` and TLS starts after the greetings when the peer's says so too (aemp-protocol §4.5).
    var tls: MeshTLSContexts?

    /// Whether a shared secret is configured (a node with a certificate may have none).
    var hasSecret: Bool { !authenticator.secret.isEmpty }
}

/// What a node's connection to a peer is, for operators (`Node.connections()`).
public struct ConnectionInfo: Sendable, Equatable {
    /// The peer's node ID.
    public var node: String
    /// The peer's address as `host:port`.
    public var address: String
    /// Whether we dialed the peer (else it dialed us).
    public var dialed: Bool
    /// The TLS version, e.g. `TLSv1.3`, when the connection is TLS; nil when it is not.
    public var tls: String?
    /// The auth method the peer authenticated with (`tls_sha3_512`, `hmac_sha3_512`, …).
    public var auth: String
    /// The framing we send in and the one the peer sends in.
    public var sendFraming: String
    public var receiveFraming: String
}

/// One TCP connection between two nodes: runs the symmetric handshake of aemp-protocol §4, then
/// decodes and encodes packets in the negotiated framings (one per direction).
final class Connection: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Which side opened the TCP connection.
    enum Origin: Equatable {
        /// We dialed `address` (`host:port`).
        case dialed(address: String)
        /// The peer dialed us.
        case accepted
    }

    private enum State {
        case greeting1, greeting2, auth, established, closed
    }

    let origin: Origin
    private let settings: ConnectionSettings
    private weak var delegate: (any ConnectionDelegate)?
    private(set) var logger: Logger
    private var state = State.greeting1
    private var inbound = ByteBuffer()
    private var context: ChannelHandlerContext?
    private var handshakeTimer: Scheduled<Void>?
    private var closeReason: String?
    private var closing = false
    /// The close is the peer's fault (it broke the protocol): logged as a warning, not routine.
    private var peerFault = false
    /// The handshake failed for a reason an operator must fix (TLS without a shared secret, a
    /// duplicate node ID): logged as a warning.
    private var needsOperator = false
    /// Packets of the current loop tick, written and flushed as one buffer at its end (one
    /// write per tick instead of one per packet).
    private var outgoing: ByteBuffer?
    /// Bytes handed to the channel whose write has not completed yet (the peer has not taken them).
    /// Written on the loop only; read from any thread through `Node.unsentBytes(to:)`.
    let unsent = UnsentBytes()
    private var unsentBytes: Int { unsent.value }

    /// Our role in the TLS handshake, once TLS started on this connection (aemp-protocol §4.5).
    private enum TLSRole { case client, server }
    private var tlsRole: TLSRole?
    private var tlsHandler: NIOSSLHandler?
    /// The auth method the peer used, once established.
    private var receivedAuth: AuthMethod?
    /// Inside `process()`: bytes read meanwhile (decrypted by TLS as we hand it the bytes that
    /// followed the greeting) are only appended; the running loop takes them.
    private var processing = false

    private var localLines = ("", "")
    private var remoteLine1 = ""
    /// The peer's greeting, once read.
    private(set) var remoteGreeting: Greeting?
    /// The peer's node ID, once its greeting has been read.
    var peerID: String? { remoteGreeting?.nodeID }
    private var sendFraming = Framing.json
    private var decoder: PacketDecoder?
    /// Warnings about packets skipped or not sent for their values.
    private var droppedWarnings = LogBudget()
    /// The framing the peer sends in (from its auth line), once established.
    private(set) var receiveFraming: Framing?
    /// Whether the handshake completed and the connection is still open.
    var isEstablished: Bool { state == .established && !closing }
    /// The remote address as `host:port`, for logs.
    private(set) var remoteAddress = "?"
    /// Bytes received and not yet consumed (a handshake line or packet in progress); bounded by
    /// `maxHandshakeBuffer` and `maxPacketSize` plus one read.
    var bufferedInboundBytes: Int { inbound.readableBytes }

    init(origin: Origin, settings: ConnectionSettings, delegate: any ConnectionDelegate, logger: Logger) {
        self.origin = origin
        self.settings = settings
        self.delegate = delegate
        self.logger = logger
    }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        inbound = context.channel.allocator.buffer(capacity: 1024)
        if context.channel.isActive { start(context: context) }
    }

    /// The channel closed and the pipeline let go of us: drop the context, or it and this handler
    /// keep each other (and the channel, its pipeline and buffers) alive forever. A channel that
    /// never became active (its connect failed) gets no `channelInactive`: it ends here, quietly,
    /// as the dialer's failure callback reports it.
    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        if state != .closed {
            state = .closed
            delegate = nil
        }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context: context)
        context.fireChannelActive()
    }

    private var started = false

    private func start(context: ChannelHandlerContext) {
        guard !started else { return }
        started = true
        if let addr = context.channel.remoteAddress, let ip = addr.ipAddress, let port = addr.port {
            remoteAddress = "\(ip):\(port)"
        }
        logger[metadataKey: "peer_addr"] = "\(remoteAddress)"
        let peerAddr: String
        switch origin {
        case .dialed(let address): peerAddr = address
        case .accepted: peerAddr = remoteAddress
        }
        var pairs = ["provider": settings.provider, "peeraddr": peerAddr, "gproto": "1", "mproto": "1"]
        if settings.tls != nil { pairs["tls"] = "1.0" }
        let greeting = Greeting(
            nodeID: settings.nodeID,
            authMethods: AuthMethod.accepted(withTLS: settings.tls != nil).map(\.rawValue),
            framings: settings.framings.map(\.rawValue),
            pairs: pairs
        )
        localLines = (greeting.line, Self.nonce())
        var out = context.channel.allocator.buffer(capacity: 256)
        out.writeString(localLines.0 + "\n" + localLines.1 + "\n")
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        // Holds the connection until it fires or `finish`/the handshake cancels it (every way out).
        handshakeTimer = context.eventLoop.assumeIsolated().scheduleTask(in: settings.handshakeTimeout) { [self] in
            close(reason: "handshake timeout: the peer did not complete the handshake in time")
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        guard state != .closed else { return }
        inbound.writeBuffer(&bytes)
        if !processing { process() }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let closeReason {
            finish(reason: closeReason)
        } else if state == .established {
            finish(reason: "connection closed by peer")
        } else {
            finish(reason: explainRefusal("connection closed during handshake"))
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let tlsRole, state != .established, !closing {
            needsOperator = true
            return close(reason: MeshTLSFailure.explain(error, peer: peerID ?? remoteAddress, weAreClient: tlsRole == .client))
        }
        if tlsRole != nil, case NIOSSLError.uncleanShutdown = error {
            // Perl closes its socket without a TLS close_notify: a plain close.
            return close(reason: closeReason ?? "connection closed by peer")
        }
        let reason = "transport error: \(error)"
        close(reason: state == .established || closing ? reason : explainRefusal(reason))
    }

    /// The peer closed the handshake (`what`) after both its greeting lines and before its auth
    /// line. A Perl or Swift node does that only when it refuses us at greeting time (Transport.pm
    /// 225-260, aemp-protocol §4.1): it wants TLS and cannot authenticate without it, or a node
    /// with our ID is already connected to it. (With a wrong secret it sends its auth line first.)
    /// Says which, and marks the failure as one for the operator; other cases keep `what`.
    private func explainRefusal(_ what: String) -> String {
        guard state == .auth, let greeting = remoteGreeting else { return what }
        if let tlsRole {
            needsOperator = true
            return MeshTLSFailure.explain(
                NIOSSLError.uncleanShutdown, peer: greeting.nodeID, weAreClient: tlsRole == .client) + " (\(what))"
        }
        if greeting.requestsTLS, settings.tls == nil {
            needsOperator = true
            return Self.tlsWithoutSecret(greeting, detail: "it closed the handshake without authenticating (\(what))")
        }
        // Crossing dials: the peer keeps the other connection with us (aemp-protocol §9).
        if delegate?.connectionHasSibling(self) == true { return what }
        needsOperator = true
        return "node ID already connected: \(greeting.nodeID) closed the handshake right after reading our greeting, "
            + "as a node does when a node with our ID \(settings.nodeID.debugDescription) is already connected to it "
            + "(another node with this ID on the network?) (\(what))"
    }

    /// The reason for a peer that wants TLS when this node has no certificate, and no common secret.
    private static func tlsWithoutSecret(_ greeting: Greeting, detail: String) -> String {
        "peer requires TLS and this node has no certificate: \(greeting.nodeID)'s greeting says "
            + "tls=\(greeting.pairs["tls"] ?? "") and \(detail); give this node the network's certificate "
            + "(--mesh-cert, or cert in its AnyEvent::MP profile), or give both sides the same shared secret "
            + "(aemp-protocol §4.5)"
    }

    // MARK: - Handshake

    private func process() {
        processing = true
        defer { processing = false }
        while state != .closed && !closing {
            switch state {
            case .greeting1, .greeting2, .auth:
                guard let line = readLine() else {
                    if inbound.readableBytes > settings.maxHandshakeBuffer {
                        close(reason: "handshake line longer than \(settings.maxHandshakeBuffer) bytes")
                    }
                    return
                }
                handle(line: line)
            case .established:
                guard var decoder else { return }
                do {
                    while state == .established, !closing, let packet = try decoder.next(from: &inbound) {
                        reportSkipped(&decoder)
                        self.decoder = decoder
                        delegate?.connection(self, received: packet)
                    }
                    reportSkipped(&decoder)
                    self.decoder = decoder
                } catch {
                    close(reason: "undecodable \(receiveFraming?.rawValue ?? "") data from peer: \(error)", peerFault: true)
                }
                if inbound.readableBytes == 0 { inbound.clear() } else { inbound.discardReadBytes() }
                return
            case .closed:
                return
            }
        }
    }

    /// The next LF-terminated line (CR before LF stripped), or nil if incomplete.
    private func readLine() -> String? {
        let view = inbound.readableBytesView
        guard let lf = view.firstIndex(of: 0x0A) else { return nil }
        let length = lf - view.startIndex
        guard length <= settings.maxHandshakeBuffer else {
            close(reason: "handshake line longer than \(settings.maxHandshakeBuffer) bytes")
            return nil
        }
        // Bytes as Latin-1 characters, as Perl reads them (aemp-protocol §14): a peer's non-ASCII
        // node ID is then the same string here as in its packets' CBOR byte strings.
        var line = String(String.UnicodeScalarView(inbound.readableBytesView.prefix(length).map { Unicode.Scalar($0) }))
        inbound.moveReaderIndex(forwardBy: length + 1)
        if line.hasSuffix("\r") { line.removeLast() }
        return line
    }

    private func handle(line: String) {
        switch state {
        case .greeting1:
            guard let greeting = Greeting(line: Substring(line)) else {
                return close(reason: "malformed greeting: \(line.prefix(200).debugDescription)")
            }
            guard greeting.protocolName == "aemp" else {
                return close(reason: "unsupported protocol \(greeting.protocolName.prefix(50).debugDescription)")
            }
            guard greeting.numericVersion == 1 else {
                return close(reason: "unsupported protocol version \(greeting.version.prefix(20).debugDescription)")
            }
            remoteLine1 = line
            remoteGreeting = greeting
            logger[metadataKey: "peer"] = "\(greeting.nodeID)"
            if let refusal = delegate?.connection(self, checkGreeting: greeting) {
                return close(reason: refusal)
            }
            state = .greeting2
        case .greeting2:
            let remoteLines = (remoteLine1, line)
            remoteNonce = line
            if remoteLines == localLines {
                return close(reason: "echo detected: the peer sent our own greeting back")
            }
            guard let greeting = remoteGreeting else { return }
            // TLS iff both greetings ask for it (Transport.pm: a TLS context here and the peer's
            // `tls` is 1 as Perl's int reads it).
            let tls = settings.tls != nil && greeting.requestsTLS
            // Auth method: the first of the peer's list that we offer, a tls_* one only under TLS
            // (we never send cleartext).
            guard let method = greeting.authMethods.lazy.compactMap({ AuthMethod(rawValue: $0) })
                .first(where: { AuthMethod.offered.contains($0) && (tls || !$0.needsTLS) })
            else {
                let accepted = greeting.authMethods.joined(separator: ",")
                if greeting.requestsTLS, settings.tls == nil {
                    // A Perl node with a certificate and no secret accepts only tls_* methods.
                    needsOperator = true
                    return close(reason: Self.tlsWithoutSecret(greeting, detail: "it accepts only \(accepted)"))
                }
                return close(reason: "no common auth method (peer accepts \(accepted))")
            }
            if !method.needsTLS, !settings.hasSecret {
                // This node has only a certificate (a node with neither cannot start).
                needsOperator = true
                return close(reason: greeting.requestsTLS
                    ? "no common auth method under TLS: \(greeting.nodeID) accepts \(greeting.authMethods.joined(separator: ",")) and this node has no shared secret"
                    : "peer has no certificate and this node has no shared secret: \(greeting.nodeID)'s greeting asks for no TLS "
                        + "(no tls=1.0: it has no certificate), and this node authenticates only with its certificate; give "
                        + "\(greeting.nodeID) the network's certificate, or give both sides the same shared secret (aemp-protocol §4.5)")
            }
            // Send framing: first of the peer's list that we support.
            guard let framing = greeting.framings.lazy.compactMap({ name in
                self.settings.framings.first { $0.rawValue == name }
            }).first else {
                return close(reason: "no common framing (peer accepts \(greeting.framings.joined(separator: ",")))")
            }
            sendFraming = framing
            // Under TLS the auth lines travel inside it: start TLS before writing ours.
            if tls, !startTLS(remoteNonce: line) { return }
            let token = settings.authenticator.tokenToSend(method, local: localLines, remote: remoteLines)
            writeLine("\(method.rawValue);\(token);\(framing.rawValue)")
            state = .auth
        case .auth:
            let fields = line.split(separator: ";", maxSplits: 3, omittingEmptySubsequences: false)
            guard fields.count >= 3 else {
                return close(reason: "malformed auth line")
            }
            guard let method = AuthMethod(rawValue: String(fields[0])) else {
                return close(reason: "unsupported auth method \(fields[0].prefix(40).debugDescription)")
            }
            guard let framing = Framing(rawValue: String(fields[2])) else {
                return close(reason: "peer announced unsupported framing \(fields[2].prefix(40).debugDescription)")
            }
            if method.needsTLS, tlsRole == nil {
                // Perl's check never matches then ("\012\012"); say why.
                return close(reason: "authentication failure: the peer used \(method.rawValue), valid only under TLS, on a connection without TLS")
            }
            if !method.needsTLS, !settings.hasSecret {
                return close(reason: "authentication failure: the peer used \(method.rawValue) and this node has no shared secret")
            }
            guard verify(method: method, token: String(fields[1])) else {
                return close(reason: method.needsTLS
                    ? "authentication failure (\(method.rawValue) token does not match the greetings)"
                    : "authentication failure (shared secret mismatch)")
            }
            receivedAuth = method
            receiveFraming = framing
            decoder = PacketDecoder(framing, maxPacketSize: settings.maxPacketSize)
            handshakeTimer?.cancel()
            handshakeTimer = nil
            state = .established
            logger.debug("connection established", metadata: [
                "send_framing": "\(sendFraming)", "recv_framing": "\(framing)", "auth": "\(method.rawValue)",
                "tls": "\(tlsVersionName ?? "no")",
            ])
            delegate?.connectionEstablished(self)
        default:
            break
        }
    }

    private var remoteNonce = ""

    /// Starts TLS in the middle of the handshake, as Transport.pm does after both greetings: the
    /// side whose nonce line sorts lower (raw bytes) is the client. The bytes that followed the
    /// peer's nonce are its first TLS records: they go through TLS, as everything after them.
    private func startTLS(remoteNonce: String) -> Bool {
        guard let contexts = settings.tls, let context else { return false }
        let weAreClient = Self.isTLSClient(localNonce: localLines.1, remoteNonce: remoteNonce)
        let handler: NIOSSLHandler
        do {
            handler = weAreClient
                ? try NIOSSLClientHandler(context: contexts.client, serverHostname: nil)
                : NIOSSLServerHandler(context: contexts.server)
            tlsRole = weAreClient ? .client : .server
            tlsHandler = handler
            try context.pipeline.syncOperations.addHandler(handler, position: .before(self))
            if inbound.readableBytes > 0 {
                let early = inbound.readSlice(length: inbound.readableBytes)!
                inbound.clear()
                let tlsContext = try context.pipeline.syncOperations.context(handler: handler)
                handler.channelRead(context: tlsContext, data: NIOAny(early))
                handler.channelReadComplete(context: tlsContext)
            }
        } catch {
            needsOperator = true
            close(reason: "cannot start TLS: \(error)")
            return false
        }
        logger[metadataKey: "tls"] = weAreClient ? "client" : "server"
        return true
    }

    /// Whether this side is the TLS client: its nonce line sorts lower, byte by byte (Perl's `lt`
    /// on the lines as read; Transport.pm). The nonces differ (the echo check), so exactly one side is.
    static func isTLSClient(localNonce: String, remoteNonce: String) -> Bool {
        latin1Bytes(localNonce).lexicographicallyPrecedes(latin1Bytes(remoteNonce))
    }

    /// A handshake line's characters back as the bytes they were read from (Latin-1).
    private static func latin1Bytes(_ line: String) -> [UInt8] {
        line.unicodeScalars.map { UInt8(truncatingIfNeeded: $0.value) }
    }

    /// The negotiated TLS version, e.g. `TLSv1.3`, or nil without TLS.
    private var tlsVersionName: String? {
        guard let tlsHandler else { return nil }
        switch tlsHandler.tlsVersion {
        case .tlsv13?: return "TLSv1.3"
        case .tlsv12?: return "TLSv1.2"
        case .tlsv11?: return "TLSv1.1"
        case .tlsv1?: return "TLSv1.0"
        default: return "TLS"
        }
    }

    /// This connection for `Node.connections()`, once established.
    var info: ConnectionInfo? {
        guard state == .established, let peerID, let receivedAuth, let receiveFraming else { return nil }
        var dialed = false
        if case .dialed = origin { dialed = true }
        return ConnectionInfo(
            node: peerID, address: remoteAddress, dialed: dialed, tls: tlsVersionName, auth: receivedAuth.rawValue,
            sendFraming: sendFraming.rawValue, receiveFraming: receiveFraming.rawValue)
    }

    private func verify(method: AuthMethod, token: String) -> Bool {
        let expected = settings.authenticator.tokenExpected(method, local: localLines, remote: (remoteLine1, remoteNonce))
        // Constant time, lengths included (a cleartext token's length is the secret's), never
        // String equality (SecurityTests checks that this stays so).
        return ConstantTime.equal(expected, token)
    }

    private func writeLine(_ line: String) {
        guard let context else { return }
        var out = context.channel.allocator.buffer(capacity: line.utf8.count + 1)
        out.writeString(line)
        out.writeInteger(UInt8(0x0A))
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }

    private static func nonce() -> String {
        var rng = SystemRandomNumberGenerator()
        let bytes = (0..<66).map { _ in UInt8.random(in: 0...255, using: &rng) }
        return Base64.encode(bytes)
    }

    // MARK: - Data phase

    /// Logs the packets the decoder skipped (legal but too deep for Perl); the link stays up.
    private func reportSkipped(_ decoder: inout PacketDecoder) {
        let notes = decoder.takeNotes()
        guard !notes.isEmpty else { return }
        for reason in notes.skipped where droppedWarnings.allow() {
            logger.warning("skipped a packet from the peer that Perl could not decode either", metadata: ["reason": "\(reason)"])
        }
        for note in notes.changed where droppedWarnings.allow() {
            logger.notice("changed values in a packet from the peer", metadata: ["change": "\(note)"])
        }
    }

    /// The start of a packet for a log line: its port and tag, never its whole content.
    private static func summary(of packet: [Value]) -> String {
        packet.prefix(2).map { $0.stringValue.map { String($0.prefix(80)).debugDescription } ?? "…" }.joined(separator: ",")
    }

    /// Sends one packet; written with the others of this event-loop tick at its end.
    func send(_ packet: [Value]) {
        guard state == .established, !closing, let context else { return }
        let first = outgoing == nil
        var out = outgoing ?? context.channel.allocator.buffer(capacity: 4096)
        outgoing = nil  // unique while encoding: no copy on write
        let mark = out.writerIndex
        do {
            try sendFraming.encode(packet, into: &out)
        } catch {
            out.moveWriterIndex(to: mark)
            ValueEvents.record(.packetTooDeepRefused)
            if droppedWarnings.allow() {
                logger.warning(
                    "not sending a packet a Perl node could not decode (it would lose every later packet on this link)",
                    metadata: ["error": "\(error)", "packet": "\(Self.summary(of: packet))"])
            }
        }
        outgoing = out
        if first {
            context.eventLoop.assumeIsolated().execute { [self] in writeOutgoing() }
        }
    }

    /// Writes and flushes the packets gathered this tick.
    private func writeOutgoing(promise: EventLoopPromise<Void>? = nil) {
        guard let context, let out = outgoing else {
            promise?.succeed()
            return
        }
        outgoing = nil
        let size = out.readableBytes
        unsent.add(size)
        let written = promise ?? context.eventLoop.makePromise(of: Void.self)
        written.futureResult.assumeIsolated().whenComplete { [unsent] _ in unsent.add(-size) }
        context.writeAndFlush(wrapOutboundOut(out), promise: written)
        if unsentBytes > settings.maxUnsentBytes, !closing {
            // A peer that stopped reading would make us buffer without bound.
            logger.warning("peer stopped reading", metadata: ["unsent_bytes": "\(unsentBytes)"])
            abort(reason: "peer stopped reading: more than \(settings.maxUnsentBytes) bytes unsent")
        }
    }

    /// Closes at once, dropping what is unsent (the peer is not taking it).
    private func abort(reason: String) {
        guard state != .closed, !closing, let context else { return }
        closing = true
        closeReason = reason
        context.close(promise: nil)
    }

    /// Closes the connection, logging `reason` (as a warning when `peerFault`: the peer broke
    /// the protocol after the handshake, which operators want to see).
    func close(reason: String, peerFault: Bool = false) {
        guard state != .closed, !closing else { return }
        closing = true
        closeReason = reason
        self.peerFault = peerFault
        if let context, state == .established {
            // Packets written this tick are not flushed yet: flush them and close once they are
            // out (a node shutting down must not lose what it just sent), but do not wait on a
            // peer that stopped reading for more than a moment.
            let written = context.eventLoop.makePromise(of: Void.self)
            if outgoing == nil { outgoing = context.channel.allocator.buffer(capacity: 0) }
            writeOutgoing(promise: written)
            let loop = context.eventLoop.assumeIsolated()
            let deadline = loop.scheduleTask(in: .seconds(2)) { context.close(promise: nil) }
            written.futureResult.assumeIsolated().whenComplete { _ in
                deadline.cancel()
                context.close(promise: nil)
            }
        } else if let context {
            context.close(promise: nil)
        } else {
            finish(reason: reason)
        }
    }

    private func finish(reason: String) {
        guard state != .closed else { return }
        let wasEstablished = state == .established
        state = .closed
        handshakeTimer?.cancel()
        handshakeTimer = nil
        if wasEstablished && peerFault {
            logger.warning("cutting off a peer that broke the protocol", metadata: ["reason": "\(reason)"])
        } else if wasEstablished {
            logger.info("connection closed", metadata: ["reason": "\(reason)"])
        } else if reason.hasPrefix("already connected") {
            // Routine: crossing dials (aemp-protocol §4.1, §9).
            logger.info("handshake refused", metadata: ["reason": "\(reason)"])
        } else if reason.hasPrefix("I refuse to talk to myself") {
            // Not routine any more: a seed that is this node is never dialed (`OwnAddresses`).
            logger.warning("handshake refused", metadata: ["reason": "\(reason)"])
        } else if needsOperator {
            logger.warning("handshake failed", metadata: ["reason": "\(reason)"])
        } else {
            logger.notice("handshake failed", metadata: ["reason": "\(reason)"])
        }
        delegate?.connectionClosed(self, reason: reason)
        delegate = nil
    }
}

/// Standard Base64 with padding (aemp-protocol §4.3 nonces).
enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        var out = [UInt8]()
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i + 2 < bytes.count {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
            for shift in [18, 12, 6, 0] { out.append(alphabet[Int((n >> UInt32(shift)) & 63)]) }
            i += 3
        }
        let rest = bytes.count - i
        if rest > 0 {
            var n = UInt32(bytes[i]) << 16
            if rest == 2 { n |= UInt32(bytes[i + 1]) << 8 }
            out.append(alphabet[Int((n >> 18) & 63)])
            out.append(alphabet[Int((n >> 12) & 63)])
            out.append(rest == 2 ? alphabet[Int((n >> 6) & 63)] : UInt8(ascii: "="))
            out.append(UInt8(ascii: "="))
        }
        return String(decoding: out, as: UTF8.self)
    }
}
