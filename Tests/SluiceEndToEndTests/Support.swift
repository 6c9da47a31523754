import Foundation
import Glibc
import SluicePosix
import SluiceTestSupport
import Testing

// End-to-end helpers: the built `sluice` binary, real sockets, real peers.

let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

var sluiceBinary: String {
    if let path = ProcessInfo.processInfo.environment["SLUICE_BINARY"] { return path }
    return packageRoot.appendingPathComponent(".build/debug/sluice").path
}

struct TimedOut: Error, CustomStringConvertible {
    let description: String
}

/// Polls `condition` every 10 ms until it holds or `seconds` pass.
@discardableResult
func waitUntil(_ seconds: Double, _ what: String, _ condition: () -> Bool) throws -> Double {
    let start = Date()
    while !condition() {
        if Date().timeIntervalSince(start) > seconds { throw TimedOut(description: "timed out after \(seconds)s waiting for \(what)") }
        usleep(10_000)
    }
    return Date().timeIntervalSince(start)
}

/// The kernel's ephemeral ports start here; `connect(2)` and `bind` to port 0 take theirs above it.
private let ephemeralStart: Int = {
    let text = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)) ?? ""
    return text.split(whereSeparator: \.isWhitespace).first.flatMap { Int($0) } ?? 32768
}()

/// The next port `freePort` tries. Ports are handed out below the ephemeral
/// range, never twice in this process: no connect(2) elsewhere can take one
/// between `freePort` and the bind that uses it, and the suite's TIME_WAIT
/// sockets (over 40,000 at its peak, more than the ephemeral range holds)
/// cannot use them all up, as they do for binds to port 0.
private let nextPort = Locked<Int>(max(1024, ephemeralStart - 12_000))

/// A port that is free on 127.0.0.1 (or ::1), has no socket in TIME_WAIT, and
/// that this process has not handed out before.
func freePort(ipv6: Bool = false) -> UInt16 {
    while true {
        let port = nextPort.withLock { next -> Int in
            defer { next += 1 }
            return next
        }
        guard port < ephemeralStart else { fatalError("freePort: every port below \(ephemeralStart) was handed out") }
        if portIsFree(UInt16(port), ipv6: ipv6) { return UInt16(port) }
    }
}

/// A bind without SO_REUSEADDR: it fails while any socket, TIME_WAIT included, holds the port.
private func portIsFree(_ port: UInt16, ipv6: Bool) -> Bool {
    let address = SocketAddress(ip: ipv6 ? "::1" : "127.0.0.1", port: port)!
    let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    return address.withSockaddr { bind(fd, $0, $1) } == 0
}

/// A running `sluice` process with its combined output in a file.
final class SluiceProcess: @unchecked Sendable {
    let process: Child
    let logURL: URL
    let configURL: URL?

