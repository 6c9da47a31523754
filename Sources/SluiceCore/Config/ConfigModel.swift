// The configuration model for Sluice: plain, immutable-by-convention value
// types produced by `ConfigLoader` (see ConfigDecoder.swift for the YAML shape).
// Nothing here depends on Foundation.

/// How accepted connections are spread over the worker threads.
public enum SteeringMode: String, Sendable, CaseIterable {
    /// A BPF program picks the worker with the fewest live connections.
    case leastLoaded = "least_loaded"
    /// SO_REUSEPORT hashing of the 4-tuple across per-worker sockets.
    case hash
    /// One listening socket shared by all workers.
    case sharedAccept = "shared_accept"

    /// When `steering` is absent.
    public static let specifiedDefault: SteeringMode = .leastLoaded
}

/// How bytes are moved between the client and backend sockets (`data_path`).
public enum DataPathMode: String, Sendable, CaseIterable {
    /// Per connection: read/write for small messages, splice(2) for bulk,
    /// and, with `sockmap_after_turns`, the SOCKHASH for connections that
    /// settle into small exchanges.
    case auto
    /// In-kernel redirection through a BPF sockmap.
    case sockmap
    /// splice(2) through a pipe.
    case splice
    /// read/write through a user-space buffer.
    case copy

    /// When `data_path` is absent.
    public static let specifiedDefault: DataPathMode = .auto
}

/// How a pool chooses a backend for a new connection.
public enum BalancingAlgorithm: String, Sendable, CaseIterable {
    case roundRobin = "round_robin"
    case leastConn = "least_conn"
    case p2c
    case maglev
    case random
}

public enum AccessLogFormat: String, Sendable, CaseIterable {
    case off, text, json
}

public enum LogLevelName: String, Sendable, CaseIterable {
    case trace, debug, info, notice, warning, error, critical
}

public struct LogConfig: Sendable, Equatable {
    /// Minimum level of the operational log.
    public var level: LogLevelName
    /// Format of the per-connection access log.
    public var access: AccessLogFormat
    /// "stderr", "stdout", or an absolute file path.
    public var file: String

    public init(level: LogLevelName = .info, access: AccessLogFormat = .text, file: String = "stderr") {
        self.level = level
        self.access = access
        self.file = file
    }
}

public struct AdminConfig: Sendable, Equatable {
    /// Absolute path of the admin unix socket.
    public var socket: String
    /// Address of the HTTP metrics endpoint; nil when disabled (`metrics: off`).
    public var metrics: SocketAddressSpec?
    /// How long a client of either endpoint may stay without progress (no
    /// byte read or written) before it is closed; nil: 30 s for the admin
    /// socket, 10 s for metrics (`ConfigDefaults`).
    public var idleTimeout: Duration?

    public init(socket: String, metrics: SocketAddressSpec?, idleTimeout: Duration? = nil) {
        self.socket = socket
        self.metrics = metrics
        self.idleTimeout = idleTimeout
    }
}

/// Moving established connections between workers when their loads drift apart.
public struct RebalanceConfig: Sendable, Equatable {
    /// How often the control thread looks at the per-worker loads.
    public var interval: Duration
    /// Largest max/min ratio of active connections per worker left alone.
    public var ratio: Double
    /// Most connections moved per tick (bounds the work of one tick).
    public var maxMovesPerTick: Int

    public init(interval: Duration = .milliseconds(100), ratio: Double = 1.1, maxMovesPerTick: Int = 256) {
        self.interval = interval
        self.ratio = ratio
        self.maxMovesPerTick = maxMovesPerTick
    }
}

/// `proxy_protocol:` of a listener.
public struct ProxyAcceptConfig: Sendable, Equatable {
    public var accept: ProxyAccept = .off
    /// The header must be complete this long after the accept.
    public var timeout: Duration = .seconds(3)

    public init() {}
}

