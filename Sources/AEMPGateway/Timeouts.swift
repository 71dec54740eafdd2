import AEMP
import NIOCore

/// The gateway's timeouts (long-poll waits, call and query deadlines): slots of 10 ms on one
/// event loop. Setting or cancelling one, from any thread, is a short lock; only a new earliest
/// slot schedules a task. Thousands of parked long-polls answered at once then cost no task
/// cancellations on another loop (NIO's `Scheduled.cancel` is a hop per call).
final class Timeouts: Sendable {
    /// A set timeout; `cancel` is idempotent.
    struct Handle: Sendable {
        fileprivate let owner: Timeouts
        fileprivate let slot: Int64
        fileprivate let id: UInt64

        func cancel() { owner.cancel(self) }
    }

    private struct State {
        var slots: [Int64: [UInt64: @Sendable () -> Void]] = [:]
        var nextID: UInt64 = 0
        /// The slot a task is scheduled for (nil = none).
        var wakeAt: Int64?
    }

    private static let slotNanoseconds: Int64 = 10_000_000
    private let loop: any EventLoop
    private let state = Locked(State())

    init(loop: any EventLoop) {
        self.loop = loop
    }

    /// Runs `action` on the loop once `seconds` have passed (up to one slot later), unless cancelled.
    func after(_ seconds: Double, _ action: @escaping @Sendable () -> Void) -> Handle {
        let due = NIODeadline.now().uptimeNanoseconds + UInt64(max(0, seconds) * 1e9)
        let slot = Int64((due + UInt64(Self.slotNanoseconds) - 1) / UInt64(Self.slotNanoseconds))
        let (id, wake) = state.withLock { s -> (UInt64, Bool) in
            s.nextID += 1
            s.slots[slot, default: [:]][s.nextID] = action
            guard s.wakeAt.map({ slot < $0 }) ?? true else { return (s.nextID, false) }
            s.wakeAt = slot
            return (s.nextID, true)
        }
        if wake { schedule(slot) }
        return Handle(owner: self, slot: slot, id: id)
    }

    private func cancel(_ handle: Handle) {
        state.withLock { s in
            guard var entries = s.slots[handle.slot] else { return }
            entries[handle.id] = nil
            s.slots[handle.slot] = entries.isEmpty ? nil : entries
        }
    }

    private func schedule(_ slot: Int64) {
        let at = NIODeadline.uptimeNanoseconds(UInt64(slot * Self.slotNanoseconds))
        loop.scheduleTask(deadline: at) { [self] in fire(slot) }
    }

    /// A scheduled task for `slot` ran: runs every due action, then schedules the next slot.
    private func fire(_ slot: Int64) {
        let nowSlot = Int64(NIODeadline.now().uptimeNanoseconds / UInt64(Self.slotNanoseconds))
        let (due, next) = state.withLock { s -> ([@Sendable () -> Void], Int64?) in
            // An earlier task took over (a new earliest slot came after this one was scheduled).
            guard s.wakeAt == slot else { return ([], nil) }
            var due: [@Sendable () -> Void] = []
            for key in s.slots.keys where key <= nowSlot {
                due += s.slots.removeValue(forKey: key)!.values
            }
            s.wakeAt = s.slots.keys.min()
            return (due, s.wakeAt)
        }
        for action in due { action() }
        if let next { schedule(next) }
    }
}
