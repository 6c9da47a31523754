import Foundation
import Glibc
import SluicePosix
import Testing

/// An HTTP/1.1 backend: answers `GET /health` with `healthStatus` and every
/// other request with 200 and its name; counts the non-health requests.
final class HTTPBackend: @unchecked Sendable {
    let name: String
    let served = Locked<Int>(0)
    let healthStatus: Locked<Int>
    private var server: TestServer?
    private(set) var port: UInt16 = 0

    init(name: String, healthStatus: Int = 200) {
        self.name = name
        self.healthStatus = Locked(healthStatus)
    }

    var address: String { "127.0.0.1:\(port)" }

    func start() throws {
        let served = self.served, health = self.healthStatus, name = self.name
        server = try TestServer(port: port) { fd in
            var pending: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = recv(fd, &buffer, buffer.count, 0)
                if n <= 0 { return }
                pending += buffer[0..<n]
                while let end = pending.firstRange(of: Array("\r\n\r\n".utf8)) {
                    let head = String(decoding: pending[..<end.lowerBound], as: UTF8.self)
                    pending.removeSubrange(..<end.upperBound)
                    let isHealth = head.hasPrefix("GET /health ")
                    let status = isHealth ? health.value : 200
                    if !isHealth { served.withLock { $0 += 1 } }
                    let body = "\(name)\n"
                    let closing = head.lowercased().contains("connection: close")
                    let reply = "HTTP/1.1 \(status) X\r\nContent-Length: \(body.utf8.count)\r\n"
                        + (closing ? "Connection: close\r\n" : "") + "\r\n\(body)"
                    if !sendAll(fd, Array(reply.utf8)) { return }
                    if closing { shutdown(fd, Int32(SHUT_WR)); _ = readToEnd(fd); return }
                }
            }
        }
        port = server!.port
    }

    /// Stops listening and cuts its open connections.
    func kill() {
        server?.stop()
        server = nil
    }
}

