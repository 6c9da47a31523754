import Testing
@testable import SluiceCore

private func maglevBackends(_ count: Int, weight: Int = 1) -> [BalancerBackend] {
    (0..<count).map { BalancerBackend(weight: weight, key: "192.168.1.\($0 + 10):443") }
}

private func maglev(_ backends: [BalancerBackend], size: Int = MaglevTable.defaultSize) -> Balancer {
    Balancer(algorithm: .maglev, backends: backends, seed: 0, maglevTableSize: size)
}

/// The key of the backend `balancer` picks for `clientKey`.
private func pickKey(
    _ balancer: inout Balancer, _ clientKey: UInt64, eligible: (Int) -> Bool = { _ in true }
) -> String? {
    balancer.pick(clientKey: clientKey, active: { _ in 0 }, eligible: eligible).map { balancer.backends[$0].key }
}

private func randomKeys(_ n: Int, seed: UInt64) -> [UInt64] {
    var rng = BalancingRNG(seed: seed)
    return (0..<n).map { _ in rng.next() }
}

@Suite("Maglev table")
struct MaglevTableTests {
    @Test func tableIsFullyPopulated() {
        let table = MaglevTable(backends: maglevBackends(7), size: 65537)
        #expect(table.size == 65537)
        #expect(table.entries.count == 65537)
        #expect(table.entries.allSatisfy { $0 >= 0 && $0 < 7 })
    }

    @Test func equalWeightsShareEvenly() {
        let table = MaglevTable(backends: maglevBackends(7))
        var h = [Int](repeating: 0, count: 7)
        for e in table.entries { h[Int(e)] += 1 }
        let fair = 65537.0 / 7
        #expect(h.allSatisfy { abs(Double($0) - fair) <= 0.01 * fair })
    }

    @Test func weightedShares() {
        let weights = [1, 2, 3, 4, 10]
        let backends = weights.enumerated().map { BalancerBackend(weight: $1, key: "b\($0)") }
        let table = MaglevTable(backends: backends)
        var h = [Int](repeating: 0, count: weights.count)
        for e in table.entries { h[Int(e)] += 1 }
        let total = Double(weights.reduce(0, +))
        for (i, w) in weights.enumerated() {
            let fair = 65537.0 * Double(w) / total
            #expect(abs(Double(h[i]) - fair) <= 0.01 * fair, "backend \(i): \(h[i]) vs \(fair)")
        }
    }

    @Test func weightsAreNormalizedByGCD() {
        let a = MaglevTable(backends: [BalancerBackend(weight: 1, key: "x"), BalancerBackend(weight: 3, key: "y")], size: 1009)
        let b = MaglevTable(backends: [BalancerBackend(weight: 100, key: "x"), BalancerBackend(weight: 300, key: "y")], size: 1009)
        #expect(a == b)
    }

    @Test func zeroWeightOwnsNoSlots() {
        let backends = [BalancerBackend(weight: 1, key: "a"), BalancerBackend(weight: 0, key: "b"), BalancerBackend(weight: 2, key: "c")]
        let table = MaglevTable(backends: backends, size: 1009)
        #expect(!table.entries.contains(1))
        #expect(MaglevTable(backends: [BalancerBackend(weight: 0, key: "z")], size: 13).entries.isEmpty)
    }

    @Test func independentOfListingOrder() {
        let forward = maglevBackends(6)
        let reversed = Array(forward.reversed())
        var a = maglev(forward, size: 4099)
        var b = maglev(reversed, size: 4099)
        for key in randomKeys(5000, seed: 1) {
            #expect(pickKey(&a, key) == pickKey(&b, key))
        }
    }

    @Test func primeCheck() {
        #expect(MaglevTable.isPrime(65537))
        #expect(MaglevTable.isPrime(2) && MaglevTable.isPrime(3) && MaglevTable.isPrime(13))
        #expect(!MaglevTable.isPrime(1) && !MaglevTable.isPrime(9) && !MaglevTable.isPrime(65535))
    }
}

