import Testing
@testable import SluiceCore

private func backends(_ weights: [Int]) -> [BalancerBackend] {
    weights.enumerated().map { BalancerBackend(weight: $1, key: "10.0.0.\($0 + 1):8080") }
}

private func picks(
    _ balancer: inout Balancer, _ n: Int,
    active: (Int) -> Int = { _ in 0 },
    eligible: (Int) -> Bool = { _ in true }
) -> [Int] {
    (0..<n).map { _ in balancer.pick(clientKey: 0, active: active, eligible: eligible)! }
}

private func histogram(_ values: [Int], count: Int) -> [Int] {
    var h = [Int](repeating: 0, count: count)
    for v in values { h[v] += 1 }
    return h
}

/// Pearson's chi-square statistic of `observed` against shares proportional to `weights`.
private func chiSquare(_ observed: [Int], weights: [Int]) -> Double {
    let n = Double(observed.reduce(0, +))
    let total = Double(weights.reduce(0, +))
    var x = 0.0
    for (o, w) in zip(observed, weights) where w > 0 {
        let e = n * Double(w) / total
        x += (Double(o) - e) * (Double(o) - e) / e
    }
    return x
}

/// Every count within `tolerance` (relative) of its weighted expectation.
private func withinTolerance(_ observed: [Int], weights: [Int], tolerance: Double) -> Bool {
    let n = Double(observed.reduce(0, +))
    let total = Double(weights.reduce(0, +))
    return zip(observed, weights).allSatisfy { o, w in
        let e = n * Double(w) / total
        return abs(Double(o) - e) <= tolerance * max(e, 1)
    }
}

// MARK: - General

@Suite("Balancer basics")
struct BalancerBasicsTests {
    @Test(arguments: BalancingAlgorithm.allCases)
    func emptyPoolPicksNothing(algorithm: BalancingAlgorithm) {
        var b = Balancer(algorithm: algorithm, backends: [], seed: 1, maglevTableSize: 101)
        #expect(b.count == 0)
        #expect(b.algorithm == algorithm)
        #expect(b.pick(clientKey: 42, active: { _ in 0 }, eligible: { _ in true }) == nil)
    }

    @Test(arguments: BalancingAlgorithm.allCases)
    func nothingEligiblePicksNothing(algorithm: BalancingAlgorithm) {
        var b = Balancer(algorithm: algorithm, backends: backends([1, 2, 3]), seed: 1, maglevTableSize: 101)
        #expect(b.count == 3)
        for key in 0..<50 as Range<UInt64> {
            #expect(b.pick(clientKey: key, active: { _ in 0 }, eligible: { _ in false }) == nil)
        }
    }

    @Test(arguments: BalancingAlgorithm.allCases)
    func singleEligibleIsAlwaysPicked(algorithm: BalancingAlgorithm) {
        var b = Balancer(algorithm: algorithm, backends: backends([1, 2, 3, 4]), seed: 9, maglevTableSize: 101)
        for key in 0..<200 as Range<UInt64> {
            #expect(b.pick(clientKey: key &* 0x9E37_79B9, active: { $0 * 10 }, eligible: { $0 == 2 }) == 2)
        }
    }

    @Test(arguments: BalancingAlgorithm.allCases)
    func neverPicksIneligibleOrWeightZero(algorithm: BalancingAlgorithm) {
        let weights = [3, 0, 2, 5, 1, 0, 4]
        var b = Balancer(algorithm: algorithm, backends: backends(weights), seed: 77, maglevTableSize: 1009)
        var rng = BalancingRNG(seed: 5)
        for _ in 0..<5000 {
            let mask = rng.next()
            let eligible: (Int) -> Bool = { mask & (1 << UInt64($0)) != 0 }
            let anyEligible = weights.indices.contains { weights[$0] > 0 && eligible($0) }
            let picked = b.pick(clientKey: rng.next(), active: { Int((mask >> UInt64($0 * 3)) & 7) }, eligible: eligible)
            if let picked {
                #expect(eligible(picked))
                #expect(weights[picked] > 0)
            } else {
                #expect(!anyEligible)
            }
        }
    }

    @Test func negativeWeightIsTreatedAsZero() {
        var b = Balancer(algorithm: .roundRobin, backends: backends([-3, 1]), seed: 0)
        #expect(picks(&b, 10) == Array(repeating: 1, count: 10))
    }

    @Test func backendDefaultsAndEquality() {
        let a = BalancerBackend(key: "a:1")
        #expect(a.weight == 1)
        #expect(a == BalancerBackend(weight: 1, key: "a:1"))
        #expect(a != BalancerBackend(weight: 2, key: "a:1"))
    }

