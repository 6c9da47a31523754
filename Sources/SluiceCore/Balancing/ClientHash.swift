// Stable hashing of client addresses (the `clientKey` given to
// `Balancer.pick`) and of backend keys (for maglev).
//
// These values must not change between releases or across processes: unlike
// Swift's `Hasher`, they are not randomly seeded.

enum BalancingHash {
    static let fnvOffsetBasis: UInt64 = 0xCBF2_9CE4_8422_2325
    static let fnvPrime: UInt64 = 0x0000_0100_0000_01B3

    /// FNV-1a over `bytes`, starting from `basis`.
    @inline(__always)
    static func fnv1a(_ bytes: some Sequence<UInt8>, basis: UInt64 = fnvOffsetBasis) -> UInt64 {
        var hash = basis
        for byte in bytes {
            hash ^= UInt64(byte)
            hash = hash &* fnvPrime
        }
        return hash
    }
}

/// A stable 64-bit hash of a client address (for example the 4 or 16 address
/// bytes, optionally followed by the port), used as `clientKey` for
/// `Balancer.pick`: FNV-1a over the bytes, then the SplitMix64 finalizer so
/// that nearby addresses land far apart.
public func hashClientAddress(_ bytes: some Collection<UInt8>) -> UInt64 {
    balancingMix64(BalancingHash.fnv1a(bytes))
}