    /// `launcher` runs sluice through another program, e.g. `prlimit --nofile=40 --`.
    /// `output` replaces the log file as stdout and stderr (then `log` stays empty).
    /// `environment` adds variables for this process only: `setenv` in a test
    /// would race with other tests' process spawns, which copy `environ`.
    init(arguments: [String], configYAML: String? = nil, launcher: [String] = [], output: Int32? = nil,
         environment: [String: String] = [:]) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-e2e-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        logURL = dir.appendingPathComponent("out.log")
        _ = FileManager.default.createFile(atPath: logURL.path, contents: nil)
        var args = arguments
        if let configYAML {
            let url = dir.appendingPathComponent("sluice.yaml")
            try configYAML.write(to: url, atomically: true, encoding: .utf8)
            configURL = url
            args += ["-c", url.path]
        } else {
            configURL = nil
        }
        let command = launcher.isEmpty ? [sluiceBinary] + args : launcher + [sluiceBinary] + args
        let log = try FileHandle(forWritingTo: logURL)
        defer { try? log.close() }
        let out = output ?? log.fileDescriptor
        process = try Child(command[0], Array(command.dropFirst()),
                            environment: ProcessInfo.processInfo.environment.merging(environment) { $1 },
                            output: out, errors: out)
    }

    static func run(config: String, extraArguments: [String] = ["--verify-clean-exit"]) throws -> SluiceProcess {
        let p = try SluiceProcess(arguments: ["run"] + extraArguments, configYAML: config)
        try p.waitForLog("ready", seconds: 20)
        return p
    }

    var log: String { (try? String(contentsOf: logURL, encoding: .utf8)) ?? "" }

    func waitForLog(_ text: String, seconds: Double = 10) throws {
        try waitUntil(seconds, "\"\(text)\" in the sluice log:\n\(log)") { log.contains(text) || !process.isRunning }
        if !log.contains(text) { throw TimedOut(description: "sluice exited before logging \"\(text)\":\n\(log)") }
    }

    func signal(_ sig: Int32) { kill(process.processIdentifier, sig) }

    /// The state letter of each of the process's threads (R, S, T when stopped...).
    var threadStates: [Character] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(process.processIdentifier)/task")) ?? []
        return tasks.compactMap { tid in
            guard let stat = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/task/\(tid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return nil }
            return stat[stat.index(close, offsetBy: 2)]
        }
    }

    /// Sends SIGTERM and waits for the exit; returns the exit status.
    @discardableResult
    func stop(seconds: Double = 15) throws -> Int32 {
        if process.isRunning {
            signal(SIGTERM)
            signal(SIGCONT) // a test may have stopped it; stopped, it cannot act on SIGTERM
        }
        return try waitForExit(seconds: seconds)
    }

    func waitForExit(seconds: Double) throws -> Int32 {
        try waitUntil(seconds, "sluice to exit") { !process.isRunning }
        return process.terminationStatus
    }

    /// A test that failed half-way still stops its daemon the polite way
    /// first, so that it removes its pins; SIGKILL only if that hangs.
    deinit {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        kill(process.processIdentifier, SIGCONT)
        for _ in 0..<100 where process.isRunning { usleep(50_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

// MARK: - Blocking sockets for test peers

func connectTCP(_ host: String, _ port: UInt16, timeoutSeconds: Int = 5) throws -> Int32 {
    let address = SocketAddress(ip: host, port: port)!
    let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    precondition(fd >= 0)
    var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    let rc = address.withSockaddr { Glibc.connect(fd, $0, $1) }
    if rc != 0 {
        let e = errno
        close(fd)
        throw SystemCallError(call: "connect \(address)", errno: e)
    }
    return fd
}

func sendAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
    var offset = 0
    while offset < bytes.count {
        let n = send(fd, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
        if n <= 0 {
            if n == -1 && errno == EINTR { continue }
            return false
        }
        offset += n
    }
    return true
}

func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool { bytes.withUnsafeBytes { sendAll(fd, $0) } }

/// Reads until EOF (or error/timeout); returns the bytes and whether EOF was clean.
func readToEnd(_ fd: Int32, limit: Int = 1 << 30) -> (bytes: [UInt8], cleanEOF: Bool) {
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 64 * 1024)
    while out.count < limit {
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n == 0 { return (out, true) }
        if n < 0 {
            if errno == EINTR { continue }
            return (out, false)
        }
        out.append(contentsOf: chunk[0..<n])
    }
    return (out, false)
}

/// Streaming digest of a byte stream (FNV-1a 64 with length), cheap and order-sensitive.
struct StreamDigest: Equatable {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    var count = 0
    mutating func update(_ bytes: UnsafeRawBufferPointer) {
        for b in bytes {
            hash ^= UInt64(b)
            hash = hash &* 0x100_0000_01b3
        }
        count += bytes.count
    }
}

/// Deterministic pseudo-random payload.
func payload(size: Int, seed: UInt64) -> [UInt8] {
    var state = seed &+ 0x9E37_79B9_7F4A_7C15
    var out = [UInt8](repeating: 0, count: size)
    out.withUnsafeMutableBytes { raw in
        var i = 0
        while i < size {
            state = state &+ 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            withUnsafeBytes(of: z) { word in
                for b in word where i < size {
                    raw[i] = b
                    i += 1
                }
            }
        }
    }
    return out
}

/// A peer thread. pthread_create's EAGAIN (a momentary shortage of threads
/// or memory, with a thousand peer threads up at the suite's peak) is
/// waited out for a while before the test process gives up.
func startThread(_ body: @escaping @Sendable () -> Void) -> OSThread {
    var failure: SystemCallError?
    for _ in 0..<100 {
        do { return try OSThread.start(name: "test-peer", body) } catch {
            failure = error
            guard error.errno == EAGAIN else { break }
            usleep(20_000)
        }
    }
    fatalError("cannot start a test peer thread: \(failure.map { "\($0)" } ?? "-")")
}

/// A blocking test server on loopback: one thread per connection running `serve`.
final class TestServer: @unchecked Sendable {
    let fd: Int32
    let port: UInt16
    let host: String
    private let state = Locked<(stopped: Bool, accepted: Int)>((false, 0))
    var accepted: Int { state.value.accepted }

    init(host: String = "127.0.0.1", port requested: UInt16? = nil, serve: @escaping @Sendable (Int32) -> Void) throws {
        self.host = host
        let address = SocketAddress(ip: host, port: requested ?? freePort(ipv6: host.contains(":")))!
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, 4)
        guard address.withSockaddr({ bind(fd, $0, $1) }) == 0, listen(fd, 1024) == 0 else {
            throw SystemCallError(call: "bind/listen test server", errno: errno)
        }
        self.fd = fd
        port = try Socket.localAddress(fd).port
        let state = self.state
        _ = startThread {
            while true {
                let client = accept(fd, nil, nil)
                if client < 0 {
                    if errno == EINTR || errno == ECONNABORTED { continue }
                    return
                }
                let stopped = state.withLock { s -> Bool in
                    if !s.stopped { s.accepted += 1 }
                    return s.stopped
                }
                if stopped { close(client); return }
                _ = startThread {
                    serve(client)
                    close(client)
                }
            }
        }
    }

    var address: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    func stop() {
        let first = state.withLock { s -> Bool in
            defer { s.stopped = true }
            return !s.stopped
        }
        guard first else { return }
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }

    deinit { stop() }

    /// Echoes everything back; half-closes its write side on EOF.
    static func echo(host: String = "127.0.0.1") throws -> TestServer {
        try TestServer(host: host) { fd in echoUntilEOF(fd) }
    }
}

/// Echoes what `fd` sends until its EOF, then half-closes it.
func echoUntilEOF(_ fd: Int32) {
    var chunk = [UInt8](repeating: 0, count: 256 * 1024)
    while true {
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        if !chunk.withUnsafeBytes({ sendAll(fd, UnsafeRawBufferPointer(rebasing: $0[0..<n])) }) { break }
    }
    shutdown(fd, Int32(SHUT_WR))
}

func proxyConfig(
    port: UInt16, backends: [String], dataPath: String = "splice", workers: Int = 2,
    algorithm: String = "round_robin", retries: Int = 2, extraListener: String = "",
    extraTop: String = "", bindHost: String = "127.0.0.1", access: String = "text"
) -> String {
    let listenHost = bindHost.contains(":") ? "[\(bindHost)]" : bindHost
    return """
        instance: e2e\(port)
        workers: \(workers)
        steering: hash
        data_path: \(dataPath)
        drain_timeout: 5s
        # Generous: a debug build on a loaded 2-core machine can miss a 200ms heartbeat,
        # and steering would then (rightly) skip that worker. Stall tests set their own.
        stall_threshold: 2s
        log: { level: info, access: \(access), file: stderr }
        \(extraTop.contains("admin:") ? "" : "admin: { metrics: off }")
        \(extraTop)
        listeners:
          - { name: test, bind: "\(listenHost):\(port)", pool: backends\(extraListener) }
        pools:
          - name: backends
            algorithm: \(algorithm)
            retries: \(retries)
            backends:
        \(backends.map { "      - { address: \"\($0)\" }" }.joined(separator: "\n"))
        """
}

/// Runs a command, returns (status, combined output).

/// CPU time (user + system, in clock ticks) a process has used so far.
func cpuTicks(pid: Int32) -> Int {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return -1 }
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    return (Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0) // utime, stime
}

