import Foundation
import Glibc
import SluicePosix
import SluiceTestSupport
import Testing

/// Two configurations a reload alternates between: `b` adds a listener
/// (`extra`) and a backend (`c`), and sends `/b/` requests to pool `two`.
private struct ReloadPorts {
    let web = freePort(), tcp = freePort(), streams = freePort(), extra = freePort()
    var instance: String { "e2e\(web)" }
}

private func reloadConfig(_ ports: ReloadPorts, b: Bool, app: [String], echo: [String], two: String,
                          drainTimeout: String = "30s", admin: String = "admin: { metrics: off }") -> String {
    let steering = requireRoot() ? "least_loaded" : "hash"
    return """
        instance: \(ports.instance)
        workers: 2
        steering: \(steering)
        drain_timeout: \(drainTimeout)
        stall_threshold: 2s
        log: { level: info, access: off, file: stderr }
        \(admin)
        listeners:
          - name: web
            bind: "127.0.0.1:\(ports.web)"
            pool: app
            mode: http
            http: { routes: [ { path_prefix: "\(b ? "/none/" : "/b/")", pool: two } ] }
          - { name: tcp, bind: "127.0.0.1:\(ports.tcp)", pool: app }
          - { name: streams, bind: "127.0.0.1:\(ports.streams)", pool: echo }
        \(b ? "  - { name: extra, bind: \"127.0.0.1:\(ports.extra)\", pool: echo }" : "")
        pools:
          - name: app
            backends:
        \((b ? app : Array(app.prefix(2))).map { "      - { address: \"\($0)\" }" }.joined(separator: "\n"))
          - name: echo
            backends:
        \(echo.map { "      - { address: \"\($0)\" }" }.joined(separator: "\n"))
          - { name: two, backends: [ { address: "\(two)" } ] }
        """
}

/// A client that keeps one connection echoing checksummed chunks until told
/// to stop, then half-closes and expects the echo's clean end. It notes the
/// longest wait between two rounds.
final class EchoStream: @unchecked Sendable {
    private let state = Locked<(stop: Bool, failure: String?, bytes: Int, longestGap: Double)>((false, nil, 0, 0))
    private var thread: OSThread?

    init(port: UInt16, seed: UInt64, chunk: Int = 4096, pauseMicroseconds: UInt32 = 100_000) {
        thread = startThread { [state] in
            let fail = { (why: String) in state.withLock { $0.failure = why } }
            let fd: Int32
            do { fd = try connectTCP("127.0.0.1", port, timeoutSeconds: 20) } catch { return fail("connect: \(error)") }
            defer { close(fd) }
            var round: UInt64 = 0
            var back = [UInt8](repeating: 0, count: chunk)
            var last = Date()
            while !state.withLock({ $0.stop }) {
                let bytes = payload(size: chunk, seed: seed &* 1000 &+ round)
                round += 1
                guard sendAll(fd, bytes) else { return fail("send failed after \(round) rounds: errno \(errno)") }
                var got = 0
                while got < back.count {
                    let n = back.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, $0.count - got, 0) }
                    guard n > 0 else { return fail("recv \(n) (errno \(errno)) after \(round) rounds") }
                    got += n
                }
                guard back == bytes else { return fail("round \(round): the echo differs") }
                let now = Date()
                state.withLock {
                    $0.bytes += bytes.count
                    $0.longestGap = max($0.longestGap, now.timeIntervalSince(last))
                }
                last = now
                usleep(pauseMicroseconds)
            }
            shutdown(fd, Int32(SHUT_WR))
            let (rest, clean) = readToEnd(fd)
            if !clean || !rest.isEmpty { fail("end: clean \(clean), \(rest.count) stray bytes") }
        }
    }

    var bytes: Int { state.withLock { $0.bytes } }

    /// Stops and waits; `failure` nil when every byte came back as sent and the end was clean.
    func finish() -> (failure: String?, bytes: Int, longestGap: Double) {
        state.withLock { $0.stop = true }
        thread?.join()
        return state.withLock { ($0.failure, $0.bytes, $0.longestGap) }
    }
}

