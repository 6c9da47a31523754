import CSluice
import Logging
import SluiceBPF
import SluiceCore
import SluicePosix

// Start-up, one step per resource: each step returns what it made (the
// caller hands it to its ReleaseStack) and closes only what it made itself
// when it fails half-way.
extension Server {
    // MARK: - Privileges

    /// Refuses to start, naming what is missing, when the configuration needs
    /// privileges or bpffs that this process does not have.
    func preflight() throws(ServerError) {
        let needsBPF = config.steering == .leastLoaded || config.dataPath == .sockmap
        if needsBPF && !Privileges.hasCapability(SLUICE_CAP_BPF) && !Privileges.hasCapability(SLUICE_CAP_SYS_ADMIN) {
            throw ServerError("missing privilege: CAP_BPF (needed by "
                + (config.steering == .leastLoaded ? "steering least_loaded" : "data_path sockmap")
                + "); run as root or grant CAP_BPF (see deploy/systemd/sluice.service)")
        }
        if config.dataPath == .sockmap && !Privileges.hasCapability(SLUICE_CAP_NET_ADMIN) && !Privileges.hasCapability(SLUICE_CAP_SYS_ADMIN) {
            throw ServerError("missing privilege: CAP_NET_ADMIN (needed by data_path sockmap); grant it, or use data_path: auto")
        }
        if needsBPF && !isBPFFileSystem("/sys/fs/bpf") {
            throw ServerError("bpffs is not mounted at /sys/fs/bpf: mount -t bpf bpf /sys/fs/bpf")
        }
        if config.user != nil && !Privileges.isRoot {
            throw ServerError("user: \(config.user!) needs sluice to start as root (it drops to that user after start-up)")
        }
    }

    /// Becomes `user`, keeping CAP_BPF (the data path reads and updates BPF
    /// maps: counters, metrics, sockmap pairing) and, for sockmap, CAP_NET_ADMIN
    /// (send buffers above the sysctl limit). What the daemon removes at stop
    /// (pins, its lock, info file and admin socket) is handed to the user first.
    /// Runs before any worker exists: capabilities are per thread and threads
    /// inherit them. The log writer, started earlier, loses them all with the
    /// uid change: it has no keep-caps, which is per thread too.
    func dropPrivileges(to user: String, keepsSockmap: Bool, pinDirectory: String?,
                        adminSocket: String?, lock: InstanceLock?) throws(ServerError) {
        guard let entry = UserEntry.named(user) else { throw ServerError("user: no such user \"\(user)\"") }
        let uid = entry.uid, gid = entry.gid
        handOverRuntimeFiles(to: uid, group: gid, pinDirectory: pinDirectory, lock: lock,
                             infoPath: InstanceInfo.path(instance: config.instance), adminSocket: adminSocket)
        var keep: UInt64 = 1 << UInt64(SLUICE_CAP_BPF)
        if keepsSockmap { keep |= 1 << UInt64(SLUICE_CAP_NET_ADMIN) }
        do { try Privileges.drop(to: uid, group: gid, keeping: keep) } catch {
            throw ServerError("cannot become \(user): \(errnoDescription(error.errno))")
        }
        logger.info("running as \(user)", metadata: [
            "uid": "\(uid)", "gid": "\(gid)",
            "capabilities": "\(keepsSockmap ? "CAP_BPF CAP_NET_ADMIN" : "CAP_BPF")",
        ])
    }