/// Root tests skip with a reason on an unprivileged machine, but fail when
/// SLUICE_REQUIRE_BPF=1 (CI), where skipping would hide a regression.
func requireRoot() -> Bool {
    if geteuid() == 0 { return true }
    if ProcessInfo.processInfo.environment["SLUICE_REQUIRE_BPF"] == "1" {
        Issue.record("SLUICE_REQUIRE_BPF=1 but not running as root: root tests cannot run")
    } else {
        print("skipping test: needs root (BPF, namespaces)")
    }
    return false
}

/// A blocking unix-socket client (5 s receive timeout); the one the admin tests use.
func connectUnix(_ path: String, receiveBuffer: Int32? = nil) throws -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    if var size = receiveBuffer { setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, 4) }
    var tv = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: path.utf8.prefix($0.count - 1)) }
    let rc = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard rc == 0 else {
        let code = errno
        close(fd)
        throw SystemCallError(call: "connect \(path)", errno: code)
    }
    return fd
}

enum AdminClientForTests {
    /// One raw line to the admin socket; the first line of the answer.
    static func send(_ path: String, _ line: String) throws -> String {
        let fd = try connectUnix(path)
        defer { close(fd) }
        _ = sendAll(fd, Array((line + "\n").utf8))
        var reply: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while !reply.contains(10) {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            reply += buffer[0..<n]
        }
        return String(decoding: reply.prefix { $0 != 10 }, as: UTF8.self)
    }
}

