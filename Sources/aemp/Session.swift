import AEMP
import ArgumentParser
import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// Options every subcommand shares: who the node is and how it finds the network.
struct NodeOptions: ParsableArguments {
    @Option(help: "Shared secret (or use --secret-file or AEMP_SECRET; not needed with --cert).")
    var secret: String?

    @Option(help: "File holding the shared secret (trailing newline ignored).")
    var secretFile: String?

    @Option(
        help: ArgumentHelp(
            "The network's certificate: a PEM file with key, certificate and CA certificates, as `aemp cert generate` or Perl's `aemp gencert` writes it (or set AEMP_CERT). Mesh connections use TLS; no secret is needed then.",
            valueName: "file"))
    var cert: String?

    @Option(help: "Comma-separated seed addresses host:port.")
    var seeds: String?

    @Option(help: "Node ID (%n = host name, %u or trailing / = random suffix; default: anon/ except for seed).")
    var nodeID: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (default: notice for seed, error otherwise).")
    var logLevel: String?

    @Option(help: "Largest packet in bytes a peer may send (a larger one cuts it off); 65536...268435456, default 67108864.")
    var maxPacket: Int?

    /// The node configuration these options describe; `diagnostics` (if given) sees the node's log.
    func configuration(
        defaultNodeID: String? = nil, defaultLogLevel: Logger.Level, diagnostics: JoinDiagnostics? = nil
    ) throws -> NodeConfiguration {
        let certificate = try readCertificate()
        let secret = try readSecret()
        guard secret != nil || certificate != nil else {
            throw ToolError.configuration("no shared secret and no certificate: pass --secret, --secret-file, --cert or set AEMP_SECRET")
        }
        var c = NodeConfiguration(secret: secret ?? "")
        // A certificate alone is enough: the node then talks TLS only (as a Perl node with a `cert`
        // and no `secret`).
        c.certificate = certificate
        if let id = nodeID ?? defaultNodeID { c.nodeID = id }
        c.seeds = seedList
        if let maxPacket {
            guard (65_536...(256 << 20)).contains(maxPacket) else {
                throw ToolError.configuration("--max-packet \(maxPacket) is not in 65536...268435456")
            }
            c.maxPacketSize = maxPacket
            c.maxUnsentBytes = max(c.maxUnsentBytes, 4 * maxPacket)
        }
        var level = defaultLogLevel
        if let logLevel {
            guard let l = Logger.Level(rawValue: logLevel) else {
                throw ToolError.configuration("unknown log level '\(logLevel)' (use trace, debug, info, notice, warning, error or critical)")
            }
            level = l
        }
        if let diagnostics {
            c.logger = Logger(label: "aemp") { label in
                DiagnosingLogHandler(label: label, printLevel: level, diagnostics: diagnostics)
            }
        } else {
            var logger = Logger(label: "aemp")
            logger.logLevel = level
            c.logger = logger
        }
        return c
    }

    /// The seed addresses given with --seeds.
    var seedList: [String] {
        (seeds ?? "").split(separator: ",").map { String($0).trimmingCharacters(in: " ") }.filter { !$0.isEmpty }
    }

    /// The certificate of --cert or AEMP_CERT, nil if neither is given; a file the node cannot use
    /// is a configuration error naming the file and the problem.
    private func readCertificate() throws -> MeshCertificate? {
        guard let path = cert ?? getenv("AEMP_CERT").map({ String(cString: $0) }).flatMap({ $0.isEmpty ? nil : $0 }) else {
            return nil
        }
        do {
            return try MeshCertificate(contentsOfFile: path)
        } catch {
            throw ToolError.configuration("\(error)")
        }
    }

