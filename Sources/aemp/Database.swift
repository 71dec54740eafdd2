import AEMP
import ArgumentParser
import NIOCore

/// `aemp db …`: the distributed database (aemp-protocol §11).
struct DB: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "db",
        abstract: "Read, watch and write the distributed database.",
        discussion: """
            A key belongs to the node that set it and disappears when that node leaves the network \
            (aemp-protocol §11.1). So `db set` keeps its node running, holding the key, until it is \
            interrupted or until `db del` asks it to delete the key; `db del` can delete only keys \
            held that way.
            """,
        subcommands: [DBGet.self, DBKeys.self, DBValues.self, DBSet.self, DBDel.self, DBMon.self]
    )
}

/// The tool's own family through which `aemp db del` asks `aemp db set` processes to delete a key
/// they hold: subkey = the JSON array `[family, key]`, value = the asking node's ID.
enum DeleteRequests {
    static let family = "aemp::del"

    static func key(_ family: String, _ key: String) -> String {
        renderJSON([.string(family), .string(key)])
    }
}

/// Joins, asks the master one database query (bounded by --timeout), prints the answer as one
/// JSON line and leaves.
private func printQuery(
    _ options: NodeOptions, _ client: ClientOptions, _ request: String,
    _ query: @escaping @Sendable (Node, TimeAmount) async throws(RequestError) -> Value
) async throws {
    let session = try await Session.join(options, client)
    let node = session.node
    let answer = try await asking(session.timeout, "\(request) reply from master \(session.master)") { (timeout) async throws(RequestError) in
        try await query(node, timeout)
    }
    writeLine(renderJSON(answer))
    await session.leave()
}

/// `aemp db get FAMILY`: prints the family as one JSON object.
struct DBGet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get",
        abstract: "Print a family as one JSON object (db_family); {} if it is empty.")

    @OptionGroup var options: NodeOptions
    @OptionGroup var client: ClientOptions
    @Argument(help: "The family.") var family: String

    func run() async throws {
        let family = self.family
        try await printQuery(options, client, "db_family") { (node, timeout) async throws(RequestError) in
            .object(try await node.dbFamily(family, timeout: timeout))
        }
    }
}

/// `aemp db keys FAMILY`: prints the family's subkeys as one JSON array.
struct DBKeys: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "Print a family's subkeys as one sorted JSON array (db_keys).")

    @OptionGroup var options: NodeOptions
    @OptionGroup var client: ClientOptions
    @Argument(help: "The family.") var family: String

    func run() async throws {
        let family = self.family
        try await printQuery(options, client, "db_keys") { (node, timeout) async throws(RequestError) in
            .array(try await node.dbKeys(family, timeout: timeout).sorted().map { .string($0) })
        }
    }
}

/// `aemp db values FAMILY`: prints the family's values as one JSON array, in key order.
struct DBValues: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "values",
        abstract: "Print a family's values as one JSON array, in the order of their sorted keys.")

    @OptionGroup var options: NodeOptions
    @OptionGroup var client: ClientOptions
    @Argument(help: "The family.") var family: String

    func run() async throws {
        let family = self.family
        // db_family rather than db_values: the values come out in a stable order (by key).
        try await printQuery(options, client, "db_family") { (node, timeout) async throws(RequestError) in
            let values = try await node.dbFamily(family, timeout: timeout)
            return .array(values.keys.sorted().map { values[$0]! })
        }
    }
}

/// `aemp db set FAMILY KEY VALUE`: sets a key and holds it until interrupted or deleted by `db del`.
struct DBSet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set",
        abstract: "Set a key and hold it until interrupted (keys vanish with the node that set them).",
        discussion: """
            VALUE is read like a message element of `snd`: JSON if it parses (an argument starting \
            with [, { or " must), else a string. Once the master has the key the command prints \
            one JSON line {"family":…,"key":…,"node":<this node>,"value":…} and keeps running. \
            It deletes the key and exits 0 on SIGINT/SIGTERM, or when `aemp db del FAMILY KEY` \
            asks for the key (a note goes to standard error).
            """)

    @OptionGroup var options: NodeOptions
    @OptionGroup var client: ClientOptions
    @Argument(help: "The family.") var family: String
    @Argument(help: "The subkey.") var key: String
    @Argument(help: "The value (JSON, or a plain string).") var value: String

    private enum End: Sendable {
        case signal
        case deleteRequest(from: String)
    }

    func run() async throws {
        let stop = terminationSignal()
        let value = try ArgumentValue.databaseValue(self.value)
        guard let session = try await Session.join(options, client, unlessStopped: stop) else { return }
        let node = session.node
        let (family, key) = (self.family, self.key)
        let end = OneShot<End>()
        Task {
            _ = await stop.value()
            end.resolve(.signal)
        }
        // Watch for `db del` requests; the first delivery is what was asked before the key existed.
        let requestKey = DeleteRequests.key(family, key)
        let watching = OneShot<Void>()
        node.dbMon(DeleteRequests.family) { change in
            if watching.resolve(()) { return }
            if (change.added + change.changed).contains(requestKey) {
                end.resolve(.deleteRequest(from: change.values[requestKey]?.stringValue ?? "?"))
            }
        }
        try await withTimeout(session.timeout, "db_mon of \(DeleteRequests.family) from master \(session.master)") {
            await watching.value()
        }
        node.dbSet(family, key, value)
        // The query follows the write on the same connection: its reply proves the master has the key.
        _ = try await asking(session.timeout, "db_family reply from master \(session.master)") { (timeout) async throws(RequestError) in
            try await node.dbFamily(family, timeout: timeout)
        }
        writeLine(renderJSON(["family": .string(family), "key": .string(key), "node": .string(node.id), "value": value]))

        let how = await end.value()
        node.dbDel(family, [key])
        // Again a query after the write, so the deletion is applied before the connection closes.
        _ = try? await node.dbKeys(family, timeout: .nanoseconds(Int64(min(session.timeout, 5) * 1e9)))
        if case .deleteRequest(let from) = how {
            writeError("aemp: \(family)/\(key) deleted at the request of \(from); exiting")
        }
        await session.leave()
    }
}

