import Foundation
import Glibc
import SluicePosix
import SluiceTestSupport
import Testing

@Suite("sluice status, the admin socket and metrics", .serialized)
struct StatusAdminTests {
    @Test("status --json agrees with what the workers logged, under load")
    func statusAgreesWithWorkers() throws {
        guard requireRoot() else { return }
        let echo = try TestServer.echo()
        let port = freePort()
        let sluice = try SluiceProcess.run(config: steeredConfig(port: port, backends: [echo.address], workers: 4, extra: "rebalance: off"))
        let held = try holdConnections(100, port: port)
        let status = try statusJSON("e2e\(port)")
        #expect(status["daemon"] as? String == "running")
        #expect(workerField(status, "active").reduce(0, +) == 100)
        let states = ((status["workers"] as? [[String: Any]]) ?? []).compactMap { $0["state"] as? String }
        #expect(states == ["ok", "ok", "ok", "ok"])
        let listeners = (status["listeners"] as? [[String: Any]]) ?? []
        #expect(listeners.first?["active"] as? Int == 100)
        #expect((status["steering"] as? [String: Any])?["mode"] as? String == "least_loaded")
        for fd in held { close(fd) }
        let accepted = workerField(status, "accepted")
        for k in 0..<4 {
            try waitUntil(5, "worker \(k)'s access lines") {
                sluice.log.split(separator: "\n").filter { $0.contains(" access worker=\(k) ") }.count == accepted[k]
            }
        }
        let backends = (status["backends"] as? [[String: Any]]) ?? []
        #expect(backends.first?["address"] as? String == echo.address)
        #expect(try sluice.stop() == 0)
        let (code, output) = try runCommand(sluiceBinary, ["status", "--instance", "e2e\(port)"])
        #expect(code == 1 && output.contains("no sluice instance \"e2e\(port)\" is running"))
    }

    @Test("status answers while the daemon is SIGSTOPped, and shows its workers stalled")
    func statusOfAStoppedDaemon() throws {
        guard requireRoot() else { return }
        let echo = try TestServer.echo()
        let port = freePort()
        let sluice = try SluiceProcess.run(config: steeredConfig(port: port, backends: [echo.address], workers: 2)
            .replacingOccurrences(of: "stall_threshold: 2s", with: "stall_threshold: 200ms"))
        sluice.signal(SIGSTOP)
        defer { sluice.signal(SIGCONT) }
        usleep(400_000)
        let status = try statusJSON("e2e\(port)")
        #expect(status["daemon"] as? String == "stopped (SIGSTOP)")
        let states = ((status["workers"] as? [[String: Any]]) ?? []).compactMap { $0["state"] as? String }
        #expect(states == ["stalled", "stalled"])
        let (_, text) = try runCommand(sluiceBinary, ["status", "--instance", "e2e\(port)"])
        #expect(text.contains("stopped (SIGSTOP)") && text.contains("stalled"))
        sluice.signal(SIGCONT)
        usleep(300_000)
        #expect(try statusJSON("e2e\(port)")["daemon"] as? String == "running")
        #expect(try sluice.stop() == 0)
    }

    @Test("the admin socket answers garbage with JSON errors and survives 1,000 malformed requests")
    func adminSurvivesGarbage() throws {
        guard requireRoot() else { return }
        let echo = try TestServer.echo()
        let port = freePort()
        let socketPath = "/run/sluice/e2e\(port).sock"
        let sluice = try SluiceProcess.run(config: steeredConfig(port: port, backends: [echo.address], workers: 2))
        var mode = stat()
        #expect(stat(socketPath, &mode) == 0 && mode.st_mode & 0o777 == 0o600)
        let garbage = ["{", "[]", "42", "\"cmd\"", "{\"cmd\":7}", "{\"cmd\":\"reboot\"}", "{\"nocmd\":1}",
                       "{\"cmd\":\"drain_worker\"}", "{\"cmd\":\"drain_worker\",\"worker\":99}",
                       "{\"cmd\":\"drain_backend\",\"pool\":\"nope\",\"backend\":\"1.2.3.4:5\"}", "\u{1}\u{2}\u{7f}ÿ"]
        for i in 0..<1000 {
            let reply = try AdminClientForTests.send(socketPath, garbage[i % garbage.count])
            let object = try #require(try JSONSerialization.jsonObject(with: Data(reply.utf8)) as? [String: Any])
            #expect(object["error"] is String, "request \(i): \(reply)")
        }
        // A line over the limit gets an error and the connection closes; the daemon stays.
        let huge = try AdminClientForTests.send(socketPath, String(repeating: "x", count: 100_000))
        #expect(huge.contains("too large"))
        let ok = try AdminClientForTests.send(socketPath, "{\"cmd\":\"status\"}")
        #expect(ok.contains("\"workers\""))
        #expect(echoRoundTrip(port: port, size: 1000, seed: 1) == nil)
        #expect(try sluice.stop() == 0)
        #expect(access(socketPath, F_OK) != 0, "socket removed at stop")
    }

