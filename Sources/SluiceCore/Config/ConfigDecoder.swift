import Yams

// Walks a composed YAML node tree (not Codable: we need unknown-key detection,
// field paths and line numbers) and turns it into a `SluiceConfig`, collecting
// every error instead of stopping at the first.

/// A field path such as `pools[0].backends[1].address`.
struct ConfigFieldPath: CustomStringConvertible, Sendable {
    let text: String

    static let root = ConfigFieldPath(text: "")

    func key(_ name: String) -> ConfigFieldPath {
        ConfigFieldPath(text: text.isEmpty ? name : text + "." + name)
    }

    func index(_ index: Int) -> ConfigFieldPath {
        ConfigFieldPath(text: text + "[\(index)]")
    }

    var description: String { text }
}

/// The recognised keys of one YAML mapping (merge keys expanded).
struct ConfigMapping {
    struct Entry {
        var key: Node
        var value: Node
    }

    let node: Node
    let path: ConfigFieldPath
    var entries: [String: Entry] = [:]

    subscript(_ key: String) -> Entry? { entries[key] }
}

struct ConfigDecoder {
    let file: String
    let onlineCPUs: Int
    private(set) var errors: [ConfigError] = []
    private(set) var notices: [String] = []
    /// Every decoded backend address and listener bind, with where they were
    /// written, for the checks that look across pools and listeners.
    var backendSites: [BackendSite] = []
    var listenerBinds: [(index: Int, bind: SocketAddressSpec)] = []

    struct BackendSite {
        var address: SocketAddressSpec
        var node: Node
        var path: ConfigFieldPath
    }

    init(file: String, onlineCPUs: Int) {
        self.file = file
        self.onlineCPUs = onlineCPUs
    }

    static let topKeys = [
        "instance", "workers", "steering", "data_path", "sockmap_after_turns", "sockmap_after_bytes", "stall_threshold", "drain_timeout",
        "log", "admin", "rebalance", "resolve", "user", "listeners", "pools",
    ]
    /// Keys that were renamed: the old name is an error that gives the new one.
    static let renamedTopKeys = ["splice": "data_path"]
    static let rebalanceKeys = ["interval", "ratio"]
    static let logKeys = ["level", "access", "file"]
    static let adminKeys = ["socket", "metrics", "idle_timeout"]
    static let listenerKeys = ["name", "bind", "pool", "max_connections", "connect_timeout", "idle_timeout", "mode", "http", "redis", "udp", "proxy_protocol"]
    static let poolKeys = ["name", "algorithm", "retries", "backends", "health_check", "passive", "min_healthy", "proxy_protocol", "redis"]
    static let healthKeys = ["kind", "interval", "timeout", "rise", "fall", "path", "expect_status", "query"]
    static let passiveKeys = ["failures", "ejection"]
    static let backendKeys = ["address", "weight"]
    static let resolveKeys = ["min_ttl", "max_ttl", "timeout", "nameservers"]

    // MARK: - Reporting

    mutating func fail(_ path: ConfigFieldPath, at node: Node?, _ message: String) {
        let mark = node?.mark
        errors.append(ConfigError(file: file, line: mark?.line, column: mark?.column, path: path.text, message: message))
    }

    mutating func missing(_ path: ConfigFieldPath, key: String, in mapping: ConfigMapping) {
        fail(path.key(key), at: mapping.node, "missing required key \"\(key)\"")
    }

    // MARK: - Document