    @Test func lessLoadedCrossMultipliesWithoutOverflow() {
        #expect(Balancer.lessLoaded(1, 2, than: 1, 1))       // 0.5 < 1
        #expect(!Balancer.lessLoaded(4, 2, than: 2, 1))      // 2 == 2
        #expect(!Balancer.lessLoaded(2, 1, than: 4, 2))
        #expect(Balancer.lessLoaded(5, 3, than: 2, 1))       // 1.67 < 2
        #expect(!Balancer.lessLoaded(0, 1, than: 0, 5))      // 0 == 0
        let big = Int.max / 2
        #expect(Balancer.lessLoaded(big, big, than: big, big - 1))   // 1 < 1.00…
        #expect(!Balancer.lessLoaded(big, big - 1, than: big, big))
    }
}

// MARK: - round_robin

@Suite("Balancer round_robin")
struct BalancerRoundRobinTests {
    @Test func exactProportions() {
        var b = Balancer(algorithm: .roundRobin, backends: backends([1, 2, 3]), seed: 0)
        let seq = picks(&b, 6000)
        #expect(histogram(seq, count: 3) == [1000, 2000, 3000])
        // Every full cycle of sum(weights) picks is exact too.
        for start in stride(from: 0, to: 6000, by: 6) {
            #expect(histogram(Array(seq[start..<start + 6]), count: 3) == [1, 2, 3])
        }
    }

    @Test func smoothInterleaving() {
        var b = Balancer(algorithm: .roundRobin, backends: backends([5, 1, 1]), seed: 0)
        let seq = picks(&b, 70)
        // nginx's documented sequence for 5,1,1: a a b a c a a.
        let cycle = [0, 0, 1, 0, 2, 0, 0]
        for start in stride(from: 0, to: 70, by: 7) {
            #expect(Array(seq[start..<start + 7]) == cycle)
        }
        // Plain weighted round robin would emit a a a a a b c. The smooth
        // variant never runs the heavy backend more than twice within a cycle
        // (four across a cycle boundary: ... a a | a a ...).
        for start in stride(from: 0, to: 70, by: 7) {
            #expect(longestRun(of: 0, in: Array(seq[start..<start + 7])) == 2)
        }
        #expect(longestRun(of: 0, in: seq) == 4)
    }

    @Test func heavyBackendRunsAreShort() {
        // 9:1: the light backend appears once per ten picks, splitting the heavy run.
        var b = Balancer(algorithm: .roundRobin, backends: backends([9, 1]), seed: 0)
        let seq = picks(&b, 1000)
        #expect(histogram(seq, count: 2) == [900, 100])
        #expect(longestRun(of: 0, in: seq) <= 9)
        // Equal weights strictly alternate.
        var e = Balancer(algorithm: .roundRobin, backends: backends([1, 1, 1]), seed: 0)
        #expect(picks(&e, 9) == [0, 1, 2, 0, 1, 2, 0, 1, 2])
    }

    @Test func skipsIneligible() {
        var b = Balancer(algorithm: .roundRobin, backends: backends([1, 1, 1]), seed: 0)
        #expect(picks(&b, 6, eligible: { $0 != 1 }) == [0, 2, 0, 2, 0, 2])

        var w = Balancer(algorithm: .roundRobin, backends: backends([1, 2, 3]), seed: 0)
        let seq = picks(&w, 4000, eligible: { $0 != 2 })
        #expect(histogram(seq, count: 3) == [1334, 2666, 0] || histogram(seq, count: 3) == [1333, 2667, 0])
    }

    @Test func proportionsRecoverAfterEligibilityChange() {
        var b = Balancer(algorithm: .roundRobin, backends: backends([1, 2, 3]), seed: 0)
        _ = picks(&b, 100, eligible: { $0 == 0 })
        // Back to all eligible: each subsequent full cycle is exact again
        // once the ineligible period's state settles (state is bounded).
        let seq = picks(&b, 6000)
        let h = histogram(seq, count: 3)
        #expect(abs(h[0] - 1000) <= 6 && abs(h[1] - 2000) <= 6 && abs(h[2] - 3000) <= 6)
    }

    @Test func retryAfterFailureMovesOn() {
        // A connection retry excludes what it already tried; the next pick is
        // a different backend.
        var b = Balancer(algorithm: .roundRobin, backends: backends([1, 1, 1, 1]), seed: 0)
        var tried: Set<Int> = []
        for _ in 0..<4 {
            let p = b.pick(clientKey: 0, active: { _ in 0 }, eligible: { !tried.contains($0) })!
            #expect(!tried.contains(p))
            tried.insert(p)
        }
        #expect(tried == [0, 1, 2, 3])
        #expect(b.pick(clientKey: 0, active: { _ in 0 }, eligible: { !tried.contains($0) }) == nil)
    }

    private func longestRun(of value: Int, in seq: [Int]) -> Int {
        var best = 0, run = 0
        for v in seq {
            run = v == value ? run + 1 : 0
            best = max(best, run)
        }
        return best
    }
}

