import Atomics
import Glibc
import Logging
import CSluice
import Foundation
import SluiceBPF
import SluiceCore
import SluicePosix

/// Options that are not part of the configuration file.
public struct ServerOptions: Sendable {
    /// At exit, compare the fd table with the one at start and fail if any
    /// descriptor the server opened is still open.
    public var verifyCleanExit = false
    /// Printed once listeners are bound and workers run (the demo uses it).
    public var onReady: (@Sendable ([(name: String, address: SocketAddress)]) -> Void)?
    /// Benchmark knob: on SIGUSR1, block this worker for this long.
    public var stallOnSIGUSR1: (worker: Int, milliseconds: UInt64)?

    public init(verifyCleanExit: Bool = false) {
        self.verifyCleanExit = verifyCleanExit
    }
}

public struct ServerError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The control thread: binds every listener once per worker, starts the
/// workers, owns the signals, drains on SIGINT/SIGTERM, and joins.
public final class Server: AdminHandler {
    let config: SluiceConfig
    // Set while serving; read by the admin socket and metrics (control thread only).
    var liveWorkers: [Worker] = []
    var livePools: [RuntimePool] = []
    var liveListeners: [RuntimeListener] = []
    var liveSteering: KernelSteering?
    var liveTable: WorkerLoadTable?
    var loadKeeper: LoadKeeper?
    var moves: UInt64 { loadKeeper?.moves ?? 0 }
    let logs: LogFactory
    let accessSink: LogSink
    private let options: ServerOptions
    private var logger: Logger
    /// Shared by the workers and the health checker; read by /metrics.
    let localResourceErrors = LocalResourceErrors()

    public init(config: SluiceConfig, logs: LogFactory, accessSink: LogSink, options: ServerOptions = ServerOptions()) {
        self.config = config
        self.logs = logs
        self.accessSink = accessSink
        self.options = options
        self.logger = logs.logger("sluice")
    }

    /// Runs until stopped by a signal; returns the process exit status.
    public func run() throws(ServerError) -> Int32 {
        let baseline = openDescriptors()
        ignoreSIGPIPE()
        let exitStatus = try serve()
        if options.verifyCleanExit {
            let leaked = openDescriptors().subtracting(baseline)
            if !leaked.isEmpty {
                logger.error("descriptors left open at exit", metadata: ["fds": "\(leaked.sorted())"])
                return 3
            }
            logger.info("clean exit: no descriptor left open")
        }
        return exitStatus
    }

