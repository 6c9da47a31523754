import Foundation
import Glibc
import SluicePosix
import Testing

@Suite("Load counts stay true under SYN floods, syncookies and stalls", .serialized)
struct LoadTruthTests {
    private func steeredInNamespace(_ ns: TestNamespace, port: UInt16, backend: UInt16, extra: String = "") throws -> SluiceProcess {
        // The settle window is at least the stall threshold: 400 ms keeps it at 500 ms.
        let yaml = steeredConfig(port: port, backends: ["127.0.0.1:\(backend)"], workers: 4, extra: "rebalance: off\n" + extra)
            .replacingOccurrences(of: "stall_threshold: 2s", with: "stall_threshold: 400ms")
        let sluice = try SluiceProcess(arguments: ["run", "--verify-clean-exit"], configYAML: yaml, launcher: ns.enter)
        try sluice.waitForLog("ready", seconds: 20)
        return sluice
    }

    @Test("20,000 SYNs that never complete: every worker's count is back to the truth within 1 s; a burst of 200 still spreads ≤ 1")
    func synFlood() throws {
        guard requireRoot() else { return }
        let ns = try TestNamespace()
        let backend = freePort(), port = freePort()
        let echo = try ns.spawn(["echo", "\(backend)"], readyLine: "listening")
        defer { withExtendedLifetime(echo) {} }
        let sluice = try steeredInNamespace(ns, port: port, backend: backend)
        let instance = "e2e\(port)"

        try ns.netload(["flood", "\(port)", "20000"])
        let floodEnded = Date()
        let charged = workerLoads(instance).map { $0["charged"] ?? 0 }
        #expect(charged.reduce(0, +) >= 20_000, "every SYN was charged: \(charged)")
        try waitUntil(3, "counts back to 0 after the flood") {
            workerLoads(instance).allSatisfy { $0["active"] == 0 && $0["pending"] == 0 }
        }
        let settled = Date().timeIntervalSince(floodEnded)
        print("counts true again \(String(format: "%.3f", settled)) s after 20,000 SYNs")
        #expect(settled <= 1.0, "took \(settled) s")
        let status = try statusJSON(instance)
        #expect(workerField(status, "active") == [0, 0, 0, 0])
        #expect(workerField(status, "pending") == [0, 0, 0, 0])

        let held = try ns.spawn(["hold", "\(port)", "200"], readyLine: "held")
        try waitUntil(3, "pending charges of the burst settled") { workerLoads(instance).allSatisfy { $0["pending"] == 0 } }
        let active = workerLoads(instance).map { $0["active"]! }
        #expect(active.reduce(0, +) == 200)
        #expect(active.max()! - active.min()! <= 1, "\(active)")
        held.finish()
        try waitUntil(5, "counts back to 0 after the burst") { workerLoads(instance).allSatisfy { $0["active"] == 0 } }
        #expect(workerLoads(instance).allSatisfy { $0["underflows"] == 0 })
        #expect(try sluice.stop() == 0)
    }

    @Test("a retransmitted SYN that matches a half-open handshake is charged once")
    func retransmittedSYN() throws {
        guard requireRoot() else { return }
        let ns = try TestNamespace()
        let backend = freePort(), port = freePort()
        let sluice = try steeredInNamespace(ns, port: port, backend: backend)
        let instance = "e2e\(port)"
        for _ in 0..<3 { try ns.netload(["syn", "\(port)", "40001", "777"]) }
        let charged = workerLoads(instance).map { $0["charged"] ?? 0 }
        #expect(charged.reduce(0, +) == 1, "\(charged)")
        try waitUntil(2, "its charge expired") { workerLoads(instance).allSatisfy { $0["active"] == 0 } }
        #expect(try sluice.stop() == 0)
    }

    @Test("syncookies always on: connections completed by a cookie ACK are steered least-loaded and none lands on a draining worker")
    func syncookies() throws {
        guard requireRoot() else { return }
        let ns = try TestNamespace()
        try ns.run(["sysctl", "-q", "-w", "net.ipv4.tcp_syncookies=2"])
        let backend = freePort(), port = freePort()
        let instance = "e2e\(port)"
        let socketPath = "/run/sluice/\(instance).sock"
        let echo = try ns.spawn(["echo", "\(backend)"], readyLine: "listening")
        defer { withExtendedLifetime(echo) {} }
        let sluice = try steeredInNamespace(ns, port: port, backend: backend)
        _ = try AdminClientForTests.send(socketPath, "{\"cmd\":\"drain_worker\",\"worker\":1}")
        let followedBefore = (try statusJSON(instance)["steering"] as? [String: Any])?["acks_followed"] as? Int ?? -1

        let held = try ns.spawn(["hold", "\(port)", "200"], readyLine: "held")
        try waitUntil(3, "the SYNs' charges expired") { workerLoads(instance).allSatisfy { $0["pending"] == 0 } }
        let loads = workerLoads(instance)
        let active = loads.map { $0["active"]! }
        #expect(active[1] == 0 && loads[1]["accepted"] == 0, "the draining worker got nothing: \(active)")
        let others = [active[0], active[2], active[3]]
        #expect(others.reduce(0, +) == 200)
        #expect(others.max()! - others.min()! <= 1, "\(active)")
        let steering = try statusJSON(instance)["steering"] as? [String: Any]
        let followed = (steering?["acks_followed"] as? Int ?? -1) - followedBefore
        #expect(followed >= 200, "every connection completed on its cookie ACK, on its SYN's worker: \(followed)")
        held.finish()
        #expect(try sluice.stop() == 0)
    }

    @Test("least_conn counts a connect under way: a burst of 200 spreads over two backends within the worker count")
    func leastConnBurst() throws {
        guard requireRoot() else { return }
        let ns = try TestNamespace()
        let first = freePort(), second = freePort(), port = freePort()
        let echoes = try [first, second].map { try ns.spawn(["echo", "\($0)"], readyLine: "listening") }
        defer { withExtendedLifetime(echoes) {} }
        let yaml = steeredConfig(port: port, backends: ["127.0.0.1:\(first)", "127.0.0.1:\(second)"], workers: 4, extra: "rebalance: off\n")
            .replacingOccurrences(of: "algorithm: round_robin", with: "algorithm: least_conn")
        try #require(yaml.contains("algorithm: least_conn"))
        let sluice = try SluiceProcess(arguments: ["run", "--verify-clean-exit"], configYAML: yaml, launcher: ns.enter)
        try sluice.waitForLog("ready", seconds: 20)
        let instance = "e2e\(port)"
        for round in 0..<3 {
            // Before connects were counted from the pick, a batch of accepts saw
            // stale counts and sent itself whole to one backend (64 / 0 seen).
            let held = try ns.spawn(["hold", "\(port)", "200"], readyLine: "held")
            let backends = try #require(try statusJSON(instance)["backends"] as? [[String: Any]])
            let active = backends.map { $0["active"] as? Int ?? -1 }
            #expect(active.reduce(0, +) == 200, "round \(round): \(active)")
            #expect(active.max()! - active.min()! <= 4, "round \(round): \(active)")
            held.finish()
            try waitUntil(5, "counts back to 0") {
                ((try? statusJSON(instance)["backends"] as? [[String: Any]]) ?? []).allSatisfy { $0["active"] as? Int == 0 }
            }
        }
        #expect(try sluice.stop() == 0)
    }
}
