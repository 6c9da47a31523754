import SluiceCore
import Testing

private func scan(_ bytes: [UInt8], _ limits: RESPLimits = RESPLimits()) -> RESPScan {
    bytes.withUnsafeBytes { RESP.scan($0, limits: limits) }
}

private func command(_ bytes: [UInt8]) -> RESPCommandParse {
    bytes.withUnsafeBytes { RESP.command($0) }
}

private func words(_ bytes: [UInt8]) -> [String]? {
    guard case .complete(let c) = command(bytes) else { return nil }
    return c.arguments.map { String(decoding: bytes[$0], as: UTF8.self) }
}

@Suite("RESP: values measured, commands parsed, bounds held")
struct RESPTests {
    static let replies: [String] = [
        "+OK\r\n", "-ERR wrong\r\n", ":-42\r\n", "$5\r\nhello\r\n", "$0\r\n\r\n", "$-1\r\n", "*-1\r\n", "*0\r\n",
        "*3\r\n$3\r\nfoo\r\n$-1\r\n:7\r\n", "*2\r\n*2\r\n+a\r\n*1\r\n:1\r\n$2\r\nhi\r\n",
        // RESP3, from backend connections that said HELLO 3.
        "_\r\n", "#t\r\n", "#f\r\n", ",3.14\r\n", ",-inf\r\n", "(3492890328409238509324850943850943825024385\r\n", "(-1\r\n",
        "!21\r\nSYNTAX invalid syntax\r\n", "=15\r\ntxt:Some string\r\n", "%2\r\n+first\r\n:1\r\n+second\r\n_\r\n",
        "~2\r\n+a\r\n#f\r\n", ">2\r\n+message\r\n$2\r\nhi\r\n", "|1\r\n+ttl\r\n:3600\r\n$5\r\nvalue\r\n",
        "*2\r\n%1\r\n+k\r\n~1\r\n,1.5\r\n%0\r\n", "%0\r\n", "~0\r\n",
    ]

