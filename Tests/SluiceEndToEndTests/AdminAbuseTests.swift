import Foundation
import Glibc
import SluicePosix
import SluiceTestSupport
import Testing

// Clients that misbehave against the admin socket and /metrics: the daemon
// must live, keep answering, and its control thread must not spin.

/// utime + stime of one thread, in clock ticks (/proc/<pid>/task/<tid>/stat).
func threadCPUTicks(pid: Int32, tid: Int32) -> Int {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return -1 }
    // Fields after "pid (comm)": state is field 3, utime 14, stime 15.
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    return (Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0)
}

/// VmRSS of a process in KiB.
func residentKiB(pid: Int32) -> Int {
    let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
    return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
}

/// The control thread is the main thread (tid == pid): its CPU ticks over `seconds`.
func controlThreadTicks(of sluice: SluiceProcess, over seconds: Double) -> Int {
    let pid = sluice.process.processIdentifier
    let before = threadCPUTicks(pid: pid, tid: pid)
    usleep(UInt32(seconds * 1e6))
    return threadCPUTicks(pid: pid, tid: pid) - before
}

/// A TCP client whose receive window is as small as the kernel allows.
func connectWithTinyWindow(_ port: UInt16) throws -> Int32 {
    let address = SocketAddress(ip: "127.0.0.1", port: port)!
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var size: Int32 = 1 // the kernel rounds up to its minimum
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, 4)
    guard address.withSockaddr({ Glibc.connect(fd, $0, $1) }) == 0 else {
        let code = errno
        close(fd)
        throw SystemCallError(call: "connect \(address)", errno: code)
    }
    return fd
}

/// Sends `request` up to `times` times without blocking; stops when the peer's buffers are full.
@discardableResult
func pipeline(_ fd: Int32, _ request: String, times: Int) -> Int {
    let bytes = Array(request.utf8)
    for sent in 0..<times {
        if send(fd, bytes, bytes.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) != bytes.count { return sent }
    }
    return times
}

/// Closes with a reset (SO_LINGER 0) rather than a FIN.
func resetAndClose(_ fd: Int32) {
    var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
    close(fd)
}

/// Whether the daemon closed `fd`: EOF or a reset, without waiting.
func closedByPeer(_ fd: Int32) -> Bool {
    var byte: UInt8 = 0
    let n = recv(fd, &byte, 1, Int32(MSG_DONTWAIT | MSG_PEEK))
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
}

func scrape(_ port: UInt16) throws -> (Int32, String) {
    try runCommand("/usr/bin/curl", ["-sS", "--fail", "--max-time", "5", "http://127.0.0.1:\(port)/metrics"])
}

private struct AbuseSetup {
    let sluice: SluiceProcess
    let metricsPort: UInt16
    let socketPath: String
    let instance: String
    let echo: TestServer

    init(idleTimeout: String? = nil) throws {
        echo = try TestServer.echo()
        let port = freePort()
        metricsPort = freePort()
        instance = "e2e\(port)"
        socketPath = "/run/sluice/\(instance).sock"
        let idle = idleTimeout.map { ", idle_timeout: \($0)" } ?? ""
        // 300 backends (never dialled here) make /metrics ~150 KB: more than
        // a socket with a closed window takes, so answers stay pending.
        let silentBackends = (1...299).map { "127.0.0.2:\(10_000 + $0)" }
        sluice = try SluiceProcess.run(config: proxyConfig(
            port: port, backends: [echo.address] + silentBackends, workers: 1,
            extraTop: "admin: { metrics: \"127.0.0.1:\(metricsPort)\"\(idle) }"))
    }

    var pid: Int32 { sluice.process.processIdentifier }

    /// Both endpoints answer, and the daemon is still the same process.
    func expectBothAnswer(_ when: String) throws {
        #expect(sluice.process.isRunning, "\(when): the daemon is gone:\n\(sluice.log)")
        let (code, text) = try scrape(metricsPort)
        #expect(code == 0 && text.contains("sluice_build_info"), "\(when): /metrics: \(text)")
        let status = try AdminClientForTests.send(socketPath, "{\"cmd\":\"status\"}")
        #expect(status.contains("\"workers\""), "\(when): admin: \(status)")
    }
}

