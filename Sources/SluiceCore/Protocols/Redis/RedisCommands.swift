// Which server a key lives on, and what a sharding proxy does with each
// command: pure tables and functions, no I/O.

/// Redis Cluster's key slots: CRC16 (XMODEM) of the key, or of its hash
/// tag (the part between the first `{` and the next `}`, when not empty),
/// modulo 16,384. Keys sharing a tag share a slot, hence a server.
public enum RedisSlot {
    public static let count = 16_384

    public static func of(_ key: ArraySlice<UInt8>) -> Int { Int(crc16(hashed(key)) % UInt16(count)) }
    public static func of(_ key: some Collection<UInt8>) -> Int { of(Array(key)[...]) }

    /// What of a key is hashed: its tag, when it has a non-empty one.
    public static func hashed(_ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        if let open = bytes.firstIndex(of: UInt8(ascii: "{")),
           let close = bytes[(open + 1)...].firstIndex(of: UInt8(ascii: "}")), close > open + 1 {
            return bytes[(open + 1)..<close]
        }
        return bytes
    }

    static let table: [UInt16] = (0..<256).map { n in
        var crc = UInt16(n) << 8
        for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        return crc
    }

    /// CRC-16/XMODEM, as Redis Cluster computes it.
    public static func crc16(_ bytes: ArraySlice<UInt8>) -> UInt16 {
        var crc: UInt16 = 0
        // The table's buffer once, not the global's accessor per byte.
        table.withUnsafeBufferPointer { table in
            for b in bytes { crc = (crc << 8) ^ table[Int((crc >> 8) ^ UInt16(b))] }
        }
        return crc
    }
}

/// What the proxy does with a command, by its name.
public enum RedisCommandKind: Sendable, Equatable {
    /// One key, at this argument index (1 = the first after the name).
    case single(key: Int)
    /// Every argument from 1 is a key; split by server, replies merged:
    /// values in the keys' order (MGET), or counts summed (DEL, EXISTS...).
    case multiKey(merge: RedisMerge)
    /// MSET: key and value pairs; split by server, `+OK` when all said so.
    case keyValuePairs
    /// Several keys that must share a server (SINTER, RPOPLPUSH, ...): the
    /// argument indices holding keys, or `firstKey...` to the end with `step`.
    case sameServer(firstKey: Int, lastKey: Int?, step: Int)
    /// EVAL and EVALSHA: argument 2 says how many keys follow.
    case script
    /// Answered by the proxy itself.
    case local
    /// Makes no sense through a sharding proxy: a clear `-ERR`, the connection stays.
    case refused(String)
}

/// The families `/metrics` counts commands by.
public enum RedisFamily: Int, Sendable, CaseIterable {
    case single, split, sameServer, script, local, refused

    public init(_ kind: RedisCommandKind) {
        switch kind {
        case .single: self = .single
        case .multiKey, .keyValuePairs: self = .split
        case .sameServer: self = .sameServer
        case .script: self = .script
        case .local: self = .local
        case .refused: self = .refused
        }
    }

    public var name: String {
        switch self {
        case .single: "single_key"
        case .split: "multi_key"
        case .sameServer: "same_server"
        case .script: "script"
        case .local: "local"
        case .refused: "refused"
        }
    }
}

public enum RedisMerge: Sendable, Equatable {
    case values
    case sum
}

public enum RedisCommands {
    /// The kind of a command, by its name in any case; unknown names are refused.
    public static func kind(_ name: some Collection<UInt8>) -> RedisCommandKind {
        kind(upper: upper(name), as: name)
    }

    /// The same, for a name already upper-cased (`upper`); `name` as sent, for the message.
    static func kind(upper: String, as name: some Collection<UInt8>) -> RedisCommandKind {
        table[upper] ?? .refused("unknown or unsupported command '\(String(decoding: name, as: UTF8.self))'")
    }

    static func upper(_ name: some Collection<UInt8>) -> String {
        String(decoding: name.map { $0 >= 97 && $0 <= 122 ? $0 - 32 : $0 }, as: UTF8.self)
    }

