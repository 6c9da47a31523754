import Foundation
import Glibc
import SluicePosix
import SluiceTestSupport
import Testing

@Suite("Process lifecycle of the sluice binary", .serialized)
struct LifecycleTests {
    @Test("SIGTERM under load: accepting stops at once, in-flight transfers finish intact, exit 0, no fd left")
    func gracefulDrain() throws {
        let echo = try TestServer.echo()
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(port: port, backends: [echo.address]))
        // Slow clients: each sends 2 MiB in 20 pieces over about a second.
        let failures = Locked<[String]>([])
        var threads: [OSThread] = []
        for i in 0..<8 {
            threads.append(startThread {
                do {
                    let fd = try connectTCP("127.0.0.1", port, timeoutSeconds: 10)
                    defer { close(fd) }
                    let data = payload(size: 2_000_000, seed: UInt64(100 + i))
                    let writer = startThread {
                        let piece = data.count / 20
                        for k in 0..<20 {
                            _ = data[(k * piece)..<((k + 1) * piece)].withUnsafeBytes { sendAll(fd, $0) }
                            usleep(50_000)
                        }
                        shutdown(fd, Int32(SHUT_WR))
                    }
                    let (back, clean) = readToEnd(fd)
                    writer.join()
                    if !clean || back != data { failures.withLock { $0.append("client \(i): \(back.count) bytes, clean \(clean)") } }
                } catch {
                    failures.withLock { $0.append("client \(i): \(error)") }
                }
            })
        }
        usleep(300_000)
        sluice.signal(SIGTERM)
        try sluice.waitForLog("stop signal: draining")
        // Listeners are closed at once: a new connection is refused.
        try waitUntil(2, "the listener to close") { (try? connectTCP("127.0.0.1", port)).map { close($0); return false } ?? true }
        for t in threads { t.join() }
        #expect(failures.value.isEmpty, "\(failures.value)")
        #expect(try sluice.waitForExit(seconds: 10) == 0, "\(sluice.log)")
        #expect(sluice.log.contains("clean exit: no descriptor left open"))
    }

    @Test("connections still open at drain_timeout are closed and the process exits 0")
    func drainDeadline() throws {
        let echo = try TestServer.echo()
        let port = freePort()
        let config = proxyConfig(port: port, backends: [echo.address]).replacingOccurrences(of: "drain_timeout: 5s", with: "drain_timeout: 500ms")
        let sluice = try SluiceProcess.run(config: config)
        let fd = try connectTCP("127.0.0.1", port)
        #expect(sendAll(fd, [1]))
        var b: UInt8 = 0
        #expect(recv(fd, &b, 1, 0) == 1)
        let start = Date()
        sluice.signal(SIGTERM)
        #expect(try sluice.waitForExit(seconds: 5) == 0)
        let took = Date().timeIntervalSince(start)
        #expect(took >= 0.45 && took < 3, "exited after \(took)s")
        #expect(readToEnd(fd).bytes.isEmpty)
        close(fd)
        #expect(sluice.log.contains("reason=drain_timeout"))
        #expect(sluice.log.contains("clean exit"))
    }

    @Test("a second stop signal exits at once")
    func secondSignal() throws {
        let echo = try TestServer.echo()
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(port: port, backends: [echo.address]))
        let fd = try connectTCP("127.0.0.1", port) // keeps the drain waiting (drain_timeout 5s)
        #expect(sendAll(fd, [1]))
        var b: UInt8 = 0
        #expect(recv(fd, &b, 1, 0) == 1)
        sluice.signal(SIGINT)
        try sluice.waitForLog("stop signal: draining")
        let start = Date()
        sluice.signal(SIGINT)
        let status = try sluice.waitForExit(seconds: 2)
        #expect(Date().timeIntervalSince(start) < 1)
        #expect(status == 1)
        #expect(sluice.log.contains("second stop signal"))
        if geteuid() == 0 {
            for path in ["/sys/fs/bpf/sluice/e2e\(port)", "/run/sluice/e2e\(port).json", "/run/sluice/e2e\(port).lock", "/run/sluice/e2e\(port).sock"] {
                #expect(access(path, F_OK) != 0, "\(path) removed even so")
            }
        }
        close(fd)
    }

    @Test("SIGHUP with the file unchanged reloads it: generation 2, nothing changed, traffic flows")
    func sighup() throws {
        let echo = try TestServer.echo()
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(port: port, backends: [echo.address]))
        sluice.signal(SIGHUP)
        try sluice.waitForLog("configuration reloaded")
        #expect(sluice.log.contains("trigger=SIGHUP") && sluice.log.contains("generation=2") && sluice.log.contains("changes=0"), "\(sluice.log)")
        #expect(echoRoundTrip(port: port, size: 1000, seed: 1) == nil)
        #expect(try sluice.stop() == 0)
    }

    @Test("out of file descriptors: the worker backs off without spinning and serves again afterwards")
    func fileDescriptorExhaustion() throws {
        let echo = try TestServer.echo()
        let port = freePort()
        let yaml = proxyConfig(port: port, backends: [echo.address], workers: 1)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-emfile-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let configPath = dir.appendingPathComponent("c.yaml").path
        try yaml.write(toFile: configPath, atomically: true, encoding: .utf8)
        // 40 descriptors: room for ~12 proxied connections.
        let sluice = try SluiceProcess(arguments: ["run", "-c", configPath], launcher: ["/usr/bin/prlimit", "--nofile=40", "--"])
        try sluice.waitForLog("ready", seconds: 20)
        var held: [Int32] = []
        var refused: [String] = []
        for _ in 0..<40 {
            do { held.append(try connectTCP("127.0.0.1", port)) } catch { refused.append("\(error)") }
        }
        #expect(refused.isEmpty, "\(refused)")
        try sluice.waitForLog("out of resources, pausing this listener")
        let pid = sluice.process.processIdentifier
        let before = cpuTicks(pid: pid)
        sleep(1)
        let used = cpuTicks(pid: pid) - before
        #expect(used <= 15, "used \(used) ticks in one second at EMFILE: busy loop")
        for fd in held { close(fd) }
        try waitUntil(10, "service to recover") { echoRoundTrip(port: port, size: 100, seed: 9) == nil }
        #expect(try sluice.stop() == 0)
    }

    @Test("sluice demo: curl gets answers from both built-in backends")
    func demoWithCurl() throws {
        let port = freePort()
        let demo = try SluiceProcess(arguments: ["demo", "--port", "\(port)", "--workers", "2", "--metrics-port", "0"])
        try demo.waitForLog("curl http://127.0.0.1:\(port)/")
        var seen = Set<String>()
        for _ in 0..<6 {
            let (status, output) = try runCommand("/usr/bin/curl", ["-sS", "--max-time", "5", "http://127.0.0.1:\(port)/"])
            #expect(status == 0, "\(output)")
            seen.insert(output.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        #expect(seen == ["hello from backend-1", "hello from backend-2"])
        #expect(try demo.stop() == 0, "\(demo.log)")
        // SIGTERM reached the server (its backends' threads block it too) and it drained.
        #expect(demo.log.contains("stop signal: draining") && demo.log.contains("stopped"), "\(demo.log)")
    }

    @Test("sluice check: exit 0 on a valid file; each error with file, line and field path otherwise")
    func checkCommand() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-check-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let good = dir.appendingPathComponent("good.yaml").path
        try proxyConfig(port: 8080, backends: ["127.0.0.1:9001"]).write(toFile: good, atomically: true, encoding: .utf8)
        let (okStatus, okOutput) = try runCommand(sluiceBinary, ["check", "-c", good])
        #expect(okStatus == 0, "\(okOutput)")

        let bad = dir.appendingPathComponent("bad.yaml").path
        try """
            listeners:
              - { name: web, bind: "0.0.0.0:8080", pool: web, connect_timeout: soon }
            pools:
              - name: web
                algorithm: fastest
                backends:
                  - { address: "127.0.0.1:9001", wieght: 2 }
            """.write(toFile: bad, atomically: true, encoding: .utf8)
        let (status, output) = try runCommand(sluiceBinary, ["check", "-c", bad])
        #expect(status != 0)
        #expect(output.contains("bad.yaml:2:"))
        #expect(output.contains("listeners[0].connect_timeout"))
        #expect(output.contains("pools[0].algorithm"))
        #expect(output.contains("pools[0].backends[0].wieght"))
    }

    @Test("sluice run refuses an invalid file before binding anything")
    func runRefusesInvalidConfig() throws {
        let port = freePort()
        let yaml = proxyConfig(port: port, backends: ["127.0.0.1:99999"])
        let sluice = try SluiceProcess(arguments: ["run"], configYAML: yaml)
        #expect(try sluice.waitForExit(seconds: 10) != 0)
        #expect(sluice.log.contains("pools[0].backends[0].address"))
        // Nothing was bound: the port is still free.
        let fd = try Socket.listen(on: SocketAddress(ip: "127.0.0.1", port: port)!, reusePort: false)
        closeDescriptor(fd)
    }

    @Test("the README's example configuration validates")
    func readmeExampleValidates() throws {
        let readme = try String(contentsOf: packageRoot.appendingPathComponent("README.md"), encoding: .utf8)
        let start = try #require(readme.range(of: "```yaml\ninstance:"))
        let body = readme[start.upperBound...]
        let end = try #require(body.range(of: "```"))
        let yaml = "instance:" + body[..<end.lowerBound]
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("readme-\(UUID().uuidString).yaml").path
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        let (status, output) = try runCommand(sluiceBinary, ["check", "-c", path])
        #expect(status == 0, "\(output)")
    }
}
