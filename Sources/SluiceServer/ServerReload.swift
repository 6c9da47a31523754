import Glibc
import Logging
import SluiceBPF
import SluiceCore
import SluicePosix

/// What a reload needs of the running daemon (control thread only).
final class LiveState {
    let steering: KernelSteering?
    let listenerTable: ListenerLoadTable
    let dataPath: DataPathChoice
    /// Whether this run holds the instance lock, and so owns the info file.
    let writesInfo: Bool
    let workers: [Worker]
    var healthChecker: HealthChecker?
    var loop: ControlLoop?
    var discovery: BackendDiscovery?
    var lock: InstanceLock?
    var admin: AdminEndpoints?
    /// Every listener's sockets, by slot, one per worker (what a binary upgrade hands over).
    var sockets: [Int: [Int32]] = [:]
    /// Listener slots never used yet start here; after them, slots of
    /// removed listeners are taken again once nothing counts on them.
    var freshSlot: Int
    var retiredSlots: [Int] = []

    init(steering: KernelSteering?, listenerTable: ListenerLoadTable, dataPath: DataPathChoice, writesInfo: Bool,
         workers: [Worker], healthChecker: HealthChecker?, freshSlot: Int) {
        self.steering = steering
        self.listenerTable = listenerTable
        self.dataPath = dataPath
        self.writesInfo = writesInfo
        self.workers = workers
        self.healthChecker = healthChecker
        self.freshSlot = freshSlot
    }
}

/// How a reload went: the changes applied, or every reason it was refused.
struct ReloadOutcome {
    var generation: Int
    var changes: [String] = []
    var errors: [String] = []
    var applied: Bool { errors.isEmpty }
}

extension Server {
    func adminReload() -> ReloadOutcome { reload(trigger: "admin") }

    /// Reads the configuration file again and applies it without dropping
    /// a connection, or keeps the running one and says why not.
    func reload(trigger: String) -> ReloadOutcome {
        SystemdNotify.send("RELOADING=1\nSTATUS=reloading")
        defer { SystemdNotify.send("READY=1\nSTATUS=listening") }
        let outcome = attemptReload()
        if outcome.applied {
            reloads.succeeded += 1
            lastReloadErrors = []
            logger.notice("configuration reloaded", metadata: [
                "trigger": "\(trigger)", "generation": "\(generation)", "changes": "\(outcome.changes.count)",
            ])
            for change in outcome.changes { logger.info("reload: \(change)") }
        } else {
            reloads.failed += 1
            lastReloadErrors = outcome.errors
            logger.error("reload refused; the running configuration stays", metadata: [
                "trigger": "\(trigger)", "generation": "\(generation)", "errors": "\(outcome.errors.count)",
            ])
            for error in outcome.errors { logger.error("reload: \(error)") }
        }
        if let live, live.writesInfo { rewriteInstanceInfo(listeners: liveListeners, dataPath: live.dataPath) }
        return outcome
    }

    private func attemptReload() -> ReloadOutcome {
        var outcome = ReloadOutcome(generation: generation)
        guard let path = options.configPath else {
            outcome.errors = ["this daemon runs a built-in configuration (no --config file to read again)"]
            return outcome
        }
        guard let live else {
            outcome.errors = ["the daemon is not serving yet"]
            return outcome
        }
        if live.loop?.stopDeadline != nil || handedOver {
            outcome.errors = [adoption != nil ? "this process is still taking over from the one it upgrades" : "the daemon is stopping"]
            return outcome
        }
        if upgrade != nil {
            outcome.errors = ["a binary upgrade is under way: reload once it is done"]
            return outcome
        }
        let next: SluiceConfig
        do { next = try ConfigFile.load(path: path).config } catch {
            outcome.errors = error.errors.map(\.description)
            return outcome
        }
        let plan: ReloadPlan
        switch ReloadPlan.make(running: config, new: next) {
        case .success(let made): plan = made
        case .failure(let errors):
            outcome.errors = errors.errors.map { ConfigError(file: path, path: $0.path, message: $0.message).description }
            return outcome
        }
        do { try apply(next, plan: plan, live: live) } catch {
            outcome.errors = [error.description]
            return outcome
        }
        updateDiscovery(live)
        generation += 1
        loadedAt = wallClockSeconds()
        outcome.generation = generation
        outcome.changes = plan.changes
        return outcome
    }

