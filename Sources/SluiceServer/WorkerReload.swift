import Logging
import SluiceCore
import SluicePosix

/// A pool, held, and the balancer this worker picks its backends with.
struct PoolBalancer {
    let pool: RuntimePool
    var balancer: Balancer
}

/// What a reload (or a DNS change) hands each worker.
struct WorkerReconfiguration: @unchecked Sendable {
    /// By slot: the listeners served from now on (nil: none, or removed).
    let listeners: [RuntimeListener?]
    /// This worker's sockets of the listeners the reload bound, by slot.
    let sockets: [Int: Int32]
    /// By slot: the flow maps of UDP listeners steered in BPF.
    let flowMaps: [Int32?]
    let accessLog: AccessLogFormat
    /// What the reload retired and is still open ends then.
    let drainDeadline: UInt64
}

/// What one reload took away: listeners (by slot), backends (by pool name)
/// and pools. Their connections finish on their own until the reload's
/// drain deadline; what is still open then and was not brought back ends.
final class RetiredByReload {
    let slots: Set<Int>
    let backends: [String: Set<SocketAddress>]
    let pools: [RuntimePool]

    init(slots: Set<Int>, backends: [String: Set<SocketAddress>], pools: [RuntimePool]) {
        self.slots = slots
        self.backends = backends
        self.pools = pools
    }

    var isEmpty: Bool { slots.isEmpty && backends.isEmpty && pools.isEmpty }
}

extension Worker {
    // MARK: - Balancers

    /// The backend `pool`'s algorithm picks.
    @inline(__always)
    func pick(_ pool: RuntimePool, clientKey: UInt64, active: (Int) -> Int, eligible: (Int) -> Bool) -> Int? {
        let key = ObjectIdentifier(pool)
        // One scan, but for the pool's first pick in this worker.
        let slot = balancers.slot(of: key) ?? { _ = balancer(pool); return balancers.slot(of: key)! }()
        return balancers[slot: slot].balancer.pick(clientKey: clientKey, active: active, eligible: eligible)
    }

    /// Makes `pool`'s balancer if there is none yet.
    func balancer(_ pool: RuntimePool) -> Balancer {
        if let existing = balancers[ObjectIdentifier(pool)] { return existing.balancer }
        var balancer = Balancer(
            algorithm: pool.config.algorithm,
            backends: pool.config.backends.map { BalancerBackend(weight: $0.weight, key: $0.address.description) },
            seed: balancerSeed
        )
        if pool.config.algorithm == .roundRobin {
            // Each worker rotates on its own; start them at different
            // places so that N workers do not all begin with backend 0.
            for _ in 0..<(id % max(1, balancer.count)) {
                _ = balancer.pick(clientKey: 0, active: { _ in 0 }, eligible: { _ in true })
            }
        }
        balancers[ObjectIdentifier(pool)] = PoolBalancer(pool: pool, balancer: balancer)
        return balancer
    }

    /// The pools the listeners served now lead to, by name.
    var currentPools: [String: RuntimePool] {
        var pools: [String: RuntimePool] = [:]
        for case let listener? in listeners {
            for pool in [listener.pool] + (listener.http?.pools ?? []) { pools[pool.name] = pool }
        }
        return pools
    }

    // MARK: - Reload

    func reconfigure(_ next: WorkerReconfiguration) {
        let before = currentPools
        var removed = Set<Int>()
        for slot in listeners.indices where listeners[slot] != nil && next.listeners[slot] == nil {
            removed.insert(slot)
            stopListening(slot)
        }
        listeners = next.listeners
        settings.flowMaps = next.flowMaps
        settings.accessLog = next.accessLog
        accessLogger = next.accessLog == .off ? nil : accessSink
        for (slot, fd) in next.sockets.sorted(by: { $0.key < $1.key }) { listen(slot, fd) }

        let now = currentPools
        let live = Set(now.values.map(ObjectIdentifier.init))
        _ = balancers.remove { !live.contains($0) }
        for var idle in idleBackends.remove(where: { !live.contains($0) }) {
            for fd in idle.expire(now: UInt64.max) { closeDescriptor(fd) }
        }
        adoptListeners()
        var backends: [String: Set<SocketAddress>] = [:]
        for (name, pool) in before {
            let gone = Set(pool.addresses).subtracting(now[name]?.addresses ?? [])
            if !gone.isEmpty { backends[name] = gone }
        }
        let retired = RetiredByReload(slots: removed, backends: backends,
                                      pools: before.values.filter { !live.contains(ObjectIdentifier($0)) })
        if !retired.isEmpty { _ = timers.schedule(at: next.drainDeadline, .retired(retired)) }
        logger.debug("reconfigured", metadata: ["removed": "\(removed.sorted())", "added": "\(next.sockets.keys.sorted())"])
        reconfigurations.add(1, ordering: .releasing)
    }