@Suite("admin socket and /metrics under abusive clients", .serialized)
struct AdminAbuseTests {
    @Test("pipelined requests never read, then a reset: the daemon lives, both endpoints answer, the control thread idles")
    func pipelinedThenReset() throws {
        guard requireRoot() else { return }
        let setup = try AbuseSetup()
        let rssBefore = residentKiB(pid: setup.pid)
        for round in 0..<10 {
            let metrics = try connectWithTinyWindow(setup.metricsPort)
            let admin = try connectUnix(setup.socketPath, receiveBuffer: 1)
            #expect(pipeline(metrics, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", times: 2000) > 0)
            #expect(pipeline(admin, "{\"cmd\":\"status\"}\n", times: 2000) > 0)
            // Odd rounds reset while the daemon answers; even ones once it
            // waits for the window with EPOLLOUT armed (where the old code
            // closed the descriptor on the failed write, then read it: SIGILL).
            usleep(round % 2 == 0 ? 400_000 : 10_000)
            resetAndClose(metrics)
            resetAndClose(admin)
        }
        // Two more that stay open, unread, with answers pending: no spinning on EPOLLOUT.
        let stuckMetrics = try connectWithTinyWindow(setup.metricsPort)
        let stuckAdmin = try connectUnix(setup.socketPath, receiveBuffer: 1)
        defer { close(stuckMetrics); close(stuckAdmin) }
        pipeline(stuckMetrics, "GET /metrics HTTP/1.1\r\n\r\n", times: 2000)
        pipeline(stuckAdmin, "{\"cmd\":\"status\"}\n", times: 2000)
        let ticks = controlThreadTicks(of: setup.sluice, over: 2)
        let rssAfter = residentKiB(pid: setup.pid)
        print("pipelined+reset: control thread \(ticks) ticks in 2 s; VmRSS \(rssBefore) KiB -> \(rssAfter) KiB")
        #expect(ticks >= 0 && ticks <= 10, "control thread used \(ticks) ticks in 2 s")
        try setup.expectBothAnswer("after 10 pipelined resets")
        #expect(rssAfter - rssBefore < 64 * 1024, "RSS grew \(rssAfter - rssBefore) KiB")
        #expect(try setup.sluice.stop() == 0)
    }

    @Test("100 idle clients on each endpoint: admin still answers, the idle ones are closed after admin.idle_timeout")
    func idleClients() throws {
        guard requireRoot() else { return }
        let setup = try AbuseSetup(idleTimeout: "2s")
        let rssBefore = residentKiB(pid: setup.pid)
        let idleAdmin = try (0..<100).map { _ in try connectUnix(setup.socketPath) }
        // A client past the metrics slots may be reset before its connect returns.
        let idleMetrics = (0..<100).compactMap { _ in try? connectTCP("127.0.0.1", setup.metricsPort) }
        defer { for fd in idleAdmin + idleMetrics { close(fd) } }
        usleep(200_000)
        let status = try AdminClientForTests.send(setup.socketPath, "{\"cmd\":\"status\"}")
        #expect(status.contains("\"workers\""), "admin with 100 idle clients: \(status)")
        // The Kubernetes liveness probe passes while every metrics slot is held.
        let (alive, aliveOutput) = try runCommand(sluiceBinary, ["status", "--instance", setup.instance, "--check"])
        #expect(alive == 0, "\(aliveOutput)")
        // Metrics keeps its own, smaller, slot count: the extra clients are refused at once.
        let refused = (100 - idleMetrics.count) + idleMetrics.filter(closedByPeer).count
        #expect(refused >= 50, "\(refused) of 100 idle metrics clients refused")
        let ticks = controlThreadTicks(of: setup.sluice, over: 2)
        let rssDuring = residentKiB(pid: setup.pid)
        print("idle clients: control thread \(ticks) ticks in 2 s; VmRSS \(rssBefore) KiB -> \(rssDuring) KiB")
        #expect(ticks >= 0 && ticks <= 10, "control thread used \(ticks) ticks in 2 s")
        try waitUntil(5, "every idle client closed") { (idleAdmin + idleMetrics).allSatisfy(closedByPeer) }
        try setup.expectBothAnswer("after the idle timeout")
        #expect(try setup.sluice.stop() == 0)
        let (dead, deadOutput) = try runCommand(sluiceBinary, ["status", "--instance", setup.instance, "--check"])
        #expect(dead == 1, "\(deadOutput)")
    }

    @Test("half-closed clients with answers pending are answered in full, then closed; no spinning")
    func halfClosed() throws {
        guard requireRoot() else { return }
        let setup = try AbuseSetup()
        let admin = try connectUnix(setup.socketPath, receiveBuffer: 1)
        defer { close(admin) }
        let requests = 300
        #expect(sendAll(admin, Array(String(repeating: "{\"cmd\":\"status\"}\n", count: requests - 1).utf8)))
        #expect(sendAll(admin, Array("{\"cmd\":\"backends\"}".utf8))) // the last line has no newline
        shutdown(admin, Int32(SHUT_WR))
        let metrics = try connectWithTinyWindow(setup.metricsPort)
        defer { close(metrics) }
        #expect(sendAll(metrics, Array("GET /metrics HTTP/1.1\r\n\r\n".utf8)))
        shutdown(metrics, Int32(SHUT_WR))
        let ticks = controlThreadTicks(of: setup.sluice, over: 2) // nobody reads meanwhile
        print("half-closed: control thread \(ticks) ticks in 2 s")
        #expect(ticks >= 0 && ticks <= 10, "control thread used \(ticks) ticks in 2 s")
        let answers = readToEnd(admin)
        #expect(answers.cleanEOF)
        let lines = answers.bytes.split(separator: UInt8(ascii: "\n"))
        #expect(lines.count == requests, "\(lines.count) answers to \(requests) requests")
        #expect(lines.last.map { String(decoding: $0, as: UTF8.self).contains("\"backends\"") } == true)
        let scraped = readToEnd(metrics)
        #expect(scraped.cleanEOF && String(decoding: scraped.bytes, as: UTF8.self).contains("sluice_build_info"))
        try setup.expectBothAnswer("after half-closed clients")
        #expect(try setup.sluice.stop() == 0)
    }
}
