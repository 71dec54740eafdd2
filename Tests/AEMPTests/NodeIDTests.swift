import Crypto
import NIOCore
import Testing

@testable import AEMP

/// Non-ASCII node IDs end to end (issue 13, items 4 and 5; aemp-protocol §14): our own must be
/// printable ASCII (refused at start with a clear error), and a Perl peer's non-ASCII ID — raw
/// bytes in its greeting, CBOR byte strings (or JSON strings of those characters) in its packets,
/// both meaning the same Latin-1 characters to Perl — stays one string here and goes back out
/// byte-exact.
@Suite("Non-ASCII node IDs", .serialized, .timeLimit(.minutes(2)))
struct NodeIDTests {
    // MARK: - Our own node ID

    @Test("aemp-gateway --node-id gwü exits 2 with one error line naming the ID")
    func gatewayRefusesNonASCIIID() async throws {
        let r = try await ChildProcess.run(
            "aemp-gateway",
            ["--node-id", "gwü", "--secret", testSecret, "--seeds", "127.0.0.1:\(try freePort())", "--http", "127.0.0.1:\(try freePort())"])
        #expect(r.exit == .exited(2), "\(r)")
        let lines = r.stderr.split(separator: "\n").map(String.init)
        #expect(lines.count == 1, "\(r)")
        #expect(lines.first?.hasPrefix("aemp-gateway: error: ") == true, "\(r)")
        #expect(lines.first?.contains(#""gwü""#) == true && lines.first?.contains("ASCII") == true, "\(r)")
    }

    /// The tool's exit status for bad arguments is 64 (EX_USAGE, as in `ToolTests.badArguments`).
    @Test("aemp seed --node-id gwü exits 64 (the tool's usage error) with one error line naming the ID")
    func toolRefusesNonASCIIID() async throws {
        let r = try await ChildProcess.run(
            "aemp", ["seed", "--node-id", "gwü", "--secret", testSecret, "--bind", "127.0.0.1:\(try freePort())"])
        #expect(r.exit == .exited(64), "\(r)")
        let lines = r.stderr.split(separator: "\n").map(String.init)
        #expect(lines.count == 1, "\(r)")
        #expect(lines.first?.hasPrefix("aemp: error: ") == true, "\(r)")
        #expect(lines.first?.contains(#""gwü""#) == true && lines.first?.contains("ASCII") == true, "\(r)")
    }

    @Test("aemp snd takes a Perl node's non-ASCII ID as Perl's aemp does (the argument's bytes), not as a bad argument")
    func toolTargetsNonASCIIPeer() async throws {
        let r = try await ChildProcess.run(
            "aemp", ["snd", "--seeds", "127.0.0.1:\(try freePort())", "--secret", testSecret, "--connect-timeout", "1", "pérl#inbox", "hi"])
        #expect(r.exit != .exited(64), "refused as a bad argument: \(r)")
        #expect(!r.stderr.contains("ASCII"), "\(r)")
    }

