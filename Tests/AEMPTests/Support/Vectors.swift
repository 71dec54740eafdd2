import AEMPTestSupport
import Foundation
import Testing

@testable import AEMP

/// The captured Perl conversations in `shared/aemp-vectors` (see its README.md), located and parsed
/// for the tests.
///
/// The directory is `$AEMP_VECTORS` if set, else the first `shared/aemp-vectors` found beside this
/// file's ancestors (covers `<repo>/../shared` and any clone folder name), else beside the current
/// directory's ancestors. If none is found every vector test fails with a message saying where it looked.
enum Vectors {
    /// Why the vectors could not be used.
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// The vectors directory, or a failure explaining where it was looked for.
    static func directory() throws -> URL {
        try located.get()
    }

    private static let located: Result<URL, Failure> = locate()

    private static func locate() -> Result<URL, Failure> {
        let fm = FileManager.default
        func isVectorDirectory(_ url: URL) -> Bool {
            fm.fileExists(atPath: url.appendingPathComponent("README.md").path)
                && fm.fileExists(atPath: url.appendingPathComponent("auth-vectors.json").path)
        }
        if let env = ProcessInfo.processInfo.environment["AEMP_VECTORS"], !env.isEmpty {
            let url = URL(fileURLWithPath: env, isDirectory: true).standardizedFileURL
            if isVectorDirectory(url) { return .success(url) }
            return .failure(Failure(description:
                "AEMP_VECTORS=\(env) is not an aemp-vectors directory (it needs README.md and auth-vectors.json)"))
        }
        var tried: [String] = []
        let here = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        let starts = [here, URL(fileURLWithPath: fm.currentDirectoryPath, isDirectory: true)]
            + originRepositories(above: here)
        for start in starts {
            var dir = start.standardizedFileURL
            while true {
                let candidate = dir.appendingPathComponent("shared/aemp-vectors", isDirectory: true)
                tried.append(candidate.path)
                if isVectorDirectory(candidate) { return .success(candidate) }
                let parent = dir.deletingLastPathComponent().standardizedFileURL
                if parent.path == dir.path { break }
                dir = parent
            }
        }
        return .failure(Failure(description: """
            AEMP wire vectors not found. Put a copy of shared/aemp-vectors beside the repository \
            (e.g. <repo>/../shared/aemp-vectors) or set AEMP_VECTORS=/path/to/aemp-vectors. Looked in: \
            \(tried.joined(separator: ", "))
            """))
    }

    /// For a clone made from a local repository (CI clones the project into a fresh folder): that
    /// repository, whose `../shared` holds the vectors. Read from `.git/config` (`url = /path`).
    private static func originRepositories(above start: URL) -> [URL] {
        var dir = start.standardizedFileURL
        while true {
            let config = dir.appendingPathComponent(".git/config")
            if let text = try? String(contentsOf: config, encoding: .utf8) {
                return text.split(separator: "\n").compactMap { line -> URL? in
                    let parts = line.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                    guard parts.count == 2, parts[0] == "url", parts[1].hasPrefix("/") else { return nil }
                    return URL(fileURLWithPath: parts[1], isDirectory: true)
                }
            }
            let parent = dir.deletingLastPathComponent().standardizedFileURL
            if parent.path == dir.path { return [] }
            dir = parent
        }
    }

    /// The bytes of a file inside the vectors directory.
    static func data(_ relativePath: String) throws -> [UInt8] {
        let url = try directory().appendingPathComponent(relativePath)
        do {
            return Array(try Data(contentsOf: url))
        } catch {
            throw Failure(description: "cannot read \(url.path): \(error)")
        }
    }

    /// A JSON file inside the vectors directory, parsed with the library's own JSON codec (its
    /// Perl dialect, which also reads the bare `Infinity`/`NaN` Python writes for the edge values).
    static func json(_ relativePath: String) throws -> Value {
        let bytes = try data(relativePath)
        do {
            return try decodeJSONOnBigStack(bytes)
        } catch {
            throw Failure(description: "\(relativePath) is not valid JSON: \(error)")
        }
    }

