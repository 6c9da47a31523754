import Testing
@testable import SluiceCore

private final class Token: Sendable {
    let value: Int
    init(_ value: Int) { self.value = value }
}

/// The wheel as a stored property of a final class, as a worker holds it.
private final class WheelOwner {
    var wheel = TimerWheel<Int>(tickMilliseconds: 10, slotCount: 64, nowMilliseconds: 0)
    func arm(_ deadline: UInt64, _ value: Int) -> TimerID { wheel.schedule(at: deadline, value) }
    func tick(_ now: UInt64) -> [Int] { wheel.advance(to: now).map(\.1) }
}

@Suite("TimerWheel")
struct TimerWheelTests {
    @Test func emptyWheel() {
        var w = TimerWheel<Int>(nowMilliseconds: 1000)
        #expect(w.count == 0)
        #expect(w.nextDeadline == nil)
        #expect(w.advance(to: 5000).isEmpty)
        #expect(w.tickMilliseconds == 10 && w.slotCount == 512)
        #expect(w.nowMilliseconds == 5000)
    }

    @Test func firesInDeadlineOrderNeverEarly() {
        var w = TimerWheel<Int>(tickMilliseconds: 10, slotCount: 32, nowMilliseconds: 0)
        let deadlines: [UInt64] = [55, 3, 999, 10, 11, 300, 9, 320, 55, 0, 1000, 640]
        for (i, d) in deadlines.enumerated() { _ = w.schedule(at: d, i) }
        #expect(w.count == deadlines.count)
        var firedOrder: [UInt64] = []
        var now: UInt64 = 0
        while now <= 1100 {
            for (_, i) in w.advance(to: now) {
                let d = deadlines[i]
                #expect(d <= now, "fired early")
                #expect(now == d, "with 1 ms steps a timer fires exactly at its deadline")
                firedOrder.append(d)
            }
            now += 1
        }
        #expect(firedOrder == deadlines.sorted())
        #expect(w.count == 0)
    }

    @Test func lateByLessThanOneTickWhenAdvancingPerTick() {
        var w = TimerWheel<UInt64>(tickMilliseconds: 10, slotCount: 16, nowMilliseconds: 0)
        var rng = BalancingRNG(seed: 1)
        for _ in 0..<2000 {
            let d = rng.next(below: 2000)
            _ = w.schedule(at: d, d)
        }
        var fired = 0
        var last: UInt64 = 0
        for now in stride(from: UInt64(0), through: 2010, by: 10) {
            for (_, d) in w.advance(to: now) {
                #expect(d <= now)
                #expect(now - d < 10)
                #expect(d >= last)
                last = d
                fired += 1
            }
        }
        #expect(fired == 2000)
    }

    @Test func equalDeadlinesFireInSchedulingOrder() {
        var w = TimerWheel<Int>(tickMilliseconds: 10, slotCount: 8, nowMilliseconds: 0)
        let ids = (0..<50).map { w.schedule(at: 77, $0) }
        let fired = w.advance(to: 100)
        #expect(fired.map(\.1) == Array(0..<50))
        #expect(fired.map(\.0) == ids)
    }

    @Test func exactDeadlineWithinATick() {
        // A deadline in the middle of a tick fires at that millisecond, not at
        // the tick boundary, and not before.
        var w = TimerWheel<Int>(tickMilliseconds: 10, slotCount: 8, nowMilliseconds: 0)
        _ = w.schedule(at: 15, 1)
        #expect(w.advance(to: 14).isEmpty)
        #expect(w.advance(to: 15).map(\.1) == [1])
    }

    @Test func cancel() {
        var w = TimerWheel<String>(tickMilliseconds: 10, slotCount: 8, nowMilliseconds: 0)
        let a = w.schedule(at: 50, "a")
        let b = w.schedule(at: 50, "b")
        let c = w.schedule(at: 500, "c")
        #expect(w.count == 3)
        #expect(w.cancel(b) == "b")
        #expect(w.cancel(b) == nil)
        #expect(w.count == 2)
        #expect(w.deadline(of: a) == 50)
        #expect(w.deadline(of: b) == nil)
        #expect(w.advance(to: 60).map(\.1) == ["a"])
        #expect(w.cancel(a) == nil, "already fired")
        #expect(w.cancel(c) == "c")
        #expect(w.count == 0)
        #expect(w.advance(to: 10_000).isEmpty)
    }

