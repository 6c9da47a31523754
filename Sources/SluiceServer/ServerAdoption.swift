import Atomics
import Glibc
import Logging
import SluiceBPF
import SluiceCore
import SluicePosix

/// The new process's side of a binary upgrade: what the old one handed
/// over at start (its lock, its listeners), then the connections it hands
/// over while this one already serves.
final class UpgradeAdoption: @unchecked Sendable {
    let channel: HandoverChannel
    let manifest: UpgradeManifest
    let lockFD: Int32
    /// Per manifest listener: one socket per worker.
    let sockets: [[Int32]]
    private var thread: OSThread?
    private let completed = ManagedAtomic(false)
    /// The old process said it is done (read by the control thread).
    var isComplete: Bool { completed.load(ordering: .acquiring) }

    /// Says hello, takes the manifest, and refuses (telling the old process
    /// why) what this configuration cannot take over.
    init(socketPath: String, config: SluiceConfig) throws(ServerError) {
        do { channel = try HandoverChannel.connect(path: socketPath, timeoutMilliseconds: 10_000) } catch {
            throw ServerError("binary upgrade: cannot reach the running process at \(socketPath): \(error)")
        }
        try channel.send(UpgradeMessage(hello: UpgradeHello(pid: CurrentProcess.id, abi: SluiceBPFLayout.abiVersion, version: sluiceVersion)))
        var (message, fds) = try channel.receiveMessage(timeoutMilliseconds: 10_000)
        // The rest of the manifest's descriptors, in messages of their own.
        while let expected = message.manifest?.descriptors, fds.count < expected {
            let (more, chunk) = try channel.receiveMessage(timeoutMilliseconds: 10_000)
            fds += chunk
            if more.descriptors != chunk.count { break }
        }
        let mapCount = KernelSteering.listenerMaps.count
        guard let manifest = message.manifest,
              fds.count == 1 + manifest.listeners.count * (manifest.workers + (manifest.listenerMaps ? mapCount : 0)) else {
            for fd in fds { closeDescriptor(fd) }
            throw ServerError("binary upgrade: the running process sent no usable manifest")
        }
        if let mismatch = manifest.mismatch(with: config) {
            for fd in fds { closeDescriptor(fd) }
            try? channel.send(UpgradeMessage(refuse: mismatch))
            throw ServerError("binary upgrade refused: \(mismatch)")
        }
        self.manifest = manifest
        lockFD = fds[0]
        sockets = manifest.listeners.indices.map { i in Array(fds[(1 + i * manifest.workers)..<(1 + (i + 1) * manifest.workers)]) }
        let mapStart = 1 + manifest.listeners.count * manifest.workers
        var maps: [Int: [Int32]] = [:]
        if manifest.listenerMaps {
            for (i, listener) in manifest.listeners.enumerated() {
                maps[listener.slot] = Array(fds[(mapStart + i * mapCount)..<(mapStart + (i + 1) * mapCount)])
            }
        }
        listenerMaps = maps
    }

    /// Per slot: the listener's `worker_socks` and `udp_flows`, which this
    /// process's objects reuse (closed once they are loaded).
    private(set) var listenerMaps: [Int: [Int32]]

    func closeListenerMaps() {
        for fd in listenerMaps.values.joined() { closeDescriptor(fd) }
        listenerMaps = [:]
    }

    /// Start-up failed after the hand-over began: the old process keeps serving.
    func refuse(_ why: String) {
        try? channel.send(UpgradeMessage(refuse: why))
    }

    /// The listeners serve here now: the old process may start handing over
    /// connections, which a thread of this one spreads over the workers.
    /// `pools`: this process's, name → backend addresses (the old process
    /// keeps the connections to backends this one does not have).
    func ready(workers: [Worker], pools: [String: [String]], wake: EventFD, logger: Logger) throws(ServerError) {
        try channel.send(UpgradeMessage(ready: true, pools: pools))
        do {
            thread = try OSThread.start(name: "sluice-adopt") { [self] in
                receive(workers: workers, logger: logger)
                completed.store(true, ordering: .releasing)
                wake.signal()
            }
        } catch {
            throw ServerError("cannot start the adoption thread: \(error)")
        }
    }