/// `aemp db del FAMILY KEY…`: asks the `aemp db set` processes holding the keys to delete them.
struct DBDel: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "del",
        abstract: "Delete keys held by `aemp db set` processes.",
        discussion: """
            Only the node that set a key can delete it (aemp-protocol §11.2), so this command \
            publishes a request in the family `\(DeleteRequests.family)` that every `aemp db set` \
            process watches, and waits until the keys are gone. Keys that do not exist are noted \
            on standard error and are not an error. Exits 1 if a key is still there after \
            --timeout (it was set by some other node, which must delete it itself).
            """)

    @OptionGroup var options: NodeOptions
    @OptionGroup var client: ClientOptions
    @Argument(help: "The family.") var family: String
    @Argument(help: "The subkeys to delete.") var keys: [String]

    func validate() throws {
        guard !keys.isEmpty else { throw ValidationError("name at least one key to delete") }
    }

    func run() async throws {
        let session = try await Session.join(options, client)
        let node = session.node
        let family = self.family
        var seen = Set<String>()
        let wanted = keys.filter { seen.insert($0).inserted }
        let snapshot = OneShot<[String: Value]>()
        let gone = OneShot<Bool>()
        node.dbMon(family) { change in
            snapshot.resolve(change.values)
            if wanted.allSatisfy({ change.values[$0] == nil }) { gone.resolve(true) }
        }
        let initial = try await withTimeout(session.timeout, "db_mon of \(family) from master \(session.master)") {
            await snapshot.value()
        }
        for key in wanted where initial[key] == nil {
            writeError("aemp: \(family)/\(key) does not exist")
        }
        let present = wanted.filter { initial[$0] != nil }
        guard !present.isEmpty else {
            await session.leave()
            return
        }
        let requests = present.map { DeleteRequests.key(family, $0) }
        for request in requests { node.dbSet(DeleteRequests.family, request, .string(node.id)) }
        gone.resolve(after: session.timeout, with: false)
        let deleted = await gone.value()
        var still: [String] = []
        if !deleted {
            let now = (try? await node.dbFamily(family, timeout: .seconds(2))) ?? initial
            still = present.filter { now[$0] != nil }
        }
        node.dbDel(DeleteRequests.family, requests)
        _ = try? await node.dbKeys(DeleteRequests.family, timeout: .seconds(2))
        await session.leave()
        if !still.isEmpty { throw ToolError.notDeleted(family: family, keys: still, seconds: session.timeout) }
    }
}

/// `aemp db mon FAMILY`: prints the family, then every change, one JSON line each, until interrupted.
struct DBMon: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mon",
        abstract: "Print a family and then every change as JSON lines until interrupted.",
        discussion: """
            Each line is {"family":…,"values":{…whole family…},"added":[…],"changed":[…],"deleted":[…]}. \
            The first line is the family as it is, with every key under "added". A change may \
            list a key whose value was set again unchanged, as Perl's db_mon does. Keeps watching \
            across master failover; exits 0 on SIGINT/SIGTERM.
            """)

    @OptionGroup var options: NodeOptions
    @OptionGroup var client: ClientOptions
    @Argument(help: "The family.") var family: String

    func run() async throws {
        let stop = terminationSignal()
        guard let session = try await Session.join(options, client, unlessStopped: stop) else { return }
        session.node.dbMon(family) { change in writeLine(Self.line(change)) }
        _ = await stop.value()
        await session.leave()
    }

    /// One change as a JSON line, fields in a fixed order (family, values, added, changed, deleted).
    static func line(_ change: FamilyChange) -> String {
        let keys: ([String]) -> String = { renderJSON(.array($0.map { .string($0) })) }
        return "{\"family\":\(renderJSON(.string(change.family))),\"values\":\(renderJSON(.object(change.values)))"
            + ",\"added\":\(keys(change.added)),\"changed\":\(keys(change.changed)),\"deleted\":\(keys(change.deleted))}"
    }
}

/// `aemp nodes`: the nodes the network knows, with their listen addresses.
struct Nodes: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the known nodes and their listen addresses as one JSON object.",
        discussion: """
            Prints family 'l of the global database, {"<node id>":["host:port",…],…}, without \
            this command's own node; a private node (no listener, like the gateway) has []. \
            Perl's aemp has no such command (its `trace` asks every node for its connections).
            """)

    @OptionGroup var options: NodeOptions
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let session = try await Session.join(options, client)
        let node = session.node
        var nodes = try await asking(session.timeout, "db_family reply from master \(session.master)") { (timeout) async throws(RequestError) in
            try await node.dbFamily("'l", timeout: timeout)
        }
        nodes[node.id] = nil
        writeLine(renderJSON(.object(nodes)))
        await session.leave()
    }
}
