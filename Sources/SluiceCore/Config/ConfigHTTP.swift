/// What a listener speaks (`mode`).
public enum ListenerMode: String, Sendable, CaseIterable {
    /// Bytes relayed as they are (the data path decides how).
    case tcp
    /// An HTTP/1.1 reverse proxy: heads parsed, requests routed, backends kept alive.
    case http
    /// A Redis proxy: keys sharded over the pool's servers by slot, commands pipelined.
    case redis
    /// UDP: flows steered to workers in BPF, datagrams relayed over one
    /// connected socket per flow.
    case udp
}

/// `udp:` of a `mode: udp` listener.
public struct UDPListenerConfig: Sendable, Equatable {
    /// A flow with no datagram either way for this long is closed.
    public var flowIdleTimeout: Duration = .seconds(30)
    /// A backend per datagram (DNS style): each datagram gets a socket of
    /// its own, closed after the first reply or the idle timeout.
    public var perPacket = false
    /// Flows open at once; a new flow beyond is dropped (and counted).
    public var maxFlows = 10_000

    public init() {}
}

/// `redis:` of a `mode: redis` listener.
public struct RedisListenerConfig: Sendable, Equatable {
    /// Clients must `AUTH` with it first, when set.
    public var password: String?
    /// Connections each worker keeps to each backend, shared by its clients.
    /// One batches the most commands per write (a Redis server runs them
    /// one at a time anyway): measured ahead of two at one command per client.
    public var connectionsPerBackend = 1
    /// A backend connection whose oldest command has had no reply for this
    /// long is given up: its commands get `-ERR`, the next one reconnects.
    public var replyTimeout: Duration = .seconds(3)

    public init() {}
}

/// One `http.routes` entry: requests whose host and path match go to `pool`.
public struct HTTPRouteConfig: Sendable, Equatable {
    /// `api.example.com`, `*.example.com`, or nil for any host.
    public var host: String?
    /// Must start with "/"; nil for any path.
    public var pathPrefix: String?
    public var pool: String

    public init(host: String? = nil, pathPrefix: String? = nil, pool: String) {
        self.host = host
        self.pathPrefix = pathPrefix
        self.pool = pool
    }
}

/// `http:` of a `mode: http` listener.
public struct HTTPListenerConfig: Sendable, Equatable {
    /// Tried in order; no match: the listener's pool, or 404 without one.
    public var routes: [HTTPRouteConfig] = []
    /// Whether requests no route matches go to the listener's pool (false:
    /// the listener has no `pool` of its own and answers them 404; its
    /// `ListenerConfig.pool` is then the first route's, for the counts).
    public var fallback = true
    /// A request head must be complete this long after its first byte (408),
    /// and a keep-alive client may stay quiet this long between requests.
    public var headTimeout: Duration = .seconds(10)
    /// The backend's response head must arrive this long after the request (504).
    public var responseTimeout: Duration = .seconds(60)
    /// Bytes of one head (431 beyond).
    public var maxHead = 64 * 1024
    public var forwarded: HTTPForwardedFields = .xff
    /// Idle kept-alive connections each worker keeps per backend, and for how long.
    public var keepAlivePerBackend = 32
    public var keepAliveTimeout: Duration = .seconds(60)
    /// WebSocket upgrades pass (false: refused with 403).
    public var websocket = true
    /// A WebSocket tunnel with no byte either way for this long is closed.
    public var tunnelIdleTimeout: Duration = .seconds(3600)

    public init() {}
}