    mutating func decodeDocument(_ root: Node) -> SluiceConfig? {
        let top = ConfigFieldPath.root
        guard let doc = mapping(root, top, keys: Self.topKeys, renamed: Self.renamedTopKeys,
                                expected: "a mapping with at least \"listeners\" and \"pools\"")
        else { return nil }

        let instance = doc["instance"].flatMap { instanceName($0.value, top.key("instance")) }
            ?? ConfigDefaults.instance
        let workers = doc["workers"].flatMap {
            integer($0.value, top.key("workers"), in: ConfigDefaults.workersRange)
        } ?? ConfigDefaults.workers(onlineCPUs: onlineCPUs)
        let steering = doc["steering"].flatMap { choice($0.value, top.key("steering"), SteeringMode.self) }
            ?? .specifiedDefault
        let dataPath = doc["data_path"].flatMap { choice($0.value, top.key("data_path"), DataPathMode.self) }
            ?? .specifiedDefault
        let sockmapAfterTurns = decodePromotion(doc["sockmap_after_turns"], top.key("sockmap_after_turns"),
                                                in: ConfigBounds.sockmapAfterTurns, autoDefault: nil, dataPath: dataPath)
        let sockmapAfterBytes = decodePromotion(doc["sockmap_after_bytes"], top.key("sockmap_after_bytes"),
                                                in: ConfigBounds.sockmapAfterBytes, autoDefault: ConfigDefaults.sockmapAfterBytes,
                                                dataPath: dataPath)
        let stallThreshold = doc["stall_threshold"].flatMap {
            duration($0.value, top.key("stall_threshold"), in: ConfigBounds.stallThreshold)
        }
            ?? ConfigDefaults.stallThreshold
        let drainTimeout = doc["drain_timeout"].flatMap {
            duration($0.value, top.key("drain_timeout"), in: ConfigBounds.drainTimeout)
        }
            ?? ConfigDefaults.drainTimeout
        let log = doc["log"].map { decodeLog($0.value, top.key("log")) } ?? LogConfig()
        let admin = decodeAdmin(doc["admin"], top.key("admin"), instance: instance)
        let rebalance = decodeRebalance(doc["rebalance"], top.key("rebalance"))
        let resolve = decodeResolve(doc["resolve"], top.key("resolve"))
        var user: String?
        if let entry = doc["user"] {
            let expected = "a user name such as sluice"
            if let text = scalarText(entry.value, top.key("user"), expected: expected) {
                if !text.isEmpty, text.count <= 32, text.allSatisfy({ $0.isLetter || $0.isNumber || "_-.".contains($0) }) {
                    user = text
                } else {
                    fail(top.key("user"), at: entry.value, "expected \(expected); found \(configQuoted(text))")
                }
            }
        }

        var pools: [PoolConfig] = []
        var poolNames: [String]? = nil
        if let entry = doc["pools"] {
            (pools, poolNames) = decodePools(entry.value, top.key("pools"))
        } else {
            missing(top, key: "pools", in: doc)
        }

        var listeners: [ListenerConfig] = []
        if let entry = doc["listeners"] {
            listeners = decodeListeners(entry.value, top.key("listeners"), poolNames: poolNames)
        } else {
            missing(top, key: "listeners", in: doc)
        }

        refuseBackendsThatAreListeners()
        guard errors.isEmpty else { return nil }

        let used = Set(listeners.map(\.pool) + listeners.flatMap { $0.http?.routes.map(\.pool) ?? [] })
        for pool in pools where !used.contains(pool.name) {
            notices.append("pools: pool \"\(pool.name)\" is not used by any listener")
        }

        var config = SluiceConfig(
            instance: instance, workers: workers, steering: steering, dataPath: dataPath,
            stallThreshold: stallThreshold, drainTimeout: drainTimeout, log: log, admin: admin,
            listeners: listeners, pools: pools
        )
        config.rebalance = rebalance
        config.resolve = resolve
        config.user = user
        config.sockmapAfterTurns = sockmapAfterTurns
        config.sockmapAfterBytes = sockmapAfterBytes
        return config
    }