    @Test("an in-process Node refuses gwü as its own ID")
    func nodeRefusesNonASCIIID() throws {
        #expect(throws: (any Error).self) {
            try Node(configuration: scriptedNodeConfiguration(id: "gwü"))
        }
        #expect(NodeIDTemplate.problem(with: "gwü")?.contains("ASCII") == true)
    }

    // MARK: - A Perl peer's non-ASCII node ID

    /// "pérl" as Perl holds it after reading its own UTF-8 config without decoding: 5 Latin-1
    /// characters, the bytes 70 c3 a9 72 6c.
    static let perlID = "p\u{C3}\u{A9}rl"
    static let perlIDBytes: [UInt8] = [0x70, 0xC3, 0xA9, 0x72, 0x6C]
    /// Db subkeys the peer sets: UTF-8 bytes of "clé" (valid UTF-8, the case that used to be
    /// decoded as 3 characters) and the Latin-1 bytes of "kéy" (not UTF-8).
    static let keys: [(string: String, bytes: [UInt8])] = [
        ("cl\u{C3}\u{A9}", [0x63, 0x6C, 0xC3, 0xA9]), ("k\u{E9}y", [0x6B, 0xE9, 0x79]),
    ]

    /// Under JSON, Perl writes the 5 characters as their UTF-8 (`"p\xc3\x83\xc2\xa9rl"`): the
    /// greeting's bytes and the packets' bytes differ, the characters do not. A node that reads
    /// the greeting as UTF-8 sees "pérl" there and "p\u{C3}\u{A9}rl" in packets (item 5's bug).
    @Test("a Perl peer with a non-ASCII ID (greeting bytes; CBOR byte strings or JSON) through a Swift global: one ID, byte-exact replies",
          arguments: [Framing.cbor, .json])
    func perlPeerWithNonASCIIID(_ framing: Framing) async throws {
        try await ScriptedResources.with { res in
            let address = "127.0.0.1:\(try freePort())"
            let global = res.node(try Node(configuration: scriptedNodeConfiguration(
                id: "nid-global-%u", binds: [address], seeds: [address], framings: [framing])))
            try await global.start()
            #expect(try await global.waitForMaster(timeout: stretched(.seconds(5))) == global.id)

            // The handshake with the raw bytes in the greeting; both tokens over those bytes.
            let peer = res.peer(try await ScriptedPeer.dial(address))
            let perl = try await PerlBytesPeer.handshake(peer, nodeID: Self.perlIDBytes, framing: framing, to: address)
            #expect(perl.nodeTokenValid, "the Swift node's token does not cover the bytes we sent")
            await eventually(within: 5, "the Swift node sees the peer up") {
                await global.upNodes().contains { $0.unicodeScalars.elementsEqual(Self.perlID.unicodeScalars) }
            }
            let up = await global.upNodes().filter { $0 != global.id }
            #expect(up.map { Array($0.unicodeScalars.map(\.value)) } == [Self.perlIDBytes.map(UInt32.init)],
                    "the Swift node sees the peer as \(up.map(\.debugDescription)), not as 5 Latin-1 characters")

            // Its g_slave: its own ID in 'l and two non-ASCII subkeys, all as CBOR byte strings
            // (JSON: UTF-8 of the Latin-1 characters).
            let dead = "127.0.0.1:\(try freePort())"  // nobody listens: only the open connection reaches the peer
            try await perl.send(["", "g_slave", .object([
                "'l": .object([Self.perlID: [.string(dead)]]),
                "nid-fam": .object(Dictionary(uniqueKeysWithValues: Self.keys.map { ($0.string, Value.string("v")) })),
            ])])
            #expect(try await perl.read(tag: "g_global").items.count == 2)
            // Packets are handled in order: once a time request sent after it is answered (to a
            // reply port on our ID), the g_slave is in the global's db.
            try await perl.send(["", "time", .string("\(Self.perlID)#barrier"), "barrier"])
            let time = try await perl.read(port: "barrier")
            #expect(time.items.count == 3, "time reply \(time.items)")

            // The greeting's ID and the packets' ID are one string here.
            let listeners = try await global.dbFamily("'l")
            #expect(listeners.keys.contains { $0.unicodeScalars.elementsEqual(Self.perlID.unicodeScalars) },
                    "'l keys \(listeners.keys.map(\.debugDescription)) lack the greeting's ID")
            #expect(listeners.count == 2, "one 'l entry per node: \(listeners.keys.map(\.debugDescription))")
            let keys = try await global.dbKeys("nid-fam").map { Array($0.unicodeScalars.map(\.value)) }.sorted { $0.lexicographicallyPrecedes($1) }
            #expect(keys == Self.keys.map { $0.bytes.map(UInt32.init) }.sorted { $0.lexicographicallyPrecedes($1) },
                    "subkeys as the Swift global holds them: \(keys)")

            // A message from the Swift node to p\xc3\xa9rl#inbox, over the open connection, with the
            // ID as the node knows it: the same bytes as a byte string.
            let seen = try #require(up.first)
            global.snd("\(Self.perlID)#inbox", ["hello", .string(seen), .string(Self.keys[0].string)])
            let message = try await perl.read(port: "inbox")
            #expect(message.items.count == 4)
            #expect(message.items.dropFirst(2).first == .bytes(Self.perlIDBytes), "the ID came back as \(message.items)")
            #expect(message.items.last == .bytes(Self.keys[0].bytes), "the key came back as \(message.items)")
            if framing == .json {
                // As JSON::XS writes the 5 characters: their UTF-8, unescaped.
                let quoted = [0x22] + Array(Self.perlID.utf8) + [0x22]
                #expect(message.bytes.indices.contains { message.bytes[$0...].starts(with: quoted) },
                        "\(String(decoding: message.bytes, as: UTF8.self).debugDescription)")
            }

            // g_find of its ID (what another Perl node asks before dialing it): g_found with the same bytes.
            try await perl.send(["", "g_find", .string(Self.perlID)])
            let found = try await perl.read(tag: "g_found")
            #expect(found.items.count == 4 && found.items[2] == .bytes(Self.perlIDBytes), "g_found: \(found.items)")
            #expect(found.items.last == .array([.text(Array(dead.utf8))]) || found.items.last == .array([.bytes(Array(dead.utf8))]),
                    "g_found addresses: \(found.items)")

            // db_keys / db_family of its family, and of 'l: the identical byte strings (Perl's exists holds).
            try await perl.send(["", "g_db_keys", "nid-fam", "q1"])
            let dbKeys = try await perl.read(tag: "g_reply")
            let replyKeys = dbKeys.lastArray
            #expect(Set(replyKeys.map(\.description)) == Set(Self.keys.map { RawCBOR.bytes($0.bytes).description }),
                    "g_db_keys: \(dbKeys.items)")
            try await perl.send(["", "g_db_family", "nid-fam", "q2"])
            let family = try await perl.read(tag: "g_reply")
            #expect(Set(family.mapKeys.map(\.description)) == Set(Self.keys.map { RawCBOR.bytes($0.bytes).description }),
                    "g_db_family: \(family.items)")
            try await perl.send(["", "g_db_keys", "'l", "q3"])
            let lKeys = try await perl.read(tag: "g_reply")
            let ids = lKeys.lastArray
            #expect(ids.contains(.bytes(Self.perlIDBytes)), "'l keys: \(lKeys.items)")
            try await perl.send(["", "g_mon1", "nid-fam"])
            let change = try await perl.read(tag: "g_chg1")
            #expect(Set(change.mapKeys.map(\.description)) == Set(Self.keys.map { RawCBOR.bytes($0.bytes).description }),
                    "g_chg1: \(change.items)")
        }
    }
}

