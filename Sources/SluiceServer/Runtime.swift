import Atomics
import SluiceBPF
import Synchronization
import SluiceCore
import SluicePosix

/// A backend pool as the workers see it: addresses resolved once, and the
/// state every worker shares: connection counts (least_conn and p2c read
/// them), health (active checks), passive ejection, admin drain.
public final class RuntimePool: Sendable {
    public let config: PoolConfig
    public let addresses: [SocketAddress]
    public let active: [ManagedAtomic<Int>]
    public let connectFailures: [ManagedAtomic<Int>]
    /// `mode: redis`: commands (and split parts) sent to each backend.
    public let redisCommands: [ManagedAtomic<UInt64>]
    /// Drained by the admin socket: no new connections, existing ones finish.
    public let drained: [ManagedAtomic<Bool>]
    /// The active health checks' verdict (true without checks).
    public let checkedUp: [ManagedAtomic<Bool>]
    /// Passive ejection: not eligible before this monotonic millisecond.
    public let ejectedUntil: [ManagedAtomic<UInt64>]
    public let healthTransitions: [ManagedAtomic<Int>]
    public let ejections: [ManagedAtomic<Int>]
    /// Monotonic ms and outcome of the last active check (0: none yet).
    public let lastCheckAt: [ManagedAtomic<UInt64>]
    public let lastCheckPassed: [ManagedAtomic<Bool>]
    /// Mirrors of the passive state's counters, so the hot path can tell
    /// without the lock that there is nothing to forgive.
    private let failuresInARow: [ManagedAtomic<Int>]
    private let passive: Mutex<[PassiveEjectionState]>

    /// `previous`: the pool of the same name before a reload (or a DNS
    /// change). A backend it had, at the same address, keeps its state:
    /// connection counts, health, ejection, drain, counters. The two pools
    /// share those atomics, so that connections opened before the reload
    /// and after it are counted together.
    public init(_ config: PoolConfig, carryingOver previous: RuntimePool? = nil) {
        self.config = config
        addresses = config.backends.map { backend in
            guard let address = SocketAddress(ip: backend.address.host, port: backend.address.port) else {
                preconditionFailure("validated address \(backend.address) did not convert")
            }
            return address
        }
        let before: [Int?] = config.backends.map { backend in
            previous?.config.backends.firstIndex { $0.address == backend.address }
        }
        func carried<T: AtomicValue>(_ old: [ManagedAtomic<T>]?, _ initial: T) -> [ManagedAtomic<T>] {
            before.map { j in j.flatMap { old?[$0] } ?? ManagedAtomic(initial) }
        }
        active = carried(previous?.active, 0)
        connectFailures = carried(previous?.connectFailures, 0)
        redisCommands = carried(previous?.redisCommands, 0)
        drained = carried(previous?.drained, false)
        checkedUp = carried(previous?.checkedUp, true)
        ejectedUntil = carried(previous?.ejectedUntil, 0)
        healthTransitions = carried(previous?.healthTransitions, 0)
        ejections = carried(previous?.ejections, 0)
        lastCheckAt = carried(previous?.lastCheckAt, 0)
        lastCheckPassed = carried(previous?.lastCheckPassed, false)
        failuresInARow = carried(previous?.failuresInARow, 0)
        let states = previous?.passive.withLock { $0 } ?? []
        passive = Mutex(before.map { j in j.map { states[$0] } ?? PassiveEjectionState() })
    }

    /// Whether `address` is one of this pool's backends.
    public func has(_ address: SocketAddress) -> Bool { addresses.contains(address) }

    public var name: String { config.name }

    /// Healthy: checks say up and not ejected (drain aside).
    public func isHealthy(_ i: Int, now: UInt64) -> Bool {
        checkedUp[i].load(ordering: .relaxed) && now >= ejectedUntil[i].load(ordering: .relaxed)
    }

    /// May take a new connection.
    public func isEligible(_ i: Int, now: UInt64) -> Bool {
        !drained[i].load(ordering: .relaxed) && isHealthy(i, now: now)
    }

    public func state(_ i: Int, now: UInt64) -> String {
        if drained[i].load(ordering: .relaxed) { return "drained" }
        if !checkedUp[i].load(ordering: .relaxed) { return "down" }
        if now < ejectedUntil[i].load(ordering: .relaxed) { return "ejected" }
        return "up"
    }

