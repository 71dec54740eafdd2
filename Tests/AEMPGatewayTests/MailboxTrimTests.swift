import AEMP
@testable import AEMPGateway
import NIOCore
import Testing

/// Issue 16: a mailbox's queue without a server: trimming to `max_queue`, the `dropped` entry in
/// sequence order at the place of the gap, acknowledgement by cursor. (The same through HTTP, SSE
/// and resets is in MailboxTests and LossTests.)
@Suite("gateway: mailbox queue")
struct MailboxTrimTests {
    func mailbox(maxQueue: Int) -> Mailbox {
        Mailbox(name: "m", port: PortID(node: "gw", name: "m"), maxQueue: maxQueue, ttl: .seconds(60))
    }

    /// `seq` of each entry, and `dropped first-seq` for a dropped entry.
    func shape(_ events: [Value]) -> [String] {
        events.map { e in
            let o = e.objectValue ?? [:]
            if o["type"] == "dropped" { return "dropped \(o["first"]?.integerValue ?? -1)-\(o["seq"]?.integerValue ?? -1)" }
            return "\(o["seq"]?.integerValue ?? -1)"
        }
    }

    @Test("beyond max_queue the oldest give way to one dropped entry at the front, numbered where the gap is")
    func trimsOldest() throws {
        let box = mailbox(maxQueue: 5)
        for i in 1...12 { box.deliver(["message": [.int(Int64(i))]]) }
        let batch = try #require(box.poll(after: nil, max: 100))
        let (events, last) = (batch.events, batch.last)
        #expect(shape(events) == ["dropped 1-7", "8", "9", "10", "11", "12"])
        #expect(last == 12)
        #expect(events.first?.objectValue?["count"] == 7 && events.first?.objectValue?["total"] == 7)
    }

    @Test("only an acknowledgement frees entries; handed-out but unacknowledged ones are reported when given up, after what the client saw")
    func acknowledgement() throws {
        let box = mailbox(maxQueue: 3)
        for i in 1...3 { box.deliver(["message": [.int(Int64(i))]]) }
        let first = try #require(box.poll(after: nil, max: 2))
        #expect(shape(first.events) == ["1", "2"])
        // Not acknowledged: a poll from the same cursor gets them again.
        #expect(shape(try #require(box.poll(after: 0, max: 10)).events) == ["1", "2", "3"])
        // Acknowledge 1 and 2: they are gone.
        #expect(shape(try #require(box.poll(after: 2, max: 10)).events) == ["3"])
        // 3 was handed out, not acknowledged; four more push it and 4 out.
        for i in 4...7 { box.deliver(["message": [.int(Int64(i))]]) }
        let after2 = try #require(box.poll(after: 2, max: 10))
        #expect(shape(after2.events) == ["dropped 3-4", "5", "6", "7"])
        // A client that had acknowledged through 3 is told only of 4.
        let after3 = try #require(box.poll(after: 3, max: 10))
        #expect(shape(after3.events) == ["dropped 4-4", "5", "6", "7"])
        #expect(after3.events.first?.objectValue?["count"] == 1 && after3.events.first?.objectValue?["total"] == 2)
        // Acknowledging everything empties it; nothing new: nil.
        #expect(box.poll(after: 7, max: 10) == nil)
    }

    @Test("a later gap grows the same dropped entry in place, never a second one behind newer messages")
    func oneMarker() throws {
        let box = mailbox(maxQueue: 2)
        for i in 1...4 { box.deliver(["message": [.int(Int64(i))]]) }
        for i in 5...9 { box.deliver(["message": [.int(Int64(i))]]) }
        let events = try #require(box.poll(after: nil, max: 100)).events
        #expect(shape(events) == ["dropped 1-7", "8", "9"])
    }
}