    @Test("every type measured whole, with bytes after it left alone; incomplete at every shorter prefix and random split")
    func scanning() {
        for reply in Self.replies {
            let bytes = Array(reply.utf8)
            #expect(scan(bytes + Array("+NEXT\r\n".utf8)) == .complete(length: bytes.count), "\(reply)")
            for n in 0..<bytes.count { #expect(scan(Array(bytes[0..<n])) == .incomplete, "\(reply) cut at \(n)") }
        }
        var rng = SystemRandomNumberGenerator()
        let pipeline = Self.replies.flatMap { Array($0.utf8) }
        for _ in 0..<100 {
            // Consumed value by value from a random prefix, the pieces are exactly the replies.
            let cut = Int.random(in: 0...pipeline.count, using: &rng)
            var offset = 0, seen = 0
            while case .complete(let length) = scan(Array(pipeline[offset..<cut])) { offset += length; seen += 1 }
            #expect(offset == Self.replies.prefix(seen).reduce(0) { $0 + $1.utf8.count })
        }
    }

    @Test("hostile replies: negative lengths, a huge bulk, deep arrays, bare LF or CR, an unknown type: invalid, never a trap",
          arguments: [
              ("$-2\r\n", "bulk length"), ("*-5\r\n", "array length"), ("$9999999999\r\n", "longer than"),
              (String(repeating: "*1\r\n", count: 40) + ":1\r\n", "deeper"), ("+OK\n", "LF without CR"), ("+O\rK\r\n", "CR without LF"),
              ("@3\r\nabc\r\n", "unknown type"), ("$3\r\nabcd\r\n", "CRLF"), ("_x\r\n", "null"), ("#y\r\n", "boolean"),
              ("(12x\r\n", "big number"), ("!-1\r\n", "bulk length"), ("%-1\r\n", "array length"), ("~-1\r\n", "array length"), (":12a\r\n", "integer"), ("*99999999\r\n", "longer than"),
          ])
    func hostile(text: String, reason: String) {
        guard case .invalid(let why) = scan(Array(text.utf8)) else {
            Issue.record("accepted \(text.debugDescription)")
            return
        }
        #expect(why.contains(reason), "\(why)")
    }

    @Test("commands as arrays of bulk strings and inline; arguments are ranges of the buffer")
    func commands() {
        #expect(words(Array("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nva\r\nl\r\n".utf8)) == ["SET", "k", "va\r\nl"])
        #expect(words(Array("PING\r\n".utf8)) == ["PING"] && words(Array("set  a\t b\n".utf8)) == ["set", "a", "b"])
        #expect(words(Array("\r\n".utf8)) == [], "an empty line is a command of no words, which Redis skips")
        let bytes = Array("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n".utf8)
        guard case .complete(let first) = command(bytes) else { Issue.record("no command"); return }
        #expect(first.length == 20 && !first.inline)
        for n in 0..<20 { #expect(command(Array(bytes[0..<n])) == .incomplete, "cut at \(n)") }
        for (text, reason) in [("*0\r\n", "non-empty"), ("*1\r\n:1\r\n", "bulk strings"), ("*1\r\n$-1\r\n", "argument length"),
                               ("*1\r\n$2\r\nabc\r\n", "CRLF"), ("*1\r\n$9999999999\r\n", "longer than")] {
            guard case .invalid(let why) = command(Array(text.utf8)) else { Issue.record("accepted \(text.debugDescription)"); continue }
            #expect(why.contains(reason), "\(text.debugDescription): \(why)")
        }
    }

    @Test("what the writers produce scans back whole")
    func writers() {
        let values = [RESP.simple("OK"), RESP.error("ERR x"), RESP.integer(-3), RESP.bulk(nil), RESP.bulk([0, 13, 10]),
                      RESP.array([Array("MGET".utf8), Array("a".utf8)])]
        for v in values { #expect(scan(v) == .complete(length: v.count)) }
        #expect(words(RESP.array([Array("GET".utf8), Array("k".utf8)])) == ["GET", "k"])
    }

    @Test("key slots as Redis Cluster computes them: CRC16-XMODEM, hash tags")
    func slots() {
        #expect(RedisSlot.crc16(Array("123456789".utf8)[...]) == 0x31C3)
        #expect(RedisSlot.of("foo".utf8) == 12_182 && RedisSlot.of("somekey".utf8) == 11_058)
        #expect(RedisSlot.of("foo{hash_tag}".utf8) == 2515 && RedisSlot.of("bar{hash_tag}".utf8) == 2515)
        #expect(RedisSlot.of("{user1000}.following".utf8) == RedisSlot.of("{user1000}.followers".utf8))
        #expect(RedisSlot.of("foo{}{bar}".utf8) == RedisSlot.of("foo{}{bar}".utf8) && RedisSlot.of("foo{}{bar}".utf8) != RedisSlot.of("bar".utf8),
                "an empty tag hashes the whole key")
        #expect(RedisSlot.of("foo{{bar}}zap".utf8) == RedisSlot.of("{bar".utf8), "the tag ends at the first } after the first {")
    }

    @Test("command kinds and their keys: single, split and merged, same-server, scripts, local, refused")
    func kinds() {
        #expect(RedisCommands.kind("get".utf8) == .single(key: 1))
        #expect(RedisCommands.kind("MGET".utf8) == .multiKey(merge: .values) && RedisCommands.kind("del".utf8) == .multiKey(merge: .sum))
        #expect(RedisCommands.keyIndices(.keyValuePairs, argumentCount: 5) == [1, 3])
        #expect(RedisCommands.keyIndices(.keyValuePairs, argumentCount: 4) == nil, "MSET with a key and no value")
        #expect(RedisCommands.keyIndices(RedisCommands.kind("RPOPLPUSH".utf8), argumentCount: 3) == [1, 2])
        #expect(RedisCommands.keyIndices(.script, argumentCount: 6, numkeys: 2) == [3, 4])
        #expect(RedisCommands.keyIndices(.script, argumentCount: 4, numkeys: 2) == nil)
        #expect(RedisCommands.keyIndices(.script, argumentCount: 4, numkeys: Int.max) == nil, "a hostile numkeys: refused, no overflow")
        #expect(RedisCommands.keyIndices(.script, argumentCount: 4, numkeys: -1) == nil)
        #expect(RedisCommands.kind("PING".utf8) == .local)
        guard case .refused(let why) = RedisCommands.kind("blpop".utf8) else { Issue.record("BLPOP passed"); return }
        #expect(why.contains("blocking"))
        guard case .refused(let unknown) = RedisCommands.kind("FROB".utf8) else { Issue.record("FROB passed"); return }
        #expect(unknown.contains("'FROB'"))
    }
}
