import Foundation
import Glibc
import SluicePosix
import SluiceTestSupport
import Testing

@Suite("Least-loaded steering through the sluice binary", .serialized)
struct SteeringEndToEndTests {
    @Test("200 held connections spread evenly over 4 workers; bpftool agrees with the workers; counters return to 0")
    func evenSpreadAndCleanCounters() throws {
        guard requireRoot() else { return }
        let echo = try TestServer.echo()
        let port = freePort()
        let instance = "e2e-steer-\(port)"
        // Rebalancing off: this checks where the kernel placed connections,
        // and each worker's access lines, which a move would change.
        let yaml = proxyConfig(port: port, backends: [echo.address], workers: 4, extraTop: "rebalance: off")
            .replacingOccurrences(of: "steering: hash", with: "steering: least_loaded")
            .replacingOccurrences(of: "instance: e2e\(port)", with: "instance: \(instance)")
        let sluice = try SluiceProcess.run(config: yaml)
        let held = try holdConnections(200, port: port)
        let load = try pinnedWorkerLoad(instance: instance)
        let active = load.prefix(4).map { $0["active"]! }
        #expect(active.reduce(0, +) == 200)
        #expect(active.max()! - active.min()! <= 1, "\(active)")
        for fd in held { close(fd) }
        try waitUntil(5, "active counts to return to 0") {
            ((try? pinnedWorkerLoad(instance: instance)) ?? []).prefix(4).allSatisfy { $0["active"] == 0 }
        }
        let accepted = try pinnedWorkerLoad(instance: instance).prefix(4).map { $0["accepted"]! }
        // What each worker logged (one access line per connection) equals what the kernel steered to it.
        for k in 0..<4 {
            try waitUntil(5, "access lines of worker \(k)") {
                sluice.log.split(separator: "\n").filter { $0.contains(" access worker=\(k) ") }.count == accepted[k]
            }
        }
        let progIDs = try #require(sluice.log.split(separator: "\n").first { $0.contains(" ready ") }?
            .split(separator: " ").first { $0.hasPrefix("prog_ids=") }?.dropFirst("prog_ids=".count))
        #expect(try sluice.stop() == 0)
        #expect(access("/sys/fs/bpf/sluice/\(instance)", F_OK) != 0, "pins removed at stop")
        // The reuseport group drops its program after an RCU grace period.
        for id in progIDs.split(separator: ",") {
            try waitUntil(5, "program \(id) to be unloaded after stop") {
                (try? runCommand("/usr/sbin/bpftool", ["prog", "show", "id", String(id)]))?.0 != 0
            }
        }
    }

    @Test("two instances run side by side without touching each other's counters")
    func twoInstances() throws {
        guard requireRoot() else { return }
        let echo = try TestServer.echo()
        var processes: [(SluiceProcess, UInt16, String)] = []
        for _ in 0..<2 {
            let port = freePort()
            let instance = "e2e-side-\(port)"
            let yaml = proxyConfig(port: port, backends: [echo.address], workers: 2)
                .replacingOccurrences(of: "steering: hash", with: "steering: least_loaded")
                .replacingOccurrences(of: "instance: e2e\(port)", with: "instance: \(instance)")
            processes.append((try SluiceProcess.run(config: yaml), port, instance))
        }
        let held = try holdConnections(10, port: processes[0].1)
        #expect(try pinnedWorkerLoad(instance: processes[0].2).prefix(2).map { $0["active"]! }.reduce(0, +) == 10)
        #expect(try pinnedWorkerLoad(instance: processes[1].2).prefix(2).map { $0["accepted"]! }.reduce(0, +) == 0)
        for fd in held { close(fd) }
        for (process, _, instance) in processes {
            #expect(try process.stop() == 0)
            #expect(access("/sys/fs/bpf/sluice/\(instance)", F_OK) != 0)
        }
    }

    @Test("a second daemon with the same instance name is refused while the first runs")
    func sameInstanceRefused() throws {
        guard requireRoot() else { return }
        let echo = try TestServer.echo()
        let port = freePort()
        let first = try SluiceProcess.run(config: proxyConfig(port: port, backends: [echo.address]))
        let second = try SluiceProcess(arguments: ["run"], configYAML: proxyConfig(port: port, backends: [echo.address]))
        #expect(try second.waitForExit(seconds: 10) != 0)
        #expect(second.log.contains("already running"))
        #expect(echoRoundTrip(port: port, size: 100, seed: 1) == nil, "the first one is untouched")
        #expect(try first.stop() == 0)
    }

    @Test("pins left by a daemon that was killed are replaced, with a log line, by the next start")
    func stalePinsReplaced() throws {
        guard requireRoot() else { return }
        let echo = try TestServer.echo()
        let port = freePort()
        let yaml = proxyConfig(port: port, backends: [echo.address]).replacingOccurrences(of: "steering: hash", with: "steering: least_loaded")
        let killed = try SluiceProcess.run(config: yaml, extraArguments: [])
        killed.signal(SIGKILL)
        _ = try killed.waitForExit(seconds: 5)
        #expect(access("/sys/fs/bpf/sluice/e2e\(port)/worker_load", F_OK) == 0, "a killed daemon leaves its pins")
        let next = try SluiceProcess.run(config: yaml)
        #expect(next.log.contains("replaced stale pins"))
        #expect(echoRoundTrip(port: port, size: 1000, seed: 2) == nil)
        #expect(try next.stop() == 0)
        #expect(access("/sys/fs/bpf/sluice/e2e\(port)", F_OK) != 0)
    }

    @Test("shared_accept: one listening socket in every worker's epoll (EPOLLEXCLUSIVE) serves and counts", arguments: ["shared_accept", "hash"])
    func otherSteeringModes(mode: String) throws {
        guard requireRoot() else { return }
        let echo = try TestServer.echo()
        let port = freePort()
        let yaml = proxyConfig(port: port, backends: [echo.address], workers: 2)
            .replacingOccurrences(of: "steering: hash", with: "steering: \(mode)")
        let sluice = try SluiceProcess.run(config: yaml)
        let failures = Locked<[String]>([])
        var threads: [OSThread] = []
        for i in 0..<16 {
            threads.append(startThread {
                if let f = echoRoundTrip(port: port, size: 200_000, seed: UInt64(i)) { failures.withLock { $0.append(f) } }
            })
        }
        for t in threads { t.join() }
        #expect(failures.value.isEmpty, "\(failures.value)")
        let load = try pinnedWorkerLoad(instance: "e2e\(port)").prefix(2)
        #expect(load.map { $0["accepted"]! }.reduce(0, +) == 16)
        try waitUntil(5, "active back to 0") {
            ((try? pinnedWorkerLoad(instance: "e2e\(port)")) ?? []).prefix(2).allSatisfy { $0["active"] == 0 }
        }
        #expect(load.map { $0["bytes_in"]! }.reduce(0, +) == 16 * 200_000)
        #expect(try sluice.stop() == 0)
    }
}
