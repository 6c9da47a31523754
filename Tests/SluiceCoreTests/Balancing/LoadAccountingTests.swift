import Testing
@testable import SluiceCore

@Suite("Which pending charges expire")
struct ChargeWindowTests {
    @Test("until the samples cover a window, nothing expires")
    func youngHistoryExpiresNothing() {
        var window = ChargeWindow(windowMilliseconds: 500)
        window.record(pending: 300, at: 1_000)
        window.record(pending: 300, at: 1_100)
        #expect(window.expirable(pending: 300, now: 1_200) == 0)
    }

    @Test("a flood that stops expires one window after its last sample, all of it")
    func floodExpiresWithinAWindow() {
        var window = ChargeWindow(windowMilliseconds: 500)
        window.record(pending: 0, at: 10_000)
        var t: UInt64 = 10_100
        var pending: UInt64 = 0
        while t < 12_000 { pending += 1_000; window.record(pending: pending, at: t); t += 100 }
        // The flood stopped at 11,900 with 19,000 pending; nothing settles them.
        for now in stride(from: t, to: t + 400, by: 100) {
            #expect(window.expirable(pending: pending, now: now) < pending, "the last charges are still young at \(now)")
            window.record(pending: pending, at: now)
        }
        #expect(window.expirable(pending: pending, now: 12_400) == pending)
    }

    @Test("charges that settle within the window never expire, however many")
    func settledTrafficExpiresNothing() {
        var window = ChargeWindow(windowMilliseconds: 500)
        // Steady traffic: at each look a few handshakes are in flight, some looks none.
        let looks: [UInt64] = [3, 0, 5, 2, 0, 4, 1, 0, 6, 2]
        for (i, pending) in looks.enumerated() { window.record(pending: pending, at: UInt64(i) * 100) }
        #expect(window.expirable(pending: 3, now: 1_000) == 0)
    }

    @Test("a flood's leftovers expire under steady traffic: the floor of pending over the window")
    func leftoversExpireUnderTraffic() {
        var window = ChargeWindow(windowMilliseconds: 500)
        // 50 phantoms from a flood, plus 0 to 20 handshakes in flight at each look.
        let inFlight: [UInt64] = [20, 7, 13, 0, 19, 4, 11]
        for (i, n) in inFlight.enumerated() { window.record(pending: 50 + n, at: UInt64(i) * 100) }
        #expect(window.expirable(pending: 50 + 9, now: 700) == 50)
    }

    @Test("the history stays bounded")
    func historyIsBounded() {
        var window = ChargeWindow(windowMilliseconds: 500)
        for t in stride(from: UInt64(0), to: 100_000, by: 100) { window.record(pending: t, at: t) }
        #expect(window.sampleCount <= 7)
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
