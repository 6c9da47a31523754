import Foundation
import Glibc
import SluiceTestSupport
import Testing

let redisPeerScript = packageRoot.appendingPathComponent("Tests/SluiceEndToEndTests/Scripts/redispeer.py").path

/// A `redis-server` on loopback, no persistence, stopped with the value.
final class RedisServer {
    let port: UInt16
    let process: Child

    init(port: UInt16 = freePort()) throws {
        self.port = port
        process = try Child("/usr/bin/redis-server", ["--port", "\(port)", "--bind", "127.0.0.1", "--save", "",
                                                      "--appendonly", "no", "--protected-mode", "no"])
        try waitForPort(port)
    }

    var address: String { "127.0.0.1:\(port)" }

    func kill() {
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    deinit { if process.isRunning { kill() } }
}

/// redis-cli against `port`, one command per call; its output, trimmed.
func redisCLI(_ port: UInt16, _ arguments: [String]) throws -> String {
    let (_, out) = try runCommand("/usr/bin/redis-cli", ["-p", "\(port)"] + arguments)
    return out.trimmingCharacters(in: .whitespacesAndNewlines)
}

func redisConfig(port: UInt16, servers: [RedisServer], extra: String = "", admin: String = "admin: off", pool: String = "") -> String {
    """
    instance: e2e\(port)
    workers: 2
    log: { level: info, access: text, file: stderr }
    \(admin)
    listeners:
      - { name: cache, bind: "127.0.0.1:\(port)", pool: redis, mode: redis\(extra) }
    pools:
      - name: redis\(pool)
        backends: [ \(servers.map { "{ address: \"\($0.address)\" }" }.joined(separator: ", ")) ]
    """
}

@Suite("mode: redis with real redis-server instances", .serialized)
struct RedisEndToEndTests {
    @Test("commands through the proxy: keys spread over 3 servers, MSET/MGET/DEL split and merged, hash tags, CROSSSLOT, local and refused commands")
    func families() throws {
        let servers = try (0..<3).map { _ in try RedisServer() }
        let port = freePort(), metricsPort = freePort()
        let sluice = try SluiceProcess.run(config: redisConfig(port: port, servers: servers,
                                                               admin: "admin: { metrics: \"127.0.0.1:\(metricsPort)\" }"))
        #expect(try redisCLI(port, ["PING"]) == "PONG" && redisCLI(port, ["ECHO", "hi"]) == "hi")
        #expect(try redisCLI(port, ["SET", "foo", "bar"]) == "OK" && redisCLI(port, ["GET", "foo"]) == "bar")
        let keys = (0..<30).map { "key:\($0)" }
        #expect(try redisCLI(port, ["MSET"] + keys.flatMap { [$0, "v-\($0)"] }) == "OK")
        let values = try redisCLI(port, ["MGET"] + keys).split(separator: "\n").map(String.init)
        #expect(values == keys.map { "v-\($0)" }, "in the keys' order")
        #expect(try redisCLI(port, ["MGET", "key:0", "missing", "key:1"]) == "v-key:0\n\nv-key:1", "a nil where a key is missing")
        let counts = try servers.map { Int(try redisCLI($0.port, ["DBSIZE"])) ?? -1 }
        #expect(counts.allSatisfy { $0 > 0 } && counts.reduce(0, +) == 31, "every server holds some: \(counts)")
        #expect(try redisCLI(port, ["EXISTS"] + keys) == "30" && redisCLI(port, ["DEL"] + keys.prefix(10)) == "10")
        // Tagged keys share a server: commands that need that work on them.
        #expect(try redisCLI(port, ["SADD", "{u1}.a", "x", "y"]) == "2" && redisCLI(port, ["SADD", "{u1}.b", "y"]) == "1")
        #expect(try redisCLI(port, ["SINTER", "{u1}.a", "{u1}.b"]) == "y")
        let cross = try redisCLI(port, ["SINTER", "key:10", "key:11", "key:12", "key:13", "key:14", "foo"])
        #expect(cross.hasPrefix("CROSSSLOT"), "\(cross)")
        #expect(try redisCLI(port, ["BLPOP", "q", "1"]).contains("blocking commands are not supported"))
        #expect(try redisCLI(port, ["FLUSHALL"]).contains("not supported"))
        #expect(try redisCLI(port, ["SELECT", "0"]) == "OK")
        // A transaction on tagged keys runs on their server, atomically.
        let tx = try connectTCP("127.0.0.1", port)
        #expect(sendAll(tx, Array("MULTI\r\nSET {u2}.n 41\r\nINCR {u2}.n\r\nEXEC\r\nQUIT\r\n".utf8)))
        let txReplies = String(decoding: readToEnd(tx).bytes, as: UTF8.self)
        close(tx)
        #expect(txReplies == "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n:42\r\n+OK\r\n", "\(txReplies.debugDescription)")
        // One connection: a refusal leaves it open for the next command.
        let fd = try connectTCP("127.0.0.1", port)
        #expect(sendAll(fd, Array("KEYS *\r\nGET foo\r\nQUIT\r\n".utf8)))
        let replies = String(decoding: readToEnd(fd).bytes, as: UTF8.self)
        close(fd)
        #expect(replies.hasPrefix("-ERR KEYS across shards") && replies.hasSuffix("$3\r\nbar\r\n+OK\r\n"), "\(replies.debugDescription)")
        let (_, metrics) = try curl(["http://127.0.0.1:\(metricsPort)/metrics"])
        func sample(_ name: String, _ labels: String...) -> Double? {
            metrics.split(separator: "\n").first { line in line.hasPrefix(name + "{") && labels.allSatisfy { line.contains($0) } }
                .flatMap { Double($0.split(separator: " ").last ?? "") }
        }
        #expect(sample("sluice_redis_commands_total", "family=\"multi_key\"") == 5, "MSET, 2 MGET, EXISTS, DEL: \(metrics)")
        #expect(sample("sluice_redis_commands_total", "family=\"refused\"") == 3, "BLPOP, FLUSHALL, KEYS")
        let perBackend = servers.compactMap { sample("sluice_redis_backend_commands_total", "backend=\"\($0.address)\"") }
        #expect(perBackend.count == 3 && perBackend.allSatisfy { $0 > 0 }, "\(perBackend)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
        #expect(sluice.log.contains("path=redis reason=client_closed commands=3 errors=1"), "\(sluice.log)")
    }

