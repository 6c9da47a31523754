import Foundation
import Glibc
import SluiceTestSupport
import Testing

@Suite("mode: redis key placement: ketama as twemproxy lays it, and placement that follows health", .serialized)
struct RedisShardingEndToEndTests {
    @Test("keys written through twemproxy (distribution ketama, hash md5, hash_tag {}) are found through Sluice (the pool's redis.hash: ketama)")
    func twemproxyCompatible() throws {
        let servers = try (0..<3).map { _ in try RedisServer() }
        let twemproxyPort = freePort(), port = freePort()
        let conf = NSTemporaryDirectory() + "sluice-nutcracker-\(twemproxyPort).yml"
        try """
        pool:
          listen: 127.0.0.1:\(twemproxyPort)
          hash: md5
          hash_tag: "{}"
          distribution: ketama
          redis: true
          servers:
        \(servers.map { "    - \($0.address):1" }.joined(separator: "\n"))
        """.write(toFile: conf, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: conf) }
        let twemproxy = try Child("/usr/sbin/nutcracker", ["-c", conf, "-s", "\(freePort())", "-a", "127.0.0.1"])
        defer { kill(twemproxy.processIdentifier, SIGKILL); twemproxy.waitUntilExit() }
        try waitForPort(twemproxyPort)
        let keys = (0..<300).map { "user:\($0)" } + (0..<20).map { "{group:\($0 % 4)}.member:\($0)" }
        for chunk in stride(from: 0, to: keys.count, by: 50) {
            let part = keys[chunk..<min(chunk + 50, keys.count)]
            #expect(try redisCLI(twemproxyPort, ["MSET"] + part.flatMap { [$0, "v-\($0)"] }) == "OK")
        }
        let counts = try servers.map { Int(try redisCLI($0.port, ["DBSIZE"])) ?? -1 }
        #expect(counts.allSatisfy { $0 > 50 } && counts.reduce(0, +) == keys.count, "twemproxy spread them: \(counts)")
        let sluice = try SluiceProcess.run(config: redisConfig(port: port, servers: servers, pool: "\n    redis: { hash: ketama }"))
        for key in keys {
            // One GET per key: each goes to the one server Sluice places it on.
            let fd = try connectTCP("127.0.0.1", port)
            #expect(sendAll(fd, Array("GET \(key)\r\nQUIT\r\n".utf8)))
            let reply = String(decoding: readToEnd(fd).bytes, as: UTF8.self)
            close(fd)
            #expect(reply == "$\(key.utf8.count + 2)\r\nv-\(key)\r\n+OK\r\n", "\(key): \(reply.debugDescription)")
        }
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("redis-py 8 as it comes (RESP3 by HELLO 3): strings, MSET/MGET over 3 servers, a hash as a dict, counts, a pipeline")
    func resp3Client() throws {
        let servers = try (0..<3).map { _ in try RedisServer() }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: redisConfig(port: port, servers: servers))
        let script = """
            import redis, sys
            r = redis.Redis(port=int(sys.argv[1]), socket_timeout=5)
            assert r.set('a', '1') and r.get('a') == b'1'
            r.mset({'k%d' % i: i for i in range(30)})
            assert r.mget(['k%d' % i for i in range(30)] + ['none']) == [str(i).encode() for i in range(30)] + [None]
            r.hset('h', mapping={'x': 1, 'y': 2})
            assert r.hgetall('h') == {b'x': b'1', b'y': b'2'}, r.hgetall('h')
            assert r.incr('n') == 1 and r.delete('a', 'k1', 'k2', 'none') == 3 and r.exists('k3', 'k4') == 2
            p = r.pipeline(transaction=False)
            for i in range(200): p.set('p%d' % i, i)
            assert all(p.execute())
            c = r.connection_pool.get_connection()
            print('proto', c.handshake_metadata.get(b'proto', c.handshake_metadata.get('proto')))
            """
        let (status, out) = try runCommand("/usr/bin/env", ["python3", "-c", script, "\(port)"])
        #expect(status == 0 && out.contains("proto 3"), "\(out)")
        let counts = try servers.map { Int(try redisCLI($0.port, ["DBSIZE"])) ?? -1 }
        #expect(counts.allSatisfy { $0 > 40 }, "spread over the servers: \(counts)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("a server checked down: its keys go to the others (GET nil, SET lands there), the others' keys stay; checked up again: its keys come back", arguments: ["crc16", "ketama"])
    func followsHealth(hash: String) throws {
        var servers = try (0..<3).map { _ in try RedisServer() }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: redisConfig(
            port: port, servers: servers,
            pool: "\n    redis: { hash: \(hash) }\n    health_check: { kind: redis, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }"))
        let keys = (0..<90).map { "k\($0)" }
        #expect(try redisCLI(port, ["MSET"] + keys.flatMap { [$0, "v"] }) == "OK")
        let home = try servers.map { Set(try redisCLI($0.port, ["KEYS", "*"]).split(separator: "\n").map(String.init)) }
        #expect(home.allSatisfy { !$0.isEmpty } && home.map(\.count).reduce(0, +) == keys.count, "\(home.map(\.count))")
        let deadPort = servers[1].port
        servers[1].kill()
        try sluice.waitForLog("redis keys placed anew")
        usleep(300_000) // worker 0 logs it; the other one follows within its 100 ms
        // A key of the dead server is now another's (not there yet: nil); a survivor's key is where it was.
        let moved = try #require(home[1].first), stayed = try #require(home[0].first)
        #expect(try redisCLI(port, ["GET", moved]) == "", "nil from its new server")
        #expect(try redisCLI(port, ["GET", stayed]) == "v")
        #expect(try redisCLI(port, ["SET", moved, "w"]) == "OK" && redisCLI(port, ["GET", moved]) == "w")
        #expect(try redisCLI(servers[0].port, ["EXISTS", moved]) == "1" || redisCLI(servers[2].port, ["EXISTS", moved]) == "1")
        #expect(try redisCLI(port, ["EXISTS"] + home[1].sorted()) == "1", "no command fails; only the key set since is there")
        // Back up (an empty server on the same port): its keys go to it again.
        servers[1] = try RedisServer(port: deadPort)
        try waitUntil(5, "placement back") { (try? redisCLI(port, ["GET", moved])) == "" }
        usleep(300_000) // each worker looks every 100 ms: the other one follows within that
        #expect(try redisCLI(port, ["SET", moved, "x"]) == "OK" && redisCLI(servers[1].port, ["GET", moved]) == "x")
        #expect(try redisCLI(port, ["GET", stayed]) == "v")
        let notes = sluice.log.split(separator: "\n").filter { $0.contains("redis keys placed anew") }
        #expect(notes.count == 2 && notes[0].contains("2 of 3") && notes[1].contains("3 of 3"), "\(notes)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }
}