    @Test func staleIdDoesNotTouchReusedStorage() {
        var w = TimerWheel<Int>(tickMilliseconds: 10, slotCount: 8, nowMilliseconds: 0)
        let old = w.schedule(at: 100, 1)
        #expect(w.cancel(old) == 1)
        let new = w.schedule(at: 100, 2)   // reuses the freed node
        #expect(new != old)
        #expect(w.cancel(old) == nil)
        #expect(w.reschedule(old, at: 5) == nil)
        #expect(w.count == 1)
        #expect(w.advance(to: 100).map(\.1) == [2])
    }

    @Test func cancelReleasesPayload() {
        var w = TimerWheel<Token>(tickMilliseconds: 10, slotCount: 8, nowMilliseconds: 0)
        weak var weakToken: Token?
        let id: TimerID
        do {
            let token = Token(7)
            weakToken = token
            id = w.schedule(at: 100, token)
        }
        #expect(weakToken != nil)
        #expect(w.cancel(id)?.value == 7)
        #expect(weakToken == nil)

        weak var firedToken: Token?
        do {
            let token = Token(8)
            firedToken = token
            _ = w.schedule(at: 100, token)
        }
        #expect(w.advance(to: 100).map(\.1.value) == [8])
        #expect(firedToken == nil)
    }

    @Test func reschedule() {
        var w = TimerWheel<Int>(tickMilliseconds: 10, slotCount: 8, nowMilliseconds: 0)
        let idle = w.schedule(at: 100, 1)
        let other = w.schedule(at: 150, 2)
        // Pushed forward (as on every read): does not fire at the old deadline.
        #expect(w.reschedule(idle, at: 200) == idle)
        #expect(w.deadline(of: idle) == 200)
        #expect(w.advance(to: 199).map(\.1) == [2])
        #expect(w.advance(to: 200).map(\.1) == [1])
        #expect(w.reschedule(idle, at: 300) == nil, "already fired")
        #expect(w.reschedule(other, at: 300) == nil, "already fired")

        // Pulled earlier.
        let late = w.schedule(at: 1000, 3)
        #expect(w.reschedule(late, at: 250) != nil)
        #expect(w.advance(to: 249).isEmpty)
        #expect(w.advance(to: 250).map(\.1) == [3])

        // Within the same tick, and into the past.
        let x = w.schedule(at: 300, 4)
        #expect(w.reschedule(x, at: 305) != nil)
        #expect(w.advance(to: 304).isEmpty)
        #expect(w.reschedule(x, at: 100) != nil)
        #expect(w.nextDeadline == 100)
        #expect(w.advance(to: 304).map(\.1) == [4])
        #expect(w.count == 0)
    }

    @Test func repeatedRescheduleChurn() {
        // An idle timeout pushed forward on every read, many times.
        var w = TimerWheel<Int>(tickMilliseconds: 10, slotCount: 64, nowMilliseconds: 0)
        var ids = (0..<100).map { w.schedule(at: 30_000, $0) }
        var now: UInt64 = 0
        for step in 0..<20_000 {
            now += 1
            let i = step % 100
            ids[i] = w.reschedule(ids[i], at: now + 30_000)!
            #expect(w.advance(to: now).isEmpty)
        }
        #expect(w.count == 100)
        #expect(w.nodes.count == 100)
        let fired = w.advance(to: now + 30_000)
        #expect(fired.count == 100)
    }

    @Test func farDeadlinesBeyondOneRotation() {
        // One rotation is 8 × 10 = 80 ms.
        var w = TimerWheel<UInt64>(tickMilliseconds: 10, slotCount: 8, nowMilliseconds: 0)
        let deadlines: [UInt64] = [85, 160, 165, 799, 800, 801, 10_000, 123_456]
        for d in deadlines { _ = w.schedule(at: d, d) }
        var fired: [UInt64] = []
        var now: UInt64 = 0
        while now <= 130_000 {
            for (_, d) in w.advance(to: now) {
                #expect(d <= now && now - d < 10)
                fired.append(d)
            }
            now += 7
        }
        #expect(fired == deadlines)
    }

