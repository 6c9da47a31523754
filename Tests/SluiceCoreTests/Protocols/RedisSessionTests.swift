import SluiceCore
import Testing

/// A Redis session over 3 backends, driven by hand.
private struct RedisDriver {
    var session: RedisSession

    init(password: String? = nil, maxInFlight: Int = 4096) {
        var limits = RedisSession.Limits()
        limits.password = password.map { Array($0.utf8) }
        limits.maxInFlight = maxInFlight
        session = RedisSession(limits: limits, shards: RedisShards(.crc16, servers: (0..<3).map { RedisShardServer(name: "s\($0)", weight: 1) }))
    }

    mutating func client(_ text: String) -> [RedisSession.Action] {
        var actions: [RedisSession.Action] = []
        Array(text.utf8).withUnsafeBytes { session.receive($0, into: &actions) }
        return actions
    }

    mutating func on(_ event: RedisSession.Event) -> [RedisSession.Action] {
        var actions: [RedisSession.Action] = []
        session.handle(event, into: &actions)
        return actions
    }
}

private func forwards(_ actions: [RedisSession.Action]) -> [(backend: Int, tag: UInt64, command: String)] {
    actions.compactMap {
        if case .forward(let b, let t, let c) = $0 { return (b, t, String(decoding: c, as: UTF8.self)) }
        return nil
    }
}

private func replies(_ actions: [RedisSession.Action]) -> [String] {
    actions.compactMap { if case .reply(let r) = $0 { return String(decoding: r, as: UTF8.self) } else { return nil } }
}

private func command(_ words: String...) -> String { String(decoding: RESP.array(words.map { Array($0.utf8) }), as: UTF8.self) }

@Suite("Redis session: routing, splitting, merging, order")
struct RedisSessionTests {
    static func slot(_ key: String) -> Int { RedisSlot.of(key.utf8) * 3 / RedisSlot.count }

    @Test("pipelined commands to different backends: replies go out in the clients' order whatever order the backends answer in")
    func order() {
        var d = RedisDriver()
        // Find two keys on different backends.
        let a = "a", b = (0..<100).map { "b\($0)" }.first { Self.slot($0) != Self.slot(a) }!
        let sent = forwards(d.client(command("GET", a) + command("GET", b)))
        #expect(sent.count == 2 && sent[0].backend == Self.slot(a) && sent[1].backend == Self.slot(b))
        #expect(replies(d.on(.reply(tag: sent[1].tag, Array("$1\r\nB\r\n".utf8)))).isEmpty, "the second waits for the first")
        #expect(replies(d.on(.reply(tag: sent[0].tag, Array("$1\r\nA\r\n".utf8)))) == ["$1\r\nA\r\n", "$1\r\nB\r\n"])
    }

    @Test("MGET split per backend and merged in the keys' order; DEL counts summed; MSET answered OK when every part is")
    func splitAndMerge() {
        var d = RedisDriver()
        let keys = (0..<12).map { "k\($0)" }
        let parts = forwards(d.client(command("MGET", keys[0], keys[1], keys[2], keys[3], keys[4], keys[5])))
        #expect(parts.count == Set(keys.prefix(6).map(Self.slot)).count && parts.count > 1)
        var out: [RedisSession.Action] = []
        for part in parts.reversed() {
            let asked = part.command.components(separatedBy: "\r\n").enumerated().filter { $0.offset >= 4 && $0.offset % 2 == 0 }.map(\.element)
            out += d.on(.reply(tag: part.tag, RESP.array(asked.map { Array("v-\($0)".utf8) })))
        }
        #expect(replies(out) == ["*6\r\n" + keys.prefix(6).map { "$\("v-\($0)".utf8.count)\r\nv-\($0)\r\n" }.joined()])
        let dels = forwards(d.client(command("DEL", keys[6], keys[7], keys[8], keys[9])))
        out = dels.flatMap { d.on(.reply(tag: $0.tag, RESP.integer(2))) }
        #expect(replies(out) == [":\(2 * dels.count)\r\n"])
        let sets = forwards(d.client(command("MSET", keys[10], "1", keys[11], "2", keys[0], "3")))
        out = sets.flatMap { d.on(.reply(tag: $0.tag, RESP.simple("OK"))) }
        #expect(replies(out) == ["+OK\r\n"])
    }

    @Test("a part's error or a failed backend becomes the command's reply; other commands are unaffected")
    func failures() {
        var d = RedisDriver()
        let sent = forwards(d.client(command("GET", "x") + command("PING")))
        let out = d.on(.failed(tag: sent[0].tag, reason: "connect: refused"))
        #expect(replies(out) == ["-ERR backend unavailable: connect: refused\r\n", "+PONG\r\n"])
        #expect(d.session.errors == 1 && d.session.commands == 2)
    }