/// One HTTP request on a fresh connection through the proxy; the body, or nil.
func httpGet(port: UInt16, timeoutSeconds: Int = 5) -> String? {
    guard let fd = try? connectTCP("127.0.0.1", port, timeoutSeconds: timeoutSeconds) else { return nil }
    defer { close(fd) }
    guard sendAll(fd, Array("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8)) else { return nil }
    let (bytes, _) = readToEnd(fd)
    let text = String(decoding: bytes, as: UTF8.self)
    guard text.hasPrefix("HTTP/1.1 200"), let split = text.range(of: "\r\n\r\n") else { return nil }
    return String(text[split.upperBound...]).trimmingCharacters(in: .whitespacesAndNewlines)
}

/// Steady load: `threads` clients looping over fresh connections; records
/// when each request failed (seconds since `start`).
final class SteadyLoad: @unchecked Sendable {
    let failures = Locked<[Double]>([])
    let successes = Locked<Int>(0)
    private let stop = Locked<Bool>(false)
    private var workers: [OSThread] = []
    let start = Date()

    init(port: UInt16, threads: Int) {
        for _ in 0..<threads {
            workers.append(startThread { [self] in
                while !stop.value {
                    if httpGet(port: port) != nil {
                        successes.withLock { $0 += 1 }
                    } else {
                        let at = Date().timeIntervalSince(start)
                        failures.withLock { $0.append(at) }
                    }
                }
            })
        }
    }

    func finish() {
        stop.withLock { $0 = true }
        for w in workers { w.join() }
    }
}

func healthConfig(port: UInt16, backends: [String], pool: String, workers: Int = 2, retries: Int = 1) -> String {
    proxyConfig(port: port, backends: backends, workers: workers, retries: retries, extraListener: ", connect_timeout: 300ms")
        + "\n" + pool
}

@Suite("Health checks and failure handling", .serialized)
struct HealthEndToEndTests {
    @Test("kill a backend under load: no failed request from one check interval after the kill; it comes back after rise checks")
    func killAndRestart() throws {
        let a = HTTPBackend(name: "a"), b = HTTPBackend(name: "b")
        try a.start()
        try b.start()
        let port = freePort()
        let sluice = try SluiceProcess.run(config: healthConfig(
            port: port, backends: [a.address, b.address],
            pool: "    health_check: { kind: tcp, interval: 200ms, timeout: 100ms, rise: 2, fall: 1 }"))
        let load = SteadyLoad(port: port, threads: 4)
        usleep(700_000)
        let killedAt = Date().timeIntervalSince(load.start)
        b.kill()
        try sluice.waitForLog("backend down")
        usleep(1_000_000)
        let servedByBBefore = b.served.value
        try b.start() // same port
        try sluice.waitForLog("backend up", seconds: 5)
        try waitUntil(3, "b to take traffic again") { b.served.value > servedByBBefore }
        load.finish()
        let late = load.failures.value.filter { $0 > killedAt + 0.2 + 0.05 }
        #expect(late.isEmpty, "failures after one check interval: \(late)")
        #expect(load.successes.value > 100)
        print("kill under load: \(load.failures.value.count) failed request(s) in the first check interval, \(load.successes.value) served")
        #expect(try sluice.stop() == 0)
        #expect(sluice.log.contains("clean exit"))
    }

    @Test("an HTTP check marks a backend down on 500s although TCP connects still succeed")
    func httpCheckSees500() throws {
        let good = HTTPBackend(name: "good"), sick = HTTPBackend(name: "sick", healthStatus: 500)
        try good.start()
        try sick.start()
        let port = freePort()
        let sluice = try SluiceProcess.run(config: healthConfig(
            port: port, backends: [good.address, sick.address],
            pool: "    health_check: { kind: http, path: /health, interval: 150ms, timeout: 100ms, rise: 1, fall: 2 }"))
        try sluice.waitForLog("backend down")
        try sluice.waitForLog("HTTP 500, expected 200") // lines reach the log through a queue
        let before = sick.served.value
        for _ in 0..<30 { #expect(httpGet(port: port) == "good") }
        #expect(sick.served.value == before, "no request reached the backend answering 500")
        sick.healthStatus.withLock { $0 = 200 }
        try sluice.waitForLog("backend up", seconds: 3)
        try waitUntil(3, "the recovered backend to serve") {
            _ = httpGet(port: port)
            return sick.served.value > before
        }
        let socketPath = "/run/sluice/e2e\(port).sock"
        if geteuid() == 0 {
            let backends = try AdminClientForTests.send(socketPath, "{\"cmd\":\"backends\"}")
            #expect(backends.contains("\"last_check\""))
        }
        #expect(try sluice.stop() == 0)
    }

    @Test("passive ejection without active checks: a refusing backend is ejected, then tried again after the ejection")
    func passiveEjection() throws {
        let good = HTTPBackend(name: "good")
        try good.start()
        let dead = "127.0.0.1:\(freePort())"
        let port = freePort()
        let sluice = try SluiceProcess.run(config: healthConfig(
            port: port, backends: [good.address, dead], pool: "    passive: { failures: 2, ejection: 1s }", workers: 1))
        for _ in 0..<10 { #expect(httpGet(port: port) == "good") }
        try sluice.waitForLog("backend ejected after consecutive failures")
        let failuresWhileEjected = sluice.log.components(separatedBy: "backend connect failed").count
        for _ in 0..<20 { #expect(httpGet(port: port) == "good") }
        #expect(sluice.log.components(separatedBy: "backend connect failed").count == failuresWhileEjected,
                "no attempt on the ejected backend")
        usleep(1_200_000)
        for _ in 0..<10 { #expect(httpGet(port: port) == "good") }
        #expect(sluice.log.components(separatedBy: "backend connect failed").count > failuresWhileEjected,
                "tried again once the ejection ran out")
        #expect(try sluice.stop() == 0)
    }

    @Test("all backends down: clients are closed at once, and service returns with a backend")
    func allDownThenRecovery() throws {
        let a = HTTPBackend(name: "a")
        try a.start()
        let port = freePort()
        let sluice = try SluiceProcess.run(config: healthConfig(
            port: port, backends: [a.address],
            pool: "    health_check: { kind: tcp, interval: 100ms, timeout: 50ms, rise: 1, fall: 1 }"))
        #expect(httpGet(port: port) == "a")
        a.kill()
        try sluice.waitForLog("backend down")
        for _ in 0..<5 {
            let start = Date()
            #expect(httpGet(port: port) == nil)
            #expect(Date().timeIntervalSince(start) < 0.1, "closed at once, not left hanging")
        }
        try sluice.waitForLog("reason=no_backend") // lines reach the log through a queue
        try a.start()
        try sluice.waitForLog("backend up", seconds: 3)
        #expect(httpGet(port: port) == "a")
        #expect(try sluice.stop() == 0)
    }

    @Test("a backend flapping 200 times neither brings the process down nor leaks descriptors")
    func flapping() throws {
        let steady = HTTPBackend(name: "steady"), flappy = HTTPBackend(name: "flappy")
        try steady.start()
        try flappy.start()
        let port = freePort()
        let sluice = try SluiceProcess.run(config: healthConfig(
            port: port, backends: [steady.address, flappy.address],
            pool: "    health_check: { kind: tcp, interval: 20ms, timeout: 10ms, rise: 1, fall: 1 }\n    passive: { failures: 1, ejection: 10ms }"))
        let pid = sluice.process.processIdentifier
        func fdCount() -> Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1 }
        usleep(200_000)
        let before = fdCount()
        let load = SteadyLoad(port: port, threads: 2)
        for _ in 0..<200 {
            flappy.kill()
            usleep(5_000)
            try flappy.start()
            usleep(5_000)
        }
        load.finish()
        usleep(300_000)
        #expect(sluice.process.isRunning)
        #expect(load.successes.value > 100)
        #expect(fdCount() <= before + 4, "fds before \(before), after \(fdCount())")
        #expect(try sluice.stop() == 0)
        #expect(sluice.log.contains("clean exit"))
    }
}