    /// `sockmap_after_turns` (off by default) and `sockmap_after_bytes` (64
    /// MiB by default with `data_path: auto`): `off` or a number in `range`;
    /// only `data_path: auto` promotes, so with another path only `off` goes.
    mutating func decodePromotion(_ entry: ConfigMapping.Entry?, _ path: ConfigFieldPath, in range: ClosedRange<Int>,
                                  autoDefault: Int?, dataPath: DataPathMode) -> Int? {
        guard let entry else { return dataPath == .auto ? autoDefault : nil }
        if case .scalar(let scalar) = entry.value, scalar.string == "off" { return nil }
        guard let value = integer(entry.value, path, in: range) else { return nil }
        guard dataPath == .auto else {
            fail(path, at: entry.value, "only data_path: auto moves connections into the sockmap; "
                + "data_path is \(dataPath.rawValue) (use off, or data_path: auto)")
            return nil
        }
        return value
    }

    // MARK: - Features that may not be built yet

    /// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
    static func alternatives(_ values: [String]) -> String {
        let quoted = values.map { "\"\($0)\"" }
        guard let last = quoted.last else { return "" }
        if quoted.count == 1 { return last }
        return quoted.dropLast().joined(separator: ", ") + " or " + last
    }

    // MARK: - log, admin

    mutating func decodeLog(_ node: Node, _ path: ConfigFieldPath) -> LogConfig {
        var log = LogConfig()
        guard let map = mapping(node, path, keys: Self.logKeys) else { return log }
        if let entry = map["level"], let level = choice(entry.value, path.key("level"), LogLevelName.self) {
            log.level = level
        }
        if let entry = map["access"], let access = choice(entry.value, path.key("access"), AccessLogFormat.self) {
            log.access = access
        }
        if let entry = map["file"] {
            let expected = "stderr, stdout or an absolute file path"
            if let file = scalarText(entry.value, path.key("file"), expected: expected) {
                if file == "stderr" || file == "stdout" || Self.isAbsolutePath(file) {
                    log.file = file
                } else {
                    fail(path.key("file"), at: entry.value, "expected \(expected); found \(configQuoted(file))")
                }
            }
        }
        return log
    }

    /// `rebalance: off`, or `{ interval: 100ms, ratio: 1.1 }` (both optional).
    mutating func decodeRebalance(_ entry: ConfigMapping.Entry?, _ path: ConfigFieldPath) -> RebalanceConfig? {
        var rebalance = RebalanceConfig()
        guard let entry else { return rebalance }
        if case .scalar(let scalar) = entry.value, scalar.string == "off" { return nil }
        guard let map = mapping(entry.value, path, keys: Self.rebalanceKeys,
                                expected: "off, or a mapping like { interval: 100ms, ratio: 1.1 }")
        else { return rebalance }
        if let interval = map["interval"], let value = duration(interval.value, path.key("interval"), in: ConfigBounds.rebalanceInterval) {
            rebalance.interval = value
        }
        if let ratio = map["ratio"] {
            let expected = "a number above 1.0 and at most 100, such as 1.1"
            if let text = scalarText(ratio.value, path.key("ratio"), expected: expected) {
                if let value = Double(text), value > ConfigBounds.rebalanceRatioAbove, value.isFinite,
                   value <= ConfigBounds.rebalanceRatioMax {
                    rebalance.ratio = value
                } else {
                    fail(path.key("ratio"), at: ratio.value, "expected \(expected); found \(configQuoted(text))")
                }
            }
        }
        return rebalance
    }