    @Test("draining a backend through the admin socket: no new connections go there, open ones finish")
    func drainBackend() throws {
        guard requireRoot() else { return }
        let echo1 = try TestServer.echo()
        let echo2 = try TestServer.echo()
        let port = freePort()
        let sluice = try SluiceProcess.run(config: steeredConfig(port: port, backends: [echo1.address, echo2.address], workers: 1))
        let socketPath = "/run/sluice/e2e\(port).sock"
        let open = try holdConnections(4, port: port) // two on each backend
        let reply = try AdminClientForTests.send(socketPath, "{\"cmd\":\"drain_backend\",\"pool\":\"backends\",\"backend\":\"\(echo1.address)\"}")
        #expect(reply == "{\"ok\":true}")
        let before = echo1.accepted
        for i in 0..<10 { #expect(echoRoundTrip(port: port, size: 100, seed: UInt64(i)) == nil) }
        #expect(echo1.accepted == before, "no new connection reached the drained backend")
        for fd in open { // the open ones still work
            #expect(sendAll(fd, [9]))
            var b: UInt8 = 0
            #expect(recv(fd, &b, 1, 0) == 1)
            close(fd)
        }
        let backends = try AdminClientForTests.send(socketPath, "{\"cmd\":\"backends\"}")
        #expect(backends.contains("\"drained\""))
        #expect(try sluice.stop() == 0)
    }

    @Test("/metrics parses with the Prometheus client's own parser and carries the labels")
    func metricsParse() throws {
        guard requireRoot() else { return }
        let echo = try TestServer.echo()
        let port = freePort(), metricsPort = freePort()
        let sluice = try SluiceProcess.run(config: steeredConfig(
            port: port, backends: [echo.address], workers: 2, admin: "admin: { metrics: \"127.0.0.1:\(metricsPort)\" }"))
        #expect(echoRoundTrip(port: port, size: 1000, seed: 1) == nil)
        let (code, text) = try runCommand("/usr/bin/curl", ["-sS", "--max-time", "5", "http://127.0.0.1:\(metricsPort)/metrics"])
        #expect(code == 0)
        let script = """
            import sys
            from prometheus_client.parser import text_string_to_metric_families
            names = {}
            for family in text_string_to_metric_families(sys.stdin.read()):
                for sample in family.samples:
                    names.setdefault(sample.name, []).append(sample.labels)
            for name in sorted(names):
                print(name, len(names[name]), sorted({k for labels in names[name] for k in labels}))
            """
        let parsed = try runPython(script, input: text)
        #expect(parsed.status == 0, "\(parsed.output)\n\(text)")
        for expected in ["sluice_build_info 1", "sluice_worker_active_connections 2 ['worker']",
                         "sluice_listener_accepted_total 1 ['listener', 'pool']",
                         "sluice_backend_active_connections 1 ['backend', 'pool']",
                         "sluice_steering_total 7 ['outcome']",
                         "sluice_worker_connections_by_path_total 6 ['path', 'worker']",
                         "sluice_worker_sockmap_promotions_total 2 ['worker']"] {
            #expect(parsed.output.contains(expected), "\(expected) in \(parsed.output)")
        }
        let (notFound, _) = try runCommand("/usr/bin/curl", ["-sf", "http://127.0.0.1:\(metricsPort)/other"])
        #expect(notFound != 0)
        #expect(try sluice.stop() == 0)
    }

    @Test("the rebalancer spreads 400 established streams from one worker to four (max/min ≤ 1.1 within 2 s), byte-exact")
    func rebalances() throws {
        guard requireRoot() else { return }
        let echo = try TestServer.echo()
        let port = freePort()
        let instance = "e2e\(port)"
        let socketPath = "/run/sluice/\(instance).sock"
        let sluice = try SluiceProcess.run(config: steeredConfig(
            port: port, backends: [echo.address], workers: 4, extra: "rebalance: { interval: 100ms, ratio: 1.1 }"))
        // Everything onto worker 0: the others drain while the streams open.
        for k in 1..<4 { _ = try AdminClientForTests.send(socketPath, "{\"cmd\":\"drain_worker\",\"worker\":\(k)}") }
        let fds = try holdConnections(400, port: port)
        #expect(workerField(try statusJSON(instance), "active") == [400, 0, 0, 0])
        // Streams keep flowing during the moves: 40 threads, 10 connections each.
        let stop = Locked<Bool>(false)
        let failures = Locked<[String]>([])
        var threads: [OSThread] = []
        for t in 0..<40 {
            let mine = Array(fds[(t * 10)..<(t * 10 + 10)])
            threads.append(startThread {
                var round: UInt64 = 0
                while !stop.value {
                    for (i, fd) in mine.enumerated() {
                        let chunk = payload(size: 4096, seed: round &* 1000 &+ UInt64(t * 10 + i))
                        guard sendAll(fd, chunk) else { failures.withLock { $0.append("send") }; return }
                        var back = [UInt8](repeating: 0, count: chunk.count)
                        guard recv(fd, &back, back.count, Int32(MSG_WAITALL)) == back.count, back == chunk else {
                            failures.withLock { $0.append("stream \(t * 10 + i) round \(round)") }
                            return
                        }
                    }
                    round += 1
                }
            })
        }
        for k in 1..<4 { _ = try AdminClientForTests.send(socketPath, "{\"cmd\":\"undrain_worker\",\"worker\":\(k)}") }
        let took = try waitUntil(2, "max/min ≤ 1.1") {
            let active = workerField((try? statusJSON(instance)) ?? [:], "active")
            guard active.count == 4, let min = active.min(), min > 0 else { return false }
            return Double(active.max()!) / Double(min) <= 1.1
        }
        usleep(500_000) // streams keep running on their new workers
        stop.withLock { $0 = true }
        for t in threads { t.join() }
        #expect(failures.value.isEmpty, "\(failures.value.prefix(5))")
        #expect(workerField(try statusJSON(instance), "active").reduce(0, +) == 400)
        for fd in fds { close(fd) }
        try sluice.waitForLog("rebalanced: handed connections") // lines reach the log through a queue
        print("rebalanced 400/0/0/0 in \(took) s")
        #expect(try sluice.stop() == 0)
    }
}

func runPython(_ script: String, input: String) throws -> (status: Int32, output: String) {
    try runCommand("/usr/bin/env", ["python3", "-c", script], input: input)
}
