import Atomics
import Glibc
import Logging
import CSluice
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
public final class Server {
    private let config: SluiceConfig
    private let logs: LogFactory
    private let accessSink: LogSink
    private let options: ServerOptions
    private var logger: Logger

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

        // Signals are blocked before any thread starts, so every thread inherits the mask.
        let signals: SignalFD
        do {
            signals = try SignalFD(signals: [SIGINT, SIGTERM, SIGHUP] + (options.stallOnSIGUSR1 != nil ? [SIGUSR1] : []))
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
        defer { steering?.close() }
        let (dataPath, kernelSplice) = try setUpDataPath(workerLoadFD: steering?.workerLoadFD)
        defer { kernelSplice?.close() }
        if let kernelSplice, let steering, lock != nil {
            do { try kernelSplice.pin(into: steering.pinDirectory) } catch {
                logger.warning("splice maps not pinned: \(error)")
            }
        }

        var pools: [String: RuntimePool] = [:]
        for pool in config.pools { pools[pool.name] = RuntimePool(pool) }

        // Bind everything before starting anything: a bad address fails the start.
        let (runtimeListeners, bound) = try bindListeners(pools: pools, shared: steeringMode == .sharedAccept)
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
        settings.workerCountsAccepts = steeringMode != .leastLoaded
        settings.maxWaitMilliseconds = Int32(max(1, min(1000, config.stallThreshold.milliseconds / 4)))
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
                    record: record, kernelSplice: kernelSplice, logger: logs.logger("sluice.worker", worker: k),
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
        logger.info("ready", metadata: readyMetadata)
        options.onReady?(runtimeListeners.map { (name: $0.name, address: $0.address) })

        var draining = false
        while exited.load(ordering: .relaxed) < workers.count {
            epoll.wait(timeoutMilliseconds: 1000) { token, _ in
                guard token == 1 else { exitWake.drain(); return }
                while let signal = signals.next() {
                    switch signal {
                    case SIGHUP:
                        logger.notice("SIGHUP: configuration reload is not available yet; nothing changed")
                    case SIGUSR1:
                        if let stall = options.stallOnSIGUSR1, stall.worker < workers.count {
                            workers[stall.worker].send(.stall(milliseconds: stall.milliseconds))
                        }
                    default:
                        if draining {
                            logger.warning("second stop signal: exiting now")
                            // Workers still run, so nothing is unmapped; only the pins go.
                            if let steering { removePinDirectory(steering.pinDirectory) }
                            _exit(1)
                        }
                        draining = true
                        let deadline = monotonicMilliseconds() + config.drainTimeout.milliseconds
                        logger.info("stop signal: draining", metadata: [
                            "signal": "\(signal == SIGINT ? "SIGINT" : "SIGTERM")",
                            "drain_timeout": "\(formatDuration(config.drainTimeout))",
                        ])
                        for worker in workers { worker.send(.drain(deadlineMilliseconds: deadline)) }
                    }
                }
            }
        }
        for thread in threads { thread.join() }
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

    /// Loads the BPF object and pins the per-worker counters. `least_loaded`
    /// cannot run without it; the other modes run with process memory instead.
    private func setUpSteering(mode: SteeringMode, pinning: Bool) throws(ServerError) -> KernelSteering? {
        do {
            let steering = try KernelSteering(
                instance: config.instance, workers: config.workers, listeners: config.listeners.count,
                stallThresholdNanoseconds: config.stallThreshold.milliseconds * 1_000_000,
                attachPrograms: mode == .leastLoaded)
            if pinning {
                do {
                    if try steering.pin() {
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

    /// Resolves `splice:`. `sockmap` must load, attach and pass a loopback
    /// self-test or the start fails; `auto` uses it when it does, and
    /// splice(2) otherwise, saying why.
    private func setUpDataPath(workerLoadFD: Int32?) throws(ServerError) -> (DataPathKind, KernelSplice?) {
        switch config.splice {
        case .splice: return (.splice, nil)
        case .copy: return (.copy, nil)
        case .sockmap, .auto:
            let pairs = min(1 << 20, config.listeners.reduce(0) { $0 + $1.maxConnections })
            do {
                let splice = try KernelSplice(workerLoadFD: workerLoadFD, pairs: pairs)
                if let problem = splice.selfTest() {
                    splice.close()
                    throw BPFError("the loopback self-test failed: \(problem)")
                }
                if config.splice == .auto {
                    let measured = DataPathProbe.measure(splice: splice)
                    if !measured.prefersSockmap {
                        splice.close()
                        logger.notice("data path: splice(2), measured faster here for 1 MiB request/response exchanges", metadata: [
                            "measured": "\(measured)",
                        ])
                        return (.splice, nil)
                    }
                    logger.info("data path: sockmap (loaded, passed its loopback self-test, and measured)", metadata: [
                        "measured": "\(measured)",
                    ])
                } else {
                    logger.info("data path: sockmap (the verdict program loaded and passed its loopback self-test)")
                }
                return (.sockmap, splice)
            } catch {
                if config.splice == .sockmap {
                    throw ServerError("splice sockmap is unavailable: \(error); it needs root (CAP_BPF and CAP_NET_ADMIN). "
                        + "Use splice: auto to fall back, or splice: splice")
                }
                logger.warning("data path: splice(2), because the sockmap path is unavailable: \(error)")
                return (.splice, nil)
            }
        }
    }

    /// Binds every listener: one SO_REUSEPORT socket per worker, or, for
    /// shared_accept, one socket that every worker gets a duplicate of.
    private func bindListeners(pools: [String: RuntimePool], shared: Bool) throws(ServerError)
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
            runtimeListeners.append(RuntimeListener(index: index, config: listener, pool: pools[listener.pool]!, address: address))
        }
        return (runtimeListeners, socketsByWorker)
    }
}