    @Test func pastDeadlinesFireOnNextAdvance() {
        var w = TimerWheel<Int>(tickMilliseconds: 10, slotCount: 8, nowMilliseconds: 10_000)
        _ = w.schedule(at: 5, 1)
        _ = w.schedule(at: 9_999, 2)
        _ = w.schedule(at: 10_000, 3)
        _ = w.schedule(at: 10_001, 4)
        #expect(w.nextDeadline == 5)
        #expect(w.advance(to: 10_000).map(\.1) == [1, 2, 3])
        #expect(w.count == 1)
        // Scheduled in the past after time moved on.
        _ = w.advance(to: 20_000)
        _ = w.schedule(at: 0, 5)
        _ = w.schedule(at: 19_995, 6)
        #expect(w.advance(to: 20_000).map(\.1) == [5, 6])
    }

    @Test func timeGoingBackwardsNeverFiresEarly() {
        var w = TimerWheel<Int>(tickMilliseconds: 10, slotCount: 8, nowMilliseconds: 1000)
        _ = w.schedule(at: 1005, 1)
        #expect(w.advance(to: 900).isEmpty)
        #expect(w.nowMilliseconds == 1000)
        #expect(w.advance(to: 1005).map(\.1) == [1])
    }

    @Test func nextDeadline() {
        var w = TimerWheel<Int>(tickMilliseconds: 10, slotCount: 16, nowMilliseconds: 0)
        #expect(w.nextDeadline == nil)
        let a = w.schedule(at: 125, 1)
        #expect(w.nextDeadline == 125)
        let b = w.schedule(at: 37, 2)
        #expect(w.nextDeadline == 37)
        _ = w.schedule(at: 38, 3)
        #expect(w.nextDeadline == 37)
        #expect(w.cancel(b) == 2)
        #expect(w.nextDeadline == 38)
        #expect(w.advance(to: 40).map(\.1) == [3])
        #expect(w.nextDeadline == 125)
        _ = w.reschedule(a, at: 41)
        #expect(w.nextDeadline == 41)
        _ = w.advance(to: 41)
        #expect(w.nextDeadline == nil)
    }

    @Test func nextDeadlineForFarTimersIsASafeLowerBound() {
        // Rotation = 16 × 10 = 160 ms.
        var w = TimerWheel<Int>(tickMilliseconds: 10, slotCount: 16, nowMilliseconds: 0)
        _ = w.schedule(at: 5_003, 1)
        let bound = try! #require(w.nextDeadline)
        #expect(bound <= 5_003)
        #expect(bound > w.nowMilliseconds)
        #expect(bound == 5_000, "the far timer's tick, rounded down")
        // Within one rotation it becomes exact.
        _ = w.advance(to: 4_900)
        #expect(w.nextDeadline == 5_003)
    }

    @Test func farBoundStaysSafeAsFarTimersComeAndGo() {
        // Rotation = 16 × 10 = 160 ms: everything below is far.
        var w = TimerWheel<Int>(tickMilliseconds: 10, slotCount: 16, nowMilliseconds: 0)
        let early = w.schedule(at: 2_005, 1)
        let late = w.schedule(at: 9_000, 2)
        #expect(w.nextDeadline == 2_000)
        // Cancelling the earliest may leave the bound low, never high.
        w.cancel(early)
        let bound = try! #require(w.nextDeadline)
        #expect(bound > w.nowMilliseconds && bound <= 9_000)
        // With no far timer left the bound starts afresh.
        w.cancel(late)
        #expect(w.nextDeadline == nil)
        _ = w.schedule(at: 7_003, 3)
        #expect(w.nextDeadline == 7_000)
        // Promoted into the window, the timer is exact again.
        _ = w.advance(to: 6_950)
        #expect(w.nextDeadline == 7_003)
        #expect(w.advance(to: 7_003).map(\.1) == [3])
        #expect(w.nextDeadline == nil)
    }

    @Test func nextDeadlineAfterMassPushForward() {
        // Idle timeouts all pushed out beyond a rotation, then one near timer.
        var w = TimerWheel<Int>(tickMilliseconds: 10, slotCount: 32, nowMilliseconds: 0)
        let ids = (0..<5000).map { w.schedule(at: UInt64($0 % 300), $0) }
        #expect(w.nextDeadline == 0)
        for (i, id) in ids.enumerated() { _ = w.reschedule(id, at: 60_000 + UInt64(i)) }
        #expect(w.nearBits.allSatisfy { $0 == 0 })
        #expect(w.nextDeadline == 60_000)   // lower bound = exact tick start here
        let near = w.schedule(at: 123, -1)
        #expect(w.nextDeadline == 123)
        #expect(w.advance(to: 200).map(\.1) == [-1])
        #expect(w.reschedule(near, at: 1) == nil)
        #expect(w.nextDeadline == 60_000)
        _ = w.advance(to: 59_990)
        #expect(w.nextDeadline == 60_000)
        #expect(w.advance(to: 64_999).count == 5000)
        #expect(w.nextDeadline == nil)
    }