public struct ListenerConfig: Sendable, Equatable {
    public var name: String
    public var bind: SocketAddressSpec
    /// Name of the pool (`PoolConfig.name`) this listener forwards to.
    public var pool: String
    public var maxConnections: Int
    public var connectTimeout: Duration
    public var idleTimeout: Duration
    public var mode: ListenerMode = .tcp
    /// Set for `mode: http` (defaults when the key is absent), nil otherwise.
    public var http: HTTPListenerConfig?
    /// Set for `mode: redis` (defaults when the key is absent), nil otherwise.
    public var redis: RedisListenerConfig?
    /// Set for `mode: udp` (defaults when the key is absent), nil otherwise.
    public var udp: UDPListenerConfig?
    /// A PROXY protocol header the load balancer in front sends first.
    public var proxyProtocol = ProxyAcceptConfig()

    public init(
        name: String,
        bind: SocketAddressSpec,
        pool: String,
        maxConnections: Int = ConfigDefaults.maxConnections,
        connectTimeout: Duration = ConfigDefaults.connectTimeout,
        idleTimeout: Duration = ConfigDefaults.idleTimeout
    ) {
        self.name = name
        self.bind = bind
        self.pool = pool
        self.maxConnections = maxConnections
        self.connectTimeout = connectTimeout
        self.idleTimeout = idleTimeout
    }
}

public struct BackendConfig: Sendable, Equatable {
    public var address: SocketAddressSpec
    public var weight: Int

    public init(address: SocketAddressSpec, weight: Int = ConfigDefaults.weight) {
        self.address = address
        self.weight = weight
    }
}

/// tcp: the connect; http: a GET and its status; redis: a PING answered
/// +PONG; dns: a query over UDP answered NOERROR or NXDOMAIN.
public enum HealthCheckKind: String, Sendable, CaseIterable { case tcp, http, redis, dns }

/// Active checks of a pool's backends, run off the workers' hot path.
public struct HealthCheckConfig: Sendable, Equatable {
    public var kind: HealthCheckKind = .tcp
    public var interval: Duration = .seconds(2)
    public var timeout: Duration = .seconds(1)
    /// Successes in a row that bring a down backend up.
    public var rise = 2
    /// Failures in a row that take an up backend down.
    public var fall = 3
    /// For http: the request path and the status that counts as healthy.
    public var path = "/"
    public var expectStatus = 200
    /// For dns: the name asked (type A).
    public var query = "."

    public init() {}
}

/// Passive ejection: consecutive connect failures (or resets before the
/// first byte) take a backend out for `ejection`, doubling on each repeat.
public struct PassiveConfig: Sendable, Equatable {
    public var failures = 3
    public var ejection: Duration = .seconds(10)

    public init() {}
}

public struct PoolConfig: Sendable, Equatable {
    public var name: String
    public var algorithm: BalancingAlgorithm
    public var retries: Int
    /// The backends written as IP addresses.
    public var backends: [BackendConfig]
    /// The backends written as hostnames, resolved at run time (`expanded`).
    public var named: [NamedBackend] = []
    public var healthCheck: HealthCheckConfig?
    public var passive: PassiveConfig?
    /// Passive ejection never leaves fewer healthy backends than this.
    public var minHealthy = 1
    /// The PROXY protocol header written to each backend connection first.
    public var proxyProtocol: ProxySend = .off
    /// How `mode: redis` listeners place keys on the servers (`redis.hash`):
    /// the pool's, so that every listener on it finds a key in one place.
    public var redisHash: RedisHash = .crc16

    public init(
        name: String,
        algorithm: BalancingAlgorithm = ConfigDefaults.algorithm,
        retries: Int = ConfigDefaults.retries,
        backends: [BackendConfig]
    ) {
        self.name = name
        self.algorithm = algorithm
        self.retries = retries
        self.backends = backends
    }
}