    /// A removed listener: what its backlog holds is still accepted (those
    /// clients finished their handshake), then its socket closes. A UDP
    /// socket stays open, out of epoll, for the replies of its flows.
    private func stopListening(_ slot: Int) {
        pausedListeners.remove(slot)
        guard let fd = listenerFDs[slot], let listener = listeners[slot] else { return }
        if listener.config.mode != .udp && !draining { acceptConnections(listenerIndex: slot, limit: .max) }
        epoll.remove(fd)
        if listener.config.mode == .udp { return }
        closeDescriptor(fd)
        listenerFDs[slot] = nil
    }

    /// An added listener: its socket joins this worker's epoll.
    private func listen(_ slot: Int, _ fd: Int32) {
        if let stale = listenerFDs[slot] {
            epoll.remove(stale)
            closeDescriptor(stale)
        }
        listenerFDs[slot] = fd
        guard !draining else { return closeListener(slot) }
        do { try armListener(slot) } catch {
            logger.error("cannot watch an added listener", metadata: ["listener": "\(listeners[slot]?.name ?? "-")", "error": "\(error)"])
            closeListener(slot)
        }
    }

    private func closeListener(_ slot: Int) {
        guard let fd = listenerFDs[slot] else { return }
        epoll.remove(fd)
        closeDescriptor(fd)
        listenerFDs[slot] = nil
    }

    /// Connections of a listener the reload kept take its new settings:
    /// HTTP ones between requests (now, or when their request is done),
    /// Redis ones at once (key placement included).
    private func adoptListeners() {
        for connection in httpConnections.values where !connection.isClosed && connection.machine.isWaiting {
            adoptListener(connection)
        }
        for client in redisClients.values {
            guard let listener = listeners[client.listener.index], listener !== client.listener else { continue }
            client.listener = listener
            client.session.shards = redisShards(listener)
        }
    }

    /// Between requests: the HTTP connection's next request is routed by
    /// the listener as the last reload left it.
    @inline(__always)
    func adoptListener(_ c: HTTPConnection) {
        guard let listener = listeners[c.listener.index], listener !== c.listener, let http = listener.http else { return }
        c.listener = listener
        c.http = http
        c.machine.reconfigure(limits: http.limits, router: http.router, client: c.clientAddress.ipText)
    }

    /// A reload's drain deadline: what it retired and is still open ends.
    func endRetired(_ retired: RetiredByReload) {
        let pools = currentPools
        func gone(_ slot: Int) -> Bool { retired.slots.contains(slot) && listeners[slot] == nil }
        func gone(_ pool: RuntimePool, _ backend: Int?) -> Bool {
            guard let backend, let addresses = retired.backends[pool.name] else { return false }
            let address = pool.addresses[backend]
            return addresses.contains(address) && !(pools[pool.name]?.has(address) ?? false)
        }
        var ended = 0
        for session in sessions.values where gone(session.listener.index) || gone(session.pool, session.countedBackend) {
            drive(session, .drainDeadline)
            ended += 1
        }
        for connection in httpConnections.values where !connection.isClosed && gone(connection.listener.index) {
            close(connection, reason: .drainTimeout)
            lingerWritable(connection, force: true)
            ended += 1
        }
        for waiting in Array(awaitingHeaders.values) where gone(waiting.listener.index) {
            rejectHeader(waiting, "its listener was removed by a reload")
        }
        for client in Array(redisClients.values) where gone(client.listener.index) {
            closeRedis(client)
            ended += 1
        }
        for flow in Array(udpFlowsByID.values) where gone(flow.listener.index) || gone(flow.listener.pool, flow.backend) {
            closeFlow(flow, reason: "retired")
        }
        for slot in retired.slots where listeners[slot] == nil { closeListener(slot) }
        let live = Set(pools.values.map(ObjectIdentifier.init))
        let retiredPools = Set(retired.pools.map(ObjectIdentifier.init)).subtracting(live)
        for link in redisLinks where link.fd >= 0 && retiredPools.contains(ObjectIdentifier(link.pool)) {
            fail(link, "its pool was changed by a reload")
        }
        redisLinkIndex = redisLinkIndex.filter { !retiredPools.contains($0.key.pool) }
        redisShardStates = redisShardStates.filter { !retiredPools.contains($0.key.pool) }
        if ended > 0 { logger.notice("drain_timeout after a reload: closed what it retired", metadata: ["connections": "\(ended)"]) }
    }
}