func statusJSON(_ instance: String) throws -> [String: Any] {
    let (code, output) = try runCommand(sluiceBinary, ["status", "--instance", instance, "--json"])
    guard code == 0, let object = try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any] else {
        throw TimedOut(description: "sluice status failed (\(code)): \(output)")
    }
    return object
}

func workerField(_ status: [String: Any], _ field: String) -> [Int] {
    ((status["workers"] as? [[String: Any]]) ?? []).map { ($0[field] as? Int) ?? -1 }
}

func steeredConfig(port: UInt16, backends: [String], workers: Int, admin: String = "admin: { metrics: off }", extra: String = "") -> String {
    proxyConfig(port: port, backends: backends, workers: workers, extraTop: admin + "\n" + extra)
        .replacingOccurrences(of: "steering: hash", with: "steering: least_loaded")
}

/// Reads the pinned worker_load map through bpftool, as an operator would.
func pinnedWorkerLoad(instance: String) throws -> [[String: Int]] {
    let (status, output) = try runCommand("/usr/sbin/bpftool", ["-j", "map", "dump", "pinned", "/sys/fs/bpf/sluice/\(instance)/worker_load"])
    guard status == 0 else { throw TimedOut(description: "bpftool failed: \(output)") }
    let entries = try #require(try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [[String: Any]])
    return entries.compactMap { entry in
        guard let formatted = entry["formatted"] as? [String: Any], let value = formatted["value"] as? [String: Any] else { return nil }
        return value.compactMapValues { $0 as? Int }
    }
}

func workerLoads(_ instance: String) -> [[String: Int]] {
    Array(((try? pinnedWorkerLoad(instance: instance)) ?? []).prefix(4))
}

