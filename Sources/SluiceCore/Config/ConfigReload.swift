/// What a reload changes, decided from the running configuration and the
/// new one before anything is touched: which listeners keep their sockets,
/// which are bound anew and which close, or why the new configuration needs
/// a restart. Pure: the server applies the plan.
public struct ReloadPlan: Sendable {
    /// Listeners of the new configuration (by position in it) that take over
    /// the sockets of a running listener (by position in the running one).
    public var kept: [(new: Int, old: Int)]
    /// Listeners of the new configuration that are bound at reload.
    public var added: [Int]
    /// Running listeners that stop accepting; their connections finish
    /// within `drain_timeout`.
    public var removed: [Int]
    /// One line per change, for the log and the admin answer.
    public var changes: [String]

    public init(kept: [(new: Int, old: Int)], added: [Int], removed: [Int], changes: [String]) {
        self.kept = kept
        self.added = added
        self.removed = removed
        self.changes = changes
    }

    /// The plan, or every reason the new configuration cannot be applied to
    /// a running daemon.
    public static func make(running old: SluiceConfig, new: SluiceConfig) -> Result<ReloadPlan, ConfigErrors> {
        var problems = restartOnlyChanges(old, new)
        var plan = ReloadPlan(kept: [], added: [], removed: [], changes: [])
        let partners = pairListeners(old.listeners, new.listeners)
        for (index, listener) in new.listeners.enumerated() {
            guard let previous = partners[index] else {
                if let holder = old.listeners.first(where: { $0.bind == listener.bind && $0.mode.isStream == listener.mode.isStream }) {
                    problems.append(restart("listeners[\(index)].bind",
                        "listener \(listener.name) takes \(listener.bind) from running listener \(holder.name) in another mode: that needs a restart"))
                    continue
                }
                plan.added.append(index)
                plan.changes.append("listener \(listener.name) added on \(listener.bind)")
                continue
            }
            let before = old.listeners[previous]
            if before.bind != listener.bind {
                plan.removed.append(previous)
                plan.added.append(index)
                plan.changes.append("listener \(listener.name) moved from \(before.bind) to \(listener.bind)")
            } else if before.udp?.maxFlows != listener.udp?.maxFlows {
                problems.append(restart("listeners[\(index)].udp.max_flows",
                    "listener \(listener.name): max_flows sizes its flow map in the kernel; changing it needs a restart"))
            } else {
                plan.kept.append((new: index, old: previous))
                if before.name != listener.name { plan.changes.append("listener \(before.name) renamed \(listener.name)") }
                if before != listener { plan.changes.append("listener \(listener.name) changed") }
            }
        }
        let partnered = Set(partners.values)
        for (index, listener) in old.listeners.enumerated() where !partnered.contains(index) {
            plan.removed.append(index)
            plan.changes.append("listener \(listener.name) removed")
        }
        plan.changes += poolChanges(old.pools, new.pools)
        if old.log != new.log { plan.changes.append("log settings changed") }
        if old.drainTimeout != new.drainTimeout { plan.changes.append("drain_timeout changed") }
        if old.rebalance != new.rebalance { plan.changes.append("rebalance changed") }
        if !problems.isEmpty { return .failure(ConfigErrors(problems)) }
        plan.removed.sort()
        return .success(plan)
    }

    /// New listener index → the running listener whose sockets it takes:
    /// the one of the same name and mode, else one on the same address in the
    /// same mode (a rename). A listener whose mode changes is bound anew.
    private static func pairListeners(_ old: [ListenerConfig], _ new: [ListenerConfig]) -> [Int: Int] {
        var partners: [Int: Int] = [:]
        var taken = Set<Int>()
        for (index, listener) in new.enumerated() {
            if let previous = old.firstIndex(where: { $0.name == listener.name && $0.mode == listener.mode }), !taken.contains(previous) {
                partners[index] = previous
                taken.insert(previous)
            }
        }
        for (index, listener) in new.enumerated() where partners[index] == nil {
            if let previous = old.indices.first(where: { !taken.contains($0) && old[$0].bind == listener.bind && old[$0].mode == listener.mode }) {
                partners[index] = previous
                taken.insert(previous)
            }
        }
        return partners
    }

    /// Settings fixed for the life of a process: its threads, its BPF
    /// objects and their attachment, its identity and privileges.
    private static func restartOnlyChanges(_ old: SluiceConfig, _ new: SluiceConfig) -> [ConfigError] {
        var problems: [ConfigError] = []
        func check<T: Equatable>(_ key: String, _ a: T, _ b: T) {
            if a != b { problems.append(restart(key, "\(key) changed: it needs a restart (the running value stays)")) }
        }
        check("instance", old.instance, new.instance)
        check("workers", old.workers, new.workers)
        check("steering", old.steering, new.steering)
        check("data_path", old.dataPath, new.dataPath)
        check("sockmap_after_turns", old.sockmapAfterTurns, new.sockmapAfterTurns)
        check("sockmap_after_bytes", old.sockmapAfterBytes, new.sockmapAfterBytes)
        check("stall_threshold", old.stallThreshold, new.stallThreshold)
        check("user", old.user, new.user)
        check("admin", old.admin, new.admin)
        check("log.file", old.log.file, new.log.file)
        return problems
    }

    /// Pools and backends added, removed or changed, one line each.
    public static func poolChanges(_ old: [PoolConfig], _ new: [PoolConfig]) -> [String] {
        var changes: [String] = []
        for pool in new {
            guard let before = old.first(where: { $0.name == pool.name }) else {
                changes.append("pool \(pool.name) added")
                continue
            }
            let was = Set(before.backends.map(\.address)), now = Set(pool.backends.map(\.address))
            for address in pool.backends.map(\.address) where !was.contains(address) {
                changes.append("pool \(pool.name): backend \(address) added")
            }
            for address in before.backends.map(\.address) where !now.contains(address) {
                changes.append("pool \(pool.name): backend \(address) removed (its connections drain)")
            }
            var same = before
            same.backends = pool.backends
            let weightsChanged = pool.backends.contains { backend in
                before.backends.contains { $0.address == backend.address && $0.weight != backend.weight }
            }
            if same != pool || weightsChanged { changes.append("pool \(pool.name) changed") }
        }
        for pool in old where !new.contains(where: { $0.name == pool.name }) {
            changes.append("pool \(pool.name) removed")
        }
        return changes
    }

    private static func restart(_ path: String, _ message: String) -> ConfigError {
        ConfigError(file: "", path: path, message: message)
    }
}

extension ListenerMode {
    /// TCP-based modes share the address space of stream sockets; `udp` has its own.
    public var isStream: Bool { self != .udp }
}
