import Testing
@testable import SluiceCore

@Suite("Dating the steering program's charges")
struct ChargeWindowTests {
    @Test("until the samples cover a window, every charge is recent")
    func youngHistoryExpiresNothing() {
        var window = ChargeWindow(windowMilliseconds: 500)
        window.record(charged: 0, at: 1_000)
        window.record(charged: 300, at: 1_100)
        #expect(window.recent(charged: 400, now: 1_200) == 400)
    }

    @Test("charges taken since the newest sample a window old are recent; older ones are not")
    func recentIsSinceTheBaseline() {
        var window = ChargeWindow(windowMilliseconds: 500)
        for (t, total) in [(0, 0), (100, 10), (200, 20), (300, 20_000), (400, 20_000), (500, 20_000)] {
            window.record(charged: UInt64(total), at: UInt64(t))
        }
        // At 800 the baseline is the sample at 300: the flood before it is old.
        #expect(window.recent(charged: 20_005, now: 800) == 5)
        // At 650 the baseline is the sample at 100.
        #expect(window.recent(charged: 20_005, now: 650) == 19_995)
    }

    @Test("a flood that stops is all old one window later, whatever the sampling")
    func floodExpiresWithinAWindow() {
        var window = ChargeWindow(windowMilliseconds: 500)
        var total: UInt64 = 0
        var t: UInt64 = 10_000
        while t < 12_000 { total += 1_000; window.record(charged: total, at: t); t += 100 }
        window.record(charged: total, at: t)
        #expect(window.recent(charged: total, now: t + 500) == 0)
        #expect(window.recent(charged: total, now: t + 300) > 0, "the last burst is still recent")
    }

    @Test("the history stays bounded")
    func historyIsBounded() {
        var window = ChargeWindow(windowMilliseconds: 500)
        for t in stride(from: UInt64(0), to: 100_000, by: 100) { window.record(charged: t, at: t) }
        #expect(window.sampleCount <= 7)
    }

    @Test("a total that went backwards (a recreated map) is taken as all recent, never as a huge count")
    func totalThatWentBackwards() {
        var window = ChargeWindow(windowMilliseconds: 100)
        window.record(charged: 1_000, at: 0)
        window.record(charged: 1_000, at: 200)
        #expect(window.recent(charged: 3, now: 250) == 3)
    }
}

@Suite("Rebalancing plan")
struct RebalancePlanTests {
    private func loads(_ actives: [UInt64], live: Set<Int>? = nil) -> [WorkerLoadView] {
        actives.enumerated().map { WorkerLoadView(worker: $0, active: $1, isLive: live?.contains($0) ?? true) }
    }

    @Test("moves from the fullest to the emptiest, toward the average")
    func movesTowardAverage() {
        let move = RebalancePlan.move(loads: loads([400, 0, 0, 0]), ratio: 1.1, maxMoves: 1_000)
        #expect(move == RebalanceMove(from: 0, to: 1, count: 100, fromActive: 400, toActive: 0))
    }

    @Test("never moves to a stalled or draining worker, however empty")
    func neverToAStalledWorker() {
        let move = RebalancePlan.move(loads: loads([233, 233, 234, 100], live: [0, 1, 2]), ratio: 1.1, maxMoves: 256)
        #expect(move == nil, "the live workers are balanced among themselves")
        let other = RebalancePlan.move(loads: loads([300, 100, 0], live: [0, 1]), ratio: 1.1, maxMoves: 256)
        #expect(other?.to == 1)
    }

    @Test("never moves from a stalled worker: it would not run the order")
    func neverFromAStalledWorker() {
        #expect(RebalancePlan.move(loads: loads([900, 10, 10], live: [1, 2]), ratio: 1.1, maxMoves: 256) == nil)
    }

    @Test("leaves differences of one or two alone, and ratios within bounds")
    func leavesNoiseAlone() {
        #expect(RebalancePlan.move(loads: loads([2, 0]), ratio: 1.1, maxMoves: 256) == nil)
        #expect(RebalancePlan.move(loads: loads([105, 100]), ratio: 1.1, maxMoves: 256) == nil)
        #expect(RebalancePlan.move(loads: loads([5]), ratio: 1.1, maxMoves: 256) == nil)
    }

    @Test("the count is capped by max moves per tick")
    func capped() {
        #expect(RebalancePlan.move(loads: loads([10_000, 0]), ratio: 1.1, maxMoves: 256)?.count == 256)
    }
}
