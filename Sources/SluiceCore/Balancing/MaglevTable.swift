// Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
// Software Network Load Balancer", NSDI 2016, section 3.4).
//
// Each backend gets a permutation of the table slots from two hashes of its
// key (offset and skip); backends then take turns claiming their next
// preferred free slot until the table is full. A backend of weight w takes w
// turns per round (weights are first divided by their gcd), so it ends up
// owning a share of the table proportional to its weight.

struct MaglevTable: Sendable, Equatable {
    /// The paper's recommended table size for small pools: a prime well
    /// above 100 × the expected number of backends.
    static let defaultSize = 65537

    /// Attempts at rehashing the client key when its primary backend is not
    /// eligible, before falling back to a scan of the backends.
    static let probeLimit = 16

    /// The number of slots (a prime).
    let size: Int

    /// Backend index for each slot; empty if no backend has positive weight.
    let entries: [Int32]

    /// The number of backends the table was built for (including weight-0
    /// ones, which own no slots).
    let backendCount: Int

    init(backends: [BalancerBackend], size: Int = MaglevTable.defaultSize) {
        precondition(size >= 2 && Self.isPrime(size), "maglev table size must be a prime")
        precondition(backends.count < Int(Int32.max), "too many backends")
        self.size = size
        self.backendCount = backends.count

        // Iterate members in key order so the table does not depend on the
        // order backends are listed in.
        let members = backends.indices
            .filter { backends[$0].weight > 0 }
            .sorted { (backends[$0].key, $0) < (backends[$1].key, $1) }
        guard !members.isEmpty else {
            entries = []
            return
        }

        var divisor = 0
        for i in members { divisor = Self.gcd(divisor, backends[i].weight) }
        let turns = members.map { backends[$0].weight / divisor }

        let m = UInt64(size)
        var position = [Int](repeating: 0, count: members.count)
        var skip = [Int](repeating: 0, count: members.count)
        for (slot, i) in members.enumerated() {
            let (offsetHash, skipHash) = Self.keyHashes(backends[i].key)
            position[slot] = Int(offsetHash % m)
            skip[slot] = Int(skipHash % (m - 1)) + 1
        }

        var table = [Int32](repeating: -1, count: size)
        var filled = 0
        fill: while true {
            for slot in members.indices {
                let backend = Int32(members[slot])
                let step = skip[slot]
                for _ in 0..<turns[slot] {
                    var c = position[slot]
                    while table[c] >= 0 {
                        c += step
                        if c >= size { c -= size }
                    }
                    table[c] = backend
                    c += step
                    if c >= size { c -= size }
                    position[slot] = c
                    filled += 1
                    if filled == size { break fill }
                }
            }
        }
        entries = table
    }

    /// The backend owning `key`'s slot, or nil if the table is empty.
    @inline(__always)
    func primary(_ key: UInt64) -> Int? {
        guard !entries.isEmpty else { return nil }
        return Int(entries[Int(key % UInt64(size))])
    }

    /// The first eligible backend for `key`: its slot's owner, else the owners
    /// of the slots of up to `probeLimit` deterministic rehashes of `key`, else
    /// the first eligible positive-weight backend scanning forward from a
    /// position derived from `key`. The same key with the same eligibility
    /// always gives the same answer.
    func lookup(_ key: UInt64, weights: [Int], eligible: (Int) -> Bool) -> Int? {
        guard let first = primary(key) else { return nil }
        if eligible(first) { return first }
        let m = UInt64(size)
        var lastTried = first
        for attempt in 1...UInt64(Self.probeLimit) {
            let probe = Int(entries[Int(balancingMix64(key &+ attempt &* 0x9E37_79B9_7F4A_7C15) % m)])
            if probe != lastTried, eligible(probe) { return probe }
            lastTried = probe
        }
        let n = backendCount
        var i = Int(balancingMix64(key ^ 0xD1B5_4A32_D192_ED03) % UInt64(n))
        for _ in 0..<n {
            if weights[i] > 0, i != first, eligible(i) { return i }
            i += 1
            if i == n { i = 0 }
        }
        return nil
    }

    /// Two independent hashes of a backend key: FNV-1a from two different
    /// bases, each finished with a different finalizer input.
    static func keyHashes(_ key: String) -> (offset: UInt64, skip: UInt64) {
        let bytes = key.utf8
        let offset = balancingMix64(BalancingHash.fnv1a(bytes))
        let skip = balancingMix64(
            BalancingHash.fnv1a(bytes, basis: 0x84222325CBF29CE4) ^ 0x5851_F42D_4C95_7F2D
        )
        return (offset, skip)
    }

    static func isPrime(_ n: Int) -> Bool {
        if n < 2 { return false }
        if n < 4 { return true }
        if n % 2 == 0 { return false }
        var d = 3
        while d * d <= n {
            if n % d == 0 { return false }
            d += 2
        }
        return true
    }

    static func gcd(_ a: Int, _ b: Int) -> Int {
        var (x, y) = (a, b)
        while y != 0 { (x, y) = (y, x % y) }
        return x
    }
}