    @Test("a pipeline of 10,000 commands (redis-cli --pipe), and 200 concurrent redis-py clients with checksummed values")
    func pipelinesAndClients() throws {
        let servers = try (0..<3).map { _ in try RedisServer() }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: redisConfig(port: port, servers: servers)
            .replacingOccurrences(of: "access: text", with: "access: off"))
        let input = (0..<10_000).map { "SET pipe:\($0) \($0)\r\n" }.joined()
        let file = NSTemporaryDirectory() + "sluice-pipe-\(port).txt"
        try input.write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let (_, piped) = try runCommand("/bin/sh", ["-c", "redis-cli -p \(port) --pipe < \(file)"])
        #expect(piped.contains("errors: 0, replies: 10000"), "\(piped)")
        let (_, out) = try runCommand("/usr/bin/env", ["python3", redisPeerScript, "load", "\(port)", "200", "20"])
        let result = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any], "\(out)")
        #expect(result["ok"] as? Int == 200 && result["bad"] as? Int == 0 && result["failed"] as? Int == 0, "\(result)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("a backend killed mid-pipeline: its commands get -ERR at once, the other shards keep serving; malformed RESP gets an error and a close, no crash")
    func failures() throws {
        let servers = try (0..<3).map { _ in try RedisServer() }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: redisConfig(
            port: port, servers: servers, admin: "admin: { metrics: off }",
            pool: "\n    health_check: { kind: redis, interval: 200ms, timeout: 150ms, rise: 1, fall: 2 }"))
        let keys = (0..<60).map { "k\($0)" }
        #expect(try redisCLI(port, ["MSET"] + keys.flatMap { [$0, "v"] }) == "OK")
        servers[1].kill()
        let started = Date()
        let fd = try connectTCP("127.0.0.1", port)
        #expect(sendAll(fd, Array(keys.map { "GET \($0)\r\n" }.joined().utf8) + Array("QUIT\r\n".utf8)))
        let replies = String(decoding: readToEnd(fd).bytes, as: UTF8.self)
        close(fd)
        #expect(Date().timeIntervalSince(started) < 3, "no hang on the dead shard")
        let errors = replies.components(separatedBy: "-ERR backend unavailable").count - 1
        let values = replies.components(separatedBy: "$1\r\nv\r\n").count - 1
        #expect(errors > 0 && values > 0 && errors + values == 60, "\(errors) errors, \(values) values")
        for bad in ["*1\r\n$-5\r\n", "*1\r\n$999999999999\r\n", "*1\r\n$3\r\nGET\n\r\n", String(repeating: "*1\r\n", count: 3) + "$4\r\nPING\r\n"] {
            let fd = try connectTCP("127.0.0.1", port)
            _ = sendAll(fd, Array(bad.utf8))
            let answer = String(decoding: readToEnd(fd).bytes, as: UTF8.self)
            close(fd)
            #expect(answer.hasPrefix("-ERR Protocol error"), "\(bad.debugDescription): \(answer.debugDescription)")
        }
        #expect(try redisCLI(port, ["PING"]) == "PONG", "still serving")
        // The PING health check sees the dead one go, and only that one.
        try waitUntil(5, "the killed server checked down") {
            let states = ((try? statusJSON("e2e\(port)")["backends"] as? [[String: Any]]) ?? []).map { $0["state"] as? String ?? "" }
            return states.count == 3 && states[1] != "up" && states[0] == "up" && states[2] == "up"
        }
        try sluice.waitForLog("backend down")
        usleep(500_000) // a few more rounds of checks
        let downs = sluice.log.split(separator: "\n").filter { $0.contains("backend down") }
        #expect(downs.count == 1 && downs[0].contains(servers[1].address) && downs[0].contains("check=redis"), "\(downs)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("a backend that accepts and never answers: its commands get -ERR after reply_timeout, the other shard serves meanwhile")
    func silentBackend() throws {
        let real = try RedisServer()
        let silent = try TestServer { fd in
            var sink = [UInt8](repeating: 0, count: 4096)
            while recv(fd, &sink, sink.count, 0) > 0 {}
        }
        let port = freePort()
        let yaml = redisConfig(port: port, servers: [real], extra: ", redis: { reply_timeout: 300ms }")
            .replacingOccurrences(of: "{ address: \"\(real.address)\" } ]", with: "{ address: \"\(real.address)\" }, { address: \"\(silent.address)\" } ]")
        let sluice = try SluiceProcess.run(config: yaml)
        // Slots below 8192 are the first backend's: foo{hash_tag} is 2515, foo 12182.
        let started = Date()
        let stuck = try redisCLI(port, ["GET", "foo"])
        let waited = Date().timeIntervalSince(started)
        #expect(stuck.contains("backend unavailable: no reply within 300 ms") && waited >= 0.25 && waited < 2, "\(waited) s: \(stuck)")
        #expect(try redisCLI(port, ["SET", "foo{hash_tag}", "1"]) == "OK", "the live shard serves")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
        silent.stop()
    }

    @Test("AUTH against redis.password: NOAUTH before it, WRONGPASS for a bad one")
    func auth() throws {
        let servers = [try RedisServer()]
        let port = freePort()
        let sluice = try SluiceProcess.run(config: redisConfig(port: port, servers: servers, extra: ", redis: { password: s3cret }"))
        #expect(try redisCLI(port, ["GET", "a"]).hasPrefix("NOAUTH"))
        let fd = try connectTCP("127.0.0.1", port)
        #expect(sendAll(fd, Array("AUTH nope\r\nAUTH s3cret\r\nSET a 1\r\nGET a\r\nQUIT\r\n".utf8)))
        let replies = String(decoding: readToEnd(fd).bytes, as: UTF8.self)
        close(fd)
        #expect(replies == "-WRONGPASS invalid username-password pair\r\n+OK\r\n+OK\r\n$1\r\n1\r\n+OK\r\n", "\(replies.debugDescription)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }
}
