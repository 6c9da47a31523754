// Backend selection for one pool. Each worker thread owns its own `Balancer`
// (no locks, no sharing); the only shared input is `active`, the connection
// counts, which the caller may read from global counters.

/// A backend as the balancer sees it.
public struct BalancerBackend: Sendable, Equatable {
    /// Relative share of traffic. Backends with weight <= 0 are never picked
    /// (and own no maglev slots).
    public var weight: Int
    /// The backend's address text; hashed by maglev to place the backend.
    public var key: String

    public init(weight: Int = 1, key: String) {
        self.weight = weight
        self.key = key
    }
}

/// A per-worker, single-threaded backend picker for one pool.
public struct Balancer: Sendable {
    public let algorithm: BalancingAlgorithm
    public let backends: [BalancerBackend]

    /// Weights clamped to >= 0.
    let weights: [Int]
    var rng: BalancingRNG
    /// round_robin: nginx's per-backend current weights.
    var currentWeights: [Int]
    /// least_conn: the last backend picked; the next scan starts after it.
    var lastPicked: Int
    /// p2c / random: reusable buffer of eligible indices (no per-pick allocation).
    var scratch: [Int]
    /// maglev only.
    let maglev: MaglevTable?

    public init(algorithm: BalancingAlgorithm, backends: [BalancerBackend], seed: UInt64) {
        self.init(algorithm: algorithm, backends: backends, seed: seed, maglevTableSize: MaglevTable.defaultSize)
    }

    /// `maglevTableSize` must be prime; tests use small primes to build fast.
    init(algorithm: BalancingAlgorithm, backends: [BalancerBackend], seed: UInt64, maglevTableSize: Int) {
        self.algorithm = algorithm
        self.backends = backends
        self.weights = backends.map { max(0, $0.weight) }
        self.rng = BalancingRNG(seed: seed)
        self.currentWeights = algorithm == .roundRobin ? [Int](repeating: 0, count: backends.count) : []
        self.lastPicked = -1
        self.scratch = []
        if algorithm == .p2c || algorithm == .random {
            scratch.reserveCapacity(backends.count)
        }
        self.maglev = algorithm == .maglev ? MaglevTable(backends: backends, size: maglevTableSize) : nil
    }

    public var count: Int { backends.count }

    /// Picks a backend index, or nil if none is eligible.
    /// - clientKey: a hash of the client address (used by maglev; ignored by the others)
    /// - active: current open connections of backend i (used by least_conn and p2c;
    ///   may be global across workers). Only called for eligible backends.
    /// - eligible: false for backends to skip (already tried for this
    ///   connection, down, draining). Backends with weight <= 0 are never
    ///   picked whatever it says.
    public mutating func pick(clientKey: UInt64, active: (Int) -> Int, eligible: (Int) -> Bool) -> Int? {
        switch algorithm {
        case .roundRobin: return pickRoundRobin(eligible: eligible)
        case .leastConn: return pickLeastConn(active: active, eligible: eligible)
        case .p2c: return pickP2C(active: active, eligible: eligible)
        case .random: return pickRandom(eligible: eligible)
        case .maglev: return maglev?.lookup(clientKey, weights: weights, eligible: eligible)
        }
    }

    // MARK: round_robin

    /// nginx's smooth weighted round robin: every eligible backend's current
    /// weight grows by its weight; the largest wins and is pushed back by the
    /// total. Over sum(weights) picks each backend is chosen exactly weight
    /// times, and heavy backends are interleaved with light ones.
    mutating func pickRoundRobin(eligible: (Int) -> Bool) -> Int? {
        var best = -1
        var total = 0
        for i in weights.indices where weights[i] > 0 && eligible(i) {
            currentWeights[i] += weights[i]
            total += weights[i]
            if best < 0 || currentWeights[i] > currentWeights[best] {
                best = i
            }
        }
        guard best >= 0 else { return nil }
        currentWeights[best] -= total
        return best
    }

    // MARK: least_conn

    /// Minimizes active/weight. The scan starts just after the previous pick,
    /// and only a strictly lower load replaces the current best, so equally
    /// loaded backends are taken in turn.
    mutating func pickLeastConn(active: (Int) -> Int, eligible: (Int) -> Bool) -> Int? {
        let n = weights.count
        guard n > 0 else { return nil }
        var i = lastPicked + 1
        if i >= n { i = 0 }
        var best = -1
        var bestActive = 0
        for _ in 0..<n {
            if weights[i] > 0, eligible(i) {
                let a = max(0, active(i))
                if best < 0 || Self.lessLoaded(a, weights[i], than: bestActive, weights[best]) {
                    best = i
                    bestActive = a
                }
            }
            i += 1
            if i == n { i = 0 }
        }
        guard best >= 0 else { return nil }
        lastPicked = best
        return best
    }

    /// a1/w1 < a2/w2, by cross-multiplication in full width (no floats, no overflow).
    @inline(__always)
    static func lessLoaded(_ a1: Int, _ w1: Int, than a2: Int, _ w2: Int) -> Bool {
        let lhs = UInt(a1).multipliedFullWidth(by: UInt(w2))
        let rhs = UInt(a2).multipliedFullWidth(by: UInt(w1))
        return lhs.high < rhs.high || (lhs.high == rhs.high && lhs.low < rhs.low)
    }

    // MARK: p2c and random

    /// Fills `scratch` with the eligible positive-weight backends; returns
    /// their total weight.
    mutating func collectEligible(_ eligible: (Int) -> Bool) -> Int {
        scratch.removeAll(keepingCapacity: true)
        var total = 0
        for i in weights.indices where weights[i] > 0 && eligible(i) {
            scratch.append(i)
            total += weights[i]
        }
        return total
    }

    /// A weighted draw from `scratch` (whose weights, minus `excluded`'s, sum
    /// to `total`).
    mutating func weightedDraw(total: Int, excluding excluded: Int = -1) -> Int {
        var r = Int(rng.next(below: UInt64(total)))
        for i in scratch where i != excluded {
            r -= weights[i]
            if r < 0 { return i }
        }
        preconditionFailure("weighted draw out of range")
    }

    /// Power of two choices: two distinct weighted draws, keep the one with
    /// the lower active/weight (the first drawn on a tie).
    mutating func pickP2C(active: (Int) -> Int, eligible: (Int) -> Bool) -> Int? {
        let total = collectEligible(eligible)
        switch scratch.count {
        case 0: return nil
        case 1: return scratch[0]
        default: break
        }
        let a = weightedDraw(total: total)
        let b = weightedDraw(total: total - weights[a], excluding: a)
        let activeA = max(0, active(a))
        let activeB = max(0, active(b))
        return Self.lessLoaded(activeB, weights[b], than: activeA, weights[a]) ? b : a
    }

    /// Weighted uniform random over the eligible backends.
    mutating func pickRandom(eligible: (Int) -> Bool) -> Int? {
        let total = collectEligible(eligible)
        switch scratch.count {
        case 0: return nil
        case 1: return scratch[0]
        default: return weightedDraw(total: total)
        }
    }
}