    /// A connect failure or a reset before the first byte. Returns the end
    /// of the ejection it caused, if it caused one.
    public func noteFailure(_ i: Int, now: UInt64) -> UInt64? {
        guard let settings = config.passive else { return nil }
        failuresInARow[i].wrappingIncrement(ordering: .relaxed)
        let healthyOthers = (0..<addresses.count).filter { $0 != i && isHealthy($0, now: now) }.count
        let until = passive.withLock { states in
            states[i].failure(now: now, threshold: settings.failures, ejectionMilliseconds: settings.ejection.milliseconds,
                              mayEject: healthyOthers >= config.minHealthy)
        }
        if let until {
            ejectedUntil[i].store(until, ordering: .relaxed)
            ejections[i].wrappingIncrement(ordering: .relaxed)
            failuresInARow[i].store(0, ordering: .relaxed)
        }
        return until
    }

    /// The backend delivered bytes (or closed cleanly): forgive its failures.
    public func noteSuccess(_ i: Int) {
        guard config.passive != nil, failuresInARow[i].load(ordering: .relaxed) != 0 || ejections[i].load(ordering: .relaxed) != 0
        else { return }
        failuresInARow[i].store(0, ordering: .relaxed)
        passive.withLock { $0[i].success() }
    }
}

/// A listener shared by all workers: its limits, and its counters in the
/// pinned listener_load table (so `sluice status` sees them without us).
public final class RuntimeListener: Sendable {
    public let index: Int
    public let config: ListenerConfig
    public let pool: RuntimePool
    public let address: SocketAddress
    public let counters: ListenerLoadRecord
    /// For `mode: http`: the pools its routes lead to (the listener's own first).
    public let http: RuntimeHTTP?
    /// The pool name status and metrics show: "-" for an HTTP listener
    /// without a pool of its own (requests no route matches get 404).
    public var poolLabel: String { config.http?.fallback == false ? "-" : pool.name }

    /// `mode: redis`: commands by `RedisFamily`.
    public let redisFamilies: [ManagedAtomic<UInt64>]

    /// Connections closed for a missing, malformed or late PROXY header.
    public let proxyHeaderRejected: ManagedAtomic<UInt64>

    /// `mode: udp`: datagrams and bytes each way, and datagrams dropped by reason.
    public let udp: UDPCounters

    /// `index`: the listener's slot (its listener_load record, its BPF
    /// object, its place in each worker's tables), kept across reloads.
    /// `previous`: the listener it replaces at a reload, whose counters it
    /// continues.
    public init(index: Int, config: ListenerConfig, pool: RuntimePool, address: SocketAddress, counters: ListenerLoadRecord,
                pools: [String: RuntimePool] = [:], previous: RuntimeListener? = nil) {
        self.index = index
        self.config = config
        self.pool = pool
        self.address = address
        self.counters = counters
        redisFamilies = previous?.redisFamilies ?? RedisFamily.allCases.map { _ in ManagedAtomic<UInt64>(0) }
        proxyHeaderRejected = previous?.proxyHeaderRejected ?? ManagedAtomic<UInt64>(0)
        udp = previous?.udp ?? UDPCounters()
        http = config.http.map { RuntimeHTTP($0, listenerPool: pool, pools: pools, previous: previous?.http) }
    }

    public var name: String { config.name }
}

/// A `mode: http` listener's routing: `pools[0]` is the listener's own pool,
/// the fallback; the router's targets index `pools`.
public final class RuntimeHTTP: Sendable {
    public let pools: [RuntimePool]
    public let router: HTTPRouter
    public let limits: HTTPSessionLimits
    public let config: HTTPListenerConfig
    /// Requests answered, per pool (as `pools`) and status class (1xx...5xx at 0...4).
    let requests: [StatusClassCounts]
    /// Tunnels (WebSocket, CONNECT) open now, handed from this listener to the TCP relay.
    public let openTunnels: ManagedAtomic<Int>

    /// Requests answered so far, all pools and classes.
    var answered: UInt64 { requests.reduce(0) { total, counts in (0..<5).reduce(total) { $0 + counts.load(class: $1) } } }

    /// Counts an answered request; `pool` nil: answered by the proxy before any routing.
    func count(pool: Int?, status: Int, worker: Int) {
        guard (100...599).contains(status) else { return }
        requests[pool ?? 0].add(class: status / 100 - 1, worker: worker)
    }

