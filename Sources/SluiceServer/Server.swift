import Atomics
import Glibc
import Logging
import SluiceCore
import SluicePosix

/// Options that are not part of the configuration file.
public struct ServerOptions: Sendable {
    /// At exit, compare the fd table with the one at start and fail if any
    /// descriptor the server opened is still open.
    public var verifyCleanExit = false
    /// Printed once listeners are bound and workers run (the demo uses it).
    public var onReady: (@Sendable ([(name: String, address: SocketAddress)]) -> Void)?

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
        guard config.steering == .hash else {
            throw ServerError("steering \"\(config.steering.rawValue)\" is not available yet; use \"hash\"")
        }
        let dataPath: DataPathKind
        switch config.splice {
        case .splice: dataPath = .splice
        case .copy: dataPath = .copy
        case .auto, .sockmap:
            throw ServerError("splice \"\(config.splice.rawValue)\" is not available yet; use \"splice\" or \"copy\"")
        }

        // Signals are blocked before any thread starts, so every thread inherits the mask.
        let signals: SignalFD
        do {
            signals = try SignalFD(signals: [SIGINT, SIGTERM, SIGHUP])
        } catch {
            throw ServerError("cannot set up signal handling: \(error)")
        }

        var pools: [String: RuntimePool] = [:]
        for pool in config.pools { pools[pool.name] = RuntimePool(pool) }

        // Bind everything before starting anything: a bad address fails the start.
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
            for worker in 0..<config.workers {
                do {
                    let fd = try Socket.listen(on: address, reusePort: true)
                    if address.port == 0 { address = try Socket.localAddress(fd) } // the others join its port
                    socketsByWorker[worker].append(fd)
                } catch {
                    closeAllBound()
                    throw ServerError("listener \(listener.name): cannot listen on \(address): \(error)")
                }
            }
            runtimeListeners.append(RuntimeListener(index: index, config: listener, pool: pools[listener.pool]!, address: address))
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

        let settings = WorkerSettings(dataPath: dataPath, accessLog: config.log.access)
        var workers: [Worker] = []
        var threads: [OSThread] = []
        let seed = monotonicNanoseconds()
        for k in 0..<config.workers {
            do {
                let worker = try Worker(
                    id: k, listeners: runtimeListeners, listenerFDs: socketsByWorker[k], settings: settings,
                    logger: logs.logger("sluice.worker", worker: k), accessLog: accessSink, seed: seed,
                    onExit: { exited.wrappingIncrement(ordering: .relaxed); exitWake.signal() }
                )
                socketsByWorker[k] = [] // the worker owns them now
                workers.append(worker)
                threads.append(try OSThread.start(name: "sluice-w\(k)") { worker.run() })
            } catch {
                // Stop what started, then fail.
                for fds in socketsByWorker { for fd in fds { closeDescriptor(fd) } }
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
        logger.info("ready", metadata: [
            "workers": "\(config.workers)", "steering": "\(config.steering.rawValue)", "data_path": "\(dataPath.rawValue)",
        ])
        options.onReady?(runtimeListeners.map { (name: $0.name, address: $0.address) })

        var draining = false
        while exited.load(ordering: .relaxed) < workers.count {
            epoll.wait(timeoutMilliseconds: 1000) { token, _ in
                guard token == 1 else { exitWake.drain(); return }
                while let signal = signals.next() {
                    switch signal {
                    case SIGHUP:
                        logger.notice("SIGHUP: configuration reload is not available yet; nothing changed")
                    default:
                        if draining {
                            logger.warning("second stop signal: exiting now")
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
        let totals = workers.reduce(into: (accepted: UInt64(0), bytesIn: UInt64(0), bytesOut: UInt64(0))) { sum, w in
            sum.accepted += w.counters.accepted.load(ordering: .relaxed)
            sum.bytesIn += w.counters.bytesIn.load(ordering: .relaxed)
            sum.bytesOut += w.counters.bytesOut.load(ordering: .relaxed)
        }
        logger.info("stopped", metadata: [
            "accepted": "\(totals.accepted)", "bytes_in": "\(totals.bytesIn)", "bytes_out": "\(totals.bytesOut)",
        ])
        workers.removeAll()
        _ = epoll
        _ = signals
        return 0
    }
}