    /// At stop: the conversation ends (a thread still waiting sees its end).
    func stop() {
        shutdown(channel.fd, Int32(SHUT_RDWR))
        thread?.join()
        thread = nil
    }

    private func receive(workers: [Worker], logger: Logger) {
        var adopted = 0
        let started = monotonicMilliseconds()
        while true {
            let message: UpgradeMessage, fds: [Int32]
            do { (message, fds) = try channel.receiveMessage(timeoutMilliseconds: 60_000) } catch {
                logger.warning("binary upgrade: the old process stopped handing over connections", metadata: ["error": "\(error)"])
                return
            }
            if let connections = message.connections {
                guard connections.reduce(0, { $0 + $1.descriptors }) == fds.count else {
                    logger.error("binary upgrade: a batch whose descriptors do not match its connections; closed")
                    for fd in fds { closeDescriptor(fd) }
                    try? channel.send(UpgradeMessage(adopted: connections.count))
                    continue
                }
                var batch = AdoptedConnections(connections: connections, fds: fds)
                batch.countsListeners = manifest.sharedCounters == false
                spread(batch, over: workers)
                adopted += connections.count
                try? channel.send(UpgradeMessage(adopted: connections.count))
            } else {
                for fd in fds { closeDescriptor(fd) }
            }
            if message.done != nil {
                logger.notice("binary upgrade complete: connections taken over", metadata: [
                    "connections": "\(adopted)", "ms": "\(monotonicMilliseconds() - started)",
                ])
                return
            }
        }
    }

    /// Each connection to the least loaded live worker, counting what this
    /// batch already gave each.
    private func spread(_ batch: AdoptedConnections, over workers: [Worker]) {
        var loads = workers.map { Int($0.record.load(.active)) }
        var parts = workers.map { _ in AdoptedConnections(connections: [], fds: [], countsListeners: batch.countsListeners) }
        let now = monotonicNanoseconds()
        var next = 0
        for connection in batch.connections {
            let candidates = workers.indices.filter { workers[$0].isLive(now: now) }
            let k = (candidates.isEmpty ? Array(workers.indices) : candidates).min { loads[$0] < loads[$1] } ?? 0
            loads[k] += 1
            parts[k].connections.append(connection)
            parts[k].fds += batch.fds[next..<min(batch.fds.count, next + connection.descriptors)]
            next += connection.descriptors
        }
        for (k, part) in parts.enumerated() where !part.connections.isEmpty {
            if !workers[k].send(.adoptHanded(part)) { for fd in part.fds { closeDescriptor(fd) } }
        }
    }
}

extension Server {
    /// Each configured listener's slot: the running process's, in a binary upgrade.
    func listenerSlots(_ adoption: UpgradeAdoption?) -> [Int] {
        guard let adoption else { return Array(config.listeners.indices) }
        return config.listeners.map { listener in adoption.manifest.listeners.first { $0.name == listener.name }!.slot }
    }

    /// The listeners a binary upgrade handed over, in `bound` as if bound here
    /// (their sockets, their slots, their counters).
    func adoptListeners(_ adoption: UpgradeAdoption, slots: [Int], into bound: BoundListeners, pools: [String: RuntimePool],
                        counters: ListenerLoadTable) throws(ServerError) -> [RuntimeListener] {
        var listeners: [RuntimeListener] = []
        for (index, listener) in config.listeners.enumerated() {
            let position = adoption.manifest.listeners.firstIndex { $0.name == listener.name }!
            let sockets = adoption.sockets[position]
            for (worker, fd) in sockets.enumerated() { bound.add(fd, worker: worker) }
            applyDeferAccept(listener, to: sockets)
            let address: SocketAddress
            do { address = try Socket.localAddress(sockets[0]) } catch {
                throw ServerError("listener \(listener.name): the socket handed over: \(error)")
            }
            listeners.append(RuntimeListener(index: slots[index], config: listener, pool: pools[listener.pool]!, address: address,
                                             counters: counters.record(slots[index]), pools: pools))
        }
        return listeners
    }
}