    /// Scenario folders that have a `transcript.json` and a `streams/` folder, sorted by name.
    /// The edge-value captures are left to `EdgeValueVectorTests`: their transcripts show byte
    /// strings UTF-8-decoded for reading, which is not what they mean (aemp-vectors README).
    static func scenarioNames() throws -> [String] {
        let dir = try directory()
        let fm = FileManager.default
        let names = try fm.contentsOfDirectory(atPath: dir.path).filter { !$0.hasPrefix("edge-values") }
        return names.filter { name in
            var isDir: ObjCBool = false
            let streams = dir.appendingPathComponent(name).appendingPathComponent("streams").path
            return fm.fileExists(atPath: dir.appendingPathComponent(name).appendingPathComponent("transcript.json").path)
                && fm.fileExists(atPath: streams, isDirectory: &isDir) && isDir.boolValue
        }.sorted()
    }

    /// The parsed `transcript.json` of a scenario.
    static func transcript(_ scenario: String) throws -> Transcript {
        try Transcript(scenario: scenario, json: json("\(scenario)/transcript.json"))
    }

    /// One direction's complete byte stream, `streams/<connection>.<direction>.hex` unhexed.
    static func stream(_ scenario: String, connection: String, direction: Transcript.Direction) throws -> [UInt8] {
        let path = "\(scenario)/streams/\(connection).\(direction.rawValue).hex"
        let text = String(decoding: try data(path), as: UTF8.self)
        do {
            return try unhex(text)
        } catch {
            throw Failure(description: "\(path): \(error)")
        }
    }

    /// The hex digits of `text` (whitespace ignored) as bytes.
    static func unhex(_ text: some StringProtocol) throws -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count / 2)
        var high: UInt8?
        for c in text.utf8 {
            let nibble: UInt8
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): nibble = c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): nibble = c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): nibble = c - UInt8(ascii: "A") + 10
            case 0x20, 0x09, 0x0A, 0x0D: continue
            default: throw Failure(description: "not a hex digit: \(Unicode.Scalar(c).escaped(asASCII: true))")
            }
            if let h = high {
                out.append(h << 4 | nibble)
                high = nil
            } else {
                high = nibble
            }
        }
        guard high == nil else { throw Failure(description: "odd number of hex digits") }
        return out
    }

    /// Lowercase hex of `bytes`.
    static func hex(_ bytes: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef")
        var s = ""
        for b in bytes {
            s.append(digits[Int(b >> 4)])
            s.append(digits[Int(b & 0xF)])
        }
        return s
    }
}

/// A scenario's `transcript.json` (layout: aemp-vectors/README.md).
struct Transcript: Sendable {
    var scenario: String
    var secret: String
    var connections: [Connection]

    /// Direction of a TCP connection's byte stream.
    enum Direction: String, Sendable, CaseIterable {
        case c2s
        case s2c

        var opposite: Direction { self == .c2s ? .s2c : .c2s }
    }

    /// One TCP connection.
    struct Connection: Sendable {
        var id: String
        var clientNode: String?
        var serverNode: String?
        var handshake: [Direction: Handshake]
        var packets: [Packet]

        func node(sending direction: Direction) -> String? {
            direction == .c2s ? clientNode : serverNode
        }
    }

    /// What one side wrote before the data phase; every line may be missing (refused connections).
    struct Handshake: Sendable {
        var greeting1: String?
        var greeting2: String?
        var auth: String?
        var authMethod: String?
        var authToken: String?
        var sendFraming: String?
        var authRecomputedInPython: String?
        var authOK: Bool?

        /// The lines present, in wire order; missing lines may only be trailing ones.
        var lines: [String] {
            [greeting1, greeting2, auth].prefix { $0 != nil }.map { $0! }
        }
    }

    /// One data packet.
    struct Packet: Sendable {
        var direction: Direction
        var sender: String
        var receiver: String
        var framing: String
        var offset: Int
        var length: Int
        var raw: [UInt8]
        var rawText: String?
        var cborDiag: String?
        var decoded: Value
    }