    init(_ config: HTTPListenerConfig, listenerPool: RuntimePool, pools byName: [String: RuntimePool], previous: RuntimeHTTP? = nil) {
        var pools = [listenerPool]
        var routes: [HTTPRouter.Route] = []
        for route in config.routes {
            guard let pool = byName[route.pool] else { continue }
            let index = pools.firstIndex { $0 === pool } ?? { pools.append(pool); return pools.count - 1 }()
            routes.append(.init(host: route.host, pathPrefix: route.pathPrefix, target: index))
        }
        self.pools = pools
        self.config = config
        requests = pools.map { pool in
            previous.flatMap { old in old.pools.firstIndex { $0.name == pool.name }.map { old.requests[$0] } }
                ?? StatusClassCounts()
        }
        openTunnels = previous?.openTunnels ?? ManagedAtomic<Int>(0)
        router = HTTPRouter(routes: routes, fallback: config.fallback ? 0 : nil)
        var limits = HTTPSessionLimits(
            head: HTTPLimits(maxHead: config.maxHead), headTimeoutMilliseconds: config.headTimeout.milliseconds,
            responseTimeoutMilliseconds: config.responseTimeout.milliseconds,
            maxAttempts: 1 + listenerPool.config.retries, forwarded: config.forwarded)
        limits.websocket = config.websocket
        self.limits = limits
    }
}

/// Counters of one worker that the kernel does not need (those live in its
/// worker_load record), written by its thread alone, read by anyone.
public final class WorkerCounters: Sendable {
    /// Connections this worker accepted (the record's `accepted` counts SYNs steered here).
    public let accepted = ManagedAtomic<UInt64>(0)
    /// Times a listener was paused for lack of fds or memory.
    public let acceptBackoffs = ManagedAtomic<UInt64>(0)
    public let movedOut = ManagedAtomic<UInt64>(0)
    public let movedIn = ManagedAtomic<UInt64>(0)
    /// Closed connections by the data paths that moved their bytes (one
    /// connection counts once for each path it used).
    public let closedByPath: [DataPathKind: ManagedAtomic<UInt64>] = [
        .copy: ManagedAtomic(0), .splice: ManagedAtomic(0), .sockmap: ManagedAtomic(0),
    ]
    /// Sessions moved from userspace into the SOCKHASH mid-stream (`data_path: auto`).
    public let promotions = ManagedAtomic<UInt64>(0)

    public init() {}
}

/// A `mode: udp` listener's traffic (flows open and opened are in `counters`).
public final class UDPCounters: Sendable {
    public enum Drop: String, Sendable, CaseIterable {
        /// A new flow while `max_flows` were open.
        case maxFlows = "max_flows"
        /// No eligible backend, or no socket for the flow.
        case noBackend = "no_backend"
        /// The backend refused (ICMP port unreachable) or a send failed.
        case backendError = "backend_error"
        /// The client's socket buffer was full for a reply.
        case clientError = "client_error"
        /// Larger than the 64 KiB a datagram can be.
        case truncated
    }

    public let datagramsIn = ManagedAtomic<UInt64>(0)
    public let datagramsOut = ManagedAtomic<UInt64>(0)
    public let bytesIn = ManagedAtomic<UInt64>(0)
    public let bytesOut = ManagedAtomic<UInt64>(0)
    public let drops = Drop.allCases.map { _ in ManagedAtomic<UInt64>(0) }

    public init() {}

    public func drop(_ reason: Drop, _ count: UInt64 = 1) {
        drops[Drop.allCases.firstIndex(of: reason)!].wrappingIncrement(by: count, ordering: .relaxed)
    }

    public func drops(_ reason: Drop) -> UInt64 { drops[Drop.allCases.firstIndex(of: reason)!].load(ordering: .relaxed) }
}

/// Requests answered per status class (1xx...5xx at 0...4), counted by
/// every worker. Each worker counts in a stripe of its own, 128 bytes
/// apart: one counter shared by all would move its cache line between
/// cores on every request (measured: 0.7% of keep-alive requests a second).
final class StatusClassCounts: @unchecked Sendable {
    private static let stripes = 16
    private static let stride = 16 // 16 × 8 bytes: a stripe never shares a line (or its prefetch pair)
    private let base: UnsafeMutablePointer<UnsafeAtomic<UInt64>.Storage>

    init() {
        let count = Self.stripes * Self.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: count * MemoryLayout<UnsafeAtomic<UInt64>.Storage>.stride, alignment: 128)
        base = raw.bindMemory(to: UnsafeAtomic<UInt64>.Storage.self, capacity: count)
        base.initialize(repeating: UnsafeAtomic<UInt64>.Storage(0), count: count)
    }

    deinit {
        base.deinitialize(count: Self.stripes * Self.stride)
        base.deallocate()
    }

    func add(class k: Int, worker: Int) {
        UnsafeAtomic<UInt64>(at: base + (worker % Self.stripes) * Self.stride + k).wrappingIncrement(ordering: .relaxed)
    }

    func load(class k: Int) -> UInt64 {
        (0..<Self.stripes).reduce(0) { $0 &+ UnsafeAtomic<UInt64>(at: base + $1 * Self.stride + k).load(ordering: .relaxed) }
    }
}