    /// Loads the BPF object and pins the per-worker counters. `least_loaded`
    /// cannot run without it; the other modes run with process memory instead.
    /// `slots[i]`: listener i's slot (its position, unless a binary upgrade
    /// hands over listeners whose slots reloads have moved).
    func setUpSteering(mode: SteeringMode, pinning: Bool, slots: [Int], adopting: Bool,
                       adoptedMaps: [Int: [Int32]]) throws(ServerError) -> KernelSteering? {
        // Room for every flow a UDP listener may have, twice over: the LRU
        // then never drops a live flow's entry for a stale one's.
        var flowCapacity: [Int: UInt32] = [:]
        for (index, listener) in config.listeners.enumerated() {
            if let udp = listener.udp { flowCapacity[slots[index]] = UInt32(min(udp.maxFlows * 2, 1 << 21)) }
        }
        do {
            let steering = try KernelSteering(
                instance: config.instance, workers: config.workers, listeners: (slots.max() ?? 0) + 1,
                stallThresholdNanoseconds: config.stallThreshold.nanoseconds,
                attachPrograms: mode == .leastLoaded, flowCapacity: flowCapacity, adoptingPins: adopting, adoptedMaps: adoptedMaps)
            if pinning && !adopting {
                do {
                    if try steering.pin(daemonUser: config.user.flatMap { UserEntry.named($0)?.uid }) {
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
    /// self-test or the start fails. `auto` decides per connection (see
    /// `SockmapPromotion`): sessions start in userspace with splice(2) for
    /// bulk; with `sockmap_after_bytes` (on by default) a stream from the
    /// client, and with `sockmap_after_turns` a connection that settles into
    /// small exchanges, move into the SOCKHASH when it loaded and passed the
    /// self-test; without either they stay in userspace, and the log says why.
    func setUpDataPath(workerLoadFD: Int32?, adoptingPins: String? = nil) throws(ServerError) -> DataPathChoice {
        switch config.dataPath {
        case .splice: return DataPathChoice(kind: .splice, sockmap: nil, promotion: nil, reason: "configured", name: "splice")
        case .copy: return DataPathChoice(kind: .copy, sockmap: nil, promotion: nil, reason: "configured", name: "copy")
        case .auto where config.sockmapAfterTurns == nil && config.sockmapAfterBytes == nil:
            return DataPathChoice(kind: .splice, sockmap: nil, promotion: nil,
                                  reason: "auto: per connection, read/write or splice(2); sockmap_after_turns and sockmap_after_bytes off",
                                  name: "auto")
        case .sockmap, .auto:
            let pairs = min(1 << 20, config.listeners.reduce(0) { $0 + $1.maxConnections })
            do {
                let sockmap = try SockmapPairs(workerLoadFD: workerLoadFD, pairs: pairs, adoptingPins: adoptingPins)
                if let problem = sockmap.selfTest() {
                    sockmap.close()
                    throw BPFError("the loopback self-test failed: \(problem)")
                }
                if config.dataPath == .auto {
                    let promotion = SockmapPromotion(turns: config.sockmapAfterTurns, streamBytes: config.sockmapAfterBytes.map(UInt64.init),
                                                     smallMessageBytes: DataPathChoice.smallMessageBytes)
                    let rules = DataPathChoice.promotionRules(promotion)
                    logger.info("data path: auto (per connection: userspace, splice(2) for bulk, sockmap \(rules))")
                    return DataPathChoice(kind: .splice, sockmap: sockmap, promotion: promotion,
                                          reason: "auto: per connection; sockmap \(rules)", name: "auto")
                }
                logger.info("data path: sockmap (the verdict program loaded and passed its loopback self-test)")
                return DataPathChoice(kind: .sockmap, sockmap: sockmap, promotion: nil, reason: "configured", name: "sockmap")
            } catch {
                if config.dataPath == .sockmap {
                    throw ServerError("data_path sockmap is unavailable: \(error); it needs root (CAP_BPF and CAP_NET_ADMIN). "
                        + "Use data_path: auto to fall back, or data_path: splice")
                }
                logger.warning("data path: auto without sockmap (userspace, splice(2) for bulk), because the sockmap path is unavailable: \(error)")
                return DataPathChoice(kind: .splice, sockmap: nil, promotion: nil, reason: "auto: sockmap unavailable: \(error)", name: "auto")
            }
        }
    }

    /// Socket buffers of UDP sockets: a burst of 64 KiB datagrams fits.
    static let udpBufferBytes: Int32 = 4 << 20
    /// TCP_DEFER_ACCEPT on listeners whose client speaks first: a client that
    /// connects and says nothing is accepted after about a second all the
    /// same (then `head_timeout` or the PROXY header's timeout applies), so
    /// deferring never hides a connection for long.
    static func deferAcceptSeconds(_ listener: ListenerConfig) -> Int32 {
        // An HTTP client speaks first, and so does whatever sends a PROXY
        // header: its connection is accepted with its first bytes in, and the
        // worker reads them at once (see `acceptHTTP`, `awaitHeader`).
        let clientFirst = listener.mode == .http || listener.proxyProtocol.accept != .off
        return clientFirst ? 1 : 0
    }

    /// A socket kept by a reload or handed over by an upgrade defers (or
    /// stops deferring) as its listener now asks: a server-first protocol
    /// must never wait a second for its accept.
    func applyDeferAccept(_ listener: ListenerConfig, to sockets: [Int32]) {
        guard listener.mode != .udp else { return }
        for fd in sockets {
            do { try Socket.setDeferAccept(fd, seconds: Self.deferAcceptSeconds(listener)) } catch {
                logger.warning("cannot set TCP_DEFER_ACCEPT", metadata: ["listener": "\(listener.name)", "error": "\(error)"])
            }
        }
    }

    /// Binds every listener into `bound`: one SO_REUSEPORT socket per
    /// worker, or, for shared_accept, one socket that every worker gets a
    /// duplicate of. On failure, what is bound stays in `bound` to be closed.
    func bindListeners(into bound: BoundListeners, pools: [String: RuntimePool], counters: ListenerLoadTable)
        throws(ServerError) -> [RuntimeListener]
    {
        var runtimeListeners: [RuntimeListener] = []
        for (index, listener) in config.listeners.enumerated() {
            let address = try bind(listener, into: bound)
            runtimeListeners.append(RuntimeListener(
                index: index, config: listener, pool: pools[listener.pool]!, address: address,
                counters: counters.record(index), pools: pools))
        }
        return runtimeListeners
    }

    /// Binds one listener: a socket per worker added to `bound` (appended
    /// to each worker's list), or one shared socket duplicated for each.
    /// Returns the address bound (the port the kernel chose for port 0).
    func bind(_ listener: ListenerConfig, into bound: BoundListeners) throws(ServerError) -> SocketAddress {
        let shared = config.steering == .sharedAccept
        guard var address = SocketAddress(ip: listener.bind.host, port: listener.bind.port) else {
            throw ServerError("listener \(listener.name): bad address \(listener.bind)")
        }
        let deferAccept = Self.deferAcceptSeconds(listener)
        do throws(SystemCallError) {
            if listener.mode == .udp {
                // One socket per worker even with shared_accept: datagrams are not accepted.
                for worker in 0..<config.workers {
                    let fd = try Socket.udpListen(on: address, reusePort: true, bufferBytes: Self.udpBufferBytes)
                    bound.add(fd, worker: worker)
                    if address.port == 0 { address = try Socket.localAddress(fd) }
                }
            } else if shared {
                let fd = try Socket.listen(on: address, reusePort: false, noDelay: true, deferAcceptSeconds: deferAccept)
                defer { closeDescriptor(fd) }
                address = try Socket.localAddress(fd)
                for worker in 0..<config.workers { bound.add(try Descriptor.duplicate(fd), worker: worker) }
            } else {
                for worker in 0..<config.workers {
                    let fd = try Socket.listen(on: address, reusePort: true, noDelay: true, deferAcceptSeconds: deferAccept)
                    bound.add(fd, worker: worker)
                    if address.port == 0 { address = try Socket.localAddress(fd) } // the others join its port
                }
            }
        } catch {
            throw ServerError("listener \(listener.name): cannot listen on \(address): \(error)")
        }
        return address
    }
}

extension Server {
    func blockSignals() throws(ServerError) -> SignalFD {
        do { return try SignalFD(signals: SignalFD.daemonSignals) } catch {
            throw ServerError("cannot set up signal handling: \(error)")
        }
    }

    /// One daemon per instance name: the lock proves that pins found under
    /// the name were left by a run that died.
    func takeInstanceLock() throws(ServerError) -> InstanceLock? {
        do { return try InstanceLock(instance: config.instance) } catch {
            if error.alreadyRunning || config.steering == .leastLoaded { throw ServerError("\(error)") }
            logger.warning("running without an instance lock or pinned counters: \(error)")
            return nil
        }
    }

    func pinSockmap(_ sockmap: SockmapPairs, into directory: String) {
        do { try sockmap.pin(into: directory) } catch {
            logger.warning("sockmap maps not pinned: \(error)")
        }
    }

    func attachSteering(_ steering: KernelSteering?, listeners: [RuntimeListener], bound: BoundListeners,
                        socketsInMap: Bool = false) throws(ServerError) {
        guard let steering, config.steering == .leastLoaded else { return }
        for (position, listener) in listeners.enumerated() {
            do {
                try steering.attach(listener: listener.index, workerSockets: bound.sockets(listener: position),
                                    datagrams: listener.config.mode == .udp, socketsInMap: socketsInMap)
            } catch {
                throw ServerError("listener \(listener.name): \(error)")
            }
        }
    }

    func logListening(_ listeners: [RuntimeListener]) {
        for listener in listeners {
            logger.info("listening", metadata: [
                "listener": "\(listener.name)", "address": "\(listener.address)", "pool": "\(listener.poolLabel)",
                "algorithm": "\(listener.pool.config.algorithm.rawValue)",
            ])
        }
    }

    /// The info file `sluice status` reads; removed at stop.
    func writeInstanceInfo(listeners: [RuntimeListener], dataPath: DataPathChoice, owned: ReleaseStack) {
        rewriteInstanceInfo(listeners: listeners, dataPath: dataPath)
        owned.push { [self] in if !handedOver { FileSystem.removeFile(InstanceInfo.path(instance: config.instance)) } }
    }

    /// Written at start and after each reload (applied or refused).
    func rewriteInstanceInfo(listeners: [RuntimeListener], dataPath: DataPathChoice) {
        // The other process of a binary upgrade owns the file meanwhile.
        guard !handedOver else { return }
        let path = InstanceInfo.path(instance: config.instance)
        var info = InstanceInfo(
            instance: config.instance, pid: CurrentProcess.id, started: startedAt,
            steering: config.steering.rawValue, dataPathConfigured: config.dataPath.rawValue, dataPath: dataPath.name,
            dataPathReason: dataPath.reason, workers: config.workers,
            stallThresholdMilliseconds: config.stallThreshold.milliseconds,
            listeners: listeners.map { .init(name: $0.name, address: "\($0.address)", pool: $0.poolLabel, slot: $0.index) },
            adminSocket: config.admin?.socket, metrics: config.admin?.metrics.map { "\($0)" })
        info.configPath = options.configPath
        info.generation = generation
        info.loaded = loadedAt
        info.reloadsFailed = reloads.failed
        info.lastReloadErrors = lastReloadErrors.isEmpty ? nil : lastReloadErrors
        info.lastUpgradeError = lastUpgradeError
        info.upgradesFailed = upgradesFailed
        do { try info.write() } catch { logger.warning("cannot write \(path): \(error)") }
    }

    func openAdmin(epoll: Epoll) throws(ServerError) -> AdminEndpoints? {
        guard let adminConfig = config.admin else { return nil }
        let metricsAddress = adminConfig.metrics.flatMap { SocketAddress(ip: $0.host, port: $0.port) }
        return try AdminEndpoints(
            socketPath: adminConfig.socket, metrics: metricsAddress, limits: Self.adminLimits(adminConfig),
            epoll: epoll, tokenBase: ControlLoop.adminTokenBase, handler: self, logger: logs.logger("sluice.admin"))
    }

    func workerSettings(dataPath: DataPathChoice) -> WorkerSettings {
        var settings = WorkerSettings(dataPath: dataPath.kind, accessLog: config.log.access)
        settings.promotion = dataPath.promotion
        settings.sharedAccept = config.steering == .sharedAccept
        settings.stallThresholdNanoseconds = config.stallThreshold.milliseconds &* 1_000_000
        settings.maxWaitMilliseconds = Int32(max(1, min(1000, config.stallThreshold.milliseconds / 4)))
        settings.localResourceErrors = localResourceErrors
        return settings
    }

    /// One thread per worker; each worker takes its listening sockets from
    /// `bound`. On failure the workers already running are stopped.
    func startWorkers(listeners: [RuntimeListener], bound: BoundListeners, settings: WorkerSettings, table: WorkerLoadTable,
                      sockmapPairs: SockmapPairs?, onExit: @escaping @Sendable () -> Void) throws(ServerError) -> WorkerGroup {
        let group = WorkerGroup()
        let seed = monotonicNanoseconds()
        for k in 0..<config.workers {
            let record = table.record(k)
            // A fresh heartbeat before the thread runs: never steered away from at start.
            record.store(.heartbeatNanoseconds, monotonicNanoseconds())
            do {
                // Worker tables are by slot, with room for listeners a reload adds.
                var bySlot = [RuntimeListener?](repeating: nil, count: ListenerField.capacity)
                var fds = [Int32?](repeating: nil, count: ListenerField.capacity)
                for (position, listener) in listeners.enumerated() {
                    bySlot[listener.index] = listener
                    fds[listener.index] = bound.byWorker[k][position]
                }
                let worker = try Worker(
                    id: k, listeners: bySlot, listenerFDs: fds, settings: settings,
                    record: record, sockmapPairs: sockmapPairs, logger: logs.logger("sluice.worker", worker: k),
                    accessLog: accessSink, seed: seed, onExit: onExit)
                bound.handOver(worker: k)
                try group.start(worker)
            } catch {
                group.stop()
                throw ServerError("cannot start worker \(k): \(error)")
            }
        }
        return group
    }

    func startHealthChecks() throws(ServerError) -> HealthChecker? {
        do {
            let checker = try HealthChecker(pools: livePools, localErrors: localResourceErrors, logger: logs.logger("sluice.health"))
            try checker?.start()
            return checker
        } catch {
            logger.error("cannot start health checks: \(error)")
            throw ServerError("cannot start health checks: \(error)")
        }
    }
}

/// What `data_path:` resolved to, and why.
struct DataPathChoice {
    /// The path every session starts on.
    let kind: DataPathKind
    let sockmap: SockmapPairs?
    /// `auto` with the SOCKHASH loaded: when a session moves into it.
    let promotion: SockmapPromotion?
    let reason: String

    /// As `status` shows it: `auto` when the path is chosen per connection.
    let name: String

    /// Larger messages are bulk, which splice(2) moves faster than the
    /// sockmap's kworker hop: half the read size that switches a flow to splice(2).
    static let smallMessageBytes: UInt64 = 16 * 1024

    /// "for streams over 64 MiB from the client and after 4 small exchanges", for the log and `status`.
    static func promotionRules(_ promotion: SockmapPromotion) -> String {
        var rules: [String] = []
        if let bytes = promotion.streamBytes { rules.append("for streams over \(bytes >> 20) MiB from the client") }
        if let turns = promotion.turns { rules.append("after \(turns) small exchanges") }
        return rules.joined(separator: " and ")
    }
}

/// The worker threads.
final class WorkerGroup {
    private(set) var workers: [Worker] = []
    private var threads: [OSThread] = []
    private var joined = false

    func start(_ worker: Worker) throws(SystemCallError) {
        workers.append(worker)
        threads.append(try OSThread.start(name: "sluice-w\(worker.id)") { worker.run() })
    }

    /// Waits for every thread to end.
    func join() {
        for thread in threads { thread.join() }
        joined = true
    }

    /// Orders every worker to stop now and waits for them: a start that failed.
    func stop() {
        guard !joined else { return }
        for worker in workers { worker.send(.drain(deadlineMilliseconds: monotonicMilliseconds())) }
        join()
    }
}
