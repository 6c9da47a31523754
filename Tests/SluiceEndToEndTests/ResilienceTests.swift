import Foundation
import Glibc
import SluicePosix
import SluiceTestSupport
import Testing

// Issue 11: no client, log consumer or lack of local resources brings the daemon down.

/// The value of one sample in Prometheus text, e.g. `name{where="connect"}`.
func metricValue(_ text: String, _ sample: String) -> Double? {
    for line in text.split(separator: "\n") where line.hasPrefix(sample + " ") {
        return Double(line.dropFirst(sample.count + 1))
    }
    return nil
}

func fetchMetrics(port: UInt16) throws -> String {
    let (code, text) = try runCommand("/usr/bin/curl", ["-sS", "--max-time", "5", "http://127.0.0.1:\(port)/metrics"])
    #expect(code == 0, "\(text)")
    return text
}

/// One short connection through the proxy: a few bytes echoed, then closed.
/// One byte out and back on a proxied connection.
func echoOneByte(_ fd: Int32) -> Bool {
    var byte: UInt8 = 42
    return send(fd, &byte, 1, 0) == 1 && recv(fd, &byte, 1, 0) == 1 && byte == 42
}

func echoFewBytes(port: UInt16, _ tag: Int) -> String? {
    do {
        let fd = try connectTCP("127.0.0.1", port)
        defer { close(fd) }
        let message = Array("ping \(tag)\n".utf8)
        guard sendAll(fd, message) else { return "send failed" }
        shutdown(fd, Int32(SHUT_WR))
        let (bytes, clean) = readToEnd(fd)
        return bytes == message && clean ? nil : "got \(bytes.count) bytes, clean EOF \(clean)"
    } catch {
        return "\(error)"
    }
}

/// Reads what `fd` holds until `done` or `seconds` pass.
func readAvailable(_ fd: Int32, seconds: Double, until done: (String) -> Bool) -> String {
    var text = ""
    var buffer = [UInt8](repeating: 0, count: 64 * 1024)
    let deadline = Date().addingTimeInterval(seconds)
    while !done(text) && Date() < deadline {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, 50) > 0 else { continue }
        let n = read(fd, &buffer, buffer.count)
        if n <= 0 { break }
        text += String(decoding: buffer[0..<n], as: UTF8.self)
    }
    return text
}

@Suite("Resilience: logs, local resources", .serialized)
struct ResilienceTests {
    @Test("a log consumer that stops reading costs log lines, not connections; the loss is reported and counted")
    func blockedLogOutput() throws {
        let echo = try TestServer.echo()
        let port = freePort(), metricsPort = freePort()
        let yaml = proxyConfig(port: port, backends: [echo.address], extraTop: "admin: { metrics: \"127.0.0.1:\(metricsPort)\" }")
        let output = try ChildPipe()
        let readEnd = output.readEnd
        // A small queue, so that 2,000 access lines overflow queue and pipe (64 KiB) for sure.
        let sluice = try SluiceProcess(arguments: ["run", "--log-queue-bytes", "16384"], configYAML: yaml,
                                       output: output.writeEnd)
        output.closeWriteEnd() // ours; sluice has its copy
        let startup = readAvailable(readEnd, seconds: 20) { $0.contains(" ready ") }
        try #require(startup.contains(" ready "), "\(startup)")

        // From here on nobody reads sluice's output.
        let started = Date()
        let failures = Locked<[String]>([])
        let threads = (0..<4).map { t in
            startThread {
                for i in 0..<500 {
                    if let problem = echoFewBytes(port: port, t * 500 + i) { failures.withLock { $0.append(problem) } }
                }
            }
        }
        for thread in threads { thread.join() }
        let churnSeconds = Date().timeIntervalSince(started)
        print("2,000 connections with a blocked log output took \(String(format: "%.2f", churnSeconds)) s")
        #expect(failures.value.isEmpty, "\(failures.value.prefix(5))")
        #expect(churnSeconds < 60)

        let metrics = try fetchMetrics(port: metricsPort)
        let dropped = try #require(metricValue(metrics, "sluice_log_lines_dropped_total"), "\(metrics)")
        print("log lines dropped: \(Int(dropped))")
        #expect(dropped > 0)
        let status = try statusJSON("e2e\(port)")
        #expect((status["log_lines_dropped"] as? Int ?? 0) >= Int(dropped), "status agrees: \(status)")

        // The reader is back: what was queued, then the notice.
        let resumed = readAvailable(readEnd, seconds: 10) { $0.contains("log lines dropped") }
        #expect(resumed.contains("log lines dropped"), "\(resumed.suffix(500))")
        #expect(resumed.contains(" access "), "queued access lines come out")

        // A normal stop still writes its last line.
        sluice.signal(SIGTERM)
        let tail = readAvailable(readEnd, seconds: 15) { $0.contains(" stopped ") }
        #expect(tail.contains(" stopped "), "\(tail.suffix(500))")
        #expect(try sluice.waitForExit(seconds: 15) == 0)
    }
}