    private func serve() throws(ServerError) -> Int32 {
        let steeringMode = config.steering
        try preflight()
        if let limit = openFilesLimit(), let warning = DescriptorBudget(config: config).warning(openFilesLimit: limit) {
            logger.warning("\(warning)")
        }

        // Signals are blocked before any thread starts, so every thread inherits the mask.
        let signals: SignalFD
        do {
            var count: Int32 = 0
            let list = sluice_daemon_signals(&count)!
            signals = try SignalFD(signals: Array(UnsafeBufferPointer(start: list, count: Int(count))))
        } catch {
            throw ServerError("cannot set up signal handling: \(error)")
        }

        // One daemon per instance name: the lock proves that pins found under
        // the name were left by a run that died.
        var lock: InstanceLock?
        do {
            lock = try InstanceLock(instance: config.instance)
        } catch {
            if error.alreadyRunning || steeringMode == .leastLoaded { throw ServerError("\(error)") }
            logger.warning("running without an instance lock or pinned counters: \(error)")
        }
        defer { withExtendedLifetime(lock) {} }

        let steering = try setUpSteering(mode: steeringMode, pinning: lock != nil)
        let table = steering?.table ?? WorkerLoadTable(anonymousCount: config.workers)
        let listenerTable = steering?.listenerTable ?? ListenerLoadTable(anonymousCount: max(1, config.listeners.count))
        defer { steering?.close() }
        let (dataPath, sockmapPairs, dataPathReason) = try setUpDataPath(workerLoadFD: steering?.workerLoadFD)
        defer { sockmapPairs?.close() }
        if let sockmapPairs, let steering, lock != nil {
            do { try sockmapPairs.pin(into: steering.pinDirectory) } catch {
                logger.warning("sockmap maps not pinned: \(error)")
            }
        }

        var pools: [String: RuntimePool] = [:]
        for pool in config.pools { pools[pool.name] = RuntimePool(pool) }

        // Bind everything before starting anything: a bad address fails the start.
        let (runtimeListeners, bound) = try bindListeners(pools: pools, shared: steeringMode == .sharedAccept, counters: listenerTable)
        var socketsByWorker = bound
        func closeAllBound() {
            for fds in socketsByWorker { for fd in fds { closeDescriptor(fd) } }
        }
        if let steering, steeringMode == .leastLoaded {
            for index in runtimeListeners.indices {
                do {
                    try steering.attach(listener: index, workerSockets: socketsByWorker.map { $0[index] })
                } catch {
                    closeAllBound()
                    throw ServerError("listener \(runtimeListeners[index].name): \(error)")
                }
            }
        }

        let exited = ManagedAtomic(0)
        let exitWake: EventFD
        let epoll: Epoll
        do {
            exitWake = try EventFD()
            epoll = try Epoll(maxEventsPerWait: 8)
            try epoll.add(signals.fd, .readable, token: 1)
            try epoll.add(exitWake.fd, .readable, token: 2)
        } catch {
            closeAllBound()
            throw ServerError("cannot set up the control loop: \(error)")
        }

        var settings = WorkerSettings(dataPath: dataPath, accessLog: config.log.access)
        settings.sharedAccept = steeringMode == .sharedAccept
        settings.stallThresholdNanoseconds = config.stallThreshold.milliseconds &* 1_000_000
        settings.maxWaitMilliseconds = Int32(max(1, min(1000, config.stallThreshold.milliseconds / 4)))
        settings.localResourceErrors = localResourceErrors
        for listener in runtimeListeners {
            logger.info("listening", metadata: [
                "listener": "\(listener.name)", "address": "\(listener.address)", "pool": "\(listener.pool.name)",
                "algorithm": "\(listener.pool.config.algorithm.rawValue)",
            ])
        }
        var readyMetadata: Logger.Metadata = [
            "workers": "\(config.workers)", "steering": "\(steeringMode.rawValue)", "data_path": "\(dataPath.rawValue)",
            "instance": "\(config.instance)",
        ]
        if let steering {
            readyMetadata["pins"] = "\(steering.pinDirectory)"
            if !steering.programIDs.isEmpty { readyMetadata["prog_ids"] = "\(steering.programIDs.map(String.init).joined(separator: ","))" }
        }
        livePools = config.pools.map { pools[$0.name]! }
        liveListeners = runtimeListeners
        liveSteering = steering
        liveTable = table
        let info = InstanceInfo(
            instance: config.instance, pid: getpid(), started: Date().timeIntervalSince1970,
            steering: steeringMode.rawValue, dataPathConfigured: config.dataPath.rawValue, dataPath: dataPath.rawValue,
            dataPathReason: dataPathReason, workers: config.workers,
            stallThresholdMilliseconds: config.stallThreshold.milliseconds,
            listeners: runtimeListeners.map { .init(name: $0.name, address: "\($0.address)", pool: $0.pool.name) },
            adminSocket: config.admin?.socket, metrics: config.admin?.metrics.map { "\($0)" })
        if lock != nil {
            do { try info.write() } catch { logger.warning("cannot write \(InstanceInfo.path(instance: config.instance)): \(error)") }
        }
        defer { if lock != nil { unlink(InstanceInfo.path(instance: config.instance)) } }

        var admin: AdminEndpoints?
        if let adminConfig = config.admin {
            do {
                let metricsAddress = adminConfig.metrics.flatMap { SocketAddress(ip: $0.host, port: $0.port) }
                admin = try AdminEndpoints(
                    socketPath: adminConfig.socket, metrics: metricsAddress, limits: Self.adminLimits(adminConfig),
                    epoll: epoll, tokenBase: 100, handler: self, logger: logs.logger("sluice.admin"))
                readyMetadata["admin"] = "\(adminConfig.socket)"
                if let metricsAddress { readyMetadata["metrics"] = "http://\(metricsAddress)/metrics" }
            } catch {
                closeAllBound()
                throw error
            }
        }
        defer { admin?.close() }

        // Everything that needs root is done: BPF loaded, pinned, attached,
        // sockets bound, admin socket created. Become the configured user with
        // only the capabilities the data path still uses, before any worker
        // exists (capabilities are per thread; threads inherit them). The log
        // writer, started earlier, loses them all with the uid change: it has
        // no keep-caps, which is per thread too.
        if let user = config.user {
            do {
                try dropPrivileges(to: user, dataPath: dataPath, pinDirectory: steering?.pinDirectory,
                                   adminSocket: config.admin?.socket, lock: lock)
            } catch {
                closeAllBound()
                throw error
            }
        }

        var workers: [Worker] = []
        var threads: [OSThread] = []
        let seed = monotonicNanoseconds()
        for k in 0..<config.workers {
            let record = table.record(k)
            // A fresh heartbeat before the thread runs: never steered away from at start.
            record.store(.heartbeatNanoseconds, monotonicNanoseconds())
            do {
                let worker = try Worker(
                    id: k, listeners: runtimeListeners, listenerFDs: socketsByWorker[k], settings: settings,
                    record: record, sockmapPairs: sockmapPairs, logger: logs.logger("sluice.worker", worker: k),
                    accessLog: accessSink, seed: seed,
                    onExit: { exited.wrappingIncrement(ordering: .relaxed); exitWake.signal() }
                )
                socketsByWorker[k] = [] // the worker owns them now
                workers.append(worker)
                threads.append(try OSThread.start(name: "sluice-w\(k)") { worker.run() })
            } catch {
                // Stop what started, then fail.
                closeAllBound()
                for worker in workers { worker.send(.drain(deadlineMilliseconds: monotonicMilliseconds())) }
                for thread in threads { thread.join() }
                throw ServerError("cannot start worker \(k): \(error)")
            }
        }

        liveWorkers = workers
        let healthChecker: HealthChecker?
        do {
            healthChecker = try HealthChecker(pools: livePools, localErrors: localResourceErrors, logger: logs.logger("sluice.health"))
            try healthChecker?.start()
        } catch {
            logger.error("cannot start health checks: \(error)")
            for worker in workers { worker.send(.drain(deadlineMilliseconds: monotonicMilliseconds())) }
            for thread in threads { thread.join() }
            workers.removeAll()
            liveWorkers.removeAll()
            throw ServerError("cannot start health checks: \(error)")
        }
        defer { healthChecker?.stop() }

        logger.info("ready", metadata: readyMetadata)
        SystemdNotify.send("READY=1\nMAINPID=\(getpid())\nSTATUS=listening")
        options.onReady?(runtimeListeners.map { (name: $0.name, address: $0.address) })

        let keeper = LoadKeeper(
            workers: workers, table: table, rebalance: config.rebalance,
            stallThresholdNanoseconds: settings.stallThresholdNanoseconds, logger: logs.logger("sluice.load"))
        loadKeeper = keeper
        var stopDeadline: UInt64?
        var nextTick = monotonicMilliseconds() + keeper.tickMilliseconds
        while exited.load(ordering: .relaxed) < workers.count {
            let now = monotonicMilliseconds()
            if now >= nextTick {
                nextTick = now + keeper.tickMilliseconds
                keeper.tick(draining: stopDeadline != nil)
            }
            if let stopDeadline, now >= stopDeadline {
                abandonStuckWorkers(workers, steering: steering, lockPath: lock?.path)
            }
            admin?.tick(now: now)
            let wakeUp = min(nextTick, admin?.nextDeadline(now: now) ?? .max)
            epoll.wait(timeoutMilliseconds: Int32(wakeUp > now ? wakeUp - now : 0)) { token, events in
                if let admin, admin.owns(token) { admin.handle(token: token, events: events); return }
                guard token == 1 else { exitWake.drain(); return }
                while let signal = signals.next() {
                    handle(signal: signal, workers: workers, stopDeadline: &stopDeadline, steering: steering, lockPath: lock?.path)
                }
            }
        }
        for thread in threads { thread.join() }
        loadKeeper = nil
        liveWorkers.removeAll()
        liveTable = nil
        liveSteering = nil
        var totals = (accepted: UInt64(0), bytesIn: UInt64(0), bytesOut: UInt64(0))
        for worker in workers {
            totals.accepted += worker.counters.accepted.load(ordering: .relaxed)
            totals.bytesIn += worker.record.load(.bytesIn)
            totals.bytesOut += worker.record.load(.bytesOut)
        }
        var stoppedMetadata: Logger.Metadata = [
            "accepted": "\(totals.accepted)", "bytes_in": "\(totals.bytesIn)", "bytes_out": "\(totals.bytesOut)",
        ]
        if let steering, steeringMode == .leastLoaded {
            let stats = steering.stats
            stoppedMetadata["steered"] = "\(stats.selected)"
            stoppedMetadata["fallbacks"] = "\(stats.fallback + stats.allStalled)"
        }
        logger.info("stopped", metadata: stoppedMetadata)
        workers.removeAll()
        withExtendedLifetime((epoll, signals, exitWake)) {}
        return 0
    }

