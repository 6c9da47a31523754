import Atomics
import Glibc
import Logging
import SluiceCore
import SluicePosix
import Synchronization

/// Active health checks, on a thread of their own (never on a worker's hot
/// path): one non-blocking probe at a time per backend, tcp (connect), http
/// (a GET whose status line must match), redis (PING) or dns (a query over
/// UDP), each with a timeout, spread in time by jitter so that checks of many
/// pools do not line up.
final class HealthChecker: @unchecked Sendable {
    private struct Target {
        let pool: RuntimePool
        let index: Int
        let check: HealthCheckConfig
        var state = HealthCheckState()
    }

    private final class Probe {
        let target: Int
        let fd: Int32
        var connected = false
        var response: [UInt8] = []
        /// kind dns: the query sent, to match the answer against.
        var query: [UInt8] = []
        var timer: TimerID?
        init(target: Int, fd: Int32) {
            self.target = target
            self.fd = fd
        }
    }

    private enum Timer { case start(Int), timeout(Int) }

    private var targets: [Target] = []
    private var probes: [Int: Probe] = [:]  // by target index
    private let epoll: Epoll
    private let wakeup: EventFD
    private let stopping = ManagedAtomic(false)
    private var timers: TimerWheel<Timer>
    private var random = SystemRandomNumberGenerator()
    private let logger: Logger
    private let localErrors: LocalResourceErrors
    private var thread: OSThread?

    init?(pools: [RuntimePool], localErrors: LocalResourceErrors, logger: Logger) throws(SystemCallError) {
        for pool in pools {
            guard let check = pool.config.healthCheck else { continue }
            for index in pool.addresses.indices { targets.append(Target(pool: pool, index: index, check: check)) }
        }
        guard !targets.isEmpty else { return nil }
        self.logger = logger
        self.localErrors = localErrors
        epoll = try Epoll(maxEventsPerWait: 64)
        wakeup = try EventFD()
        timers = TimerWheel(tickMilliseconds: 5, slotCount: 1024, nowMilliseconds: monotonicMilliseconds())
        try epoll.add(wakeup.fd, .readable, token: UInt64.max)
    }