/// wrk saw no failure: no socket error, no answer but 2xx; a run marked
/// "Connection: close" (its first line) counts the server's close after
/// each answer as a read error, one per request and not one more (but for
/// the connections still open when wrk stops).
func expectClean(wrk outputs: [String], minimumRequests: Int, sourceLocation: SourceLocation = #_sourceLocation) throws {
    for out in outputs {
        let summary = try #require(WrkSummary(out), "\(out)", sourceLocation: sourceLocation)
        #expect(summary.requests > minimumRequests && summary.non2xx == 0 && summary.connect == 0 && summary.write == 0
                && summary.timeout == 0, "\(out)", sourceLocation: sourceLocation)
        if out.hasPrefix("Connection: close") {
            #expect(summary.read <= summary.requests && summary.read >= summary.requests - 4, "\(out)", sourceLocation: sourceLocation)
        } else {
            #expect(summary.read == 0, "\(out)", sourceLocation: sourceLocation)
        }
    }
}

/// The figures of a wrk run.
struct WrkSummary {
    var requests = 0, connect = 0, read = 0, write = 0, timeout = 0, non2xx = 0

    init?(_ output: String) {
        func number(after label: String, in line: Substring) -> Int? {
            guard let range = line.range(of: label) else { return nil }
            return Int(line[range.upperBound...].prefix { $0.isNumber })
        }
        var found = false
        for line in output.split(separator: "\n") {
            let trimmed = line.drop { $0 == " " }
            if trimmed.contains("requests in"), let n = Int(trimmed.prefix { $0.isNumber }) { requests = n; found = true }
            if trimmed.hasPrefix("Socket errors:") {
                connect = number(after: "connect ", in: trimmed) ?? -1
                read = number(after: "read ", in: trimmed) ?? -1
                write = number(after: "write ", in: trimmed) ?? -1
                timeout = number(after: "timeout ", in: trimmed) ?? -1
            }
            if trimmed.hasPrefix("Non-2xx or 3xx responses:") { non2xx = number(after: "responses: ", in: trimmed) ?? -1 }
        }
        if !found { return nil }
    }
}

private func reload(_ instance: String) throws -> (Int32, String) {
    try runCommand(sluiceBinary, ["reload", "--instance", instance])
}