// MARK: - A Perl-like peer that speaks bytes

/// A packet as bytes and as CBOR items (strings as raw bytes, `RawCBOR`). A JSON packet's strings
/// are shown as the byte strings Perl holds: `.bytes` of the Latin-1 characters when every one is
/// below U+0100, else `.text` of the UTF-8.
struct RawPacket: Sendable {
    var bytes: [UInt8]
    var items: [RawCBOR]

    /// The string at `index` as Perl characters (byte strings Latin-1, text UTF-8).
    func string(_ index: Int) -> String? {
        guard index < items.count else { return nil }
        switch items[index] {
        case .bytes(let b): return String(String.UnicodeScalarView(b.map { Unicode.Scalar($0) }))
        case .text(let t): return String(decoding: t, as: UTF8.self)
        default: return nil
        }
    }

    /// The elements of the array that is the last element.
    var lastArray: [RawCBOR] {
        guard case .array(let a)? = items.last else { return [] }
        return a
    }

    /// The keys of the map that is the last element.
    var mapKeys: [RawCBOR] {
        guard case .map(let kv)? = items.last else { return [] }
        return stride(from: 0, to: kv.count, by: 2).map { kv[$0] }
    }
}

/// The Perl side of a connection where every string is bytes, as AnyEvent::MP holds a node ID it
/// read from its own UTF-8 configuration: the greeting carries the raw bytes, packets carry CBOR
/// byte strings (how CBOR::XS writes strings without the UTF-8 flag), tokens are computed over the
/// bytes on the wire (HMAC-SHA3-512, independent of the library's `Authenticator`).
struct PerlBytesPeer: Sendable {
    let peer: ScriptedPeer
    let framing: Framing
    /// The Swift node's token verifies over the bytes exchanged.
    let nodeTokenValid: Bool