    /// Binds what is added first: a failure there changes nothing. Then
    /// every worker gets the new listeners and pools in one command.
    func apply(_ next: SluiceConfig, plan: ReloadPlan, live: LiveState) throws(ServerError) {
        let pools = runtimePools(effectivePools(next))
        let bound = BoundListeners(workers: next.workers)
        defer { bound.close() }
        var added: [(slot: Int, position: Int, address: SocketAddress)] = []
        var claimed: [Int] = []
        do throws(ServerError) {
            for (position, index) in plan.added.enumerated() {
                let listener = next.listeners[index]
                let address = try bind(listener, into: bound)
                let slot = try claimSlot(live)
                claimed.append(slot)
                try prepareSteering(live, slot: slot, listener: listener, sockets: bound.sockets(listener: position))
                added.append((slot, position, address))
            }
        } catch {
            live.retiredSlots += claimed
            throw error
        }
        var listeners: [RuntimeListener] = []
        for (index, listener) in next.listeners.enumerated() {
            let pool = pools[listener.pool]!
            if let kept = plan.kept.first(where: { $0.new == index }) {
                let old = liveListeners[kept.old]
                applyDeferAccept(listener, to: live.sockets[old.index] ?? [])
                listeners.append(RuntimeListener(index: old.index, config: listener, pool: pool, address: old.address,
                                                 counters: old.counters, pools: pools, previous: old))
            } else if let position = plan.added.firstIndex(of: index), let new = added.first(where: { $0.position == position }) {
                listeners.append(RuntimeListener(index: new.slot, config: listener, pool: pool, address: new.address,
                                                 counters: live.listenerTable.record(new.slot), pools: pools))
                logger.info("listening", metadata: ["listener": "\(listener.name)", "address": "\(new.address)", "pool": "\(listener.pool)"])
            }
        }
        for index in plan.removed {
            live.retiredSlots.append(liveListeners[index].index)
            live.sockets[liveListeners[index].index] = nil
        }
        // Recorded only when every worker took its socket (see handToWorkers).
        let addedSockets = added.map { new in (new.slot, bound.byWorker.map { $0[new.position] }) }
        if handToWorkers(next, listeners: listeners, added: added, bound: bound, live: live) {
            for (slot, sockets) in addedSockets { live.sockets[slot] = sockets }
        }

        config = next
        livePools = next.pools.map { pools[$0.name]! }
        liveListeners = listeners
        logs.level.value = next.log.level.swiftLogLevel
        loadKeeper?.rebalance = next.rebalance
        restartHealthChecks(live)
    }

    /// The pools of the new configuration: an unchanged pool is the same
    /// object (its balancers and idle connections carry on); a changed one
    /// is new, carrying the state of the backends it keeps.
    func runtimePools(_ configs: [PoolConfig]) -> [String: RuntimePool] {
        var pools: [String: RuntimePool] = [:]
        for config in configs {
            let previous = livePools.first { $0.name == config.name }
            pools[config.name] = previous.flatMap { $0.config == config ? $0 : nil } ?? RuntimePool(config, carryingOver: previous)
        }
        return pools
    }

