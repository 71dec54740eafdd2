import AEMP
import Testing

/// `/v1/db`: the distributed database through the gateway, and its change feeds (SSE and long-poll).
@Suite("gateway: database and change feeds", .serialized, .timeLimit(.minutes(3)))
struct DatabaseTests {

    @Test("a node's db_set appears in GET /v1/db/{family}, /keys and /values (family names percent-encoded)")
    func nodeWritesVisible() async throws {
        try await GatewayNetwork.with { net in
            let family = "services ü/1"
            let path = "/v1/db/services%20%C3%BC%2F1"
            net.node.dbSet(family, "web1", ["url": "http://10.0.0.5", "weight": 2])
            net.node.dbSet(family, "web2", ["url": "http://10.0.0.6", "weight": 1.5])
            let all = try await waitFor("both keys in GET \(path)") { () async throws -> HTTPTestResponse? in
                let r = try await net.get(path)
                return r.json?.objectValue?["values"]?.objectValue?.count == 2 ? r : nil
            }
            #expect(all.status == 200)
            #expect(
                all.json == [
                    "family": .string(family),
                    "values": ["web1": ["url": "http://10.0.0.5", "weight": 2], "web2": ["url": "http://10.0.0.6", "weight": 1.5]],
                ], "\(all)")
            let keys = try await net.get(path + "/keys")
            #expect(keys.status == 200)
            #expect(Set(keys.json?.objectValue?["keys"]?.arrayValue ?? []) == ["web1", "web2"], "\(keys)")
            let values = try await net.get(path + "/values")
            #expect(values.status == 200)
            #expect(
                Set(values.json?.objectValue?["values"]?.arrayValue ?? [])
                    == [["url": "http://10.0.0.5", "weight": 2], ["url": "http://10.0.0.6", "weight": 1.5]], "\(values)")
            let empty = try await net.get("/v1/db/nobody-uses-this")
            #expect(empty.status == 200 && empty.json == ["family": "nobody-uses-this", "values": [:]], "\(empty)")
            let invalid = try await net.get("/v1/db/bad%01family")
            expectProblem(invalid, 422, "invalid_family")
        }
    }

    @Test("the SSE feed sends a snapshot, then every change of a node's writes in order, with increasing ids")
    func sseFeed() async throws {
        try await GatewayNetwork.with { net in
            net.node.dbSet("feed", "a", 1)
            try await waitForKey(net, "feed", "a")
            let sse = try await net.sse("/v1/db/feed/watch")
            #expect(sse.status == 200 && sse.header("Content-Type")?.hasPrefix("text/event-stream") == true)
            let snapshot = try await sse.next()
            #expect(snapshot.event == "snapshot", "\(snapshot)")
            let s = try #require(snapshot.json?.objectValue)
            #expect(s["values"] == ["a": 1] && s["reset"] == false && s["family"] == "feed", "\(snapshot)")
            let epoch = try #require(snapshot.id.flatMap(epochOf), "snapshot id \(snapshot)")
            #expect(snapshot.id == "\(epoch)-0" && s["id"] == .string("\(epoch)-0"))
            let second = try await net.sse("/v1/db/feed/watch")  // shares the feed
            #expect(try await second.next().id == "\(epoch)-0")

            net.node.dbSet("feed", "b", ["x": [1, 2]])
            net.node.dbSet("feed", "a", 2)
            net.node.dbDel("feed", ["b"])
            let changes = try await sse.next(3)
            #expect(changes.map(\.event) == ["change", "change", "change"], "\(changes)")
            #expect(changes.map(\.id) == ["\(epoch)-1", "\(epoch)-2", "\(epoch)-3"], "\(changes)")
            let data = changes.compactMap { $0.json?.objectValue }
            #expect(data[0]["added"] == ["b": ["x": [1, 2]]] && data[0]["changed"] == [:] && data[0]["deleted"] == [])
            #expect(data[1]["added"] == [:] && data[1]["changed"] == ["a": 2] && data[1]["deleted"] == [])
            #expect(data[2]["added"] == [:] && data[2]["changed"] == [:] && data[2]["deleted"] == ["b"])
            #expect(try await second.next(3).map(\.id) == changes.map(\.id), "every client of a family sees the same events")
        }
    }

    @Test("the long-poll feed: snapshot with its index, then the changes after ?index= as they happen")
    func longPollFeed() async throws {
        try await GatewayNetwork.with { net in
            let r0 = try await net.get("/v1/db/lp/watch")
            #expect(r0.status == 200, "\(r0)")
            let id0 = try #require(r0.json?.objectValue?["id"]?.stringValue, "\(r0)")
            #expect(r0.header("X-AEMP-Index") == id0)
            #expect(r0.json?.objectValue?["values"] == [:] && r0.json?.objectValue?["reset"] == false, "\(r0)")
            let epoch = try #require(epochOf(id0))

            // Nothing new: an empty change list after the wait.
            let quiet = try await net.get("/v1/db/lp/watch?index=\(id0)&wait=1")
            #expect(quiet.json?.objectValue?["changes"] == [] && quiet.header("X-AEMP-Index") == id0, "\(quiet)")

            // A parked poll is answered by the node's write.
            let poller = try await net.client()
            let waiting = Task { try await poller.request("GET", "/v1/db/lp/watch?index=\(id0)&wait=20", timeout: 25) }
            try await Task.sleep(nanoseconds: 300_000_000)  // lets the poll park first (either order is correct)
            net.node.dbSet("lp", "k1", "v1")
            net.node.dbSet("lp", "k2", "v2")
            net.node.dbDel("lp", ["k1"])
            // Collect the three changes, polling from the last index each time.
            var changes: [Value] = []
            var index = id0
            var r = try await waiting.value
            for _ in 0..<10 {
                #expect(r.status == 200, "\(r)")
                changes += r.json?.objectValue?["changes"]?.arrayValue ?? []
                index = try #require(r.json?.objectValue?["id"]?.stringValue, "\(r)")
                #expect(r.header("X-AEMP-Index") == index)
                if changes.count >= 3 { break }
                r = try await net.get("/v1/db/lp/watch?index=\(index)&wait=10", timeout: 15)
            }
            #expect(changes.count == 3, "\(changes)")
            #expect(changes.compactMap { $0.objectValue?["id"]?.stringValue } == ["\(epoch)-1", "\(epoch)-2", "\(epoch)-3"])
            #expect(changes.first?.objectValue?["added"] == ["k1": "v1"])
            #expect(changes.dropFirst().first?.objectValue?["added"] == ["k2": "v2"])
            #expect(changes.last?.objectValue?["deleted"] == ["k1"])
            #expect(index == "\(epoch)-3")
            // From the start again: all three (the history reaches back).
            let replay = try await net.get("/v1/db/lp/watch?index=\(id0)&wait=0")
            #expect(replay.json?.objectValue?["changes"]?.arrayValue?.count == 3, "\(replay)")
            // Last-Event-ID works for the long-poll too.
            let viaHeader = try await net.get("/v1/db/lp/watch?wait=0", headers: [("Last-Event-ID", "\(epoch)-2")])
            #expect(viaHeader.json?.objectValue?["changes"]?.arrayValue?.count == 1, "\(viaHeader)")
            for bad in ["wait=x", "wait=-1"] {
                expectProblem(try await net.get("/v1/db/lp/watch?index=\(index)&\(bad)"), 422, "invalid_request")
            }
        }
    }

    @Test("past the change history, and with an id of another epoch, clients get a snapshot marked reset; never a gap")
    func feedReset() async throws {
        try await GatewayNetwork.with(gatewayArguments: ["--feed-history", "2"]) { net in
            let sse = try await net.sse("/v1/db/hist/watch")
            let snapshot = try await sse.next()
            let epoch = try #require(snapshot.id.flatMap(epochOf), "\(snapshot)")
            for i in 1...5 { net.node.dbSet("hist", "k\(i)", .int(Int64(i))) }
            let changes = try await sse.next(5)
            #expect(changes.map(\.id) == (1...5).map { "\(epoch)-\($0)" }, "\(changes)")
            let everything: Value = ["k1": 1, "k2": 2, "k3": 3, "k4": 4, "k5": 5]

            // History 2 holds changes 4 and 5: resuming after 3 replays them, after 1 cannot.
            let resumed = try await net.sse("/v1/db/hist/watch", headers: [("Last-Event-ID", "\(epoch)-3")])
            let replay = try await resumed.next(2)
            #expect(replay.map(\.event) == ["change", "change"] && replay.map(\.id) == ["\(epoch)-4", "\(epoch)-5"], "\(replay)")
            let tooOld = try await net.sse("/v1/db/hist/watch", headers: [("Last-Event-ID", "\(epoch)-1")])
            let reset = try await tooOld.next()
            #expect(reset.event == "snapshot" && reset.id == "\(epoch)-5", "\(reset)")
            #expect(reset.json?.objectValue?["reset"] == true && reset.json?.objectValue?["values"] == everything, "\(reset)")
            let foreign = try await net.sse("/v1/db/hist/watch?last_event_id=0badbeef-3")
            let foreignReset = try await foreign.next()
            #expect(foreignReset.event == "snapshot" && foreignReset.json?.objectValue?["reset"] == true, "\(foreignReset)")
            #expect(foreignReset.json?.objectValue?["values"] == everything)

            // The same through the long-poll.
            let lpOld = try await net.get("/v1/db/hist/watch?index=\(epoch)-1&wait=0")
            #expect(lpOld.json?.objectValue?["reset"] == true && lpOld.json?.objectValue?["values"] == everything, "\(lpOld)")
            #expect(lpOld.json?.objectValue?["changes"] == nil)
            let lpForeign = try await net.get("/v1/db/hist/watch?index=0badbeef-5&wait=0")
            #expect(lpForeign.json?.objectValue?["reset"] == true, "\(lpForeign)")
            let lpFuture = try await net.get("/v1/db/hist/watch?index=\(epoch)-99&wait=0")
            #expect(lpFuture.json?.objectValue?["reset"] == true, "\(lpFuture)")
            let lpRecent = try await net.get("/v1/db/hist/watch?index=\(epoch)-3&wait=0")
            #expect(
                lpRecent.json?.objectValue?["changes"]?.arrayValue?.compactMap { $0.objectValue?["id"] }
                    == [.string("\(epoch)-4"), .string("\(epoch)-5")], "\(lpRecent)")

            // Every client continues with the next change.
            net.node.dbSet("hist", "k6", 6)
            for stream in [sse, resumed, tooOld, foreign] {
                let e = try await stream.next()
                #expect(e.id == "\(epoch)-6" && e.json?.objectValue?["added"] == ["k6": 6], "\(stream.path): \(e)")
            }
        }
    }

    @Test("PUT and DELETE through the gateway are seen by the node; only keys the gateway set can be deleted")
    func gatewayWrites() async throws {
        try await GatewayNetwork.with { net in
            let node = net.node
            let put = try await net.http.request("PUT", "/v1/db/cfg/max%2Fsize", json: ["limit": 10, "unit": "MB"])
            #expect(put.status == 200, "\(put)")
            #expect(put.json == ["family": "cfg", "subkey": "max/size", "value": ["limit": 10, "unit": "MB"]], "\(put)")
            try await eventually("the node sees the gateway's key") {
                try await node.family("cfg")["max/size"] == ["limit": 10, "unit": "MB"]
            }
            let scalar = try await net.http.request("PUT", "/v1/db/cfg/flag", headers: [("Content-Type", "application/json")], body: Array("true".utf8))
            #expect(scalar.status == 200, "\(scalar)")
            try await eventually("the node sees a scalar value") { try await node.family("cfg")["flag"] == true }

            let del = try await net.http.request("DELETE", "/v1/db/cfg/max%2Fsize")
            #expect(del.status == 200 && del.json?.objectValue?["deleted"] == true, "\(del)")
            try await eventually("the key is gone for the node") { try await node.family("cfg")["max/size"] == nil }
            expectProblem(try await net.http.request("DELETE", "/v1/db/cfg/max%2Fsize"), 404, "key_not_owned")

            node.dbSet("cfg", "nodes-key", "mine")
            try await waitForKey(net, "cfg", "nodes-key")
            expectProblem(try await net.http.request("DELETE", "/v1/db/cfg/nodes-key"), 404, "key_not_owned")
            #expect(try await node.family("cfg")["nodes-key"] == "mine")

            // AnyEvent::MP's own families ('l, 'g) can be read, not written.
            let reserved = try await net.get("/v1/db/'l")
            #expect(reserved.json?.objectValue?["values"]?.objectValue?[net.seed.id] == [.string(net.seed.address)], "\(reserved)")
            expectProblem(try await net.http.request("PUT", "/v1/db/'l/fake-node", json: ["10.0.0.1:4040"]), 403, "reserved_family")
            expectProblem(try await net.http.request("DELETE", "/v1/db/%27l/\(net.seed.id)"), 403, "reserved_family")

            expectProblem(try await net.http.request("PUT", "/v1/db/cfg/x", headers: [("Content-Type", "application/json")], body: Array("{oops".utf8)), 400, "malformed_json")
            expectProblem(try await net.http.request("PUT", "/v1/db/cfg/x", headers: [("Content-Type", "application/json")]), 400, "malformed_json")
            expectProblem(try await net.http.request("PUT", "/v1/db/cfg/x"), 415, "unsupported_media_type")
        }
    }

    @Test("POST /v1/db/{family}/reg registers a mailbox; the key goes when the mailbox is deleted")
    func registerMailbox() async throws {
        try await GatewayNetwork.with { net in
            let box = try await net.createMailbox()
            let r = try await net.post("/v1/db/workers/reg", json: ["port": .string(box.name), "value": ["state": "idle"]])
            #expect(r.status == 201, "\(r)")
            #expect(r.json?.objectValue?["subkey"] == .string(box.port), "\(r)")
            let node = net.node
            try await eventually("the node sees the registration") {
                try await node.family("workers")[box.port] == ["state": "idle"]
            }
            // Nodes find the mailbox through the family and send to it.
            let found = try await node.keys("workers")
            #expect(found == [box.port])
            node.snd(box.port, ["job", 7])
            #expect(GatewayNetwork.messages(try await net.poll(box.name, query: "wait=10")) == [["job", 7]])

            #expect(try await net.http.request("DELETE", "/v1/ports/\(box.name)").status == 200)
            try await eventually("the registration vanishes with the mailbox") {
                try await node.family("workers")[box.port] == nil
            }
            expectProblem(try await net.post("/v1/db/workers/reg", json: ["port": .string(box.name)]), 410, "mailbox_gone")
            expectProblem(try await net.post("/v1/db/workers/reg", json: ["port": "nosuchbox"]), 404, "unknown_mailbox")
            expectProblem(try await net.post("/v1/db/workers/reg", json: ["value": 1]), 422, "invalid_request")
        }
    }

    /// The epoch part of a feed event id `<epoch>-<index>`.
    func epochOf(_ id: String) -> String? {
        guard let dash = id.lastIndex(of: "-"), UInt64(id[id.index(after: dash)...]) != nil else { return nil }
        return String(id[..<dash])
    }

    /// Waits until the gateway's master knows `family/key`.
    func waitForKey(_ net: GatewayNetwork, _ family: String, _ key: String) async throws {
        try await eventually("\(family)/\(key) at the master") {
            try await net.get("/v1/db/\(family)").json?.objectValue?["values"]?.objectValue?[key] != nil
        }
    }
}
