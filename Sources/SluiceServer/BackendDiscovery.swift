import Atomics
import Logging
import SluiceCore
import SluicePosix
import Synchronization

/// Keeps the pools' hostname backends resolved, on a thread of its own (a
/// lookup may wait seconds on a nameserver; nothing else may): each name is
/// looked up again when its answer's TTL runs out (`ResolveSchedule` decides
/// when), a failed lookup keeps the last good answer, and every change of
/// the table is handed to `onChange` on this thread.
final class BackendDiscovery: @unchecked Sendable {
    typealias Table = [NamedBackend: [SocketAddressSpec]]

    private enum Lifecycle {
        case ready
        case running(OSThread)
        case stopped
    }

    private let logger: Logger
    private let onChange: @Sendable (Table) -> Void
    private let wakeup: EventFD
    private let stopping = ManagedAtomic(false)
    private let lifecycle = Mutex<Lifecycle>(.ready)
    /// The latest `update`, for the thread to take in.
    private let pendingUpdate = Mutex<(names: Set<NamedBackend>, settings: ResolveConfig)?>(nil)
    private let published = Mutex<Table>([:])

    // Touched by the discovery thread alone once it runs.
    private var schedule: ResolveSchedule
    private var resolver: DNSResolver

    init(names: Set<NamedBackend>, settings: ResolveConfig, logger: Logger,
         onChange: @escaping @Sendable (Table) -> Void) throws(ServerError) {
        self.logger = logger
        self.onChange = onChange
        resolver = try DNSResolver(settings: settings)
        do { wakeup = try EventFD() } catch { throw ServerError("name resolution: \(error)") }
        schedule = ResolveSchedule(names: names, settings: settings, now: monotonicMilliseconds())
    }

    deinit { resolver.close() }

    /// The answers known now, for status.
    var current: Table { published.withLock { $0 } }

    func start() throws(ServerError) {
        try lifecycle.withLock { state throws(ServerError) in
            guard case .ready = state else { throw ServerError("name resolution: started twice, or after stop") }
            do {
                state = .running(try OSThread.start(name: "sluice-dns") { self.run() })
            } catch {
                throw ServerError("name resolution: \(error)")
            }
        }
    }

    /// Reload: new names and settings; answers for names kept are kept.
    /// Never waits for a lookup: the thread takes it in at its next turn.
    func update(names: Set<NamedBackend>, settings: ResolveConfig) {
        pendingUpdate.withLock { $0 = (names, settings) }
        wakeup.signal()
    }

    /// Stops the thread and closes the resolver's sockets; idempotent. Not
    /// from `onChange`, which runs on the thread this joins.
    func stop() {
        let previous = lifecycle.withLock { state in
            defer { state = .stopped }
            return state
        }
        switch previous {
        case .running(let thread):
            stopping.store(true, ordering: .relaxed)
            wakeup.signal()
            thread.join()
        case .ready:
            resolver.close()
        case .stopped:
            break
        }
    }

    // MARK: - The discovery thread

    private func run() {
        while !stopping.load(ordering: .relaxed) {
            takeUpdate()
            startDueLookups()
            let now = monotonicMilliseconds()
            // Woken by the eventfd for updates and stop; a second at most
            // between looks at the clock.
            let wait = schedule.nextDue.map { $0 <= now ? 0 : Int32(min(1000, $0 - now)) } ?? 1000
            if resolver.process(timeoutMilliseconds: wait, wakeup: wakeup.fd) { wakeup.drain() }
        }
        resolver.close()
    }

    private func takeUpdate() {
        guard let update = pendingUpdate.withLock({ pending in defer { pending = nil }; return pending }) else { return }
        let settingsChanged = update.settings != schedule.settings
        let tableChanged = schedule.replace(names: update.names, settings: update.settings, now: monotonicMilliseconds())
        if settingsChanged {
            do {
                let fresh = try DNSResolver(settings: update.settings)
                resolver.close()
                resolver = fresh
            } catch {
                logger.error("name resolution: keeping the previous resolver settings", metadata: ["error": "\(error)"])
            }
        }
        if tableChanged { publish() }
    }

    private func startDueLookups() {
        for name in schedule.due(now: monotonicMilliseconds()) {
            let ticket = schedule.started(name)
            resolver.lookup(host: name.host, port: name.port) { [weak self] result in
                self?.finished(name, ticket: ticket, result)
            }
        }
    }

    private func finished(_ name: NamedBackend, ticket: UInt64, _ result: Result<DNSAnswer, DNSLookupError>) {
        let now = monotonicMilliseconds()
        switch result {
        case .success(let answer):
            let failuresBefore = schedule.entries[name]?.failures ?? 0
            guard schedule.answered(name, ticket: ticket, addresses: answer.addresses, ttl: answer.ttl, now: now) else {
                if failuresBefore > 0 { logger.notice("name resolution: answered again", metadata: ["host": "\(name)"]) }
                return
            }
            let addresses = schedule.entries[name]?.addresses ?? []
            logger.info("name resolution: addresses changed", metadata: [
                "host": "\(name)", "addresses": "\(addresses.map(\.description).joined(separator: ","))",
            ])
            publish()
        case .failure(let error):
            guard !error.isCancelled, let retry = schedule.failed(name, ticket: ticket, now: now) else { return }
            let kept = schedule.entries[name]?.addresses?.count ?? 0
            logger.warning("name resolution: lookup failed; \(kept > 0 ? "keeping the last \(kept) addresses" : "no addresses yet")", metadata: [
                "host": "\(name)", "error": "\(error)", "retry_in": "\(formatDuration(retry))",
            ])
        }
    }

    private func publish() {
        let table = schedule.table
        published.withLock { $0 = table }
        onChange(table)
    }

    // MARK: - Start-up

    /// Start-up: resolve every name once, waiting at most
    /// `timeoutMilliseconds`, without a thread; names that fail are absent.
    static func resolveNow(_ names: Set<NamedBackend>, settings: ResolveConfig, timeoutMilliseconds: UInt64) -> Table {
        guard !names.isEmpty, let resolver = try? DNSResolver(settings: settings) else { return [:] }
        var table: Table = [:]
        var remaining = names.count
        for name in names {
            resolver.lookup(host: name.host, port: name.port) { result in
                remaining -= 1
                if case .success(let answer) = result { table[name] = ResolveSchedule.addressSet(answer.addresses) }
            }
        }
        let deadline = monotonicMilliseconds().saturatingAdd(timeoutMilliseconds)
        while remaining > 0 {
            let now = monotonicMilliseconds()
            guard now < deadline else { break }
            resolver.process(timeoutMilliseconds: Int32(min(1000, deadline - now)))
        }
        resolver.close()
        return table
    }
}
