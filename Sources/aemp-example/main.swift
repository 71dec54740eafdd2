// The README's "Using the library" example, exactly (ReadmeExampleTests checks that every Swift
// block of that section appears here, so it compiles in CI). Against `make run` (a standalone
// gateway whose node listens on 127.0.0.1:4040 with this secret): swift run aemp-example
import AEMP

var config = NodeConfiguration(secret: "shared secret of the network")
config.nodeID = "myapp/%u"                  // unique per process, like Perl's default
config.seeds = ["127.0.0.1:4040"]          // binds = [] (default): a private node, like the gateway
let node = try Node(configuration: config)
try await node.start()
let master = try await node.waitForMaster(timeout: .seconds(10))  // throws RequestError.timedOut
print("attached to", master)

// A port with tagged handlers (the handler gets the message without its tag).
let port = node.port()
node.rcv(port, tag: "ping") { message in
    // A port ID that arrives as a string is parsed; a literal one is checked where it is written.
    if let reply = message.first?.stringValue.flatMap(PortID.init) { node.snd(reply, ["pong"]) }
}

// Or a port read as an async stream.
let (inbox, messages) = node.mailbox()
node.snd(port, ["ping", .string(inbox.description)])
for await message in messages {
    print(message)  // ["pong"]
    break
}

// Monitors fire once with the kill reason ([] = normal exit, ["transport_error", node, why], …).
// A node the network has no address for fails at once: ["transport_error", node, "no known address"].
node.mon("othernode#someport") { reason in print("gone:", reason) }
node.snd("othernode#someport", ["hello", 42, ["a": 1]])
node.kil(port, reason: ["shutdown", "bye"])
node.monNodes { id, up in print(id, up ? "up" : "down") }

// The distributed database.
node.dbSet("services", "web1", ["url": "http://10.0.0.5"])  // owned by this node; gone when it leaves
node.dbReg("workers", port: inbox, "idle")                 // removed when the port dies
let all = try await node.dbFamily("services")              // also dbKeys / dbValues (timeout: 30 s)
print(all)
let watch = node.dbMon("services") { change in             // current family first, then every change
    print(change.added, change.changed, change.deleted, change.values)
}
watch.cancel()  // mon, monNodes, monMaster and dbMon all return a Subscription, ended this way

// Or as async sequences, ended with the loop: familyChanges, nodeEvents, masterChanges, death(of:).
for await change in node.familyChanges("services") where change.values["web1"] != nil {
    print("web1 is", change.values["web1"]!)
    break
}
await node.shutdown()
