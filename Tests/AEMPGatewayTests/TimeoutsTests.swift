@testable import AEMPGateway
import AEMPTestSupport
import Foundation
import NIOPosix
import Testing

/// The gateway's timeout slots (long-poll waits, call and query deadlines).
@Suite("gateway: timeouts")
struct TimeoutsTests {
    let timeouts = Timeouts(loop: MultiThreadedEventLoopGroup.singleton.next())

    @Test("a timeout fires once, not before its time and within a few slots after it")
    func fires() async throws {
        let fired = Watched<[ContinuousClock.Instant]>([])
        let start = ContinuousClock.now
        _ = timeouts.after(0.1) { fired.update { $0.append(.now) } }
        let first = try await fired.wait(within: 30) { $0.first }
        let elapsed = try #require(first) - start
        #expect(elapsed >= .milliseconds(100))
        #expect(elapsed < promptly(.milliseconds(600)))  // a slot of 10 ms, plus a loaded machine's delay
        // Once only, whatever else waits on the same slots.
        try await Task.sleep(for: .milliseconds(300))
        #expect(fired.read { $0.count } == 1)
    }

    @Test("a cancelled timeout never fires; the others of its slot still do")
    func cancel() async throws {
        let fired = Watched<Set<Int>>([])
        let a = timeouts.after(0.05) { fired.update { _ = $0.insert(1) } }
        _ = timeouts.after(0.05) { fired.update { _ = $0.insert(2) } }
        a.cancel()
        a.cancel()
        // The kept one fires (waited for, not slept for: a loaded machine may take its time) …
        let kept = try await fired.wait(within: 30) { $0.contains(2) ? true : nil }
        #expect(kept == true)
        // … and the cancelled one of the same slot did not, then or a while after.
        try await Task.sleep(for: .milliseconds(200))
        #expect(fired.read { $0 } == [2])
    }

    @Test("a shorter timeout set after a longer one fires at its own time, not the longer one's")
    func earlierSlotTakesOver() async throws {
        let fired = Watched<[(Int, ContinuousClock.Instant)]>([])
        let start = ContinuousClock.now
        _ = timeouts.after(1.0) { fired.update { $0.append((2, .now)) } }
        _ = timeouts.after(0.05) { fired.update { $0.append((1, .now)) } }
        let events = try #require(try await fired.wait(within: 30) { $0.count >= 2 ? $0 : nil })
        #expect(events.map(\.0) == [1, 2])
        // The short one did not wait for the long one's slot.
        #expect(events[0].1 - start < promptly(.milliseconds(800)))
        #expect(events[1].1 - start >= .seconds(1))
    }

    @Test("thousands set and half cancelled from several threads: exactly the others fire")
    func many() async throws {
        let fired = Watched<Set<Int>>([])
        let timeouts = self.timeouts
        await withTaskGroup(of: Void.self) { group in
            for t in 0..<4 {
                group.addTask {
                    for i in 0..<2500 {
                        let n = t * 2500 + i
                        // A cancelled one is due 1 s later than a kept one: on a loaded machine the
                        // setting thread can be descheduled between `after` and `cancel` for longer
                        // than 10 ms, and a timeout that fired first cannot be cancelled.
                        let delay = Double(n % 20) * 0.01 + (n % 2 == 1 ? 1 : 0)
                        let handle = timeouts.after(delay) { fired.update { _ = $0.insert(n) } }
                        if n % 2 == 1 { handle.cancel() }
                    }
                }
            }
        }
        let kept = Set(stride(from: 0, to: 10_000, by: 2))
        // Every kept one fires (a generous deadline: under ThreadSanitizer setting 10,000 from four
        // threads takes seconds, so a fixed sleep after it was not enough) …
        let allFired = try await fired.wait(within: 30) { $0.isSuperset(of: kept) ? true : nil }
        #expect(allFired == true)
        // … and once the longest delay (1.19 s) has passed for every one, no cancelled one has.
        try await Task.sleep(for: .milliseconds(1300))
        #expect(fired.read { $0 } == kept)
    }
}