    static func handshake(
        _ peer: ScriptedPeer, nodeID: [UInt8], framing: Framing, to address: String
    ) async throws -> PerlBytesPeer {
        let f = framing.rawValue
        let g1 = Array("aemp;1;".utf8) + nodeID
            + Array(";tls_sha3_512,hmac_sha3_512,tls_anon,cleartext;\(f);peeraddr=\(address);gproto=1;provider=AE-2.02;mproto=1".utf8)
        let g2 = Array(ScriptedPeer.nonce().utf8)
        try await peer.write(g1 + [0x0A] + g2 + [0x0A])
        let n1 = try await rawLine(peer, "the node's greeting line 1")
        let n2 = try await rawLine(peer, "the node's greeting line 2")
        let auth = try await rawLine(peer, "the node's auth line")
        let fields = auth.split(separator: UInt8(ascii: ";"), omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        let expected = token(first: (n1, n2), second: (g1, g2))
        let valid = fields.count >= 3 && fields[0] == "hmac_sha3_512" && fields[1] == expected && fields[2] == f
        peer.inbox.update { s in
            s.decoder = PacketDecoder(framing, maxPacketSize: 64 << 20)
            s.sendFraming = framing
        }
        try await peer.write(Array("hmac_sha3_512;\(token(first: (g1, g2), second: (n1, n2)));\(f)\n".utf8))
        return PerlBytesPeer(peer: peer, framing: framing, nodeTokenValid: valid)
    }

    /// HMAC-SHA3-512 over the four lines, each with its LF (aemp-protocol §4.4), keyed with the secret.
    static func token(first: ([UInt8], [UInt8]), second: ([UInt8], [UInt8])) -> String {
        var mac = HMAC<SHA3_512>(key: SymmetricKey(data: Array(testSecret.utf8)))
        for line in [first.0, first.1, second.0, second.1] { mac.update(data: line + [0x0A]) }
        return Vectors.hex(Array(mac.finalize()))
    }

    static func rawLine(_ peer: ScriptedPeer, _ what: String) async throws -> [UInt8] {
        try await peer.read(what, within: 5) { s -> [UInt8]? in
            let view = s.buffer.readableBytesView
            guard let lf = view.firstIndex(of: 0x0A) else { return nil }
            var bytes = Array(view[view.startIndex..<lf])
            s.buffer.moveReaderIndex(forwardBy: bytes.count + 1)
            if bytes.last == 0x0D { bytes.removeLast() }
            return bytes
        }
    }

    /// Writes `packet` as CBOR::XS writes a Perl structure whose strings are all unflagged: every
    /// string of Latin-1 characters as a byte string (others as text); or as JSON::XS writes it.
    func send(_ packet: [Value]) async throws {
        try await peer.write(framing == .cbor ? Self.cbor(.array(packet)) : Self.json(.array(packet)))
    }

    /// JSON as JSON::XS's `encode_json` writes it: every character as its UTF-8, unescaped but for
    /// `"`, `\\` and control characters.
    static func json(_ value: Value) -> [UInt8] {
        var out: [UInt8] = []
        func string(_ s: String) {
            out.append(0x22)
            for u in s.unicodeScalars {
                switch u.value {
                case 0x22, 0x5C: out += [0x5C, UInt8(u.value)]
                case 0..<0x20: out += Array(String(format: "\\u%04x", u.value).utf8)
                default: out += Array(String(u).utf8)
                }
            }
            out.append(0x22)
        }
        func walk(_ v: Value) {
            switch v {
            case .null: out += Array("null".utf8)
            case .int(let i): out += Array(String(i).utf8)
            case .string(let s): string(s)
            case .array(let a):
                out.append(UInt8(ascii: "["))
                for (i, e) in a.enumerated() {
                    if i > 0 { out.append(UInt8(ascii: ",")) }
                    walk(e)
                }
                out.append(UInt8(ascii: "]"))
            case .object(let o):
                out.append(UInt8(ascii: "{"))
                for (i, (k, e)) in o.sorted(by: { $0.key < $1.key }).enumerated() {
                    if i > 0 { out.append(UInt8(ascii: ",")) }
                    string(k)
                    out.append(UInt8(ascii: ":"))
                    walk(e)
                }
                out.append(UInt8(ascii: "}"))
            default: out += Array(v.description.utf8)
            }
        }
        walk(value)
        return out
    }

    /// A JSON-decoded value as the items Perl would hold (strings of Latin-1 characters as bytes).
    static func items(_ v: Value) -> RawCBOR {
        switch v {
        case .string(let s):
            if s.unicodeScalars.allSatisfy({ $0.value < 0x100 }) { return .bytes(s.unicodeScalars.map { UInt8($0.value) }) }
            return .text(Array(s.utf8))
        case .int(let i): return i >= 0 ? .unsigned(UInt64(i)) : .negative(UInt64(-1 - i))
        case .array(let a): return .array(a.map(items))
        case .object(let o): return .map(o.flatMap { [items(.string($0.key)), items($0.value)] })
        case .null: return .simple(22, 22)
        case .bool(let b): return .simple(b ? 21 : 20, b ? 21 : 20)
        default: return .text(Array(v.description.utf8))
        }
    }

    static func cbor(_ value: Value) -> [UInt8] {
        var out: [UInt8] = []
        func head(_ major: UInt8, _ n: Int) {
            let m = major << 5
            switch n {
            case 0..<24: out.append(m | UInt8(n))
            case 24...0xFF: out += [m | 24, UInt8(n)]
            default: out += [m | 25, UInt8(n >> 8), UInt8(n & 0xFF)]
            }
        }
        func string(_ s: String) {
            if s.unicodeScalars.allSatisfy({ $0.value < 0x100 }) {
                head(2, s.unicodeScalars.count)
                out += s.unicodeScalars.map { UInt8($0.value) }
            } else {
                head(3, s.utf8.count)
                out += Array(s.utf8)
            }
        }
        func walk(_ v: Value) {
            switch v {
            case .null: out.append(0xF6)
            case .string(let s): string(s)
            case .int(let i) where i >= 0 && i < 0x10000: head(0, Int(i))
            case .array(let a):
                head(4, a.count)
                a.forEach(walk)
            case .object(let o):
                head(5, o.count)
                for (k, v) in o.sorted(by: { $0.key < $1.key }) {
                    string(k)
                    walk(v)
                }
            default: out += CBORCodec.encode(v)
            }
        }
        walk(value)
        return out
    }

    /// The next packet whose tag (element 1) is `tag`, skipping others (keepalives, empty g_slave …).
    func read(tag: String, within seconds: Double = 5) async throws -> RawPacket {
        try await read("a \(tag) packet", within: seconds) { p in p.string(1) == tag }
    }

    /// The next packet to `port` (element 0).
    func read(port: String, within seconds: Double = 5) async throws -> RawPacket {
        try await read("a packet to \(port)", within: seconds) { p in p.string(0) == port }
    }

    func read(_ what: String, within seconds: Double, where match: @escaping @Sendable (RawPacket) -> Bool) async throws -> RawPacket {
        try await peer.read(what, within: seconds) { s -> RawPacket? in
            guard var decoder = s.decoder else { throw ScriptedPeerError.protocolViolation("no decoder") }
            defer { s.decoder = decoder }
            while true {
                let pending = Array(s.buffer.readableBytesView)
                guard try decoder.next(from: &s.buffer) != nil else { return nil }
                let bytes = Array(pending.prefix(pending.count - s.buffer.readableBytes))
                let item: RawCBOR
                do {
                    item = framing == .cbor ? try RawCBOR.parse(bytes) : Self.items(try JSONCodec.decode(bytes))
                } catch {
                    throw ScriptedPeerError.protocolViolation("\(error): \(Vectors.hex(bytes))")
                }
                guard case .array(let items) = item else { continue }
                let p = RawPacket(bytes: bytes, items: items)
                if match(p) { return p }
            }
        }
    }
}
