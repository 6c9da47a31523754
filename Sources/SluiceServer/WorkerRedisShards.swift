import Logging
import SluiceCore
import SluicePosix

/// One pool's key placement in one worker, as its clients share it.
final class RedisShardState {
    let pool: RuntimePool
    let hash: RedisHash
    let servers: [RedisShardServer]
    /// The eligibility the table was built from.
    var observed: [Bool]
    var shards: RedisShards

    init(pool: RuntimePool, hash: RedisHash, live: [Bool]) {
        self.pool = pool
        self.hash = hash
        servers = pool.config.backends.map { RedisShardServer(name: $0.address.description, weight: $0.weight) }
        observed = live
        shards = RedisShards(hash, servers: servers, live: live)
    }
}

struct RedisShardKey: Hashable {
    let pool: ObjectIdentifier
    let hash: RedisHash
}

// Key placement follows health: checked every 100 ms off the command path,
// and rebuilt (then handed to the pool's clients) only when a backend's
// eligibility changed. Every worker builds the same table from the same
// verdicts, so they agree on where a key lives.
extension Worker {
    static let redisShardCheckMilliseconds: UInt64 = 100

    func redisShards(_ listener: RuntimeListener) -> RedisShards {
        let hash = listener.pool.config.redisHash
        let key = RedisShardKey(pool: ObjectIdentifier(listener.pool), hash: hash)
        if let state = redisShardStates[key] { return state.shards }
        if redisShardStates.isEmpty {
            _ = timers.schedule(at: monotonicMilliseconds() + Self.redisShardCheckMilliseconds, .redisShards)
        }
        let state = RedisShardState(pool: listener.pool, hash: hash, live: eligibility(listener.pool))
        redisShardStates[key] = state
        return state.shards
    }

    func checkRedisShards() {
        for state in redisShardStates.values {
            let live = eligibility(state.pool)
            guard live != state.observed else { continue }
            state.observed = live
            state.shards = RedisShards(state.hash, servers: state.servers, live: live)
            for client in redisClients.values where client.listener.pool === state.pool {
                client.session.shards = state.shards
            }
            if id == 0 {
                logger.notice("redis keys placed anew", metadata: [
                    "pool": "\(state.pool.name)", "hash": "\(state.hash.rawValue)",
                    "live": "\(state.shards.live.filter { $0 }.count) of \(live.count)",
                ])
            }
        }
        _ = timers.schedule(at: monotonicMilliseconds() + Self.redisShardCheckMilliseconds, .redisShards)
    }

    private func eligibility(_ pool: RuntimePool) -> [Bool] {
        let now = monotonicMilliseconds()
        return pool.addresses.indices.map { pool.isEligible($0, now: now) }
    }
}
