import Logging
import SluiceCore
import SluicePosix
import Synchronization

/// Hostname backends as the control thread sees them: the answers it
/// applied, and the latest table the discovery thread published.
final class DiscoveredBackends: Sendable {
    typealias Table = [NamedBackend: [SocketAddressSpec]]
    private let latest = Mutex<Table?>(nil)

    /// Called on the discovery thread.
    func publish(_ table: Table) { latest.withLock { $0 = table } }

    /// The table published since the last call, if any.
    func take() -> Table? { latest.withLock { table in defer { table = nil }; return table } }
}

extension SluiceConfig {
    /// Every hostname backend of every pool.
    var namedBackends: Set<NamedBackend> { Set(pools.flatMap(\.named)) }
}

extension Server {
    /// The pools as served: hostname backends replaced by their addresses,
    /// but for an address that would reach one of the proxy's own listeners
    /// (it would proxy to itself until descriptors ran out).
    func effectivePools(_ config: SluiceConfig) -> [PoolConfig] {
        let binds = config.listeners.map(\.bind)
        let table = resolved.mapValues { addresses in
            addresses.filter { address in !binds.contains { address.reachesListener(boundTo: $0) } }
        }
        return config.pools.map { $0.named.isEmpty ? $0 : $0.expanded(resolved: table) }
    }

    /// Start-up: every hostname resolved once before the pools are built,
    /// so that the first connections find their backends. A name that does
    /// not resolve leaves its pool without those backends until it does.
    func resolveAtStart() {
        let names = config.namedBackends
        guard !names.isEmpty else { return }
        resolved = BackendDiscovery.resolveNow(names, settings: config.resolve, timeoutMilliseconds: Self.startResolveMilliseconds)
        for name in names.sorted(by: { $0.description < $1.description }) {
            if let addresses = resolved[name] {
                logger.info("backend name resolved", metadata: ["name": "\(name)", "addresses": "\(addresses.map(\.description).joined(separator: ","))"])
            } else {
                logger.warning("backend name did not resolve at start; its pool goes without it until it does", metadata: ["name": "\(name)"])
            }
        }
    }

    static let startResolveMilliseconds: UInt64 = 5000

    /// The discovery thread, when some backend is a hostname.
    func startDiscovery(wake: EventFD) throws(ServerError) -> BackendDiscovery? {
        let names = config.namedBackends
        guard !names.isEmpty else { return nil }
        let inbox = discoveredInbox
        let discovery = try BackendDiscovery(names: names, settings: config.resolve, logger: logs.logger("sluice.dns")) { table in
            inbox.publish(table)
            wake.signal()
        }
        try discovery.start()
        return discovery
    }

    /// A reload: names kept keep their answers; new ones are looked up.
    func updateDiscovery(_ live: LiveState) {
        let names = config.namedBackends
        if let discovery = live.discovery {
            discovery.update(names: names, settings: config.resolve)
            resolved = resolved.filter { names.contains($0.key) }
        } else if !names.isEmpty, let wake = live.loop?.discoveryWake {
            do { live.discovery = try startDiscovery(wake: wake) } catch {
                logger.error("cannot start resolving backend names: \(error)")
            }
        }
    }

    /// The discovery thread saw an answer change: the pools follow, as a
    /// reload that changes nothing but their backends would.
    func applyDiscovered() {
        guard let table = discoveredInbox.take(), let live else { return }
        let names = config.namedBackends
        let next = table.filter { names.contains($0.key) }
        guard next != resolved else { return }
        for (name, addresses) in next {
            for address in addresses where config.listeners.contains(where: { address.reachesListener(boundTo: $0.bind) }) {
                logger.warning("a backend name resolves to one of the proxy's own listeners; that address is left out",
                               metadata: ["name": "\(name)", "address": "\(address)"])
            }
        }
        let before = effectivePools(config)
        resolved = next
        let changes = ReloadPlan.poolChanges(before, effectivePools(config))
        guard !changes.isEmpty else { return }
        let plan = ReloadPlan(kept: config.listeners.indices.map { (new: $0, old: $0) }, added: [], removed: [], changes: changes)
        do { try apply(config, plan: plan, live: live) } catch {
            logger.error("backend names changed but the pools could not follow: \(error)")
            return
        }
        for change in changes { logger.notice("dns: \(change)") }
    }
}
