import Atomics
import SluiceBPF
import SluiceCore
import SluicePosix

/// A backend pool as the workers see it: addresses resolved once, and
/// connection counts shared by all workers (least_conn and p2c read them).
public final class RuntimePool: Sendable {
    public let config: PoolConfig
    public let addresses: [SocketAddress]
    public let active: [ManagedAtomic<Int>]
    public let connectFailures: [ManagedAtomic<Int>]
    /// Drained by the admin socket: no new connections, existing ones finish.
    public let drained: [ManagedAtomic<Bool>]

    public init(_ config: PoolConfig) {
        self.config = config
        addresses = config.backends.map { backend in
            guard let address = SocketAddress(ip: backend.address.host, port: backend.address.port) else {
                preconditionFailure("validated address \(backend.address) did not convert")
            }
            return address
        }
        active = config.backends.map { _ in ManagedAtomic(0) }
        connectFailures = config.backends.map { _ in ManagedAtomic(0) }
        drained = config.backends.map { _ in ManagedAtomic(false) }
    }

    public var name: String { config.name }
}

/// A listener shared by all workers: its limits, and its counters in the
/// pinned listener_load table (so `sluice status` sees them without us).
public final class RuntimeListener: Sendable {
    public let index: Int
    public let config: ListenerConfig
    public let pool: RuntimePool
    public let address: SocketAddress
    public let counters: ListenerLoadRecord

    public init(index: Int, config: ListenerConfig, pool: RuntimePool, address: SocketAddress, counters: ListenerLoadRecord) {
        self.index = index
        self.config = config
        self.pool = pool
        self.address = address
        self.counters = counters
    }

    public var name: String { config.name }
}

/// Counters of one worker that the kernel does not need (those live in its
/// worker_load record), written by its thread alone, read by anyone.
public final class WorkerCounters: Sendable {
    public let accepted = ManagedAtomic<UInt64>(0)
    public let active = ManagedAtomic<Int>(0)
    public let closed = ManagedAtomic<UInt64>(0)
    public let connectFailures = ManagedAtomic<UInt64>(0)
    public let noBackend = ManagedAtomic<UInt64>(0)
    public let acceptBackoffs = ManagedAtomic<UInt64>(0)
    public let movedOut = ManagedAtomic<UInt64>(0)
    public let movedIn = ManagedAtomic<UInt64>(0)

    public init() {}
}

extension Duration {
    var milliseconds: UInt64 {
        let (seconds, attoseconds) = components
        return UInt64(max(0, seconds)) * 1000 + UInt64(max(0, attoseconds)) / 1_000_000_000_000_000
    }
}