/// Whether a pinned map has no entries, through bpftool.
func pinnedMapIsEmpty(_ path: String) throws -> Bool {
    let (status, output) = try runCommand("/usr/sbin/bpftool", ["map", "dump", "pinned", path])
    // Maps with BTF print as a JSON list ("[]" when empty), the SOCKHASH as lines.
    let text = output.trimmingCharacters(in: .whitespacesAndNewlines)
    return status == 0 && (text.contains("Found 0 elements") || text == "[]")
}

/// Holds `count` connections open through the proxy, each proven established by one echoed byte.
func holdConnections(_ count: Int, port: UInt16) throws -> [Int32] {
    var fds: [Int32] = []
    for _ in 0..<count { fds.append(try connectTCP("127.0.0.1", port)) }
    for fd in fds {
        guard sendAll(fd, [7]) else { throw TimedOut(description: "send failed") }
        var byte: UInt8 = 0
        guard recv(fd, &byte, 1, 0) == 1 else { throw TimedOut(description: "no echo") }
    }
    return fds
}

/// One client's checksummed round trip through the proxy to an echo backend.
/// Returns nil when the bytes came back intact, else what went wrong.
func echoRoundTrip(port: UInt16, host: String = "127.0.0.1", size: Int, seed: UInt64) -> String? {
    let fd: Int32
    do { fd = try connectTCP(host, port, timeoutSeconds: 30) } catch { return "\(error)" }
    defer { close(fd) }
    let data = payload(size: size, seed: seed)
    var sent = StreamDigest()
    data.withUnsafeBytes { sent.update($0) }
    let writer = startThread {
        _ = sendAll(fd, data)
        shutdown(fd, Int32(SHUT_WR)) // the echo backend answers EOF with EOF
    }
    let (received, clean) = readToEnd(fd)
    writer.join()
    var got = StreamDigest()
    received.withUnsafeBytes { got.update($0) }
    if !clean { return "size \(size): no clean EOF after \(received.count) bytes" }
    if got != sent { return "size \(size): sent \(sent.count) bytes, got back \(got.count), digests differ: \(got != sent)" }
    return nil
}

/// A value shared between test threads.
final class Locked<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var _value: T
    init(_ value: T) { _value = value }
    var value: T { lock.withLock { _value } }
    func withLock<R>(_ body: (inout T) -> R) -> R { lock.withLock { body(&_value) } }
}

/// A backend whose SYNs go unanswered: a listener with a full accept queue
/// that never accepts (the kernel drops further SYNs), so connects hang.
final class BlackholeBackend {
    let fd: Int32
    let port: UInt16
    private var fillers: [Int32] = []

    init() throws {
        let address = SocketAddress(ip: "127.0.0.1", port: freePort())!
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard address.withSockaddr({ bind(fd, $0, $1) }) == 0, listen(fd, 0) == 0 else {
            throw SystemCallError(call: "blackhole listen", errno: errno)
        }
        self.fd = fd
        let port = try Socket.localAddress(fd).port
        self.port = port
        // Fill the queue (backlog 0 holds one); later SYNs are dropped.
        for _ in 0..<2 {
            let c = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            _ = SocketAddress(ip: "127.0.0.1", port: port)!.withSockaddr { Glibc.connect(c, $0, $1) }
            fillers.append(c)
        }
        usleep(50_000)
    }

    deinit {
        for c in fillers { close(c) }
        close(fd)
    }
}

/// A network namespace of the test's own, with loopback up, where replies to
/// 127.0.0.2 leave through a veth whose peer is down: a SYN from there gets
/// a request socket whose SYN-ACK is lost, so its handshake stays half-open
/// as in a real flood. (A blackhole route would not do: the SYN-ACK's route
/// is looked up first and the request is dropped at once.) Processes enter
/// with `nsenter --net`, which leaves the mount namespace (and bpffs) alone.
final class TestNamespace {
    let name: String
    var enter: [String] { ["/usr/bin/nsenter", "--net=/run/netns/\(name)"] }