    // MARK: - Signals and stopping

    /// SIGINT/SIGTERM: drain (a second one exits at once). SIGQUIT is a stop
    /// too. SIGHUP, SIGUSR1 and SIGUSR2 are held by the signalfd so they
    /// cannot kill the daemon without cleanup; SIGUSR1 is the benchmark's
    /// stall knob when it is set.
    private func handle(signal: Int32, workers: [Worker], stopDeadline: inout UInt64?,
                        steering: KernelSteering?, lockPath: String?) {
        switch signal {
        case SIGHUP:
            logger.notice("SIGHUP: configuration reload is not available yet; nothing changed")
        case SIGUSR1:
            if let stall = options.stallOnSIGUSR1, stall.worker < workers.count {
                workers[stall.worker].send(.stall(milliseconds: stall.milliseconds))
            } else {
                logger.notice("SIGUSR1 ignored")
            }
        case SIGUSR2:
            logger.notice("SIGUSR2 ignored (binary upgrade is not available yet)")
        default:
            if stopDeadline != nil {
                logger.warning("second stop signal: exiting now")
                removeNames(steering: steering, lockPath: lockPath)
                _exit(1)
            }
            SystemdNotify.send("STOPPING=1\nSTATUS=draining")
            let deadline = monotonicMilliseconds().saturatingAdd(config.drainTimeout.milliseconds)
            // A worker stuck in a call never reads its drain order: the
            // process still ends, two seconds after the drain deadline.
            stopDeadline = deadline.saturatingAdd(2000)
            logger.info("stop signal: draining", metadata: [
                "signal": "\(signalName(signal))",
                "drain_timeout": "\(formatDuration(config.drainTimeout))",
            ])
            for worker in workers { worker.send(.drain(deadlineMilliseconds: deadline)) }
        }
    }