    init(scenario: String, json: Value) throws {
        self.scenario = scenario
        let where_ = "\(scenario)/transcript.json"
        secret = try json.field("secret", in: where_).string(in: where_)
        connections = try json.field("connections", in: where_).array(in: where_).map { c in
            let id = try c.field("id", in: where_).string(in: where_)
            let ctx = "\(where_) \(id)"
            let hs = try c.field("handshake", in: ctx)
            var handshake: [Direction: Handshake] = [:]
            for d in Direction.allCases {
                let h = try hs.field(d.rawValue, in: ctx)
                handshake[d] = Handshake(
                    greeting1: try h.optionalString("greeting1", in: ctx),
                    greeting2: try h.optionalString("greeting2", in: ctx),
                    auth: try h.optionalString("auth", in: ctx),
                    authMethod: try h.optionalString("auth_method", in: ctx),
                    authToken: try h.optionalString("auth_token", in: ctx),
                    sendFraming: try h.optionalString("send_framing", in: ctx),
                    authRecomputedInPython: try h.optionalString("auth_recomputed_in_python", in: ctx),
                    authOK: try h.optionalBool("auth_ok", in: ctx))
            }
            let packets = try c.field("packets", in: ctx).array(in: ctx).map { p in
                let dir = try p.field("dir", in: ctx).string(in: ctx)
                guard let direction = Direction(rawValue: dir) else {
                    throw Vectors.Failure(description: "\(ctx): bad packet dir \(dir)")
                }
                return Packet(
                    direction: direction,
                    sender: try p.field("sender", in: ctx).string(in: ctx),
                    receiver: try p.field("receiver", in: ctx).string(in: ctx),
                    framing: try p.field("framing", in: ctx).string(in: ctx),
                    offset: try p.field("offset", in: ctx).int(in: ctx),
                    length: try p.field("length", in: ctx).int(in: ctx),
                    raw: try Vectors.unhex(p.field("raw_hex", in: ctx).string(in: ctx)),
                    rawText: try p.optionalString("raw_text", in: ctx),
                    cborDiag: try p.optionalString("cbor_diag", in: ctx),
                    decoded: try p.field("decoded", in: ctx))
            }
            return Connection(
                id: id,
                clientNode: try c.optionalString("client_node", in: ctx),
                serverNode: try c.optionalString("server_node", in: ctx),
                handshake: handshake,
                packets: packets)
        }
    }
}

/// One case of `auth-vectors.json`.
struct AuthVector: Sendable, CustomTestStringConvertible {
    var index: Int
    var desc: String
    var source: String
    var local: (String, String)
    var remote: (String, String)
    var secret: String
    var secretBytes: [UInt8]
    var hmacLocalTokenSent: String
    var hmacRemoteTokenExpected: String
    var cleartextToken: String
    var hmacInputLocal: [UInt8]

    var testDescription: String { "#\(index) \(desc)" }

    /// Every case in the file, in file order.
    static func all() throws -> [AuthVector] {
        let file = "auth-vectors.json"
        let json = try Vectors.json(file)
        return try json.field("cases", in: file).array(in: file).enumerated().map { index, c in
            let ctx = "\(file) case \(index)"
            let tokens = try c.field("tokens", in: ctx)
            let hmac = try tokens.field("hmac_sha3_512", in: ctx)
            return AuthVector(
                index: index,
                desc: try c.field("desc", in: ctx).string(in: ctx),
                source: try c.field("source", in: ctx).string(in: ctx),
                local: (try c.field("local_greeting1", in: ctx).string(in: ctx),
                        try c.field("local_greeting2", in: ctx).string(in: ctx)),
                remote: (try c.field("remote_greeting1", in: ctx).string(in: ctx),
                         try c.field("remote_greeting2", in: ctx).string(in: ctx)),
                secret: try c.field("secret", in: ctx).string(in: ctx),
                secretBytes: try Vectors.unhex(c.field("secret_hex", in: ctx).string(in: ctx)),
                hmacLocalTokenSent: try hmac.field("local_token_sent", in: ctx).string(in: ctx),
                hmacRemoteTokenExpected: try hmac.field("remote_token_expected", in: ctx).string(in: ctx),
                cleartextToken: try tokens.field("cleartext", in: ctx).field("token", in: ctx).string(in: ctx),
                hmacInputLocal: try Vectors.unhex(tokens.field("hmac_input_local_hex", in: ctx).string(in: ctx)))
        }
    }
}

// MARK: - Reading parsed JSON

extension Value {
    fileprivate func field(_ key: String, in context: String) throws -> Value {
        guard let object = objectValue else {
            throw Vectors.Failure(description: "\(context): expected an object holding \"\(key)\", got \(self)")
        }
        guard let v = object[key] else { throw Vectors.Failure(description: "\(context): missing \"\(key)\"") }
        return v
    }

    fileprivate func string(in context: String) throws -> String {
        guard let s = stringValue else { throw Vectors.Failure(description: "\(context): expected a string, got \(self)") }
        return s
    }

    fileprivate func array(in context: String) throws -> [Value] {
        guard let a = arrayValue else { throw Vectors.Failure(description: "\(context): expected an array, got \(self)") }
        return a
    }