    @Test("local answers, refusals, arity errors, CROSSSLOT, AUTH; QUIT closes after its +OK")
    func local() {
        var d = RedisDriver(password: "pw")
        #expect(replies(d.client(command("GET", "a"))) == ["-NOAUTH Authentication required.\r\n"])
        #expect(replies(d.client(command("AUTH", "pw") + command("ECHO", "e") + command("SELECT", "1"))) ==
                ["+OK\r\n", "$1\r\ne\r\n", "-ERR only database 0 exists through the proxy\r\n"])
        #expect(replies(d.client(command("GET"))).first?.hasPrefix("-ERR wrong number of arguments") == true)
        #expect(replies(d.client(command("SUBSCRIBE", "c"))).first?.contains("pub/sub") == true)
        let far = (0..<100).map { "z\($0)" }.first { Self.slot($0) != Self.slot("a") }!
        #expect(replies(d.client(command("RENAME", "a", far))).first?.hasPrefix("-CROSSSLOT") == true)
        #expect(forwards(d.client(command("RENAME", "{t}a", "{t}b"))).count == 1, "tagged keys share a server")
        var hostile = RedisDriver()
        #expect(replies(hostile.client(command("EVAL", "return 1", "9223372036854775807", "k"))).first?.hasPrefix("-ERR wrong number") == true,
                "a numkeys near Int.max: an arity error, not an overflow trap")
        var q = RedisDriver()
        let out = q.client(command("QUIT") + command("PING"))
        #expect(replies(out) == ["+OK\r\n"] && out.last == .close(.clientClosed))
    }

    @Test("HELLO: 3 switches to RESP3 (a map back), 2 or none answers an array; other versions NOPROTO; AUTH inside HELLO")
    func hello() {
        var d = RedisDriver()
        let three = replies(d.client(command("HELLO", "3")))
        #expect(three.count == 1 && three[0].hasPrefix("%7\r\n$6\r\nserver\r\n$6\r\nsluice\r\n") && three[0].contains("$5\r\nproto\r\n:3\r\n"), "\(three)")
        #expect(d.session.protocolVersion == 3)
        #expect(replies(d.client(command("HELLO", "2"))).first?.hasPrefix("*14\r\n") == true && d.session.protocolVersion == 2)
        #expect(replies(d.client(command("HELLO", "4"))) == ["-NOPROTO unsupported protocol version\r\n"] && d.session.protocolVersion == 2)
        #expect(replies(d.client(command("HELLO", "x"))).first?.hasPrefix("-ERR Protocol version") == true)
        var locked = RedisDriver(password: "pw")
        #expect(replies(locked.client(command("HELLO", "3"))).first?.hasPrefix("-NOAUTH") == true && locked.session.protocolVersion == 2)
        #expect(replies(locked.client(command("HELLO", "3", "AUTH", "default", "no"))).first?.hasPrefix("-WRONGPASS") == true)
        #expect(replies(locked.client(command("HELLO", "3", "AUTH", "default", "pw", "SETNAME", "app"))).first?.hasPrefix("%7") == true)
        #expect(locked.session.protocolVersion == 3 && forwards(locked.client(command("GET", "a"))).count == 1, "authenticated by HELLO")
    }

    @Test("at maxInFlight the session stops asking for reads, and takes the rest once replies make room")
    func backpressure() {
        var d = RedisDriver(maxInFlight: 2)
        let out = d.client(command("GET", "a") + command("GET", "b") + command("GET", "c"))
        let sent = forwards(out)
        #expect(sent.count == 2 && !out.contains(.read) && d.session.inFlight == 2)
        let more = d.on(.reply(tag: sent[0].tag, Array("$-1\r\n".utf8)))
        #expect(forwards(more).count == 1 && replies(more) == ["$-1\r\n"])
    }

    @Test("MULTI/EXEC on one server: QUEUED locally, then MULTI, the commands and EXEC back to back to it, EXEC's reply alone back")
    func transactions() {
        var d = RedisDriver()
        let queued = d.client(command("MULTI") + command("SET", "{t}a", "1") + command("INCR", "{t}b"))
        #expect(replies(queued) == ["+OK\r\n", "+QUEUED\r\n", "+QUEUED\r\n"] && forwards(queued).isEmpty)
        let sent = forwards(d.client(command("EXEC")))
        #expect(sent.map(\.command) == [command("MULTI"), command("SET", "{t}a", "1"), command("INCR", "{t}b"), command("EXEC")])
        #expect(Set(sent.map(\.backend)).count == 1 && sent.map(\.tag) == Array(sent[0].tag...sent[0].tag + 3))
        var out: [RedisSession.Action] = []
        for (part, reply) in zip(sent, ["+OK\r\n", "+QUEUED\r\n", "+QUEUED\r\n", "*2\r\n+OK\r\n:1\r\n"]) {
            out += d.on(.reply(tag: part.tag, Array(reply.utf8)))
        }
        #expect(replies(out) == ["*2\r\n+OK\r\n:1\r\n"])
        // Keys on two servers, or a refused command: EXECABORT, nothing sent.
        let far = (0..<100).map { "z\($0)" }.first { Self.slot($0) != Self.slot("a") }!
        let aborted = d.client(command("MULTI") + command("SET", "a", "1") + command("SET", far, "2") + command("EXEC"))
        #expect(replies(aborted).last == "-EXECABORT Transaction discarded because of previous errors.\r\n" && forwards(aborted).isEmpty)
        #expect(replies(d.client(command("EXEC") + command("DISCARD"))) == ["-ERR EXEC without MULTI\r\n", "-ERR DISCARD without MULTI\r\n"])
        #expect(replies(d.client(command("MULTI") + command("DISCARD") + command("PING"))) == ["+OK\r\n", "+OK\r\n", "+PONG\r\n"])
    }

    @Test("a protocol error answers what came before it, then says why and closes")
    func protocolError() {
        var d = RedisDriver()
        let out = d.client(command("PING") + "*1\r\n$-3\r\n")
        #expect(replies(out) == ["+PONG\r\n", "-ERR Protocol error: malformed argument length\r\n"] && out.last == .close(.clientClosed))
    }
}