public struct SluiceConfig: Sendable, Equatable {
    /// Names the bpffs pin directory /sys/fs/bpf/sluice/<instance>.
    public var instance: String
    public var workers: Int
    public var steering: SteeringMode
    public var dataPath: DataPathMode
    public var stallThreshold: Duration
    public var drainTimeout: Duration
    public var log: LogConfig
    /// nil when the admin socket and metrics endpoint are off.
    public var admin: AdminConfig?
    public var listeners: [ListenerConfig]
    public var pools: [PoolConfig]
    /// nil when rebalancing is off (`rebalance: off`).
    public var rebalance: RebalanceConfig? = RebalanceConfig()
    /// After start-up (BPF loaded, sockets bound), run as this user.
    public var user: String?
    /// `data_path: auto`: move a connection into the SOCKHASH after this many
    /// small request/response exchanges; nil (`off`, the default): never.
    public var sockmapAfterTurns: Int?
    /// `data_path: auto`: move a connection into the SOCKHASH once the client
    /// has sent this many bytes without a change of direction (a stream);
    /// nil (`off`, or another data path): never. 64 MiB with `auto` by default.
    public var sockmapAfterBytes: Int?
    /// How the pools' hostname backends are resolved.
    public var resolve = ResolveConfig()

    public init(
        instance: String = ConfigDefaults.instance,
        workers: Int,
        steering: SteeringMode = .specifiedDefault,
        dataPath: DataPathMode = .specifiedDefault,
        stallThreshold: Duration = ConfigDefaults.stallThreshold,
        drainTimeout: Duration = ConfigDefaults.drainTimeout,
        log: LogConfig = LogConfig(),
        admin: AdminConfig? = nil,
        listeners: [ListenerConfig],
        pools: [PoolConfig]
    ) {
        self.instance = instance
        self.workers = workers
        self.steering = steering
        self.dataPath = dataPath
        self.stallThreshold = stallThreshold
        self.drainTimeout = drainTimeout
        self.log = log
        self.admin = admin
        self.listeners = listeners
        self.pools = pools
        self.sockmapAfterBytes = dataPath == .auto ? ConfigDefaults.sockmapAfterBytes : nil
    }

    /// The pool with this name, if any.
    public func pool(named name: String) -> PoolConfig? {
        pools.first { $0.name == name }
    }
}

/// Default values of the configuration format (limits: `ConfigBounds`).
public enum ConfigDefaults {
    public static let instance = "default"
    public static let workersRange = ConfigBounds.workers
    /// One record each in the pinned listener_load table.
    public static let maxListeners = ConfigBounds.listeners.upperBound
    public static let stallThreshold: Duration = .milliseconds(200)
    public static let drainTimeout: Duration = .seconds(30)
    /// Streams promote after 64 MiB: 50-100 ms of a loopback stream, long
    /// past any request/response body a benchmark or a web page sends.
    public static let sockmapAfterBytes = 64 << 20

    public static let maxConnections = 100_000
    public static let maxConnectionsRange = ConfigBounds.maxConnections
    public static let connectTimeout: Duration = .seconds(2)
    public static let idleTimeout: Duration = .seconds(300)

    public static let algorithm: BalancingAlgorithm = .leastConn
    public static let retries = 2
    public static let retriesRange = ConfigBounds.retries
    public static let weight = 1
    public static let weightRange = ConfigBounds.weight

    public static let metrics = SocketAddressSpec(host: "127.0.0.1", port: 9901, family: .inet)
    /// A person at `sluice status` or a script sends its request at once;
    /// 30 s leaves room for typing into `nc -U` by hand.
    public static let adminIdleTimeout: Duration = .seconds(30)
    /// A scraper sends its request at once and reads the answer within its
    /// own timeout (Prometheus: 10 s by default); silent clients only hold slots.
    public static let metricsIdleTimeout: Duration = .seconds(10)

    /// The admin socket path used when `admin.socket` is absent.
    public static func adminSocket(instance: String) -> String {
        "/run/sluice/\(instance).sock"
    }

    /// Default worker count for a machine with `onlineCPUs` CPUs online.
    public static func workers(onlineCPUs: Int) -> Int {
        min(max(onlineCPUs, workersRange.lowerBound), workersRange.upperBound)
    }
}
