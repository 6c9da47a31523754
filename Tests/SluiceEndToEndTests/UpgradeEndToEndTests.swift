import Foundation
import Glibc
import SluiceTestSupport
import Testing

private struct UpgradePorts {
    let web = freePort(), tcp = freePort(), streams = freePort(), ws = freePort()
    var instance: String { "e2e\(web)" }
}

private func upgradeConfig(_ ports: UpgradePorts, app: [String], echoes: [String], ws: UInt16) -> String {
    """
    instance: \(ports.instance)
    workers: 2
    steering: least_loaded
    data_path: auto
    sockmap_after_turns: 4
    drain_timeout: 30s
    stall_threshold: 2s
    log: { level: info, access: text, file: stderr }
    admin: { metrics: off }
    listeners:
      - { name: web, bind: "127.0.0.1:\(ports.web)", pool: app, mode: http }
      - { name: tcp, bind: "127.0.0.1:\(ports.tcp)", pool: app }
      - { name: streams, bind: "127.0.0.1:\(ports.streams)", pool: echo }
      - { name: ws, bind: "127.0.0.1:\(ports.ws)", pool: websocket, mode: http, http: { tunnel_idle_timeout: 60s } }
    pools:
      - { name: app, backends: [ \(app.map { "{ address: \"\($0)\" }" }.joined(separator: ", ")) ] }
      - { name: echo, backends: [ \(echoes.map { "{ address: \"\($0)\" }" }.joined(separator: ", ")) ] }
      - { name: websocket, backends: [ { address: "127.0.0.1:\(ws)" } ] }
    """
}

/// The pid in the instance's info file.
func daemonPID(_ instance: String) -> Int32? {
    guard let data = FileManager.default.contents(atPath: "/run/sluice/\(instance).json"),
          let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return nil }
    return (object["pid"] as? Int).map(Int32.init)
}

/// Stops whichever process serves the instance now (the test's child is gone after an upgrade).
func stopDaemon(_ instance: String) throws {
    guard let pid = daemonPID(instance) else { return }
    kill(pid, SIGTERM)
    try waitUntil(20, "pid \(pid) to exit") { kill(pid, 0) != 0 }
}