/// Descriptors `pid` may still open under its limit (the fewest seen over a
/// few looks: a health probe holds one for a moment now and then).
func freeDescriptors(pid: Int32, limit: Int) -> Int {
    (0..<5).map { _ -> Int in
        usleep(7000)
        return limit - ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? 0)
    }.min()!
}

extension ResilienceTests {
    @Test("out of descriptors: connects and health checks fail locally, no backend is marked down or ejected, service resumes")
    func localShortageIsNotABackendFailure() throws {
        let backends = [try TestServer.echo(), try TestServer.echo()]
        let port = freePort(), metricsPort = freePort()
        let limit = 64
        let yaml = proxyConfig(port: port, backends: backends.map(\.address), workers: 1, retries: 1,
                               extraTop: "admin: { metrics: \"127.0.0.1:\(metricsPort)\" }")
            + "\n    health_check: { kind: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 2 }"
            + "\n    passive: { failures: 2, ejection: 10s }"
        let sluice = try SluiceProcess(arguments: ["run"], configYAML: yaml, launcher: ["/usr/bin/prlimit", "--nofile=\(limit)", "--"])
        try sluice.waitForLog("ready", seconds: 20)
        let pid = sluice.process.processIdentifier
        var held: [Int32] = []
        defer { for fd in held { close(fd) } }

        // Fill the daemon's descriptor table: proxied connections (two
        // descriptors each) while two are free, idle metrics clients for the
        // last one. With one free, a client is accepted and its backend
        // socket() gets EMFILE: a shortage on the connect path. With none,
        // health probes cannot open a socket. Health probes hold a descriptor
        // now and then, so the count is looked at again on every step.
        var proxied = 0
        var metricsClients: [Int32] = []
        defer { for fd in metricsClients { close(fd) } }
        var lastFree = -1
        var filled = false
        let seen = { (place: String) in sluice.log.contains("where=\(place)") }
        do {
            // Either path will do here: which one meets the shortage first
            // depends on timing (the address-exhaustion test covers both).
            try waitUntil(30, "a local shortage on the connect or health check path") {
                if seen("connect") || seen("health_check") { return true }
                lastFree = freeDescriptors(pid: pid, limit: limit)
                switch lastFree {
                case 2... where !filled:
                    if let fd = try? connectTCP("127.0.0.1", port, timeoutSeconds: 2), echoOneByte(fd) {
                        held.append(fd)
                        proxied += 1
                    }
                case 2...:
                    if let fd = try? connectTCP("127.0.0.1", metricsPort) { metricsClients.append(fd) }
                case 1 where !seen("connect"):
                    for i in 0..<3 { _ = echoFewBytes(port: port, i) } // closed by sluice: no descriptor for their backend
                    if !seen("connect"), let fd = try? connectTCP("127.0.0.1", metricsPort) { metricsClients.append(fd) }
                case 1:
                    if let fd = try? connectTCP("127.0.0.1", metricsPort) { metricsClients.append(fd) }
                default:
                    usleep(200_000) // two check intervals with no descriptor
                    guard !seen("connect") else { break }
                    // Full on an even count: give two back, take one.
                    if let fd = metricsClients.popLast() ?? held.popLast() { close(fd) }
                }
                if lastFree < 2 { filled = true }
                return false
            }
        } catch {
            Issue.record("free descriptors at the end: \(lastFree), proxied \(proxied), metrics clients \(metricsClients.count)")
            throw error
        }
        usleep(1_000_000) // ten check intervals at EMFILE; fall is 2
        print("held \(proxied) proxied connections under --nofile=\(limit)")

        for fd in held + metricsClients { close(fd) }
        held.removeAll()
        metricsClients.removeAll()
        try waitUntil(10, "service to come back") { echoRoundTrip(port: port, size: 100, seed: 3) == nil }
        let metrics = try fetchMetrics(port: metricsPort)
        let connectErrors = metricValue(metrics, "sluice_local_resource_errors_total{where=\"connect\"}") ?? 0
        let checkErrors = metricValue(metrics, "sluice_local_resource_errors_total{where=\"health_check\"}") ?? 0
        print("local resource errors: connect \(Int(connectErrors)), health_check \(Int(checkErrors))")
        #expect(connectErrors + checkErrors > 0, "\(metrics)")
        let status = try statusJSON("e2e\(port)")
        let local = status["local_resource_errors"] as? [String: Int]
        #expect(local?["connect"] == Int(connectErrors) && local?["health_check"] == Int(checkErrors), "status agrees: \(status)")
        #expect((status["backends"] as? [[String: Any]])?.allSatisfy { $0["state"] as? String == "up" && $0["failures"] as? Int == 0 } == true)
        for backend in backends {
            let labels = "{backend=\"\(backend.address)\",pool=\"backends\"}"
            #expect(metricValue(metrics, "sluice_backend_up" + labels) == 1)
            #expect(metricValue(metrics, "sluice_backend_health_transitions_total" + labels) == 0)
            #expect(metricValue(metrics, "sluice_backend_ejections_total" + labels) == 0)
            #expect(metricValue(metrics, "sluice_backend_connect_failures_total" + labels) == 0)
        }
        #expect(!sluice.log.contains("backend down") && !sluice.log.contains("backend ejected"), "\(sluice.log)")
        #expect(sluice.log.contains("local resource shortage, not counted against the backend"))
        #expect(try sluice.stop() == 0)
    }
}