    fileprivate func int(in context: String) throws -> Int {
        guard case .int(let i) = self else { throw Vectors.Failure(description: "\(context): expected an integer, got \(self)") }
        return Int(i)
    }

    fileprivate func optionalString(_ key: String, in context: String) throws -> String? {
        guard let v = objectValue?[key], !v.isNull else { return nil }
        return try v.string(in: "\(context) \(key)")
    }

    fileprivate func optionalBool(_ key: String, in context: String) throws -> Bool? {
        guard let v = objectValue?[key], !v.isNull else { return nil }
        guard case .bool(let b) = v else { throw Vectors.Failure(description: "\(context) \(key): expected a bool, got \(v)") }
        return b
    }
}

/// A small deterministic generator (SplitMix64) so randomized tests are reproducible.
struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    /// A generator seeded from a string (FNV-1a, stable across runs unlike `Hasher`).
    init(seed text: String) {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in text.utf8 {
            h ^= UInt64(b)
            h = h &* 0x0000_0100_0000_01B3
        }
        state = h
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

// MARK: - A scenario as one timeline

/// Every data packet and every connection end of a scenario, in capture time order across all its
/// connections (`packets[].t` and `closed[]` of `transcript.json`), for replays that play several
/// connections at once and must keep their cross-connection order (e.g. a `g_upd` on one connection
/// before the `g_chg2` it causes on another).
struct CaptureTimeline: Sendable {
    /// What happened at one moment.
    enum Event: Sendable {
        /// A packet travelled in `direction`; `decoded` is the whole packet, `raw` its bytes.
        case packet(direction: Transcript.Direction, framing: String, raw: [UInt8], decoded: Value)
        /// One direction of the connection ended (`how`: `FIN` or `RST`).
        case closed(direction: Transcript.Direction, how: String)
    }

    /// One event of one connection.
    struct Entry: Sendable {
        var t: Double
        var connection: String
        var event: Event
    }

    /// Node IDs of one connection's ends and the handshake lines of each direction.
    struct Ends: Sendable {
        var clientNode: String?
        var serverNode: String?
        var handshake: [Transcript.Direction: Transcript.Handshake]

        /// The side that sends in `direction`.
        func node(sending direction: Transcript.Direction) -> String? {
            direction == .c2s ? clientNode : serverNode
        }
    }

    var scenario: String
    var entries: [Entry]
    var connections: [String: Ends]

    /// The timeline of `scenario` (e.g. `json`, `failover-json`).
    static func load(_ scenario: String) throws -> CaptureTimeline {
        let transcript = try Vectors.transcript(scenario)
        let where_ = "\(scenario)/transcript.json"
        let root = try Vectors.json(where_)
        var entries: [Entry] = []
        var ends: [String: Ends] = [:]
        for (c, raw) in zip(transcript.connections, try root.field("connections", in: where_).array(in: where_)) {
            let ctx = "\(where_) \(c.id)"
            ends[c.id] = Ends(clientNode: c.clientNode, serverNode: c.serverNode, handshake: c.handshake)
            let times = try raw.field("packets", in: ctx).array(in: ctx).map { p -> Double in
                try p.field("t", in: ctx).number(in: ctx)
            }
            for (t, p) in zip(times, c.packets) {
                entries.append(Entry(t: t, connection: c.id, event: .packet(
                    direction: p.direction, framing: p.framing, raw: p.raw, decoded: p.decoded)))
            }
            for end in raw.objectValue?["closed"]?.arrayValue ?? [] {
                let dir = try end.field("dir", in: ctx).string(in: ctx)
                guard let direction = Transcript.Direction(rawValue: dir) else {
                    throw Vectors.Failure(description: "\(ctx): bad closed dir \(dir)")
                }
                entries.append(Entry(
                    t: try end.field("t", in: ctx).number(in: ctx), connection: c.id,
                    event: .closed(direction: direction, how: try end.field("how", in: ctx).string(in: ctx))))
            }
        }
        // Stable: events with the same time stay in file order (a burst written in one go).
        let sorted = entries.enumerated().sorted { a, b in
            a.element.t != b.element.t ? a.element.t < b.element.t : a.offset < b.offset
        }.map(\.element)
        return CaptureTimeline(scenario: scenario, entries: sorted, connections: ends)
    }
}

extension Value {
    fileprivate func number(in context: String) throws -> Double {
        switch self {
        case .int(let i): return Double(i)
        case .double(let d): return d
        default: throw Vectors.Failure(description: "\(context): expected a number, got \(self)")
        }
    }
}