    mutating func decodeAdmin(_ entry: ConfigMapping.Entry?, _ path: ConfigFieldPath, instance: String) -> AdminConfig? {
        let defaults = AdminConfig(socket: ConfigDefaults.adminSocket(instance: instance), metrics: ConfigDefaults.metrics)
        guard let entry else { return defaults }
        if case .scalar(let scalar) = entry.value, scalar.string == "off" { return nil }
        var admin = defaults
        if let map = mapping(entry.value, path, keys: Self.adminKeys) {
            if let socket = map["socket"] {
                let expected = "an absolute path for a unix socket (at most 107 bytes)"
                if let text = scalarText(socket.value, path.key("socket"), expected: expected) {
                    if Self.isAbsolutePath(text) && text.utf8.count <= 107 {
                        admin.socket = text
                    } else {
                        fail(path.key("socket"), at: socket.value, "expected \(expected); found \(configQuoted(text))")
                    }
                }
            }
            if let metrics = map["metrics"] {
                if case .scalar(let scalar) = metrics.value, Self.isNull(scalar) || scalar.string == "off" {
                    admin.metrics = nil
                } else {
                    admin.metrics = address(metrics.value, path.key("metrics"), allowPortZero: false, orOff: true)
                }
            }
            if let idle = map["idle_timeout"], let value = duration(idle.value, path.key("idle_timeout"), in: ConfigBounds.adminIdleTimeout) {
                admin.idleTimeout = value
            }
        }
        return admin
    }

    // MARK: - pools

    /// Returns the pools and the names they were given; the names are nil
    /// when some pool has no usable name, so that listeners' references are
    /// not checked against an incomplete list.
    mutating func decodePools(_ node: Node, _ path: ConfigFieldPath) -> ([PoolConfig], [String]?) {
        guard let items = sequence(node, path, expected: "a list of pools") else { return ([], nil) }
        if items.isEmpty {
            fail(path, at: node, "expected at least one pool; found an empty list")
        }
        var pools: [PoolConfig] = []
        var names: [String] = []
        var firstByName: [String: Int] = [:]
        var allNamed = true
        for (index, item) in items.enumerated() {
            let itemPath = path.index(index)
            guard let map = mapping(item, itemPath, keys: Self.poolKeys,
                                    expected: "a pool mapping like { name: web, backends: [...] }")
            else {
                allNamed = false
                continue
            }
            var pool = PoolConfig(name: "", backends: [])

            if let entry = map["name"] {
                if let written = scalarText(entry.value, itemPath.key("name"), expected: "a pool name") {
                    names.append(written)
                    if validateName(written, entry.value, itemPath.key("name")) {
                        pool.name = written
                        if let first = firstByName[written] {
                            fail(itemPath.key("name"), at: entry.value,
                                 "duplicate pool name \(configQuoted(written)) (already used by pools[\(first)])")
                        } else {
                            firstByName[written] = index
                        }
                    }
                } else {
                    allNamed = false
                }
            } else {
                allNamed = false
                missing(itemPath, key: "name", in: map)
            }
            if let entry = map["algorithm"],
               let algorithm = choice(entry.value, itemPath.key("algorithm"), BalancingAlgorithm.self) {
                pool.algorithm = algorithm
            }
            if let entry = map["retries"],
               let retries = integer(entry.value, itemPath.key("retries"), in: ConfigDefaults.retriesRange) {
                pool.retries = retries
            }
            if let entry = map["backends"] {
                (pool.backends, pool.named) = decodeBackends(entry.value, itemPath.key("backends"))
            } else {
                missing(itemPath, key: "backends", in: map)
            }
            if let entry = map["health_check"] {
                pool.healthCheck = decodeHealthCheck(entry.value, itemPath.key("health_check"))
            }
            if let entry = map["passive"] {
                pool.passive = decodePassive(entry.value, itemPath.key("passive"))
            }
            if let entry = map["min_healthy"],
               let value = integer(entry.value, itemPath.key("min_healthy"), in: ConfigBounds.minHealthy) {
                pool.minHealthy = value
            }
            if let entry = map["proxy_protocol"], let value = choice(entry.value, itemPath.key("proxy_protocol"), ProxySend.self) {
                pool.proxyProtocol = value
            }
            if let entry = map["redis"], let hash = decodePoolRedis(entry.value, itemPath.key("redis")) { pool.redisHash = hash }
            pools.append(pool)
        }
        return (pools, allNamed ? names : nil)
    }