    init() throws {
        name = "sluice-t\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Self.ip(["netns", "add", name])
        for args in [["link", "set", "lo", "up"], ["link", "add", "lost0", "type", "veth", "peer", "name", "lost1"],
                     ["link", "set", "lost0", "up"], ["route", "add", "127.0.0.2/32", "dev", "lost0", "table", "local"]] {
            if args.first == "route" { try run(["sysctl", "-q", "-w", "net.ipv4.conf.lost0.route_localnet=1"]) }
            try Self.ip(["-n", name] + args)
        }
    }

    private static func ip(_ args: [String]) throws {
        let (code, output) = try runCommand("/usr/sbin/ip", args)
        guard code == 0 else { throw TimedOut(description: "ip \(args.joined(separator: " ")): \(output)") }
    }

    deinit { _ = try? runCommand("/usr/sbin/ip", ["netns", "del", name]) }

    /// Runs a command inside and waits for it.
    @discardableResult
    func run(_ arguments: [String]) throws -> String {
        let (code, output) = try runCommand(enter[0], Array(enter.dropFirst()) + arguments)
        guard code == 0 else { throw TimedOut(description: "\(arguments.joined(separator: " ")) failed: \(output)") }
        return output
    }

    func netload(_ arguments: [String]) throws -> String {
        try run(["python3", netloadScript] + arguments)
    }

    /// Starts `netload.py` inside, waits for its first line.
    func spawn(_ arguments: [String], readyLine: String) throws -> BackgroundProcess {
        try BackgroundProcess(enter + ["python3", netloadScript] + arguments, readyLine: readyLine)
    }
}

let netloadScript = packageRoot.appendingPathComponent("Tests/SluiceEndToEndTests/Scripts/netload.py").path

/// A helper process that says when it is ready and is stopped with the test.
final class BackgroundProcess {
    let process: Child
    private let input: ChildPipe
    private let output: ChildPipe
    /// Printed and not yet taken by `ask`.
    private var pending = ""

    init(_ command: [String], readyLine: String) throws {
        input = try ChildPipe()
        output = try ChildPipe()
        process = try Child(command[0], Array(command.dropFirst()), input: input.readEnd, output: output.writeEnd,
                            errors: FileHandle.standardError.fileDescriptor)
        input.closeReadEnd()
        output.closeWriteEnd()
        var seen = ""
        while !seen.contains(readyLine) {
            let data = readSome(output.readEnd)
            guard !data.isEmpty else { throw TimedOut(description: "\(command) exited before \"\(readyLine)\": \(seen)") }
            seen += String(decoding: data, as: UTF8.self)
        }
    }

    /// Closes its stdin (a `hold` closes its connections) and waits.
    func finish() {
        input.closeWriteEnd()
        process.waitUntilExit()
    }

    /// Writes `line` to its stdin and returns the next line it prints (for
    /// a client that answers each line with one).
    func ask(_ line: String, seconds: Double = 10) throws -> String {
        guard writeAll(input.writeEnd, Data((line + "\n").utf8)) else { throw TimedOut(description: "\(line): the process is gone") }
        let deadline = Date().addingTimeInterval(seconds)
        while !pending.contains("\n") {
            guard Date() < deadline, process.isRunning || !pending.isEmpty else { throw TimedOut(description: "no answer to \(line)") }
            let data = readSome(output.readEnd)
            if data.isEmpty { break }
            pending += String(decoding: data, as: UTF8.self)
        }
        guard let newline = pending.firstIndex(of: "\n") else { throw TimedOut(description: "no answer to \(line): \(pending)") }
        let answer = String(pending[..<newline])
        pending = String(pending[pending.index(after: newline)...])
        return answer
    }

    /// For a server that runs until killed: SIGKILL, and reaped.
    func stop() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
    }
}
