// Checks that look at the configuration as a whole rather than one value:
// a backend that is the proxy itself, and the descriptors the listeners'
// limits need against the process's open-files limit.

extension ConfigDecoder {
    /// A backend that reaches one of our own listeners would have the proxy
    /// connect to itself, accept that, connect again, ... until it runs out
    /// of descriptors. Refused at the backend's address.
    mutating func refuseBackendsThatAreListeners() {
        for site in backendSites {
            guard let listener = listenerBinds.first(where: { site.address.reachesListener(boundTo: $0.bind) }) else {
                continue
            }
            let how = site.address == listener.bind ? "" : " (bound to \(listener.bind))"
            fail(site.path, at: site.node,
                 "backend \(site.address) is this proxy's own listener listeners[\(listener.index)]\(how); "
                    + "it would proxy to itself")
        }
    }
}

/// The descriptors the listeners' `max_connections` can use at once, and
/// whether the open-files limit (RLIMIT_NOFILE) leaves room for them.
public struct DescriptorBudget: Sendable, Equatable {
    /// Client and backend socket of each proxied connection.
    public static let perConnection = 2
    /// A UDP flow's connected socket (its client's datagrams share the listener's).
    public static let perFlow = 1
    /// Per worker: its epoll and eventfd, a socket per listener, and a few
    /// pipes of its splice(2) pool in flight.
    static func perWorker(listeners: Int) -> Int { 2 + listeners + 8 }
    /// The control thread, BPF objects, admin and metrics sockets, log file,
    /// signalfd, health-check thread: a generous fixed allowance.
    public static let fixedMargin = 64

    public var connections: Int
    public var flows: Int
    public var margin: Int

    public init(config: SluiceConfig) {
        connections = config.listeners.filter { $0.mode != .udp }.reduce(0) { $0.addingClamped($1.maxConnections) }
        flows = config.listeners.compactMap(\.udp).reduce(0) { $0.addingClamped($1.maxFlows) }
        let checkedBackends = config.pools.reduce(0) { $0 + ($1.healthCheck == nil ? 0 : $1.backends.count) }
        margin = Self.fixedMargin + config.workers * Self.perWorker(listeners: config.listeners.count) + checkedBackends
    }

    /// Descriptors needed with every listener at its `max_connections`.
    public var required: Int {
        connections.multipliedClamped(Self.perConnection).addingClamped(flows.multipliedClamped(Self.perFlow)).addingClamped(margin)
    }

    /// A warning naming the numbers when `openFilesLimit` is too small; nil when it fits.
    public func warning(openFilesLimit: Int) -> String? {
        guard required > openFilesLimit else { return nil }
        let fitting = max(0, (openFilesLimit - margin - flows * Self.perFlow) / Self.perConnection)
        let udp = flows > 0 ? " and the udp listeners' max_flows to \(flows)" : ""
        return "the listeners' max_connections add up to \(connections)\(udp), which needs about \(required) descriptors "
            + "(\(Self.perConnection) per connection, \(Self.perFlow) per flow + \(margin) for listeners, epoll, pipes and the rest), "
            + "but the open-files limit (RLIMIT_NOFILE) is \(openFilesLimit): about \(fitting) connections fit; "
            + "raise the limit (LimitNOFILE= in the unit) or lower max_connections"
    }
}

extension Int {
    fileprivate func addingClamped(_ other: Int) -> Int {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? .max : sum
    }

    fileprivate func multipliedClamped(_ other: Int) -> Int {
        let (product, overflow) = multipliedReportingOverflow(by: other)
        return overflow ? .max : product
    }
}
