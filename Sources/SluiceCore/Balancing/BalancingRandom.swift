// Small, fast, deterministic pseudo-random numbers and 64-bit mixing for the
// balancers. Nothing here is cryptographic: it only has to spread picks well
// and be reproducible from a seed so tests are deterministic.

/// The SplitMix64 finalizer (Steele, Lea & Flood 2014): a bijective 64-bit mix
/// with good avalanche. Used to finish hashes and to derive PRNG state.
@inline(__always)
func balancingMix64(_ value: UInt64) -> UInt64 {
    var z = value
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
}

/// SplitMix64: used only to expand a 64-bit seed into xoshiro state.
struct BalancingSplitMix64: Sendable {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return balancingMix64(state)
    }
}

/// xoshiro256** (Blackman & Vigna 2018), seeded through SplitMix64 so any
/// seed (including 0) gives a valid, well-mixed state.
struct BalancingRNG: RandomNumberGenerator, Sendable {
    private var s0: UInt64
    private var s1: UInt64
    private var s2: UInt64
    private var s3: UInt64

    init(seed: UInt64) {
        var sm = BalancingSplitMix64(seed: seed)
        s0 = sm.next()
        s1 = sm.next()
        s2 = sm.next()
        s3 = sm.next()
    }

    @inline(__always)
    private static func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 {
        (x << k) | (x >> (64 &- k))
    }

    mutating func next() -> UInt64 {
        let result = Self.rotl(s1 &* 5, 7) &* 9
        let t = s1 << 17
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = Self.rotl(s3, 45)
        return result
    }

    /// A uniform value in `0..<bound` (Lemire's nearly-divisionless method,
    /// unbiased). `bound` must be positive.
    mutating func next(below bound: UInt64) -> UInt64 {
        precondition(bound > 0, "bound must be positive")
        var product = next().multipliedFullWidth(by: bound)
        if product.low < bound {
            let threshold = (0 &- bound) % bound
            while product.low < threshold {
                product = next().multipliedFullWidth(by: bound)
            }
        }
        return product.high
    }
}