@Suite("Balancer maglev")
struct BalancerMaglevTests {
    @Test func sameClientSameBackend() {
        var a = maglev(maglevBackends(5))
        var b = Balancer(algorithm: .maglev, backends: maglevBackends(5), seed: 999)  // default size, other seed
        for key in randomKeys(10_000, seed: 2) {
            let first = a.pick(clientKey: key, active: { _ in 0 }, eligible: { _ in true })
            #expect(first != nil)
            #expect(a.pick(clientKey: key, active: { $0 * 100 }, eligible: { _ in true }) == first)
            #expect(b.pick(clientKey: key, active: { _ in 0 }, eligible: { _ in true }) == first)
        }
    }

    @Test func pickDistributionFollowsWeights() {
        let weights = [1, 2, 3, 4]
        let backends = weights.enumerated().map { BalancerBackend(weight: $1, key: "10.1.0.\($0):80") }
        var b = maglev(backends)
        var h = [Int](repeating: 0, count: 4)
        for key in randomKeys(100_000, seed: 3) {
            h[b.pick(clientKey: key, active: { _ in 0 }, eligible: { _ in true })!] += 1
        }
        for (i, w) in weights.enumerated() {
            let fair = 100_000.0 * Double(w) / 10
            #expect(abs(Double(h[i]) - fair) <= 0.03 * fair, "backend \(i): \(h[i]) vs \(fair)")
        }
    }

    @Test(arguments: [5, 10])
    func removingABackendMovesAboutOneNth(n: Int) {
        let all = maglevBackends(n)
        let keys = randomKeys(100_000, seed: UInt64(n))
        for removed in [0, n / 2, n - 1] {
            var full = maglev(all)
            var reduced = maglev(all.enumerated().filter { $0.offset != removed }.map(\.element))
            let removedKey = all[removed].key
            var moved = 0
            var movedFromSurvivors = 0
            var onSurvivors = 0
            for key in keys {
                let before = pickKey(&full, key)!
                let after = pickKey(&reduced, key)!
                #expect(after != removedKey)
                if before != after { moved += 1 }
                if before != removedKey {
                    onSurvivors += 1
                    if before != after { movedFromSurvivors += 1 }
                }
            }
            let movedShare = Double(moved) / Double(keys.count)
            #expect(movedShare <= 1.2 / Double(n), "n=\(n) removed=\(removed): moved \(movedShare)")
            // Keys that were not on the removed backend mostly stay put.
            let survivorShare = Double(movedFromSurvivors) / Double(onSurvivors)
            #expect(survivorShare <= 0.2 / Double(n), "n=\(n) removed=\(removed): survivors moved \(survivorShare)")
        }
    }

    @Test(arguments: [5, 10])
    func addingABackendMovesAboutOneNthPlusOne(n: Int) {
        let all = maglevBackends(n + 1)
        let added = all[n].key
        var before = maglev(Array(all.prefix(n)))
        var after = maglev(all)
        let keys = randomKeys(100_000, seed: 100 + UInt64(n))
        var moved = 0
        var movedToNew = 0
        for key in keys {
            let a = pickKey(&before, key)!
            let b = pickKey(&after, key)!
            if a != b {
                moved += 1
                if b == added { movedToNew += 1 }
            }
        }
        let share = Double(moved) / Double(keys.count)
        let ideal = 1.0 / Double(n + 1)
        #expect(share >= 0.9 * ideal && share <= 1.2 * ideal, "n=\(n): moved \(share), ideal \(ideal)")
        // Nearly everything that moved went to the new backend.
        #expect(Double(movedToNew) >= 0.85 * Double(moved))
    }

    @Test func fallbackKeepsHealthyKeysAndIsDeterministic() {
        let n = 6
        var b = maglev(maglevBackends(n))
        let down = 2
        var h = [Int](repeating: 0, count: n)
        for key in randomKeys(60_000, seed: 4) {
            let primary = b.pick(clientKey: key, active: { _ in 0 }, eligible: { _ in true })!
            let fallback = b.pick(clientKey: key, active: { _ in 0 }, eligible: { $0 != down })!
            #expect(fallback != down)
            if primary != down {
                #expect(fallback == primary)
            } else {
                h[fallback] += 1
                // Same client, same eligibility → same fallback.
                #expect(b.pick(clientKey: key, active: { _ in 0 }, eligible: { $0 != down }) == fallback)
            }
        }
        // The down backend's clients spread over the others.
        let displaced = h.reduce(0, +)
        #expect(displaced > 8_000)
        let fair = Double(displaced) / Double(n - 1)
        for i in 0..<n where i != down {
            #expect(abs(Double(h[i]) - fair) <= 0.15 * fair, "backend \(i): \(h[i]) vs \(fair)")
        }
    }