// MARK: - least_conn

@Suite("Balancer least_conn")
struct BalancerLeastConnTests {
    @Test func picksMinimumActive() {
        var b = Balancer(algorithm: .leastConn, backends: backends([1, 1, 1, 1]), seed: 0)
        let active = [5, 2, 7, 3]
        for _ in 0..<10 {
            #expect(b.pick(clientKey: 0, active: { active[$0] }, eligible: { _ in true }) == 1)
        }
        #expect(b.pick(clientKey: 0, active: { active[$0] }, eligible: { $0 != 1 }) == 3)
    }

    @Test func picksMinimumActivePerWeight() {
        var b = Balancer(algorithm: .leastConn, backends: backends([1, 3]), seed: 0)
        // 2/1 = 2 vs 5/3 ≈ 1.67: the heavier backend is less loaded.
        #expect(b.pick(clientKey: 0, active: { [2, 5][$0] }, eligible: { _ in true }) == 1)
        // 2/1 = 2 vs 7/3 ≈ 2.33.
        #expect(b.pick(clientKey: 0, active: { [2, 7][$0] }, eligible: { _ in true }) == 0)
    }

    @Test func weightedTiesRotate() {
        // Weight 2 with 4 active and weight 1 with 2 active are equally loaded.
        var b = Balancer(algorithm: .leastConn, backends: backends([2, 1]), seed: 0)
        let seq = picks(&b, 10, active: { [4, 2][$0] })
        #expect(seq == [0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    }

    @Test func tiesSpreadEvenly() {
        var b = Balancer(algorithm: .leastConn, backends: backends([1, 1, 1, 1]), seed: 0)
        #expect(histogram(picks(&b, 1000), count: 4) == [250, 250, 250, 250])

        // Ties among a subset (backend 2 busier) still alternate evenly.
        var s = Balancer(algorithm: .leastConn, backends: backends([1, 1, 1]), seed: 0)
        #expect(histogram(picks(&s, 1000, active: { $0 == 2 ? 9 : 3 }), count: 3) == [500, 500, 0])

        var t = Balancer(algorithm: .leastConn, backends: backends([1, 1, 1, 1, 1]), seed: 0)
        let h = histogram(picks(&t, 900, active: { [0, 7, 0, 7, 0][$0] }), count: 5)
        #expect(h == [300, 0, 300, 0, 300])
    }

    @Test func simulatedLoadFollowsWeights() {
        // Connections that never close: least_conn keeps active ∝ weight.
        var b = Balancer(algorithm: .leastConn, backends: backends([1, 2, 3]), seed: 0)
        var active = [0, 0, 0]
        for _ in 0..<600 {
            let p = b.pick(clientKey: 0, active: { active[$0] }, eligible: { _ in true })!
            active[p] += 1
        }
        #expect(active == [100, 200, 300])
    }

    @Test func negativeActiveCountsAsZero() {
        var b = Balancer(algorithm: .leastConn, backends: backends([1, 1]), seed: 0)
        let seq = picks(&b, 4, active: { [-5, 0][$0] })
        #expect(seq == [0, 1, 0, 1])
    }
}

// MARK: - p2c

@Suite("Balancer p2c")
struct BalancerP2CTests {
    @Test func idleDistributionFollowsWeights() {
        let weights = [1, 2, 3, 4]
        var b = Balancer(algorithm: .p2c, backends: backends(weights), seed: 12345)
        let h = histogram(picks(&b, 100_000), count: 4)
        #expect(withinTolerance(h, weights: weights, tolerance: 0.05))
        #expect(chiSquare(h, weights: weights) < 16.27)  // df 3, p = 0.001
    }

    @Test func equalWeightsEqualLoadIsUniform() {
        let weights = [1, 1, 1, 1, 1]
        var b = Balancer(algorithm: .p2c, backends: backends(weights), seed: 3)
        let h = histogram(picks(&b, 50_000, active: { _ in 4 }), count: 5)
        #expect(withinTolerance(h, weights: weights, tolerance: 0.05))
    }

    @Test func mostLoadedOfSeveralIsNeverPicked() {
        // Any pair containing backend 0 also contains a less-loaded one.
        var b = Balancer(algorithm: .p2c, backends: backends([1, 1, 1, 1]), seed: 8)
        let h = histogram(picks(&b, 20_000, active: { $0 == 0 ? 100 : 1 }), count: 4)
        #expect(h[0] == 0)
        #expect(withinTolerance(Array(h[1...]), weights: [1, 1, 1], tolerance: 0.05))
    }

    @Test func prefersLessLoadedPerWeight() {
        // Backend 1 (weight 4, 8 active → 2) beats backend 0 (weight 1, 3 active → 3).
        var b = Balancer(algorithm: .p2c, backends: backends([1, 4]), seed: 1)
        #expect(picks(&b, 200, active: { [3, 8][$0] }).allSatisfy { $0 == 1 })
    }

