import Testing
@testable import SluiceCore

@Suite("Saturating deadlines")
struct SaturatingTests {
    @Test func durationsInWholeUnits() {
        #expect(Duration.milliseconds(1500).milliseconds == 1500)
        #expect(Duration.microseconds(1999).milliseconds == 1)
        #expect(Duration.seconds(86_400).milliseconds == 86_400_000)
        #expect(Duration.milliseconds(200).nanoseconds == 200_000_000)
        #expect(Duration.nanoseconds(7).nanoseconds == 7)
        #expect(Duration.seconds(-5).milliseconds == 0)
    }

    @Test("durations beyond UInt64 milliseconds or nanoseconds saturate")
    func hugeDurationsSaturate() {
        #expect(Duration.seconds(Int64.max).milliseconds == .max)
        #expect(Duration.seconds(Int64.max).nanoseconds == .max)
        // The reported crash: 18446744073709000 s is 1.8e19 ms, still a UInt64; adding "now" was not.
        let reported = Duration.seconds(18_446_744_073_709_000)
        #expect(reported.milliseconds == 18_446_744_073_709_000_000)
        #expect(deadline(after: reported, from: 1_000_000) == .max)
        #expect(Duration.seconds(18_446_744_073_709).nanoseconds == .max)
    }

    @Test func addAndMultiply() {
        #expect(UInt64(5).saturatingAdd(7) == 12)
        #expect((UInt64.max - 1).saturatingAdd(2) == .max)
        #expect(UInt64(1 << 40).saturatingMultiply(1 << 30) == .max)
        #expect(UInt64(3).saturatingMultiply(4) == 12)
        #expect(deadline(after: .seconds(2), from: 1000) == 3000)
    }

    @Test("passive ejection with a huge ejection neither traps nor wraps: it is capped")
    func ejectionCapped() {
        var state = PassiveEjectionState()
        for round in 0..<20 {
            let now = UInt64(round) * 1_000_000
            var ejected: UInt64?
            for _ in 0..<3 { ejected = state.failure(now: now, threshold: 3, ejectionMilliseconds: .max / 3, mayEject: true) }
            #expect(ejected == now + PassiveEjectionState.maxEjectionMilliseconds)
        }
    }

    @Test("a timer at UInt64.max never fires and does not disturb the others")
    func timerAtTheEndOfTime() {
        var wheel = TimerWheel<Int>(nowMilliseconds: 1000)
        _ = wheel.schedule(at: .max, 1)
        _ = wheel.schedule(at: 1050, 2)
        #expect(wheel.advance(to: 1100).map(\.1) == [2])
        #expect(wheel.advance(to: .max - 1).isEmpty)
        #expect(wheel.nextDeadline != nil)
    }
}
