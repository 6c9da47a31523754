import SluiceCore
import Testing

private func servers(_ weights: [Int]) -> [RedisShardServer] {
    weights.enumerated().map { RedisShardServer(name: "127.0.0.1:70\($0.offset)0", weight: $0.element) }
}

private let keys = (0..<30_000).map { Array("key:\($0)".utf8) }

/// How many of `keys` each of `count` servers holds.
private func spread(_ shards: RedisShards, _ count: Int) -> [Int] {
    var counts = [Int](repeating: 0, count: count)
    for key in keys { counts[shards.server(of: key)] += 1 }
    return counts
}

@Suite("Redis key placement: crc16 slot ranges and the ketama ring, following health")
struct RedisShardsTests {
    @Test("a server's share of the keys follows its weight; weight 0 holds none", arguments: RedisHash.allCases)
    func weights(hash: RedisHash) {
        let even = spread(RedisShards(hash, servers: servers([1, 1, 1])), 3)
        #expect(even.allSatisfy { abs($0 - 10_000) < (hash == .crc16 ? 300 : 2_000) }, "\(hash): \(even)")
        let weighted = spread(RedisShards(hash, servers: servers([1, 2, 1])), 3)
        #expect(abs(weighted[1] - 15_000) < (hash == .crc16 ? 400 : 2_500), "weight 2 takes half: \(hash): \(weighted)")
        let zero = spread(RedisShards(hash, servers: servers([1, 0, 1])), 3)
        #expect(zero[1] == 0 && zero[0] > 0 && zero[2] > 0, "weight 0 holds nothing: \(zero)")
    }

    @Test("crc16 keeps Redis Cluster's slot arithmetic: slot s of n even servers is s * n / 16384")
    func crc16Ranges() {
        let shards = RedisShards(.crc16, servers: servers([1, 1, 1]))
        #expect(RedisSlot.of(Array("foo".utf8)) == 12_182 && shards.server(of: Array("foo".utf8)) == 2)
        #expect(RedisSlot.of(Array("foo{hash_tag}".utf8)) == 2_515 && shards.server(of: Array("foo{hash_tag}".utf8)) == 0)
        #expect(shards.server(of: Array("{foo}bar".utf8)) == shards.server(of: Array("foo".utf8)), "the tag is hashed")
        #expect(RedisSlot.of(Array("{}foo".utf8)) == RedisSlot.of(Array("{}foo".utf8)[...]), "an empty tag: the whole key")
    }

    @Test("a dead server's keys go to the live ones and no other key moves; back when it is live again", arguments: RedisHash.allCases)
    func healthChange(hash: RedisHash) {
        let all = RedisShards(hash, servers: servers([1, 1, 1]))
        let without1 = RedisShards(hash, servers: servers([1, 1, 1]), live: [true, false, true])
        #expect(without1.live == [true, false, true])
        var moved = 0, wrong = 0
        for key in keys {
            let before = all.server(of: key), after = without1.server(of: key)
            if after == 1 { wrong += 1 }
            if before != after { moved += 1; if before != 1 { wrong += 1 } }
        }
        #expect(wrong == 0 && moved > 8_000 && moved < 12_000, "\(hash): moved \(moved), wrong \(wrong)")
        let survivors = spread(without1, 3)
        #expect(abs(survivors[0] - survivors[2]) < 3_000, "the dead one's share is dealt round: \(survivors)")
        #expect(RedisShards(hash, servers: servers([1, 1, 1]), live: [true, true, true]) == all)
    }

    @Test("with no server live, every server keeps its keys", arguments: RedisHash.allCases)
    func noneLive(hash: RedisHash) {
        let none = RedisShards(hash, servers: servers([1, 1, 1]), live: [false, false, false])
        let all = RedisShards(hash, servers: servers([1, 1, 1]))
        #expect(none == all && !none.isEmpty)
        #expect(RedisShards(hash, servers: []).isEmpty)
    }

    @Test("ketama: libketama's ring (md5 of \"name-i\", four points per digest, 160 per server), keys hashed by md5")
    func ketamaRing() {
        let one = RedisShards(.ketama, servers: [RedisShardServer(name: "127.0.0.1:6379", weight: 1)])
        #expect(keys.prefix(100).allSatisfy { one.server(of: $0) == 0 })
        // Tags: keys sharing one share a server.
        let shards = RedisShards(.ketama, servers: servers([1, 1, 1, 1, 1]))
        let tagged = (0..<50).map { shards.server(of: Array("{user:7}.\($0)".utf8)) }
        #expect(Set(tagged).count == 1 && tagged[0] == shards.server(of: Array("user:7".utf8)))
        // The ring depends on server names, not on their order in the list.
        let reversed = RedisShards(.ketama, servers: servers([1, 1, 1, 1, 1]).reversed())
        #expect(keys.prefix(1000).allSatisfy { shards.server(of: $0) == 4 - reversed.server(of: $0) })
    }
}