    private func signalName(_ signal: Int32) -> String {
        switch signal {
        case SIGINT: "SIGINT"
        case SIGTERM: "SIGTERM"
        case SIGQUIT: "SIGQUIT"
        default: "signal \(signal)"
        }
    }

    /// Past the hard stop deadline with workers still running (stuck): their
    /// connections end with the process. Names are removed first so that
    /// nothing stale is left behind.
    private func abandonStuckWorkers(_ workers: [Worker], steering: KernelSteering?, lockPath: String?) {
        let stuck = workers.filter { !$0.hasExited }.map(\.id)
        logger.error("workers did not stop within drain_timeout + 2s; exiting without them", metadata: [
            "stuck": "\(stuck)",
        ])
        removeNames(steering: steering, lockPath: lockPath)
        _exit(1)
    }

    /// Pins, info file, admin socket and lock: what a later start would
    /// otherwise find left behind. Workers may still run, so nothing is
    /// unmapped. The log lines queued so far get a moment to reach the output.
    private func removeNames(steering: KernelSteering?, lockPath: String?) {
        if let steering { removePinDirectory(steering.pinDirectory) }
        if let lockPath {
            unlink(InstanceInfo.path(instance: config.instance))
            unlink(lockPath)
        }
        if let socket = config.admin?.socket { unlink(socket) }
        logs.sink.flush(timeoutMilliseconds: 150)
        accessSink.flush(timeoutMilliseconds: 150)
    }

    // MARK: - Privileges