@Suite("Reload: the configuration applied without dropping a connection", .serialized)
struct ReloadEndToEndTests {
    @Test("20 reloads under wrk (keep-alive and a connection per request) and 100 checksummed streams: nothing fails")
    func reloadsUnderLoad() throws {
        let backends = try ["a", "b", "c", "two"].map { try startHTTPBackend($0) }
        let echoes = [try TestServer.echo(), try TestServer.echo()]
        let ports = ReloadPorts()
        let app = backends.prefix(3).map(\.address), two = backends[3].address
        let configs = [false, true].map { reloadConfig(ports, b: $0, app: app, echo: echoes.map(\.address), two: two) }
        let sluice = try SluiceProcess.run(config: configs[0])
        let path = try #require(sluice.configURL?.path)

        let streams = (0..<100).map { EchoStream(port: ports.streams, seed: UInt64($0)) }
        let outputs = Locked<[String]>([])
        let loads = [
            ["-t1", "-c4", "-d8s", "http://127.0.0.1:\(ports.web)/bytes/100"],
            ["-t1", "-c4", "-d8s", "-H", "Connection: close", "http://127.0.0.1:\(ports.tcp)/bytes/100"],
        ].map { arguments in
            startThread {
                let (_, out) = (try? runCommand("/usr/bin/wrk", arguments)) ?? (-1, "wrk did not run")
                outputs.withLock { $0.append((arguments.contains("Connection: close") ? "Connection: close\n" : "") + out) }
            }
        }
        usleep(1_000_000)
        for k in 1...20 {
            let b = k % 2 == 1
            try configs[b ? 1 : 0].write(toFile: path, atomically: true, encoding: .utf8)
            let (code, out) = try reload(ports.instance)
            #expect(code == 0 && out.contains("generation \(k + 1)"), "reload \(k): \(out)")
            if b { #expect(echoRoundTrip(port: ports.extra, size: 2000, seed: UInt64(k)) == nil, "the added listener serves at once") }
            usleep(250_000)
        }
        for load in loads { load.join() }
        // (The Python backend answers a kept-alive connection in ~40 ms: its
        // head and body go out in two writes that meet a delayed ACK.)
        try expectClean(wrk: outputs.value, minimumRequests: 200)
        var streamed = 0
        for (k, stream) in streams.enumerated() {
            let (failure, bytes, _) = stream.finish()
            #expect(failure == nil && bytes > 0, "stream \(k): \(failure ?? "") after \(bytes) bytes")
            streamed += bytes
        }
        let requests = outputs.value.compactMap { WrkSummary($0)?.requests }
        print("20 reloads under load: wrk requests \(requests), 100 streams echoed \(streamed) bytes")
        #expect(throws: SystemCallError.self, "the removed listener no longer accepts") {
            close(try connectTCP("127.0.0.1", ports.extra))
        }
        let status = try statusJSON(ports.instance)
        #expect(status["generation"] as? Int == 21, "\(status)")
        #expect((status["listeners"] as? [[String: Any]])?.count == 3, "\(status)")
        #expect(!sluice.log.contains("reload refused"), "\(sluice.log)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("an invalid file, or one that needs a restart: the running configuration stays, every error is reported")
    func refused() throws {
        let backends = try ["a", "b", "c", "two"].map { try startHTTPBackend($0) }
        let echo = try TestServer.echo()
        let ports = ReloadPorts()
        let good = reloadConfig(ports, b: false, app: backends.prefix(3).map(\.address), echo: [echo.address], two: backends[3].address)
        let sluice = try SluiceProcess.run(config: good)
        let path = try #require(sluice.configURL?.path)

        try (good + "\nbogus_key: 1\n").replacingOccurrences(of: "workers: 2", with: "workers: 0")
            .write(toFile: path, atomically: true, encoding: .utf8)
        var (code, out) = try reload(ports.instance)
        #expect(code == 1, "\(out)")
        #expect(out.contains("reload refused") && out.contains("workers") && out.contains("bogus_key") && out.contains(path), "\(out)")

        try good.replacingOccurrences(of: "workers: 2", with: "workers: 3").write(toFile: path, atomically: true, encoding: .utf8)
        (code, out) = try reload(ports.instance)
        #expect(code == 1 && out.contains("workers changed: it needs a restart"), "\(out)")
        #expect(sluice.log.contains("reload refused; the running configuration stays"), "\(sluice.log)")

        #expect(echoRoundTrip(port: ports.streams, size: 10_000, seed: 3) == nil, "still serving")
        let status = try statusJSON(ports.instance)
        #expect(status["generation"] as? Int == 1 && status["reloads_failed"] as? Int == 2, "\(status)")
        #expect((status["last_reload_errors"] as? [String])?.first?.contains("workers") == true, "\(status)")
        let (_, text) = try runCommand(sluiceBinary, ["status", "--instance", ports.instance])
        #expect(text.contains("config generation 1") && text.contains("reloads refused 2"), "\(text)")

        try good.write(toFile: path, atomically: true, encoding: .utf8)
        (code, out) = try reload(ports.instance)
        #expect(code == 0 && out.contains("generation 2, nothing changed"), "\(out)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("a listener removed (SIGHUP, no admin socket): its open connections go on, then end at drain_timeout; no new ones")
    func listenerRemoved() throws {
        let backends = try ["a", "b", "c", "two"].map { try startHTTPBackend($0) }
        let echo = try TestServer.echo()
        let ports = ReloadPorts()
        func config(b: Bool) -> String {
            reloadConfig(ports, b: b, app: backends.prefix(3).map(\.address), echo: [echo.address], two: backends[3].address,
                         drainTimeout: "3s", admin: "admin: off")
        }
        let sluice = try SluiceProcess.run(config: config(b: true))
        let path = try #require(sluice.configURL?.path)
        let held = try (0..<20).map { _ in try connectTCP("127.0.0.1", ports.extra) }
        defer { for fd in held { close(fd) } }
        func roundTrip(_ fd: Int32, _ seed: UInt64) -> Bool {
            let bytes = payload(size: 1000, seed: seed)
            guard sendAll(fd, bytes) else { return false }
            var back = [UInt8](repeating: 0, count: 1000), got = 0
            while got < 1000 {
                let n = back.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, $0.count - got, 0) }
                if n <= 0 { return false }
                got += n
            }
            return back == bytes
        }
        #expect(held.enumerated().allSatisfy { roundTrip($1, UInt64($0)) })

        try config(b: false).write(toFile: path, atomically: true, encoding: .utf8)
        let reloadedAt = Date()
        let (code, out) = try reload(ports.instance)
        #expect(code == 0 && out.contains("reloaded, generation 2"), "\(out)")
        #expect(sluice.log.contains("listener extra removed"), "\(sluice.log)")
        #expect(held.enumerated().allSatisfy { roundTrip($1, UInt64($0) + 100) }, "open connections go on after the reload")
        #expect(throws: SystemCallError.self) { close(try connectTCP("127.0.0.1", ports.extra)) }
        // Half of them finish on their own, cleanly.
        for fd in held.prefix(10) {
            shutdown(fd, Int32(SHUT_WR))
            let (rest, clean) = readToEnd(fd)
            #expect(clean && rest.isEmpty)
        }
        // The others are ended by the drain deadline, 3 s after the reload.
        for fd in held.suffix(10) {
            var byte: UInt8 = 0
            #expect(recv(fd, &byte, 1, 0) <= 0)
        }
        let waited = Date().timeIntervalSince(reloadedAt)
        #expect(waited > 2.5 && waited < 8, "ended after \(waited) s")
        try sluice.waitForLog("drain_timeout after a reload")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("a kept-alive HTTP client's next request follows the reloaded routes")
    func routesOnKeptAliveConnection() throws {
        let backends = try ["a", "b", "c", "two"].map { try startHTTPBackend($0) }
        let echo = try TestServer.echo()
        let ports = ReloadPorts()
        func config(b: Bool) -> String {
            reloadConfig(ports, b: b, app: backends.prefix(3).map(\.address), echo: [echo.address], two: backends[3].address)
        }
        let sluice = try SluiceProcess.run(config: config(b: false))
        let path = try #require(sluice.configURL?.path)
        let fd = try connectTCP("127.0.0.1", ports.web)
        defer { close(fd) }
        #expect(httpExchange(fd, "/b/name") == "two")
        try config(b: true).write(toFile: path, atomically: true, encoding: .utf8)
        // As systemd's ExecReload asks: the instance is the one the file names.
        let (code, out) = try runCommand(sluiceBinary, ["reload", "-c", path])
        #expect(code == 0 && out.contains("sluice \(ports.instance): reloaded, generation 2"), "\(out)")
        let answer = httpExchange(fd, "/b/name")
        #expect(["a", "b", "c"].contains(answer ?? "-"), "the same connection, routed by the new routes: \(answer ?? "nothing")")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("a UDP listener added by a reload is steered by its own select_flow at once; removed, it stops")
    func udpListenerAdded() throws {
        guard requireRoot() else { return }
        let (echo, address) = try udpEcho("one")
        defer { _ = echo }
        let tcpEcho = try TestServer.echo()
        let port = freePort(), udpPort = freePort()
        func config(udp: Bool) -> String {
            """
            instance: e2e\(port)
            workers: 2
            steering: least_loaded
            stall_threshold: 2s
            log: { level: info, access: text, file: stderr }
            admin: { metrics: off }
            listeners:
              - { name: test, bind: "127.0.0.1:\(port)", pool: tcp }
            \(udp ? "  - { name: dns, bind: \"127.0.0.1:\(udpPort)\", pool: udp, mode: udp, udp: { max_flows: 77 } }" : "")
            pools:
              - { name: tcp, backends: [ { address: "\(tcpEcho.address)" } ] }
              - { name: udp, backends: [ { address: "\(address)" } ] }
            """
        }
        let base = config(udp: false), withUDP = config(udp: true)
        let sluice = try SluiceProcess.run(config: base)
        let path = try #require(sluice.configURL?.path)
        try withUDP.write(toFile: path, atomically: true, encoding: .utf8)
        var (code, out) = try reload("e2e\(port)")
        #expect(code == 0 && out.contains("listener dns added"), "\(out)\n\(withUDP)")
        let load = try udpPeer(["load", "127.0.0.1", "\(udpPort)", "20", "20", "--max-size", "2000"])
        #expect(load["ok_flows"] as? Int == 20, "\(load)")
        let (_, bpftool) = try runCommand("/usr/sbin/bpftool", ["map", "show", "name", "udp_flows"])
        #expect(bpftool.contains("max_entries 154"), "the added listener's flow map is sized by its max_flows: \(bpftool)")
        #expect(echoRoundTrip(port: port, size: 5000, seed: 9) == nil)

        try base.write(toFile: path, atomically: true, encoding: .utf8)
        (code, out) = try reload("e2e\(port)")
        #expect(code == 0 && out.contains("listener dns removed"), "\(out)")
        let after = try udpPeer(["load", "127.0.0.1", "\(udpPort)", "2", "2", "--timeout", "0.3"])
        #expect(after["ok_flows"] as? Int == 0, "\(after)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }
}