extension ResilienceTests {
    @Test("out of local ports (EADDRNOTAVAIL): connects and health checks fail locally, no backend is marked down, service resumes")
    func portExhaustionIsNotABackendFailure() throws {
        guard requireRoot() else { return }
        // Two ephemeral ports in a namespace of the test's own: two
        // connections to a backend use them up, for the proxy and its checks alike.
        let ns = try TestNamespace()
        try ns.run(["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=40000 40001"])
        let backend = freePort(), port = freePort()
        let instance = "e2e\(port)"
        let echo = try ns.spawn(["echo", "\(backend)"], readyLine: "listening")
        defer { withExtendedLifetime(echo) {} }
        let yaml = proxyConfig(port: port, backends: ["127.0.0.1:\(backend)"], workers: 1, retries: 1,
                               extraTop: "admin: { metrics: off }")
            + "\n    health_check: { kind: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 2 }"
            + "\n    passive: { failures: 2, ejection: 10s }"
        let sluice = try SluiceProcess(arguments: ["run"], configYAML: yaml, launcher: ns.enter)
        try sluice.waitForLog("ready", seconds: 20)

        let held = try ns.spawn(["hold", "\(port)", "2"], readyLine: "held")
        var outcomes: [String] = []
        for _ in 0..<5 { outcomes.append(try ns.netload(["try", "\(port)"]).trimmingCharacters(in: .whitespacesAndNewlines)) }
        #expect(outcomes.allSatisfy { $0 == "closed" }, "no local port left for the backend: \(outcomes)")
        try sluice.waitForLog("where=connect")
        try sluice.waitForLog("where=health_check")
        usleep(500_000) // five check intervals without a port; fall is 2

        let status = try statusJSON(instance)
        let local = status["local_resource_errors"] as? [String: Int]
        print("local resource errors with no port left: \(local ?? [:])")
        #expect((local?["connect"] ?? 0) >= 5 && (local?["health_check"] ?? 0) > 0, "\(status)")
        #expect((status["backends"] as? [[String: Any]])?.allSatisfy {
            $0["state"] as? String == "up" && $0["failures"] as? Int == 0 } == true, "\(status)")
        held.finish()
        try waitUntil(10, "service to come back") { (try? ns.netload(["try", "\(port)"]))?.hasPrefix("echoed") == true }
        #expect(!sluice.log.contains("backend down") && !sluice.log.contains("backend ejected"), "\(sluice.log)")
        #expect(try sluice.stop() == 0)
    }
}