    mutating func decodeHealthCheck(_ node: Node, _ path: ConfigFieldPath) -> HealthCheckConfig {
        var check = HealthCheckConfig()
        guard let map = mapping(node, path, keys: Self.healthKeys,
                                expected: "a mapping like { kind: http, interval: 2s, timeout: 1s, rise: 2, fall: 3, path: /health }")
        else { return check }
        if let entry = map["kind"], let kind = choice(entry.value, path.key("kind"), HealthCheckKind.self) { check.kind = kind }
        if let entry = map["interval"], let value = duration(entry.value, path.key("interval"), in: ConfigBounds.healthInterval) {
            check.interval = value
        }
        if let entry = map["timeout"], let value = duration(entry.value, path.key("timeout"), in: ConfigBounds.healthTimeout) {
            check.timeout = value
        }
        if let entry = map["rise"], let value = integer(entry.value, path.key("rise"), in: ConfigBounds.rise) { check.rise = value }
        if let entry = map["fall"], let value = integer(entry.value, path.key("fall"), in: ConfigBounds.fall) { check.fall = value }
        if let entry = map["expect_status"], let value = integer(entry.value, path.key("expect_status"), in: ConfigBounds.expectStatus) {
            check.expectStatus = value
        }
        if let entry = map["path"] {
            let expected = "a request path starting with /, without spaces"
            if let text = scalarText(entry.value, path.key("path"), expected: expected) {
                if text.hasPrefix("/") && !text.contains(where: { $0 == " " || $0 == "\r" || $0 == "\n" }) {
                    check.path = text
                } else {
                    fail(path.key("path"), at: entry.value, "expected \(expected); found \(configQuoted(text))")
                }
            }
        }
        if check.kind != .http, map["path"] != nil || map["expect_status"] != nil {
            fail(path.key("kind"), at: map["kind"]?.value ?? node, "path and expect_status need kind: http")
        }
        if let entry = map["query"] {
            if check.kind != .dns {
                fail(path.key("query"), at: entry.value, "query needs kind: dns")
            } else if let text = scalarText(entry.value, path.key("query"), expected: "a DNS name") {
                if DNSProbe.query(name: text, id: 0) == nil {
                    fail(path.key("query"), at: entry.value, "expected a DNS name (labels of 1 to 63 bytes, 255 in all); found \(configQuoted(text))")
                } else {
                    check.query = text
                }
            }
        }
        if check.timeout > check.interval {
            fail(path.key("timeout"), at: map["timeout"]?.value ?? node, "expected a timeout no longer than the interval (\(formatDuration(check.interval)))")
        }
        return check
    }

    mutating func decodePassive(_ node: Node, _ path: ConfigFieldPath) -> PassiveConfig {
        var passive = PassiveConfig()
        guard let map = mapping(node, path, keys: Self.passiveKeys, expected: "a mapping like { failures: 3, ejection: 10s }")
        else { return passive }
        if let entry = map["failures"], let value = integer(entry.value, path.key("failures"), in: ConfigBounds.passiveFailures) { passive.failures = value }
        if let entry = map["ejection"], let value = duration(entry.value, path.key("ejection"), in: ConfigBounds.ejection) {
            passive.ejection = value
        }
        return passive
    }

    // MARK: - listeners

    /// A listener's `pool` must name one of `poolNames`.
    mutating func checkPoolReference(_ pool: String, _ node: Node, _ path: ConfigFieldPath, poolNames: [String]) {
        guard !poolNames.contains(pool) else { return }
        var message = "no pool named \(configQuoted(pool))"
        if poolNames.isEmpty {
            message += " (no pools are defined)"
        } else {
            message += " (expected one of \(poolNames.joined(separator: ", ")))"
            message += configDidYouMean(pool, poolNames)
        }
        fail(path, at: node, message)
    }