    /// Whether this thread has the capability (bit number) in its effective set.
    static func hasCapability(_ cap: Int32) -> Bool {
        var mask: UInt64 = 0
        return sluice_effective_capabilities(&mask) == 0 && mask & (1 << UInt64(cap)) != 0
    }

    /// Refuses to start, naming what is missing, when the configuration needs
    /// privileges or bpffs that this process does not have.
    private func preflight() throws(ServerError) {
        let needsBPF = config.steering == .leastLoaded || config.dataPath == .sockmap
        if needsBPF && !Self.hasCapability(SLUICE_CAP_BPF) && !Self.hasCapability(SLUICE_CAP_SYS_ADMIN) {
            throw ServerError("missing privilege: CAP_BPF (needed by "
                + (config.steering == .leastLoaded ? "steering least_loaded" : "data_path sockmap")
                + "); run as root or grant CAP_BPF (see deploy/systemd/sluice.service)")
        }
        if config.dataPath == .sockmap && !Self.hasCapability(SLUICE_CAP_NET_ADMIN) && !Self.hasCapability(SLUICE_CAP_SYS_ADMIN) {
            throw ServerError("missing privilege: CAP_NET_ADMIN (needed by data_path sockmap); grant it, or use data_path: auto")
        }
        if needsBPF && !isBPFFileSystem("/sys/fs/bpf") {
            throw ServerError("bpffs is not mounted at /sys/fs/bpf: mount -t bpf bpf /sys/fs/bpf")
        }
        if config.user != nil && geteuid() != 0 {
            throw ServerError("user: \(config.user!) needs sluice to start as root (it drops to that user after start-up)")
        }
    }

    /// Becomes `user`, keeping CAP_BPF (the data path reads and updates BPF
    /// maps: counters, metrics, sockmap pairing) and, for sockmap, CAP_NET_ADMIN
    /// (send buffers above the sysctl limit). What the daemon removes at stop
    /// (pins, its lock, info file and admin socket) is handed to the user first.
    private func dropPrivileges(to user: String, dataPath: DataPathKind, pinDirectory: String?,
                                adminSocket: String?, lock: InstanceLock?) throws(ServerError) {
        guard let entry = getpwnam(user) else { throw ServerError("user: no such user \"\(user)\"") }
        let uid = entry.pointee.pw_uid, gid = entry.pointee.pw_gid
        handOverRuntimeFiles(to: uid, group: gid, pinDirectory: pinDirectory, lock: lock,
                             infoPath: InstanceInfo.path(instance: config.instance), adminSocket: adminSocket)
        var keep: UInt64 = 1 << UInt64(SLUICE_CAP_BPF)
        if dataPath == .sockmap { keep |= 1 << UInt64(SLUICE_CAP_NET_ADMIN) }
        guard sluice_drop_privileges(uid, gid, keep) == 0 else {
            throw ServerError("cannot become \(user): \(errnoDescription(errno))")
        }
        logger.info("running as \(user)", metadata: [
            "uid": "\(uid)", "gid": "\(gid)",
            "capabilities": "\(dataPath == .sockmap ? "CAP_BPF CAP_NET_ADMIN" : "CAP_BPF")",
        ])
    }

    /// Loads the BPF object and pins the per-worker counters. `least_loaded`
    /// cannot run without it; the other modes run with process memory instead.
    private func setUpSteering(mode: SteeringMode, pinning: Bool) throws(ServerError) -> KernelSteering? {
        do {
            let steering = try KernelSteering(
                instance: config.instance, workers: config.workers, listeners: config.listeners.count,
                stallThresholdNanoseconds: config.stallThreshold.nanoseconds,
                attachPrograms: mode == .leastLoaded)
            if pinning {
                do {
                    if try steering.pin(daemonUser: config.user.flatMap { getpwnam($0)?.pointee.pw_uid }) {
                        logger.notice("replaced stale pins left by a run that did not stop cleanly", metadata: [
                            "pins": "\(steering.pinDirectory)",
                        ])
                    }
                } catch {
                    steering.close()
                    throw error
                }
            }
            return steering
        } catch {
            if mode == .leastLoaded {
                throw ServerError("steering least_loaded needs BPF (root or CAP_BPF, and bpffs at /sys/fs/bpf): \(error); "
                    + "use steering: hash to run without it")
            }
            logger.warning("per-worker counters are not in BPF maps (sluice status will not see them): \(error)")
            return nil
        }
    }

