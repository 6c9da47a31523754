import Foundation
import Glibc
import SluicePosix
import Testing

/// Sends one byte on every connection, then waits until `deadline` seconds
/// have passed; returns how many got no echo in that time (frozen).
func frozenConnections(_ fds: [Int32], deadline seconds: Double) -> Int {
    for fd in fds { _ = sendAll(fd, [9]) }
    var waiting = Set(fds)
    let end = Date().addingTimeInterval(seconds)
    while !waiting.isEmpty, Date() < end {
        var polls = waiting.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        _ = poll(&polls, nfds_t(polls.count), 20)
        for p in polls where p.revents & Int16(POLLIN) != 0 {
            var byte: UInt8 = 0
            if recv(p.fd, &byte, 1, Int32(MSG_DONTWAIT)) == 1 && byte == 9 { waiting.remove(p.fd) }
        }
    }
    return waiting.count
}

@Suite("A stalled worker", .serialized)
struct StallTests {
    @Test("one of 4 workers stalled under 400 connections, 400 more opened: none frozen, none moved to it, stop within drain_timeout + 2 s")
    func stalledWorker() throws {
        guard requireRoot() else { return }
        let echo = try TestServer.echo()
        let port = freePort()
        let instance = "e2e\(port)"
        let yaml = steeredConfig(port: port, backends: [echo.address], workers: 4, extra: "rebalance: { interval: 100ms, ratio: 1.1 }")
            .replacingOccurrences(of: "stall_threshold: 2s", with: "stall_threshold: 500ms")
            .replacingOccurrences(of: "drain_timeout: 5s", with: "drain_timeout: 1s")
        let sluice = try SluiceProcess(arguments: ["run", "--stall-on-sigusr1", "3:12000"], configYAML: yaml)
        try sluice.waitForLog("ready", seconds: 20)
        let before = try holdConnections(400, port: port)
        defer { for fd in before { close(fd) } }
        #expect(workerField(try statusJSON(instance), "active") == [100, 100, 100, 100])

        sluice.signal(SIGUSR1)
        try waitUntil(5, "worker 3 seen stalled") {
            ((try? statusJSON(instance))?["workers"] as? [[String: Any]])?[3]["state"] as? String == "stalled"
        }
        var after: [Int32] = []
        defer { for fd in after { close(fd) } }
        for _ in 0..<400 { after.append(try connectTCP("127.0.0.1", port)) }
        let frozen = frozenConnections(after, deadline: 1.0)
        print("connections opened after the stall with no echo within 1 s: \(frozen) of 400")
        #expect(frozen == 0)
        usleep(1_000_000) // ten rebalancer ticks
        let active = workerField(try statusJSON(instance), "active")
        #expect(active[3] == 100, "nothing moved to or from the stalled worker: \(active)")
        let moves = sluice.log.split(separator: "\n").filter { $0.contains("rebalanced") }
        #expect(!moves.contains { $0.contains("to=3") }, "\(moves)")

        let stopped = Date()
        sluice.signal(SIGTERM)
        let status = try sluice.waitForExit(seconds: 8)
        let took = Date().timeIntervalSince(stopped)
        print("stopped \(String(format: "%.2f", took)) s after SIGTERM with a worker stalled")
        #expect(took <= 3.7, "drain_timeout 1s + 2s hard deadline")
        #expect(status == 1, "a stuck worker is an unclean stop")
        #expect(sluice.log.contains("did not stop within drain_timeout + 2s"))
        #expect(!FileManager.default.fileExists(atPath: "/sys/fs/bpf/sluice/\(instance)"), "pins removed")
    }

    @Test("SIGUSR1 is logged and ignored; SIGUSR2 upgrades to the same binary; SIGQUIT drains like SIGTERM")
    func otherSignals() throws {
        guard requireRoot() else { return }
        let echo = try TestServer.echo()
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(port: port, backends: [echo.address]))
        defer { try? stopDaemon("e2e\(port)") }
        sluice.signal(SIGUSR1)
        try sluice.waitForLog("SIGUSR1 ignored")
        sluice.signal(SIGUSR2)
        #expect(try sluice.waitForExit(seconds: 15) == 0, "handed over, then gone: \(sluice.log)")
        // The new process says so once the old one has gone: `waitForLog` would stop looking at the old one's exit.
        try waitUntil(10, "the new process to take over:\n\(sluice.log)") { sluice.log.contains("binary upgrade: this process took over") }
        let pid = try #require(daemonPID("e2e\(port)"))
        #expect(pid != sluice.process.processIdentifier)
        #expect(echoRoundTrip(port: port, size: 1000, seed: 2) == nil)
        kill(pid, SIGQUIT)
        try waitUntil(10, "the new process to drain and exit") { kill(pid, 0) != 0 }
        #expect(sluice.log.contains("signal=SIGQUIT"))
    }
}