    /// The secret of --secret, --secret-file or AEMP_SECRET, nil if none is given.
    private func readSecret() throws -> String? {
        let secretText: String
        if let secret {
            secretText = secret
        } else if let secretFile {
            guard let f = fopen(secretFile, "r") else {
                throw ToolError.configuration("cannot read secret file \(secretFile): \(String(cString: strerror(errno)))")
            }
            defer { fclose(f) }
            var bytes: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = fread(&buffer, 1, buffer.count, f)
                if n <= 0 { break }
                bytes += buffer[0..<n]
            }
            while let last = bytes.last, last == 0x0A || last == 0x0D { bytes.removeLast() }
            secretText = String(decoding: bytes, as: UTF8.self)
        } else if let env = getenv("AEMP_SECRET") {
            secretText = String(cString: env)
        } else {
            return nil
        }
        guard !secretText.isEmpty else { throw ToolError.configuration("the shared secret is empty") }
        return secretText
    }
}

/// Options of the commands that join, do one job and leave.
struct ClientOptions: ParsableArguments {
    @Option(help: "Seconds to wait for a master after starting.")
    var connectTimeout: Double = 10

    @Option(help: "Seconds to wait for the answer once a master is found: the reply (cal), the delivery receipt (snd), the query result (db, nodes), the deletion (db del).")
    var timeout: Double = 10

    func validate() throws {
        guard connectTimeout > 0, connectTimeout.isFinite else { throw ValidationError("--connect-timeout must be a positive number of seconds") }
        guard timeout > 0, timeout.isFinite else { throw ValidationError("--timeout must be a positive number of seconds") }
    }
}

/// A private node that joined the network through the seeds and is attached to a master.
struct Session: Sendable {
    let node: Node
    let master: String
    let timeout: Double

    /// Starts a private node and waits for a master; fails with the best reason the log gave.
    static func join(_ options: NodeOptions, _ client: ClientOptions) async throws -> Session {
        let seedCount = options.seedList.count
        guard seedCount > 0 else {
            throw ToolError.configuration("no seeds: pass --seeds host:port[,host:port...]")
        }
        let diagnostics = JoinDiagnostics(seedCount: seedCount)
        var c = try options.configuration(defaultNodeID: "anon/", defaultLogLevel: .error, diagnostics: diagnostics)
        c.binds = []
        // Messages queued for a node that cannot be reached fail (monitors fire) within the timeout.
        c.connectTimeout = .nanoseconds(Int64(client.timeout * 1e9))
        let node: Node
        do {
            node = try Node(configuration: c)
        } catch let error as NodeError {
            throw ToolError.configuration("\(error)")
        }
        try await node.start()
        let attached = OneShot<String?>()
        let waiting = Task { attached.resolve(try? await node.waitForMaster(timeout: .nanoseconds(Int64(client.connectTimeout * 1e9)))) }
        diagnostics.refusedEverywhere.whenResolved { attached.resolve(nil) }
        guard let master = await attached.value() else {
            waiting.cancel()
            await node.shutdown()
            if diagnostics.refusedEverywhere.isResolved {
                throw ToolError.joinRefused(seeds: c.seeds, problem: diagnostics.problem ?? "authentication failure")
            }
            throw ToolError.noMaster(seconds: client.connectTimeout, seeds: c.seeds, problem: diagnostics.problem)
        }
        return Session(node: node, master: master, timeout: client.timeout)
    }

    /// Like `join`, but gives up (returns nil) when `stop` fires first: a long-running command
    /// interrupted while it is still looking for a master exits quietly.
    static func join(
        _ options: NodeOptions, _ client: ClientOptions, unlessStopped stop: OneShot<Int32>
    ) async throws -> Session? {
        let joined = OneShot<Result<Session, any Error>?>()
        Task {
            do {
                joined.resolve(.success(try await join(options, client)))
            } catch {
                joined.resolve(.failure(error))
            }
        }
        Task {
            _ = await stop.value()
            joined.resolve(nil)
        }
        return try await joined.value()?.get()
    }

    /// Closes every connection.
    func leave() async {
        await node.shutdown()
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: Character) -> String {
        var s = Substring(self)
        while s.first == set { s.removeFirst() }
        while s.last == set { s.removeLast() }
        return String(s)
    }
}