    static let single = [
        "GET", "SET", "SETNX", "SETEX", "PSETEX", "GETSET", "GETDEL", "GETEX", "GETRANGE", "SETRANGE", "APPEND", "STRLEN",
        "INCR", "DECR", "INCRBY", "DECRBY", "INCRBYFLOAT", "EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT", "TTL", "PTTL",
        "PERSIST", "TYPE", "DUMP", "RESTORE", "GETBIT", "SETBIT", "BITCOUNT", "BITPOS", "BITFIELD",
        "HGET", "HSET", "HSETNX", "HMSET", "HMGET", "HDEL", "HLEN", "HEXISTS", "HKEYS", "HVALS", "HGETALL", "HINCRBY",
        "HINCRBYFLOAT", "HSTRLEN", "HSCAN", "HRANDFIELD",
        "LPUSH", "RPUSH", "LPUSHX", "RPUSHX", "LPOP", "RPOP", "LLEN", "LRANGE", "LINDEX", "LSET", "LREM", "LTRIM",
        "LINSERT", "LPOS",
        "SADD", "SREM", "SCARD", "SISMEMBER", "SMISMEMBER", "SMEMBERS", "SPOP", "SRANDMEMBER", "SSCAN",
        "ZADD", "ZREM", "ZCARD", "ZSCORE", "ZMSCORE", "ZINCRBY", "ZRANK", "ZREVRANK", "ZRANGE", "ZREVRANGE",
        "ZRANGEBYSCORE", "ZREVRANGEBYSCORE", "ZRANGEBYLEX", "ZREVRANGEBYLEX", "ZCOUNT", "ZLEXCOUNT", "ZREMRANGEBYRANK",
        "ZREMRANGEBYSCORE", "ZREMRANGEBYLEX", "ZPOPMIN", "ZPOPMAX", "ZSCAN", "ZRANDMEMBER",
        "PFADD", "PFCOUNT", "GEOADD", "GEODIST", "GEOHASH", "GEOPOS", "GEOSEARCH", "XADD", "XLEN", "XRANGE",
        "XREVRANGE", "XDEL", "XTRIM",
    ]

    static let table: [String: RedisCommandKind] = {
        var t: [String: RedisCommandKind] = [:]
        for name in single { t[name] = .single(key: 1) }
        t["MGET"] = .multiKey(merge: .values)
        for name in ["DEL", "UNLINK", "EXISTS", "TOUCH"] { t[name] = .multiKey(merge: .sum) }
        t["MSET"] = .keyValuePairs
        for name in ["SINTER", "SUNION", "SDIFF", "PFMERGE", "SINTERCARD"] { t[name] = .sameServer(firstKey: 1, lastKey: nil, step: 1) }
        for name in ["SINTERSTORE", "SUNIONSTORE", "SDIFFSTORE"] { t[name] = .sameServer(firstKey: 1, lastKey: nil, step: 1) }
        for name in ["RPOPLPUSH", "LMOVE", "SMOVE", "RENAME", "RENAMENX", "COPY"] { t[name] = .sameServer(firstKey: 1, lastKey: 2, step: 1) }
        t["MSETNX"] = .sameServer(firstKey: 1, lastKey: nil, step: 2)
        for name in ["EVAL", "EVALSHA"] { t[name] = .script }
        for name in ["PING", "ECHO", "QUIT", "SELECT", "COMMAND", "AUTH", "HELLO", "MULTI", "EXEC", "DISCARD"] { t[name] = .local }
        // Refused, by why: blocking, pub/sub and the rest that a sharding proxy cannot do.
        let refusals: [(names: [String], reason: String)] = [
            (["BLPOP", "BRPOP", "BLMOVE", "BRPOPLPUSH", "BZPOPMIN", "BZPOPMAX", "XREAD", "WAIT"], "blocking commands are"),
            (["SUBSCRIBE", "PSUBSCRIBE", "PUBLISH"], "pub/sub is"),
            (["KEYS", "SCAN", "RANDOMKEY", "DBSIZE"], "{name} across shards is"),
            (["MONITOR", "CONFIG", "FLUSHALL", "FLUSHDB", "SHUTDOWN", "DEBUG", "CLIENT", "CLUSTER", "SCRIPT", "MOVE"], "{name} is"),
            (["WATCH", "UNWATCH"], "WATCH is"),
        ]
        for (names, reason) in refusals {
            for name in names {
                t[name] = .refused(reason.replacing("{name}", with: name) + " not supported through the proxy")
            }
        }
        return t
    }()

    /// The argument indices of a command's keys (nil: the command has too
    /// few arguments for its kind; the caller answers a wrong-arity error).
    public static func keyIndices(_ kind: RedisCommandKind, argumentCount n: Int, numkeys: Int? = nil) -> [Int]? {
        switch kind {
        case .single(let key): return n > key ? [key] : nil
        case .multiKey: return n > 1 ? Array(1..<n) : nil
        case .keyValuePairs: return n > 1 && (n - 1) % 2 == 0 ? Array(stride(from: 1, to: n, by: 2)) : nil
        case .sameServer(let first, let last, let step):
            guard n > first else { return nil }
            let end = last.map { min($0, n - 1) } ?? n - 1
            guard last == nil || end == last else { return nil }
            return Array(stride(from: first, through: end, by: step))
        case .script:
            // numkeys comes from the client: bounded before any arithmetic.
            guard let numkeys, numkeys >= 0, numkeys <= n, n >= 3 + numkeys else { return nil }
            return Array(3..<3 + numkeys)
        case .local, .refused: return []
        }
    }
}
