import Logging
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
    /// The file the configuration came from: a reload reads it again
    /// (nil: the demo's built-in configuration, which cannot be reloaded).
    public var configPath: String?
    /// This binary, which a binary upgrade starts by default.
    public var executablePath: String?
    /// Set in a process a binary upgrade started: the running one's socket.
    public var upgradeFrom: String?

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
    /// The configuration served now: the one started with, or the last reload's.
    var config: SluiceConfig
    /// What reloads need of the running daemon, and what they did.
    var live: LiveState?
    var generation = 1
    let startedAt = wallClockSeconds()
    lazy var loadedAt = startedAt
    var reloads = (succeeded: UInt64(0), failed: UInt64(0))
    var lastReloadErrors: [String] = []
    /// A binary upgrade under way; once it handed over, this process only
    /// finishes what stayed, leaving the pins and names to the new one.
    var upgrade: UpgradeInFlight?
    var handedOver = false
    /// In a process a binary upgrade started: the conversation with the old one.
    var adoption: UpgradeAdoption?
    var lastUpgradeError: String? {
        didSet { upgradesFailed += 1 }
    }
    var upgradesFailed: UInt64 = 0
    /// A stop signal that came while an upgrade was under way, run if it fails.
    var deferredStop: (() -> Void)?
    /// Hostname backends: the addresses the pools use now, and where the
    /// discovery thread leaves newer ones.
    var resolved: DiscoveredBackends.Table = [:]
    let discoveredInbox = DiscoveredBackends()
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
    let options: ServerOptions
    var logger: Logger
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

    /// Start-up as steps, each handing what it made to `owned`, which
    /// releases it all in reverse order on every way out; then the control
    /// loop until every worker has exited.
    private func serve() throws(ServerError) -> Int32 {
        try preflight()
        if let limit = openFilesLimit(), let warning = DescriptorBudget(config: config).warning(openFilesLimit: limit) {
            logger.warning("\(warning)")
        }
        // Signals are blocked before any thread starts, so every thread inherits the mask.
        let signals = try blockSignals()
        // A binary upgrade: the running process hands over its lock and listeners.
        var adoption: UpgradeAdoption?
        if let path = options.upgradeFrom { adoption = try UpgradeAdoption(socketPath: path, config: config) }
        do { return try serve(signals: signals, adoption: adoption) } catch {
            adoption?.refuse(error.description)
            throw error
        }
    }

    private func serve(signals: SignalFD, adoption: UpgradeAdoption?) throws(ServerError) -> Int32 {
        let owned = ReleaseStack()
        defer { owned.releaseAll() }
        let (lock, slots, steering, dataPath) = try setUpKernel(adoption: adoption, owned: owned)
        resolveAtStart()
        let pools = Dictionary(uniqueKeysWithValues: effectivePools(config).map { ($0.name, RuntimePool($0)) })
        let listenerTable = steering?.listenerTable ?? ListenerLoadTable(anonymousCount: ListenerField.capacity)
        let bound = BoundListeners(workers: config.workers)
        owned.push { bound.close() }
        // Bind everything before starting anything: a bad address fails the start.
        let listeners: [RuntimeListener]
        if let adoption {
            listeners = try adoptListeners(adoption, slots: slots, into: bound, pools: pools, counters: listenerTable)
        } else {
            listeners = try bindListeners(into: bound, pools: pools, counters: listenerTable)
        }
        let sockets = Dictionary(uniqueKeysWithValues: listeners.enumerated().map { ($1.index, bound.sockets(listener: $0)) })
        try attachSteering(steering, listeners: listeners, bound: bound, socketsInMap: adoption?.manifest.listenerMaps == true)
        let loop: ControlLoop
        do { loop = try ControlLoop(signals: signals) } catch {
            throw ServerError("cannot set up the control loop: \(error)")
        }
        logListening(listeners)
        let table = steering?.table ?? WorkerLoadTable(anonymousCount: config.workers)
        livePools = config.pools.map { pools[$0.name]! }
        liveListeners = listeners
        liveSteering = steering
        liveTable = table
        owned.push { [self] in clearLiveState() }
        try openNames(adoption: adoption, lock: lock, steering: steering, listeners: listeners, dataPath: dataPath,
                      loop: loop, owned: owned)
        // Everything that needs root is done: BPF loaded, pinned, attached,
        // sockets bound, admin socket created. Become the configured user
        // before any worker exists (see dropPrivileges).
        if let user = config.user {
            try dropPrivileges(to: user, keepsSockmap: dataPath.sockmap != nil, pinDirectory: steering?.pinDirectory,
                               adminSocket: config.admin?.socket, lock: lock)
        }
        var settings = workerSettings(dataPath: dataPath)
        settings.flowMaps = flowMaps(listeners, steering: steering)
        let workers = try startWorkers(listeners: listeners, bound: bound, settings: settings, table: table,
                                       sockmapPairs: dataPath.sockmap, onExit: loop.workerExited)
        owned.push { workers.stop() }
        liveWorkers = workers.workers
        let healthChecker = try startHealthChecks()
        live = LiveState(steering: steering, listenerTable: listenerTable, dataPath: dataPath, writesInfo: lock != nil,
                         workers: workers.workers, healthChecker: healthChecker,
                         freshSlot: (listeners.map(\.index).max() ?? -1) + 1)
        live?.lock = lock
        live?.sockets = sockets
        owned.push { [self] in
            live?.discovery?.stop()
            live?.healthChecker?.stop()
            live = nil
        }
        if let adoption { try takeConnections(from: adoption, workers: workers.workers, wake: loop.discoveryWake, owned: owned) }

        announceReady(listeners: listeners, dataPath: dataPath.name, steering: steering)
        let keeper = LoadKeeper(
            workers: workers.workers, table: table, rebalance: config.rebalance,
            stallThresholdNanoseconds: settings.stallThresholdNanoseconds, logger: logs.logger("sluice.load"))
        loadKeeper = keeper
        let names = RuntimeNames(pinDirectory: steering?.pinDirectory, lockPath: lock?.path)
        live?.loop = loop
        live?.discovery = try startDiscovery(wake: loop.discoveryWake)
        loop.run(workers: workers.workers.count, keeper: keeper,
                 onSignal: { handle(signal: $0, workers: workers.workers, loop: loop, names: names) },
                 onDiscovery: { applyDiscovered(); checkUpgrade() },
                 pastStopDeadline: { abandonStuckWorkers(workers.workers, names: names) })
        workers.join()
        clearLiveState()
        logStopped(workers: workers.workers, steering: steering)
        return 0
    }

    /// The instance lock, the listeners' slots, BPF steering and the data
    /// path: made here, or taken over from the process a binary upgrade replaces.
    private func setUpKernel(adoption: UpgradeAdoption?, owned: ReleaseStack) throws(ServerError)
        -> (InstanceLock?, [Int], KernelSteering?, DataPathChoice)
    {
        let lock: InstanceLock?
        if let adoption { lock = InstanceLock(adopting: adoption.lockFD, instance: config.instance) } else { lock = try takeInstanceLock() }
        owned.hold(lock)
        let slots = listenerSlots(adoption)
        let steering = try setUpSteering(mode: config.steering, pinning: lock != nil, slots: slots, adopting: adoption != nil,
                                         adoptedMaps: adoption?.listenerMaps ?? [:])
        adoption?.closeListenerMaps()
        if let steering { owned.push { steering.close() } }
        let adoptedSockmap = adoption?.manifest.sockmapPinned == true ? steering?.pinDirectory : nil
        let dataPath = try setUpDataPath(workerLoadFD: steering?.workerLoadFD, adoptingPins: adoptedSockmap)
        if let sockmapPairs = dataPath.sockmap {
            owned.push { sockmapPairs.close() }
            if let steering, lock != nil, adoptedSockmap == nil { pinSockmap(sockmapPairs, into: steering.pinDirectory) }
        }
        return (lock, slots, steering, dataPath)
    }

    /// The info file and the admin socket; in a binary upgrade they stay the
    /// old process's (as do the pins and the lock file) until it is done.
    private func openNames(adoption: UpgradeAdoption?, lock: InstanceLock?, steering: KernelSteering?, listeners: [RuntimeListener],
                           dataPath: DataPathChoice, loop: ControlLoop, owned: ReleaseStack) throws(ServerError) {
        if let adoption {
            self.adoption = adoption
            handedOver = true
            steering?.leavePins()
            lock?.leaveFile()
            owned.push { [self] in if !handedOver { FileSystem.removeFile(InstanceInfo.path(instance: config.instance)) } }
        } else {
            if lock != nil { writeInstanceInfo(listeners: listeners, dataPath: dataPath, owned: owned) }
            loop.admin = try openAdmin(epoll: loop.epoll)
        }
        owned.push { [loop] in loop.admin?.close() }
    }

    /// Binary upgrade: this process serves the listeners now; the old one
    /// may hand over its connections (to backends this one has).
    private func takeConnections(from adoption: UpgradeAdoption, workers: [Worker], wake: EventFD,
                                 owned: ReleaseStack) throws(ServerError) {
        live?.freshSlot = max(live?.freshSlot ?? 0, adoption.manifest.freshSlot ?? 0)
        live?.retiredSlots = adoption.manifest.retiredSlots ?? []
        let pools = Dictionary(livePools.map { ($0.name, $0.addresses.map(\.description)) }, uniquingKeysWith: { a, _ in a })
        try adoption.ready(workers: workers, pools: pools, wake: wake, logger: logs.logger("sluice.upgrade"))
        owned.push { adoption.stop() }
    }

    private func clearLiveState() {
        loadKeeper = nil
        liveWorkers.removeAll()
        liveTable = nil
        liveSteering = nil
    }

    private func announceReady(listeners: [RuntimeListener], dataPath: String, steering: KernelSteering?) {
        var metadata: Logger.Metadata = [
            "workers": "\(config.workers)", "steering": "\(config.steering.rawValue)", "data_path": "\(dataPath)",
            "instance": "\(config.instance)",
        ]
        if let steering {
            metadata["pins"] = "\(steering.pinDirectory)"
            if !steering.programIDs.isEmpty { metadata["prog_ids"] = "\(steering.programIDs.map(String.init).joined(separator: ","))" }
        }
        if let adminConfig = config.admin {
            metadata["admin"] = "\(adminConfig.socket)"
            if let metrics = adminConfig.metrics.flatMap({ SocketAddress(ip: $0.host, port: $0.port) }) {
                metadata["metrics"] = "http://\(metrics)/metrics"
            }
        }
        logger.info("ready", metadata: metadata)
        // In a binary upgrade systemd hears of this process from the old one (MAINPID).
        if adoption == nil { SystemdNotify.send("READY=1\nMAINPID=\(CurrentProcess.id)\nSTATUS=listening") }
        options.onReady?(listeners.map { (name: $0.name, address: $0.address) })
    }

    private func logStopped(workers: [Worker], steering: KernelSteering?) {
        var totals = (accepted: UInt64(0), bytesIn: UInt64(0), bytesOut: UInt64(0))
        for worker in workers {
            totals.accepted += worker.counters.accepted.load(ordering: .relaxed)
            totals.bytesIn += worker.record.load(.bytesIn)
            totals.bytesOut += worker.record.load(.bytesOut)
        }
        var metadata: Logger.Metadata = [
            "accepted": "\(totals.accepted)", "bytes_in": "\(totals.bytesIn)", "bytes_out": "\(totals.bytesOut)",
        ]
        if let steering, config.steering == .leastLoaded {
            let stats = steering.stats
            metadata["steered"] = "\(stats.selected)"
            metadata["fallbacks"] = "\(stats.fallback + stats.allStalled)"
        }
        logger.info("stopped", metadata: metadata)
    }
}
