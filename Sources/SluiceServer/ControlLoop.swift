import Atomics
import CSluice
import SluiceBPF
import SluiceCore
import SluicePosix

/// The control thread's wait after start-up: signals, worker exits, admin
/// clients and the timers (the load keeper's tick, the hard stop deadline),
/// until every worker has exited.
final class ControlLoop {
    private static let signalToken: UInt64 = 1
    private static let exitToken: UInt64 = 2
    private static let discoveryToken: UInt64 = 3
    /// Admin endpoints take tokens from here up.
    static let adminTokenBase: UInt64 = 100

    let epoll: Epoll
    private let signals: SignalFD
    private let exitWake: EventFD
    /// Signalled by the DNS discovery thread when a hostname's addresses change.
    let discoveryWake: EventFD
    private let exited = ManagedAtomic(0)
    /// Set by the first stop signal (or the end of a binary upgrade): past
    /// it, stuck workers are abandoned.
    var stopDeadline: UInt64?
    /// A stop signal came: a second one exits at once.
    var stopSignalled = false

    init(signals: SignalFD) throws(SystemCallError) {
        self.signals = signals
        exitWake = try EventFD()
        discoveryWake = try EventFD()
        epoll = try Epoll(maxEventsPerWait: 8)
        try epoll.add(signals.fd, .readable, token: Self.signalToken)
        try epoll.add(exitWake.fd, .readable, token: Self.exitToken)
        try epoll.add(discoveryWake.fd, .readable, token: Self.discoveryToken)
    }

    /// Called by each worker on its own thread as it exits.
    var workerExited: @Sendable () -> Void {
        let exited = self.exited, wake = exitWake
        return { exited.wrappingIncrement(ordering: .relaxed); wake.signal() }
    }

    /// Runs until `workers` workers have exited.
    /// The admin endpoints; a binary upgrade's new process opens them once it took over.
    var admin: AdminEndpoints?

    func run(workers: Int, keeper: LoadKeeper,
             onSignal: (Int32) -> Void, onDiscovery: () -> Void, pastStopDeadline: () -> Void) {
        var nextTick = monotonicMilliseconds() + keeper.tickMilliseconds
        while exited.load(ordering: .relaxed) < workers {
            let now = monotonicMilliseconds()
            if now >= nextTick {
                nextTick = now + keeper.tickMilliseconds
                keeper.tick(draining: stopDeadline != nil)
            }
            if let stopDeadline, now >= stopDeadline { pastStopDeadline() }
            admin?.tick(now: now)
            let wakeUp = min(nextTick, admin?.nextDeadline(now: now) ?? .max)
            epoll.wait(timeoutMilliseconds: Int32(wakeUp > now ? wakeUp - now : 0)) { token, events in
                if let admin, admin.owns(token) { admin.handle(token: token, events: events); return }
                if token == Self.discoveryToken {
                    discoveryWake.drain()
                    onDiscovery()
                    return
                }
                guard token == Self.signalToken else { exitWake.drain(); return }
                while let signal = signals.next() { onSignal(signal) }
            }
        }
    }
}

// MARK: - Signals and stopping

extension Server {
    /// SIGINT/SIGTERM: drain (a second one exits at once). SIGQUIT is a stop
    /// too. SIGHUP reloads the configuration file; SIGUSR2 starts a binary
    /// upgrade. SIGUSR1 is held by the signalfd so that it cannot kill the
    /// daemon without cleanup; it is the benchmark's stall knob when set.
    func handle(signal: Int32, workers: [Worker], loop: ControlLoop, names: RuntimeNames) {
        switch signal {
        case SIGHUP:
            _ = reload(trigger: "SIGHUP")
        case SIGUSR1:
            if let stall = options.stallOnSIGUSR1, stall.worker < workers.count {
                workers[stall.worker].send(.stall(milliseconds: stall.milliseconds))
            } else {
                logger.notice("SIGUSR1 ignored")
            }
        case SIGUSR2:
            if let refusal = startUpgrade(binary: nil) {
                lastUpgradeError = refusal
                logger.error("binary upgrade not started", metadata: ["why": "\(refusal)"])
                if let live, live.writesInfo { rewriteInstanceInfo(listeners: liveListeners, dataPath: live.dataPath) }
            }
        default:
            if upgrade != nil && !handedOver && !loop.stopSignalled {
                // Draining now would pull the connections the upgrade is handing over.
                logger.notice("stop signal: waiting for the binary upgrade under way to end first")
                loop.stopSignalled = true
                deferredStop = { [self] in
                    loop.stopSignalled = false
                    handle(signal: signal, workers: workers, loop: loop, names: names)
                }
                return
            }
            if loop.stopSignalled {
                logger.warning("second stop signal: exiting now")
                removeNames(names)
                CurrentProcess.exit(1)
            }
            loop.stopSignalled = true
            SystemdNotify.send("STOPPING=1\nSTATUS=draining")
            let deadline = monotonicMilliseconds().saturatingAdd(config.drainTimeout.milliseconds)
            // A worker stuck in a call never reads its drain order: the
            // process still ends, two seconds after the drain deadline.
            loop.stopDeadline = deadline.saturatingAdd(2000)
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
    func abandonStuckWorkers(_ workers: [Worker], names: RuntimeNames) {
        let stuck = workers.filter { !$0.hasExited }.map(\.id)
        logger.error("workers did not stop within drain_timeout + 2s; exiting without them", metadata: [
            "stuck": "\(stuck)",
        ])
        removeNames(names)
        CurrentProcess.exit(1)
    }

    /// Pins, info file, admin socket and lock: what a later start would
    /// otherwise find left behind. Workers may still run, so nothing is
    /// unmapped. The log lines queued so far get a moment to reach the output.
    private func removeNames(_ names: RuntimeNames) {
        // After a binary upgrade the names are the new process's.
        guard !handedOver else { return }
        if let pins = names.pinDirectory { removePinDirectory(pins) }
        if let lockPath = names.lockPath {
            FileSystem.removeFile(InstanceInfo.path(instance: config.instance))
            FileSystem.removeFile(lockPath)
        }
        if let socket = config.admin?.socket { FileSystem.removeFile(socket) }
        logs.sink.flush(timeoutMilliseconds: 150)
        accessSink.flush(timeoutMilliseconds: 150)
    }
}

/// The names in the file system that a run leaves behind if it is cut short.
struct RuntimeNames {
    var pinDirectory: String?
    var lockPath: String?
}
