import AEMP
@testable import AEMPGateway
import Testing

/// The mailbox registry and the services' domain errors, without a network: what a lookup says
/// of each kind of name, and the one problem each domain error becomes.
@Suite("gateway: mailbox registry and domain errors")
struct MailboxRegistryTests {
    static func mailbox(_ registry: MailboxRegistry) -> Mailbox {
        let name = registry.newName()
        return Mailbox(name: name, port: PortID(node: "gw", name: name), maxQueue: 10, ttl: .seconds(60))
    }

    static func lookupError(_ registry: MailboxRegistry, _ name: String) -> MailboxError? {
        do {
            _ = try registry.lookup(name)
            return nil
        } catch {
            return error
        }
    }

    @Test("a lookup tells a live mailbox, a malformed name, an unknown one, a closed one (with why and the kill reason) and one of an earlier process apart")
    func lookups() throws {
        let registry = MailboxRegistry(limit: 2, remembered: 2)
        let live = Self.mailbox(registry)
        #expect(registry.add(live))
        #expect(try registry.lookup(live.name) === live)

        #expect(Self.lookupError(registry, "") == .invalidName(""))
        #expect(Self.lookupError(registry, "a/b") == .invalidName("a/b"))
        #expect(Self.lookupError(registry, String(repeating: "a", count: 129)) == .invalidName(String(repeating: "a", count: 129)))
        let unknown = "\(registry.instance).never-made"
        #expect(Self.lookupError(registry, unknown) == .unknown(unknown))
        #expect(Self.lookupError(registry, "zzzzzzzz.from-before") == .gone(
            "zzzzzzzz.from-before", why: "belonged to an earlier gateway process (this one is \(registry.instance))", reason: nil))

        #expect(registry.remove(live.name, reason: "was killed: bye", killReason: ["bye", 1]) === live)
        #expect(Self.lookupError(registry, live.name) == .gone(live.name, why: "was killed: bye", reason: ["bye", 1]))
        #expect(registry.remove(live.name, reason: "again") == nil, "a closed mailbox is removed once")
    }

    @Test("the registry refuses a mailbox beyond its limit, and remembers the last `remembered` closed names")
    func limits() throws {
        let registry = MailboxRegistry(limit: 2, remembered: 2)
        let boxes = (0..<3).map { _ in Self.mailbox(registry) }
        #expect(registry.add(boxes[0]) && registry.add(boxes[1]))
        #expect(!registry.add(boxes[2]), "a third mailbox beyond the limit of 2")
        #expect(registry.count == 2)
        #expect(Self.lookupError(registry, boxes[2].name) == .unknown(boxes[2].name))

        _ = registry.remove(boxes[0].name, reason: "was deleted")
        _ = registry.remove(boxes[1].name, reason: "expired")
        #expect(registry.add(boxes[2]))
        _ = registry.remove(boxes[2].name, reason: "was deleted")
        // Three closed, two remembered: the oldest is unknown again.
        #expect(Self.lookupError(registry, boxes[0].name) == .unknown(boxes[0].name))
        #expect(Self.lookupError(registry, boxes[1].name) == .gone(boxes[1].name, why: "expired", reason: nil))
        #expect(Self.lookupError(registry, boxes[2].name) == .gone(boxes[2].name, why: "was deleted", reason: nil))
    }

    @Test("each domain error becomes one problem: status, code, detail, extras, Retry-After")
    func problems() {
        func check(_ p: Problem, _ status: Int, _ code: String, detail: String, sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(p.status == status && p.code == code, "\(p.status) \(p.code)", sourceLocation: sourceLocation)
            #expect(p.detail.contains(detail), "\(p.detail)", sourceLocation: sourceLocation)
        }
        check(Problem(MailboxError.invalidName("a/b")), 422, "invalid_mailbox_name", detail: "\"a/b\" is not a mailbox name")
        check(Problem(MailboxError.unknown("x.y")), 404, "unknown_mailbox", detail: "\"x.y\"")
        let gone = Problem(MailboxError.gone("x.y", why: "was killed: bye", reason: ["bye"]))
        check(gone, 410, "mailbox_gone", detail: "Mailbox \"x.y\" was killed: bye")
        #expect(gone.extra["reason"] == ["bye"])
        #expect(Problem(MailboxError.gone("x.y", why: "expired", reason: nil)).extra["reason"] == nil)
        let full = Problem(MailboxError.full(limit: 3))
        check(full, 503, "over_capacity", detail: "maximum of 3 mailboxes")
        #expect(full.headers["Retry-After"] == "1")
        check(Problem(MailboxError.portRefused), 500, "internal_error", detail: "port for the mailbox")

        let feed = Problem(FeedError.full(family: "f", limit: 1))
        check(feed, 503, "over_capacity", detail: "family \"f\" has its maximum of 1 subscribers")
        #expect(feed.headers["Retry-After"] == "1")

        let calls = Problem(CallError.tooMany(limit: 5))
        check(calls, 503, "over_capacity", detail: "too many calls in flight (5)")
        #expect(calls.headers["Retry-After"] == "1")
        check(Problem(CallError.portRefused), 500, "internal_error", detail: "reply port")
    }
}