    @Test func eventLoopConvergesOnNextDeadline() {
        // Sleep until nextDeadline, advance, repeat: every timer fires exactly
        // on time and the loop never spins.
        var w = TimerWheel<UInt64>(tickMilliseconds: 10, slotCount: 32, nowMilliseconds: 0)
        var rng = BalancingRNG(seed: 3)
        var deadlines: [UInt64] = []
        for _ in 0..<300 {
            let d = rng.next(below: 600_000)
            deadlines.append(d)
            _ = w.schedule(at: d, d)
        }
        var pending = deadlines.sorted()[...]
        var now: UInt64 = 0
        var wakeups = 0
        var fired: [UInt64] = []
        while let next = w.nextDeadline {
            #expect(next <= pending.first!)
            #expect(next > now || next == pending.first!, "a bound at or before now would spin")
            now = max(now, next)
            wakeups += 1
            for (_, d) in w.advance(to: now) {
                #expect(d == now, "fires exactly on time")
                #expect(d == pending.first)
                pending = pending.dropFirst()
                fired.append(d)
            }
            if wakeups > 10_000 { break }
        }
        #expect(pending.isEmpty)
        #expect(fired == deadlines.sorted())
        // Each timer's own wake-up plus at most one per rotation of empty time.
        #expect(wakeups <= 300 + 600_000 / 320 + 1)
    }

    @Test func hugeTimeJumpIsBounded() {
        var w = TimerWheel<Int>(tickMilliseconds: 1, slotCount: 512, nowMilliseconds: 0)
        for i in 0..<1000 { _ = w.schedule(at: UInt64(i * 37), i) }
        _ = w.schedule(at: 10 * 3_600_000, 1000)   // ten hours out
        // One hour: 3.6M ticks, handled in one rotation's work.
        let fired = w.advance(to: 3_600_000)
        #expect(fired.map(\.1) == Array(0..<1000))
        #expect(w.count == 1)
        #expect(w.advance(to: 10 * 3_600_000 - 1).isEmpty)
        #expect(w.advance(to: 10 * 3_600_000).map(\.1) == [1000])
        // Absurd jumps (centuries of ticks) terminate too.
        _ = w.schedule(at: UInt64.max / 2, 7)
        _ = w.schedule(at: UInt64.max, 8)
        #expect(w.advance(to: UInt64.max / 2).map(\.1) == [7])
        #expect(w.nextDeadline! <= UInt64.max)
        #expect(w.advance(to: UInt64.max).map(\.1) == [8])
    }

    @Test func storageBoundedUnderScheduleCancelChurn() {
        var w = TimerWheel<Int>(nowMilliseconds: 0)
        for i in 0..<1_000_000 {
            let id = w.schedule(at: UInt64(i % 100_000), i)
            #expect(w.cancel(id) == i)
        }
        #expect(w.count == 0)
        #expect(w.nodes.count <= 1)
        #expect(w.nextDeadline == nil)

        // Churn around a standing population.
        var live = (0..<1000).map { w.schedule(at: UInt64($0) * 10, $0) }
        var rng = BalancingRNG(seed: 9)
        for _ in 0..<200_000 {
            let i = Int(rng.next(below: 1000))
            _ = w.cancel(live[i])
            live[i] = w.schedule(at: rng.next(below: 1_000_000), i)
        }
        #expect(w.count == 1000)
        #expect(w.nodes.count <= 1001)
    }

    @Test func storageBoundedUnderFireChurn() {
        var w = TimerWheel<Int>(tickMilliseconds: 10, slotCount: 64, nowMilliseconds: 0)
        var now: UInt64 = 0
        for i in 0..<50_000 {
            _ = w.schedule(at: now + 25, i)
            now += 1
            _ = w.advance(to: now)
        }
        #expect(w.count <= 26)
        #expect(w.nodes.count <= 27)
    }