    /// Resolves `data_path:`. `sockmap` must load, attach and pass a loopback
    /// self-test or the start fails; `auto` uses it when it does, and
    /// splice(2) otherwise, saying why.
    private func setUpDataPath(workerLoadFD: Int32?) throws(ServerError) -> (DataPathKind, SockmapPairs?, String) {
        switch config.dataPath {
        case .splice: return (.splice, nil, "configured")
        case .copy: return (.copy, nil, "configured")
        case .sockmap, .auto:
            let pairs = min(1 << 20, config.listeners.reduce(0) { $0 + $1.maxConnections })
            do {
                let sockmap = try SockmapPairs(workerLoadFD: workerLoadFD, pairs: pairs)
                if let problem = sockmap.selfTest() {
                    sockmap.close()
                    throw BPFError("the loopback self-test failed: \(problem)")
                }
                if config.dataPath == .auto {
                    let measured = DataPathProbe.measure(sockmap: sockmap)
                    if !measured.prefersSockmap {
                        sockmap.close()
                        logger.notice("data path: splice(2), measured faster here for 1 MiB request/response exchanges", metadata: [
                            "measured": "\(measured)",
                        ])
                        return (.splice, nil, "auto: measured \(measured)")
                    }
                    logger.info("data path: sockmap (loaded, passed its loopback self-test, and measured)", metadata: [
                        "measured": "\(measured)",
                    ])
                    return (.sockmap, sockmap, "auto: measured \(measured)")
                }
                logger.info("data path: sockmap (the verdict program loaded and passed its loopback self-test)")
                return (.sockmap, sockmap, "configured")
            } catch {
                if config.dataPath == .sockmap {
                    throw ServerError("data_path sockmap is unavailable: \(error); it needs root (CAP_BPF and CAP_NET_ADMIN). "
                        + "Use data_path: auto to fall back, or data_path: splice")
                }
                logger.warning("data path: splice(2), because the sockmap path is unavailable: \(error)")
                return (.splice, nil, "auto: sockmap unavailable: \(error)")
            }
        }
    }

    /// Binds every listener: one SO_REUSEPORT socket per worker, or, for
    /// shared_accept, one socket that every worker gets a duplicate of.
    private func bindListeners(pools: [String: RuntimePool], shared: Bool, counters: ListenerLoadTable) throws(ServerError)
        -> ([RuntimeListener], [[Int32]])
    {
        var runtimeListeners: [RuntimeListener] = []
        var socketsByWorker = Array(repeating: [Int32](), count: config.workers)
        func closeAllBound() {
            for fds in socketsByWorker { for fd in fds { closeDescriptor(fd) } }
        }
        for (index, listener) in config.listeners.enumerated() {
            guard var address = SocketAddress(ip: listener.bind.host, port: listener.bind.port) else {
                closeAllBound()
                throw ServerError("listener \(listener.name): bad address \(listener.bind)")
            }
            do throws(SystemCallError) {
                if shared {
                    let fd = try Socket.listen(on: address, reusePort: false)
                    address = try Socket.localAddress(fd)
                    for worker in 0..<config.workers {
                        let copy = sluice_dup_cloexec(fd)
                        if copy < 0 {
                            closeDescriptor(fd)
                            throw SystemCallError(call: "dup", errno: errno)
                        }
                        socketsByWorker[worker].append(copy)
                    }
                    closeDescriptor(fd)
                } else {
                    for worker in 0..<config.workers {
                        let fd = try Socket.listen(on: address, reusePort: true)
                        if address.port == 0 { address = try Socket.localAddress(fd) } // the others join its port
                        socketsByWorker[worker].append(fd)
                    }
                }
            } catch {
                closeAllBound()
                throw ServerError("listener \(listener.name): cannot listen on \(address): \(error)")
            }
            runtimeListeners.append(RuntimeListener(
                index: index, config: listener, pool: pools[listener.pool]!, address: address,
                counters: counters.record(index)))
        }
        return (runtimeListeners, socketsByWorker)
    }
}