    @Test func twoDrawsAreDistinct() {
        // With two eligible backends, the less loaded is always chosen: the
        // draws can never both land on the busy one.
        var b = Balancer(algorithm: .p2c, backends: backends([100, 1]), seed: 4)
        #expect(picks(&b, 2000, active: { [50, 0][$0] }).allSatisfy { $0 == 1 })
    }

    @Test func simulatedLoadStaysBalanced() {
        // Connections arrive and leave; p2c keeps the loads close.
        var b = Balancer(algorithm: .p2c, backends: backends([1, 1, 1, 1, 1, 1, 1, 1]), seed: 99)
        var rng = BalancingRNG(seed: 2024)
        var active = [Int](repeating: 0, count: 8)
        for _ in 0..<20_000 {
            let p = b.pick(clientKey: 0, active: { active[$0] }, eligible: { _ in true })!
            active[p] += 1
            // Each open connection closes with some probability.
            for i in 0..<8 where active[i] > 0 && rng.next(below: 100) < 2 {
                active[i] -= 1
            }
        }
        let spread = active.max()! - active.min()!
        #expect(spread <= 10)
    }

    @Test func deterministicForSeed() {
        var a = Balancer(algorithm: .p2c, backends: backends([1, 2, 3]), seed: 42)
        var b = Balancer(algorithm: .p2c, backends: backends([1, 2, 3]), seed: 42)
        var c = Balancer(algorithm: .p2c, backends: backends([1, 2, 3]), seed: 43)
        let sa = picks(&a, 500, active: { $0 })
        #expect(sa == picks(&b, 500, active: { $0 }))
        #expect(sa != picks(&c, 500, active: { $0 }))
    }
}

// MARK: - random

@Suite("Balancer random")
struct BalancerRandomTests {
    @Test func distributionFollowsWeights() {
        let weights = [1, 2, 3, 4]
        var b = Balancer(algorithm: .random, backends: backends(weights), seed: 777)
        let h = histogram(picks(&b, 100_000), count: 4)
        #expect(withinTolerance(h, weights: weights, tolerance: 0.05))
        #expect(chiSquare(h, weights: weights) < 16.27)  // df 3, p = 0.001
    }

    @Test func distributionOverEligibleSubset() {
        let weights = [5, 1, 1, 3]
        var b = Balancer(algorithm: .random, backends: backends(weights), seed: 31)
        let h = histogram(picks(&b, 60_000, eligible: { $0 != 0 }), count: 4)
        #expect(h[0] == 0)
        #expect(withinTolerance(Array(h[1...]), weights: [1, 1, 3], tolerance: 0.05))
    }

    @Test func ignoresActive() {
        let weights = [1, 1]
        var b = Balancer(algorithm: .random, backends: backends(weights), seed: 2)
        let h = histogram(picks(&b, 20_000, active: { $0 == 0 ? 1000 : 0 }), count: 2)
        #expect(withinTolerance(h, weights: weights, tolerance: 0.05))
    }

    @Test func deterministicForSeed() {
        var a = Balancer(algorithm: .random, backends: backends([1, 2, 3]), seed: 42)
        var b = Balancer(algorithm: .random, backends: backends([1, 2, 3]), seed: 42)
        #expect(picks(&a, 500) == picks(&b, 500))
    }
}

// MARK: - PRNG

@Suite("Balancing PRNG")
struct BalancingRNGTests {
    @Test func knownSplitMix64Values() {
        // Reference outputs of SplitMix64 seeded with 0.
        var sm = BalancingSplitMix64(seed: 0)
        #expect(sm.next() == 0xE220_A839_7B1D_CDAF)
        #expect(sm.next() == 0x6E78_9E6A_A1B9_65F4)
        #expect(sm.next() == 0x06C4_5D18_8009_454F)
    }

    @Test func boundedIsInRangeAndUniform() {
        var rng = BalancingRNG(seed: 11)
        var h = [Int](repeating: 0, count: 7)
        for _ in 0..<70_000 {
            let v = rng.next(below: 7)
            #expect(v < 7)
            h[Int(v)] += 1
        }
        #expect(withinTolerance(h, weights: Array(repeating: 1, count: 7), tolerance: 0.05))
        #expect(rng.next(below: 1) == 0)
        _ = rng.next(below: .max)
    }

    @Test func seedsDiffer() {
        var a = BalancingRNG(seed: 0)
        var b = BalancingRNG(seed: 1)
        let xs = (0..<8).map { _ in a.next() }
        let ys = (0..<8).map { _ in b.next() }
        #expect(xs != ys)
        #expect(Set(xs).count == 8)
    }
}