@Suite("Binary upgrade: listeners and live connections handed to the new process", .serialized)
struct UpgradeEndToEndTests {
    @Test("five upgrades under wrk, 200 streams (sockmap, splice, copy), 50 WebSocket tunnels and idle keep-alive clients: nothing fails")
    func fiveUpgradesUnderLoad() throws {
        guard requireRoot() else { return }
        let backends = try ["a", "b"].map { try startHTTPBackend($0) }
        let echoes = [try TestServer.echo(), try TestServer.echo()]
        let (wsBackend, wsPort) = try startWebSocketBackend()
        defer { _ = wsBackend }
        let ports = UpgradePorts()
        let sluice = try SluiceProcess.run(config: upgradeConfig(ports, app: backends.map(\.address), echoes: echoes.map(\.address), ws: wsPort))
        defer { try? stopDaemon(ports.instance) }
        let firstPID = sluice.process.processIdentifier

        // A third each: small turns (moved into the SOCKHASH), bulk (splice(2)), mid-sized (read/write).
        let shapes: [(chunk: Int, pause: UInt32)] = [(4096, 100_000), (128 * 1024, 100_000), (20_000, 100_000)]
        let streams = (0..<200).map { k in EchoStream(port: ports.streams, seed: UInt64(k), chunk: shapes[k % 3].chunk,
                                                      pauseMicroseconds: shapes[k % 3].pause) }
        let idle = try (0..<10).map { _ in try connectTCP("127.0.0.1", ports.web) }
        defer { for fd in idle { close(fd) } }
        for fd in idle { #expect(["a", "b"].contains(httpExchange(fd, "/name") ?? "-")) }
        let outputs = Locked<[String]>([])
        let loads = [
            ["-t1", "-c4", "-d12s", "http://127.0.0.1:\(ports.web)/bytes/100"],
            ["-t1", "-c4", "-d12s", "-H", "Connection: close", "http://127.0.0.1:\(ports.tcp)/bytes/100"],
        ].map { arguments in
            startThread {
                let (_, out) = (try? runCommand("/usr/bin/wrk", arguments)) ?? (-1, "wrk did not run")
                outputs.withLock { $0.append((arguments.contains("Connection: close") ? "Connection: close\n" : "") + out) }
            }
        }
        let tunnels = Locked("")
        let wsLoad = startThread {
            let out = (try? wsPeer(["load", "ws://127.0.0.1:\(ports.ws)/", "50", "12"])) ?? ""
            tunnels.withLock { $0 = out }
        }
        usleep(2_000_000)
        var pids = [firstPID]
        for k in 1...5 {
            let (code, out) = try runCommand(sluiceBinary, ["upgrade", "--instance", ports.instance])
            #expect(code == 0 && out.contains("upgraded"), "upgrade \(k): \(out)\n\(sluice.log)")
            if let pid = daemonPID(ports.instance) { pids.append(pid) }
            usleep(1_000_000)
        }
        #expect(Set(pids).count == 6, "a new process each time: \(pids)")
        for load in loads { load.join() }
        wsLoad.join()
        try expectClean(wrk: outputs.value, minimumRequests: 100)
        let ws = try #require(try JSONSerialization.jsonObject(with: Data(tunnels.value.utf8)) as? [String: Any], "\(tunnels.value)")
        #expect(ws["ok"] as? Int == 50 && ws["bad"] as? Int == 0 && ws["failed"] as? Int == 0, "\(ws)")
        for fd in idle { #expect(["a", "b"].contains(httpExchange(fd, "/name") ?? "-"), "an idle keep-alive client handed over") }
        var moved = 0, longest = 0.0
        for (k, stream) in streams.enumerated() {
            let (failure, bytes, gap) = stream.finish()
            #expect(failure == nil && bytes > 0, "stream \(k): \(failure ?? "") after \(bytes) bytes")
            moved += bytes
            longest = max(longest, gap)
        }
        #expect(try sluice.waitForExit(seconds: 40) == 0, "the first process exits 0 once it handed over")
        let log = sluice.log
        let handed = log.split(separator: "\n").filter { $0.contains("binary upgrade complete") }
        #expect(handed.count == 5, "\(log)")
        let paths = log.split(separator: "\n").filter { $0.contains("listener=streams") }
            .compactMap { $0.split(separator: " ").first { $0.hasPrefix("path=") }?.dropFirst(5).split(separator: "+") }.joined()
        for path in ["sockmap", "splice", "copy"] { #expect(paths.contains(Substring(path)), "streams on \(path)") }
        let left = log.split(separator: "\n").filter { $0.contains("this one finishes what stayed") }
            .compactMap { $0.split(separator: " ").first { $0.hasPrefix("finishing_here=") } }
        print("5 upgrades: \(handed.map { $0.split(separator: " ").filter { $0.hasPrefix("connections=") || $0.hasPrefix("ms=") } }), "
              + "left to the old process: \(left), "
              + "200 streams moved \(moved) bytes, longest gap \(Int(longest * 1000)) ms")
        #expect(longest < 2, "the longest gap in a stream: \(longest) s")
        try stopDaemon(ports.instance)
        for path in ["/sys/fs/bpf/sluice/\(ports.instance)", "/run/sluice/\(ports.instance).json", "/run/sluice/\(ports.instance).lock",
                     "/run/sluice/\(ports.instance).sock", "/run/sluice/\(ports.instance).upgrade"] {
            #expect(access(path, F_OK) != 0, "\(path) removed at the end")
        }
        let clean = sluice.log.split(separator: "\n").filter { $0.contains("clean exit: no descriptor left open") }.count
        #expect(clean == 6 && !sluice.log.contains("descriptors left open"), "every process exits without a leak: \(clean)")
    }

    @Test("a new binary that exits at once, or cannot start: the old one keeps serving and says why")
    func failedStart() throws {
        guard requireRoot() else { return }
        let echo = try TestServer.echo()
        let port = freePort()
        let sluice = try SluiceProcess.run(config: steeredConfig(port: port, backends: [echo.address], workers: 2))
        defer { try? stopDaemon("e2e\(port)") }
        let stream = EchoStream(port: port, seed: 1)
        var (code, out) = try runCommand(sluiceBinary, ["upgrade", "--instance", "e2e\(port)", "--binary", "/bin/false"])
        #expect(code == 1 && out.contains("upgrade failed") && out.contains("exited"), "\(out)")
        (code, out) = try runCommand(sluiceBinary, ["upgrade", "--instance", "e2e\(port)", "--binary", "/nonexistent/sluice"])
        #expect(code == 1 && out.contains("cannot start"), "\(out)")
        // A file changed since it was loaded: the new process refuses, saying so.
        let path = try #require(sluice.configURL?.path)
        let changed = steeredConfig(port: port, backends: [echo.address], workers: 2)
            .replacingOccurrences(of: "workers: 2", with: "workers: 3")
        try changed.write(toFile: path, atomically: true, encoding: .utf8)
        (code, out) = try runCommand(sluiceBinary, ["upgrade", "--instance", "e2e\(port)"])
        #expect(code == 1 && out.contains("refused") && out.contains("workers: 2 running, 3 configured"), "\(out)")
        #expect(daemonPID("e2e\(port)") == sluice.process.processIdentifier)
        #expect(access("/sys/fs/bpf/sluice/e2e\(port)/worker_load", F_OK) == 0 && access("/run/sluice/e2e\(port).lock", F_OK) == 0,
                "the refusing process left the pins and the lock alone")
        _ = try statusJSON("e2e\(port)")
        #expect(echoRoundTrip(port: port, size: 100_000, seed: 2) == nil, "still serving")
        let (failure, bytes, _) = stream.finish()
        #expect(failure == nil && bytes > 0, "\(failure ?? "")")
        #expect(sluice.log.contains("binary upgrade failed; this process keeps serving"), "\(sluice.log)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("an upgrade while a worker is stalled: its connections are handed over once it wakes")
    func stalledWorker() throws {
        guard requireRoot() else { return }
        let echo = try TestServer.echo()
        let port = freePort()
        let sluice = try SluiceProcess.run(config: steeredConfig(port: port, backends: [echo.address], workers: 2),
                                           extraArguments: ["--verify-clean-exit", "--stall-on-sigusr1", "0:1500"])
        defer { try? stopDaemon("e2e\(port)") }
        let streams = (0..<20).map { EchoStream(port: port, seed: UInt64($0)) }
        usleep(500_000)
        sluice.signal(SIGUSR1)
        usleep(100_000)
        let (code, out) = try runCommand(sluiceBinary, ["upgrade", "--instance", "e2e\(port)"])
        #expect(code == 0 && out.contains("upgraded"), "\(out)\n\(sluice.log)")
        usleep(500_000)
        for (k, stream) in streams.enumerated() {
            let (failure, bytes, _) = stream.finish()
            #expect(failure == nil && bytes > 0, "stream \(k): \(failure ?? "")")
        }
        #expect(try sluice.waitForExit(seconds: 40) == 0)
        #expect(sluice.log.contains("finishing_here=0"), "every connection was handed over: \(sluice.log)")
    }
}

extension UpgradeEndToEndTests {
    @Test("a Redis client between commands is handed over: still authenticated, still RESP3, on the same connection")
    func redisClient() throws {
        guard requireRoot() else { return }
        let server = try RedisServer()
        let port = freePort()
        let sluice = try SluiceProcess.run(config: redisConfig(port: port, servers: [server], extra: ", redis: { password: s3cret }"),
                                           extraArguments: ["--verify-clean-exit"])
        defer { try? stopDaemon("e2e\(port)") }
        // One connection, RESP3 by HELLO 3, authenticated once.
        let fd = try connectTCP("127.0.0.1", port)
        defer { close(fd) }
        func ask(_ command: String, until end: String) -> String {
            guard sendAll(fd, Array(command.utf8)) else { return "send failed" }
            var reply: [UInt8] = [], chunk = [UInt8](repeating: 0, count: 4096)
            while !String(decoding: reply, as: UTF8.self).hasSuffix(end) {
                let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n <= 0 { break }
                reply += chunk[0..<n]
            }
            return String(decoding: reply, as: UTF8.self)
        }
        #expect(ask("HELLO 3 AUTH default s3cret\r\n", until: "\r\n").hasPrefix("%"), "RESP3 from here on")
        #expect(ask("SET k before\r\nHSET h a 1\r\n", until: ":1\r\n").hasPrefix("+OK"))
        let (code, out) = try runCommand(sluiceBinary, ["upgrade", "--instance", "e2e\(port)"])
        #expect(code == 0 && out.contains("upgraded"), "\(out)\n\(sluice.log)")
        #expect(ask("GET k\r\n", until: "before\r\n") == "$6\r\nbefore\r\n", "still authenticated")
        #expect(ask("HGETALL h\r\n", until: "1\r\n") == "%1\r\n$1\r\na\r\n$1\r\n1\r\n", "still RESP3: a map, not an array")
        #expect(try sluice.waitForExit(seconds: 20) == 0)
        #expect(sluice.log.contains("finishing_here=0"), "the client was handed over: \(sluice.log)")
    }
}

/// One request on an open connection; the response's body.
func httpExchange(_ fd: Int32, _ path: String) -> String? {
    guard sendAll(fd, Array("GET \(path) HTTP/1.1\r\nHost: upgrade.test\r\n\r\n".utf8)) else { return nil }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let text = String(decoding: bytes, as: UTF8.self)
        if let end = text.range(of: "\r\n\r\n") {
            let head = text[..<end.lowerBound].lowercased()
            let length = head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
            let body = Array(text[end.upperBound...].utf8)
            if body.count >= length { return String(decoding: body.prefix(length), as: UTF8.self) }
        }
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return nil }
        bytes += chunk[0..<n]
    }
}