    /// Whether every worker took the command (and so its sockets).
    @discardableResult
    private func handToWorkers(_ next: SluiceConfig, listeners: [RuntimeListener],
                               added: [(slot: Int, position: Int, address: SocketAddress)], bound: BoundListeners,
                               live: LiveState) -> Bool {
        var everyone = true
        var bySlot = [RuntimeListener?](repeating: nil, count: ListenerField.capacity)
        for listener in listeners { bySlot[listener.index] = listener }
        let flowMaps = flowMaps(listeners, steering: live.steering)
        let deadline = monotonicMilliseconds().saturatingAdd(next.drainTimeout.milliseconds)
        var awaited: [(worker: Worker, count: UInt64)] = []
        for (k, worker) in live.workers.enumerated() {
            var sockets: [Int: Int32] = [:]
            for new in added { sockets[new.slot] = bound.byWorker[k][new.position] }
            let command = WorkerReconfiguration(listeners: bySlot, sockets: sockets, flowMaps: flowMaps,
                                                accessLog: next.log.access, drainDeadline: deadline)
            let applied = worker.reconfigurations.load(ordering: .acquiring)
            // A worker that has exited keeps nothing: its sockets close with `bound`.
            if worker.send(.reconfigure(command)) {
                bound.handOver(worker: k)
                awaited.append((worker, applied + 1))
            } else {
                everyone = false
            }
        }
        awaitReconfigured(awaited)
        return everyone
    }

    /// Waits until each worker has applied its command (a loop turn, well
    /// under a millisecond), or for a second at most: a stalled worker
    /// applies it when it comes back, and is skipped by steering meanwhile.
    private func awaitReconfigured(_ awaited: [(worker: Worker, count: UInt64)]) {
        let deadline = monotonicMilliseconds() + 1000
        for (worker, count) in awaited {
            while worker.reconfigurations.load(ordering: .acquiring) < count && !worker.hasExited {
                guard monotonicMilliseconds() < deadline else {
                    logger.warning("a worker has not applied the new configuration within a second (stalled?); it will when it runs again")
                    return
                }
                Glibc.usleep(200)
            }
        }
    }

    /// The flow maps of UDP listeners steered in BPF, by slot.
    func flowMaps(_ listeners: [RuntimeListener], steering: KernelSteering?) -> [Int32?] {
        var maps = [Int32?](repeating: nil, count: ListenerField.capacity)
        for listener in listeners where listener.config.mode == .udp {
            maps[listener.index] = steering?.flowMapFD(listener: listener.index)
        }
        return maps
    }

    /// A slot never used, else one whose removed listener has no connection left.
    private func claimSlot(_ live: LiveState) throws(ServerError) -> Int {
        if live.freshSlot < ListenerField.capacity {
            defer { live.freshSlot += 1 }
            return live.freshSlot
        }
        guard let found = live.retiredSlots.firstIndex(where: { live.listenerTable.record($0).load(.active) == 0 }) else {
            throw ServerError("every listener slot (\(ListenerField.capacity)) is taken or still draining: restart to add listeners")
        }
        let slot = live.retiredSlots.remove(at: found)
        let record = live.listenerTable.record(slot)
        for field in ListenerField.allCases { record.store(field, 0) }
        return slot
    }

    /// Loads the slot's BPF object and attaches its program to the new
    /// sockets' reuseport group, before any of them is handed to a worker.
    private func prepareSteering(_ live: LiveState, slot: Int, listener: ListenerConfig, sockets: [Int32]) throws(ServerError) {
        guard let steering = live.steering else { return }
        let capacity = listener.udp.map { UInt32(min($0.maxFlows * 2, 1 << 21)) }
        do {
            try steering.prepare(listener: slot, flowCapacity: capacity)
            if config.steering == .leastLoaded {
                try steering.attach(listener: slot, workerSockets: sockets, datagrams: listener.mode == .udp)
            }
        } catch {
            throw ServerError("listener \(listener.name): \(error)")
        }
    }

    /// Checks follow the new pools; a backend kept keeps its verdict (the
    /// pools share it), so nothing flaps.
    private func restartHealthChecks(_ live: LiveState) {
        live.healthChecker?.stop()
        live.healthChecker = nil
        do {
            live.healthChecker = try HealthChecker(pools: livePools, localErrors: localResourceErrors, logger: logs.logger("sluice.health"))
            try live.healthChecker?.start()
        } catch {
            logger.error("health checks not restarted after the reload: \(error)")
            live.healthChecker = nil
        }
    }
}