    @Test func retriesWalkDistinctBackendsDeterministically() {
        let n = 5
        var b = maglev(maglevBackends(n), size: 1009)
        for key in randomKeys(2000, seed: 5) {
            var tried: [Int] = []
            while let p = b.pick(clientKey: key, active: { _ in 0 }, eligible: { !tried.contains($0) }) {
                #expect(!tried.contains(p))
                tried.append(p)
            }
            #expect(tried.count == n)
            // The same retry chain happens again for the same client.
            var again: [Int] = []
            while let p = b.pick(clientKey: key, active: { _ in 0 }, eligible: { !again.contains($0) }) {
                again.append(p)
            }
            #expect(again == tried)
        }
    }

    @Test func scanFallbackFindsLoneEligibleBackend() {
        // With 40 backends and one eligible, probes usually miss and the scan finds it.
        var b = maglev(maglevBackends(40), size: 4099)
        for key in randomKeys(500, seed: 6) {
            #expect(b.pick(clientKey: key, active: { _ in 0 }, eligible: { $0 == 17 }) == 17)
        }
        #expect(b.pick(clientKey: 1, active: { _ in 0 }, eligible: { _ in false }) == nil)
    }
}

@Suite("hashClientAddress")
struct HashClientAddressTests {
    @Test func stableKnownValues() {
        // FNV-1a of the empty input is the offset basis; then the finalizer.
        #expect(BalancingHash.fnv1a([UInt8]()) == 0xCBF2_9CE4_8422_2325)
        // Published FNV-1a 64 test vectors.
        #expect(BalancingHash.fnv1a(Array("a".utf8)) == 0xAF63_DC4C_8601_EC8C)
        #expect(BalancingHash.fnv1a(Array("foobar".utf8)) == 0x8594_4171_F739_67E8)
        #expect(hashClientAddress([UInt8]()) == balancingMix64(0xCBF2_9CE4_8422_2325))
        #expect(hashClientAddress([127, 0, 0, 1]) == balancingMix64(BalancingHash.fnv1a([127, 0, 0, 1] as [UInt8])))
        // Pinned so an accidental change to the hash (which would reshuffle
        // every maglev client) fails loudly.
        #expect(hashClientAddress([10, 0, 0, 1]) == Self.pinned10001)
    }

    static let pinned10001: UInt64 = 0xE7A7_7091_5E3A_6BB4  // computed independently

    @Test func independentOfCollectionType() {
        let bytes: [UInt8] = [192, 168, 1, 20, 0x1F, 0x90]
        #expect(hashClientAddress(bytes) == hashClientAddress(bytes[...]))
        #expect(hashClientAddress(bytes) == hashClientAddress(ContiguousArray(bytes)))
        #expect(hashClientAddress(bytes) != hashClientAddress(bytes.dropLast()))
    }

    @Test func sequentialAddressesSpread() {
        // 65,536 consecutive IPv4 addresses into 64 buckets (by the low bits,
        // as `key % M` would use them) and by the high bits.
        var low = [Int](repeating: 0, count: 64)
        var high = [Int](repeating: 0, count: 64)
        var seen = Set<UInt64>()
        for i in 0..<65_536 {
            let h = hashClientAddress([10, 20, UInt8(i >> 8), UInt8(i & 0xFF)])
            seen.insert(h)
            low[Int(h & 63)] += 1
            high[Int(h >> 58)] += 1
        }
        #expect(seen.count == 65_536)
        #expect(low.allSatisfy { abs($0 - 1024) <= 128 })
        #expect(high.allSatisfy { abs($0 - 1024) <= 128 })
    }

    @Test func avalanche() {
        // Flipping one input bit flips about half the output bits.
        var rng = BalancingRNG(seed: 8)
        var flipped = 0
        var trials = 0
        for _ in 0..<2000 {
            var bytes = (0..<6).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            let h0 = hashClientAddress(bytes)
            let bit = Int(rng.next(below: 48))
            bytes[bit / 8] ^= UInt8(1 << (bit % 8))
            flipped += (h0 ^ hashClientAddress(bytes)).nonzeroBitCount
            trials += 1
        }
        let mean = Double(flipped) / Double(trials)
        #expect(mean > 30 && mean < 34)
    }
}