    func start() throws(SystemCallError) {
        thread = try OSThread.start(name: "sluice-health") { self.run() }
    }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        wakeup.signal()
        thread?.join()
        thread = nil
    }

    private func run() {
        let now = monotonicMilliseconds()
        for i in targets.indices {
            // First checks spread over one interval.
            let interval = targets[i].check.interval.milliseconds
            _ = timers.schedule(at: now.saturatingAdd(UInt64.random(in: 0...max(1, interval), using: &random)), .start(i))
        }
        while !stopping.load(ordering: .relaxed) {
            let now = monotonicMilliseconds()
            var timeout: Int32 = 1000
            if let next = timers.nextDeadline { timeout = next <= now ? 0 : Int32(min(1000, next - now)) }
            epoll.wait(timeoutMilliseconds: timeout) { token, events in
                if token == UInt64.max { wakeup.drain(); return }
                progress(Int(token), events: events)
            }
            for (_, timer) in timers.advance(to: monotonicMilliseconds()) {
                switch timer {
                case .start(let i): begin(i)
                case .timeout(let i): finish(i, passed: false, why: "timed out after \(formatDuration(targets[i].check.timeout))")
                }
            }
        }
        for probe in probes.values { closeDescriptor(probe.fd) }
        probes.removeAll()
    }

    private func begin(_ i: Int) {
        let target = targets[i]
        if target.check.kind == .dns { return beginDNS(i) }
        let address = target.pool.addresses[target.index]
        let fd: Int32
        do {
            fd = try Socket.tcp(family: address.family)
        } catch {
            failed(i, errno: error.errno, why: "\(error)")
            return
        }
        let probe = Probe(target: i, fd: fd)
        probes[i] = probe
        probe.timer = timers.schedule(at: deadline(after: target.check.timeout, from: monotonicMilliseconds()), .timeout(i))
        do {
            if case .connected = try Socket.connect(fd, to: address) {
                probe.connected = true
                connectedProbe(i)
                return
            }
            try epoll.add(fd, .writable, token: UInt64(i))
        } catch {
            failed(i, errno: error.errno, why: "\(error)")
        }
    }

    /// A query on a UDP socket connected to the backend: an ICMP port
    /// unreachable comes back as ECONNREFUSED on the receive.
    private func beginDNS(_ i: Int) {
        let target = targets[i]
        let address = target.pool.addresses[target.index]
        let fd: Int32
        do { fd = try Socket.udpConnect(to: address, bufferBytes: 1 << 16) } catch {
            failed(i, errno: error.errno, why: "\(error)")
            return
        }
        let probe = Probe(target: i, fd: fd)
        probe.connected = true
        probe.query = DNSProbe.query(name: target.check.query, id: UInt16.random(in: 0...UInt16.max, using: &random)) ?? []
        probes[i] = probe
        probe.timer = timers.schedule(at: deadline(after: target.check.timeout, from: monotonicMilliseconds()), .timeout(i))
        let sent = probe.query.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        guard sent == probe.query.count else { return failed(i, errno: errno, why: "sending the query failed") }
        do { try epoll.add(fd, .readable, token: UInt64(i)) } catch { finish(i, passed: false, why: "\(error)") }
    }

    private func answeredDNS(_ i: Int, _ probe: Probe) {
        var answer = [UInt8](repeating: 0, count: 4096)
        let n = answer.withUnsafeMutableBytes { Glibc.recv(probe.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        if n < 0 {
            let code = errno
            if code == EAGAIN || code == EWOULDBLOCK { return }
            return finish(i, passed: false, why: code == ECONNREFUSED ? "port unreachable" : errnoDescription(code))
        }
        switch DNSProbe.verdict(Array(answer[0..<n]), to: probe.query) {
        case .passed(let why): finish(i, passed: true, why: why)
        case .failed(let why): finish(i, passed: false, why: why)
        }
    }

    private func progress(_ i: Int, events: EpollEvents) {
        guard let probe = probes[i] else { return }
        if targets[i].check.kind == .dns { return answeredDNS(i, probe) }
        if !probe.connected {
            let error = Socket.pendingError(probe.fd)
            guard error == 0 else {
                failed(i, errno: error, why: "connect: \(errnoDescription(error))")
                return
            }
            probe.connected = true
            connectedProbe(i)
            return
        }
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let outcome = chunk.withUnsafeMutableBytes { try? Socket.read(probe.fd, into: $0) }
            switch outcome {
            case .bytes(let n)?:
                probe.response += chunk[0..<n]
                if targets[i].check.kind == .redis {
                    guard probe.response.contains(10) else { continue }
                    let pong = probe.response.starts(with: Array("+PONG\r\n".utf8))
                    finish(i, passed: pong, why: pong ? "PONG" : "the answer to PING is not +PONG")
                    return
                }
                if let verdict = httpStatusCode(probe.response) { judge(i, status: verdict); return }
            case .wouldBlock?:
                return
            default:
                if let verdict = httpStatusCode(probe.response + [10]) { judge(i, status: verdict) } else {
                    finish(i, passed: false, why: targets[i].check.kind == .redis ? "the connection closed before +PONG"
                        : "the connection closed before a status line")
                }
                return
            }
        }
    }

    private func connectedProbe(_ i: Int) {
        let target = targets[i]
        // A backend that expects a PROXY header gets v2 LOCAL (or v1 UNKNOWN): "this is the proxy itself".
        let header = ProxyHeader.local(target.pool.config.proxyProtocol)
        guard target.check.kind != .tcp, let probe = probes[i] else {
            if let probe = probes[i], !header.isEmpty {
                _ = header.withUnsafeBytes { raw in try? Socket.write(probe.fd, from: raw) }
            }
            finish(i, passed: true, why: "connected")
            return
        }
        let address = target.pool.addresses[target.index]
        let request = target.check.kind == .redis ? "PING\r\n"
            : "GET \(target.check.path) HTTP/1.1\r\nHost: \(address)\r\nUser-Agent: sluice-health-check\r\n"
            + "Accept: */*\r\nConnection: close\r\n\r\n"
        let bytes = header + Array(request.utf8)
        let sent = bytes.withUnsafeBytes { raw in Result { () throws(SystemCallError) in try Socket.write(probe.fd, from: raw) } }
        guard case .success(.done(bytes.count)) = sent else {
            if case .failure(let error) = sent { failed(i, errno: error.errno, why: "sending the request failed") }
            else { failed(i, errno: 0, why: "sending the request failed") }
            return
        }
        do {
            try epoll.modify(probe.fd, .readable, token: UInt64(i))
        } catch {
            do { try epoll.add(probe.fd, .readable, token: UInt64(i)) } catch {
                finish(i, passed: false, why: "\(error)")
            }
        }
    }

    private func judge(_ i: Int, status: Int?) {
        let expected = targets[i].check.expectStatus
        if let status {
            finish(i, passed: status == expected, why: "HTTP \(status)" + (status == expected ? "" : ", expected \(expected)"))
        } else {
            finish(i, passed: false, why: "the answer is not HTTP")
        }
    }

    /// A probe that failed with `code`: the backend's failure, or, when this
    /// host ran short (descriptors, buffers, memory, local ports), no verdict
    /// at all: counted as a local error, the backend's state left as it was.
    private func failed(_ i: Int, errno code: Int32, why: String) {
        guard FailureBlame(errno: code) == .local else {
            finish(i, passed: false, why: why)
            return
        }
        endProbe(i)
        let target = targets[i]
        localErrors.record(.healthCheck, errno: code, backend: target.pool.addresses[target.index], logger: logger)
        scheduleNext(i, now: monotonicMilliseconds())
    }

    private func endProbe(_ i: Int) {
        if let probe = probes.removeValue(forKey: i) {
            if let timer = probe.timer { _ = timers.cancel(timer) }
            // A reset, not a FIN: a probe every interval would otherwise leave
            // a TIME_WAIT socket per probe holding a local port for a minute.
            Socket.closeWithReset(probe.fd)
        }
    }

    /// Records the outcome, moves the backend up or down on rise/fall, and
    /// schedules the next check.
    private func finish(_ i: Int, passed: Bool, why: String) {
        endProbe(i)
        let target = targets[i]
        let pool = target.pool
        let now = monotonicMilliseconds()
        pool.lastCheckAt[target.index].store(now, ordering: .relaxed)
        pool.lastCheckPassed[target.index].store(passed, ordering: .relaxed)
        if targets[i].state.record(success: passed, rise: target.check.rise, fall: target.check.fall) {
            let up = targets[i].state.isUp
            pool.checkedUp[target.index].store(up, ordering: .relaxed)
            pool.healthTransitions[target.index].wrappingIncrement(ordering: .relaxed)
            let metadata: Logger.Metadata = [
                "pool": "\(pool.name)", "backend": "\(pool.addresses[target.index])", "check": "\(target.check.kind.rawValue)",
                "last": "\(why)",
            ]
            if up { logger.notice("backend up", metadata: metadata) } else { logger.warning("backend down", metadata: metadata) }
        }
        scheduleNext(i, now: now)
    }

    /// The next check of target `i`, one interval on with ±10% jitter.
    private func scheduleNext(_ i: Int, now: UInt64) {
        let interval = targets[i].check.interval.milliseconds
        let jitter = UInt64.random(in: 0...max(1, interval / 5), using: &random)
        _ = timers.schedule(at: now.saturatingAdd(interval - interval / 10).saturatingAdd(jitter), .start(i))
    }
}