    @Test func hundredThousandTimers() {
        var w = TimerWheel<Int>(tickMilliseconds: 10, slotCount: 512, nowMilliseconds: 0)
        var rng = BalancingRNG(seed: 4)
        var ids: [TimerID] = []
        ids.reserveCapacity(100_000)
        var deadlines: [UInt64] = []
        for i in 0..<100_000 {
            let d = rng.next(below: 60_000)
            deadlines.append(d)
            ids.append(w.schedule(at: d, i))
        }
        #expect(w.count == 100_000)
        #expect(Set(ids).count == 100_000)
        // Cancel every tenth.
        var cancelled = Set<Int>()
        for i in stride(from: 0, to: 100_000, by: 10) {
            #expect(w.cancel(ids[i]) == i)
            cancelled.insert(i)
        }
        #expect(w.count == 90_000)
        var fired = 0
        var lastDeadline: UInt64 = 0
        for now in stride(from: UInt64(0), through: 60_000, by: 10) {
            for (id, i) in w.advance(to: now) {
                #expect(!cancelled.contains(i))
                #expect(id == ids[i])
                let d = deadlines[i]
                #expect(d <= now && now - d < 10)
                #expect(d >= lastDeadline)
                lastDeadline = d
                fired += 1
            }
        }
        #expect(fired == 90_000)
        #expect(w.count == 0)
    }

    @Test func matchesReferenceModel() {
        // Random schedule / cancel / reschedule / advance (small steps and big
        // jumps) against a brute-force model.
        var w = TimerWheel<Int>(tickMilliseconds: 5, slotCount: 16, nowMilliseconds: 1_000)
        var rng = BalancingRNG(seed: 77)
        var model: [Int: (deadline: UInt64, order: Int, id: TimerID)] = [:]
        var now: UInt64 = 1_000
        var nextValue = 0
        for _ in 0..<40_000 {
            switch rng.next(below: 10) {
            case 0...3:
                let d: UInt64
                switch rng.next(below: 4) {
                case 0: d = now - min(now, rng.next(below: 50))          // past
                case 1: d = now + rng.next(below: 80)                    // within a rotation
                case 2: d = now + rng.next(below: 2_000)                 // several rotations
                default: d = now + rng.next(below: 100_000)              // far
                }
                let v = nextValue
                nextValue += 1
                model[v] = (d, v, w.schedule(at: d, v))
            case 4:
                if let v = model.keys.randomElement(using: &rng) {
                    #expect(w.cancel(model[v]!.id) == v)
                    model[v] = nil
                }
            case 5, 6:
                if let v = model.keys.randomElement(using: &rng) {
                    let d = now + rng.next(below: 3_000)
                    let id = w.reschedule(model[v]!.id, at: d)
                    #expect(id == model[v]!.id)
                    model[v]!.deadline = d
                }
            default:
                now += rng.next(below: 20) == 0 ? rng.next(below: 200_000) : rng.next(below: 12)
                let expected = model.filter { $0.value.deadline <= now }
                    .sorted { ($0.value.deadline, $0.value.order) < ($1.value.deadline, $1.value.order) }
                    .map(\.key)
                let fired = w.advance(to: now)
                #expect(fired.map(\.1) == expected)
                for v in expected { model[v] = nil }
            }
            #expect(w.count == model.count)
            let earliest = model.values.map(\.deadline).min()
            let next = w.nextDeadline
            #expect((next == nil) == (earliest == nil))
            if let earliest, let next {
                #expect(next <= earliest)
                if earliest / 5 < now / 5 + 16 {
                    #expect(next == earliest, "exact within one rotation")
                } else {
                    #expect(next > now)
                }
            }
        }
    }

    @Test func usableAsStoredPropertyOfFinalClass() {
        let owner = WheelOwner()
        let a = owner.arm(30, 1)
        _ = owner.arm(20, 2)
        _ = owner.wheel.reschedule(a, at: 10)
        #expect(owner.wheel.count == 2)
        #expect(owner.tick(30) == [1, 2])
        #expect(owner.wheel.count == 0)
    }

    @Test func sendableWhenPayloadIs() {
        func requireSendable<T: Sendable>(_: T) {}
        requireSendable(TimerWheel<Int>(nowMilliseconds: 0))
        requireSendable(TimerWheel<Int>(nowMilliseconds: 0).nextDeadline)
    }
}
