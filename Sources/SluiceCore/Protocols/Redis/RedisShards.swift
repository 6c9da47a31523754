import COpenSSL

/// How a `mode: redis` listener maps a key to a server (`redis.hash`).
public enum RedisHash: String, Sendable, CaseIterable {
    /// Redis Cluster's 16,384 CRC16 slots, in contiguous ranges by weight.
    case crc16
    /// A consistent-hash ring laid out as libketama and twemproxy lay it
    /// (`distribution: ketama`, `hash: md5`): a pool that moves from
    /// twemproxy finds its keys where they are.
    case ketama
}

/// A server of the table: its name on the ring (`host:port`) and weight.
public struct RedisShardServer: Sendable, Equatable {
    public var name: String
    public var weight: Int

    public init(name: String, weight: Int) {
        self.name = name
        self.weight = weight
    }
}

/// Which server holds a key, given which servers are live. Built off the
/// hot path (when health changes), read per key. A dead server's keys go to
/// live ones and no other key moves: its slots are spread over the live
/// servers (crc16), or its points leave the ring (ketama).
public struct RedisShards: Sendable, Equatable {
    public let hash: RedisHash
    // Plain fields rather than an enum with array payloads: Swift keeps an
    // enum's case in the payload pointer's spare bits, which LeakSanitizer
    // then cannot follow (a false leak report from every fuzzing run).
    /// crc16: the server of each slot.
    private let slots: [Int]
    /// ketama: the ring's points, sorted, and the server of each.
    private let points: [UInt32]
    private let owners: [Int]
    /// The servers the table sends keys to.
    public let live: [Bool]

    /// With no server live, every server keeps its keys (their commands fail
    /// fast at the link, rather than landing on a server that never had them).
    public init(_ hash: RedisHash, servers: [RedisShardServer], live: [Bool]? = nil) {
        var live = live ?? Array(repeating: true, count: servers.count)
        for i in servers.indices where servers[i].weight <= 0 { live[i] = false }
        if !live.contains(true) { live = servers.map { $0.weight > 0 } }
        self.live = live
        self.hash = hash
        switch hash {
        case .crc16:
            slots = Self.slots(servers, live: live)
            (points, owners) = ([], [])
        case .ketama:
            slots = []
            (points, owners) = Self.ring(servers, live: live)
        }
    }

    public var isEmpty: Bool { hash == .crc16 ? slots.isEmpty : points.isEmpty }

    /// The server of `key` (or of its `{hash tag}`); the table must not be empty.
    public func server(of key: ArraySlice<UInt8>) -> Int {
        if hash == .crc16 { return slots[RedisSlot.of(key)] }
        let hashed = Self.md5Word(RedisSlot.hashed(key), word: 0)
        // The first point at or after the hash, wrapping past the last.
        var low = 0, high = points.count
        while low < high {
            let mid = (low + high) / 2
            if points[mid] < hashed { low = mid + 1 } else { high = mid }
        }
        return owners[low == points.count ? 0 : low]
    }

    /// Contiguous slot ranges sized by weight over every server, so that
    /// placement does not depend on health; then a dead server's slots are
    /// dealt round the live ones.
    static func slots(_ servers: [RedisShardServer], live: [Bool]) -> [Int] {
        let weights = servers.map { max($0.weight, 0) }
        let total = weights.reduce(0, +)
        guard total > 0 else { return [] }
        var owners = [Int](repeating: 0, count: RedisSlot.count)
        var server = 0, end = weights[0] * RedisSlot.count / total, cumulative = weights[0]
        for slot in 0..<RedisSlot.count {
            while slot >= end {
                server += 1
                cumulative += weights[server]
                end = cumulative * RedisSlot.count / total
            }
            owners[slot] = server
        }
        let survivors = live.indices.filter { live[$0] }
        guard survivors.count < servers.count else { return owners }
        for slot in owners.indices where !live[owners[slot]] { owners[slot] = survivors[slot % survivors.count] }
        return owners
    }

    public func server(of key: some Collection<UInt8>) -> Int { server(of: Array(key)[...]) }

    /// libketama's continuum: 160 points per server at equal weights (in
    /// fours, from the MD5 of "name-i"), sorted; only live servers have points.
    static func ring(_ servers: [RedisShardServer], live: [Bool]) -> (points: [UInt32], servers: [Int]) {
        let members = servers.indices.filter { live[$0] }
        let total = members.reduce(0) { $0 + servers[$1].weight }
        var pairs: [(point: UInt32, server: Int)] = []
        for i in members {
            let share = Double(servers[i].weight) / Double(total)
            let hashes = Int((share * 160 / 4 * Double(members.count) + 0.0000000001).rounded(.down))
            for h in 0..<hashes {
                let digest = md5(Array("\(servers[i].name)-\(h)".utf8))
                for word in 0..<4 { pairs.append((word32(digest, word), i)) }
            }
        }
        // Ties (rare) broken by server, so that every worker builds the same ring.
        pairs.sort { $0.point < $1.point || ($0.point == $1.point && $0.server < $1.server) }
        return (pairs.map(\.point), pairs.map(\.server))
    }

    static func md5(_ bytes: [UInt8]) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: 16)
        var length: UInt32 = 0
        _ = bytes.withUnsafeBufferPointer { input in
            EVP_Digest(input.baseAddress, input.count, &digest, &length, EVP_md5(), nil)
        }
        return digest
    }

    /// Little-endian word `word` (0...3) of the MD5 of `bytes`.
    static func md5Word(_ bytes: ArraySlice<UInt8>, word: Int) -> UInt32 { word32(md5(Array(bytes)), word) }

    static func word32(_ digest: [UInt8], _ word: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 | UInt32(digest[word * 4 + $1]) << (8 * $1) }
    }
}