    mutating func decodeListeners(_ node: Node, _ path: ConfigFieldPath, poolNames: [String]?) -> [ListenerConfig] {
        guard let items = sequence(node, path, expected: "a list of listeners") else { return [] }
        if items.isEmpty {
            fail(path, at: node, "expected at least one listener; found an empty list")
        }
        if items.count > ConfigDefaults.maxListeners {
            fail(path, at: node, "expected at most \(ConfigDefaults.maxListeners) listeners; found \(items.count)")
        }
        var listeners: [ListenerConfig] = []
        var firstByName: [String: Int] = [:]
        var firstByBind: [SocketAddressSpec: Int] = [:]
        for (index, item) in items.enumerated() {
            let itemPath = path.index(index)
            guard let map = mapping(item, itemPath, keys: Self.listenerKeys,
                                    expected: "a listener mapping like { name: web, bind: \"0.0.0.0:8080\", pool: web }")
            else { continue }
            var listener = ListenerConfig(
                name: "", bind: SocketAddressSpec(host: "0.0.0.0", port: 0, family: .inet), pool: ""
            )

            if let entry = map["name"] {
                if let name = scalarText(entry.value, itemPath.key("name"), expected: "a listener name"),
                   validateName(name, entry.value, itemPath.key("name")) {
                    listener.name = name
                    if let first = firstByName[name] {
                        fail(itemPath.key("name"), at: entry.value,
                             "duplicate listener name \(configQuoted(name)) (already used by listeners[\(first)])")
                    } else {
                        firstByName[name] = index
                    }
                }
            } else {
                missing(itemPath, key: "name", in: map)
            }

            if let entry = map["bind"] {
                if let bind = address(entry.value, itemPath.key("bind"), allowPortZero: true) {
                    listener.bind = bind
                    listenerBinds.append((index, bind))
                    // Port 0 asks the kernel for a fresh port each time: no clash.
                    if bind.port != 0 {
                        if let first = firstByBind[bind] {
                            fail(itemPath.key("bind"), at: entry.value,
                                 "bind address \(bind) is already used by listeners[\(first)]")
                        } else {
                            firstByBind[bind] = index
                        }
                    }
                }
            } else {
                missing(itemPath, key: "bind", in: map)
            }

            if let entry = map["pool"] {
                if let pool = scalarText(entry.value, itemPath.key("pool"), expected: "the name of a pool") {
                    listener.pool = pool
                    if let poolNames { checkPoolReference(pool, entry.value, itemPath.key("pool"), poolNames: poolNames) }
                }
            }

            if let entry = map["max_connections"],
               let value = integer(entry.value, itemPath.key("max_connections"), in: ConfigDefaults.maxConnectionsRange) {
                listener.maxConnections = value
            }
            if let entry = map["connect_timeout"], let value = duration(entry.value, itemPath.key("connect_timeout"), in: ConfigBounds.connectTimeout) {
                listener.connectTimeout = value
            }
            if let entry = map["idle_timeout"], let value = duration(entry.value, itemPath.key("idle_timeout"), in: ConfigBounds.idleTimeout) {
                listener.idleTimeout = value
            }
            decodeMode(map, itemPath, into: &listener, poolNames: poolNames)
            if map["pool"] == nil {
                // A mode http listener may do without: requests no route matches get 404.
                if listener.mode == .http, let first = listener.http?.routes.first {
                    listener.pool = first.pool
                    listener.http?.fallback = false
                } else if listener.mode == .http {
                    fail(itemPath, at: map.node, "a mode http listener needs a pool, or routes (then what none matches gets 404)")
                } else {
                    missing(itemPath, key: "pool", in: map)
                }
            }
            if let entry = map["proxy_protocol"] {
                listener.proxyProtocol = decodeProxyAccept(entry.value, itemPath.key("proxy_protocol"))
                if listener.mode == .udp && listener.proxyProtocol.accept != .off {
                    fail(itemPath.key("proxy_protocol"), at: entry.value, "a mode udp listener takes no PROXY header (it is a TCP protocol)")
                }
            }
            listeners.append(listener)
        }
        return listeners
    }
}
