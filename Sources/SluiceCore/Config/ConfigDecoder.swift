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
    let features: FeatureAvailability
    let onlineCPUs: Int
    private(set) var errors: [ConfigError] = []
    private(set) var notices: [String] = []

    init(file: String, features: FeatureAvailability, onlineCPUs: Int) {
        self.file = file
        self.features = features
        self.onlineCPUs = onlineCPUs
    }

    static let topKeys = [
        "instance", "workers", "steering", "splice", "stall_threshold", "drain_timeout",
        "log", "admin", "rebalance", "user", "listeners", "pools",
    ]
    static let rebalanceKeys = ["interval", "ratio"]
    static let logKeys = ["level", "access", "file"]
    static let adminKeys = ["socket", "metrics", "idle_timeout"]
    static let listenerKeys = ["name", "bind", "pool", "max_connections", "connect_timeout", "idle_timeout"]
    static let poolKeys = ["name", "algorithm", "retries", "backends", "health_check", "passive", "min_healthy"]
    static let healthKeys = ["kind", "interval", "timeout", "rise", "fall", "path", "expect_status"]
    static let passiveKeys = ["failures", "ejection"]
    static let backendKeys = ["address", "weight"]

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
        guard let doc = mapping(root, top, keys: Self.topKeys,
                                expected: "a mapping with at least \"listeners\" and \"pools\"")
        else { return nil }

        let instance = doc["instance"].flatMap { instanceName($0.value, top.key("instance")) }
            ?? ConfigDefaults.instance
        let workers = doc["workers"].flatMap {
            integer($0.value, top.key("workers"), in: ConfigDefaults.workersRange)
        } ?? ConfigDefaults.workers(onlineCPUs: onlineCPUs)
        let steering = feature(
            doc["steering"], top.key("steering"),
            specified: SteeringMode.specifiedDefault, effective: features.defaultSteering,
            isAvailable: features.isAvailable
        )
        let splice = feature(
            doc["splice"], top.key("splice"),
            specified: SpliceMode.specifiedDefault, effective: features.defaultSplice,
            isAvailable: features.isAvailable
        )
        let stallThreshold = doc["stall_threshold"].flatMap { duration($0.value, top.key("stall_threshold")) }
            ?? ConfigDefaults.stallThreshold
        let drainTimeout = doc["drain_timeout"].flatMap { duration($0.value, top.key("drain_timeout")) }
            ?? ConfigDefaults.drainTimeout
        let log = doc["log"].map { decodeLog($0.value, top.key("log")) } ?? LogConfig()
        let admin = decodeAdmin(doc["admin"], top.key("admin"), instance: instance)
        let rebalance = decodeRebalance(doc["rebalance"], top.key("rebalance"))
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

        guard errors.isEmpty else { return nil }

        let used = Set(listeners.map(\.pool))
        for pool in pools where !used.contains(pool.name) {
            notices.append("pools: pool \"\(pool.name)\" is not used by any listener")
        }

        var config = SluiceConfig(
            instance: instance, workers: workers, steering: steering, splice: splice,
            stallThreshold: stallThreshold, drainTimeout: drainTimeout, log: log, admin: admin,
            listeners: listeners, pools: pools
        )
        config.rebalance = rebalance
        config.user = user
        return config
    }

    // MARK: - Features that may not be built yet

    mutating func feature<E: RawRepresentable & CaseIterable & Equatable>(
        _ entry: ConfigMapping.Entry?, _ path: ConfigFieldPath,
        specified: E, effective: E, isAvailable: (E) -> Bool
    ) -> E where E.RawValue == String {
        guard let entry else {
            if effective != specified {
                notices.append(
                    "\(path): default \"\(specified.rawValue)\" is not available yet; using \"\(effective.rawValue)\""
                )
            }
            return effective
        }
        guard let value = choice(entry.value, path, E.self) else { return effective }
        if !isAvailable(value) {
            let usable = E.allCases.filter(isAvailable).map(\.rawValue)
            fail(path, at: entry.value,
                 "\"\(value.rawValue)\" is not available yet in this version; use \(Self.alternatives(usable))")
        }
        return value
    }

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
        if let interval = map["interval"], let value = duration(interval.value, path.key("interval")) {
            rebalance.interval = value
        }
        if let ratio = map["ratio"] {
            let expected = "a number above 1.0, such as 1.1"
            if let text = scalarText(ratio.value, path.key("ratio"), expected: expected) {
                if let value = Double(text), value > 1.0, value.isFinite {
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
        guard let entry else {
            if features.adminEndpoints { return defaults }
            notices.append("\(path): the admin socket and metrics endpoint are not available yet; running without them")
            return nil
        }
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
            if let idle = map["idle_timeout"], let value = duration(idle.value, path.key("idle_timeout")) {
                admin.idleTimeout = value
            }
        }
        if !features.adminEndpoints {
            fail(path, at: entry.key, "the admin socket and metrics endpoint are not available yet; remove the admin block")
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
                pool.backends = decodeBackends(entry.value, itemPath.key("backends"))
            } else {
                missing(itemPath, key: "backends", in: map)
            }
            if let entry = map["health_check"] {
                if features.healthChecks {
                    pool.healthCheck = decodeHealthCheck(entry.value, itemPath.key("health_check"))
                } else {
                    fail(itemPath.key("health_check"), at: entry.key,
                         "health checks are not available yet; remove the health_check key")
                }
            }
            if let entry = map["passive"] {
                pool.passive = decodePassive(entry.value, itemPath.key("passive"))
            }
            if let entry = map["min_healthy"],
               let value = integer(entry.value, itemPath.key("min_healthy"), in: 0...1000) {
                pool.minHealthy = value
            }
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
        if let entry = map["interval"], let value = duration(entry.value, path.key("interval")) { check.interval = value }
        if let entry = map["timeout"], let value = duration(entry.value, path.key("timeout")) { check.timeout = value }
        if let entry = map["rise"], let value = integer(entry.value, path.key("rise"), in: 1...100) { check.rise = value }
        if let entry = map["fall"], let value = integer(entry.value, path.key("fall"), in: 1...100) { check.fall = value }
        if let entry = map["expect_status"], let value = integer(entry.value, path.key("expect_status"), in: 100...599) {
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
        if check.kind == .tcp, map["path"] != nil || map["expect_status"] != nil {
            fail(path.key("kind"), at: map["kind"]?.value ?? node, "path and expect_status need kind: http")
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
        if let entry = map["failures"], let value = integer(entry.value, path.key("failures"), in: 1...1000) { passive.failures = value }
        if let entry = map["ejection"], let value = duration(entry.value, path.key("ejection")) { passive.ejection = value }
        return passive
    }

    mutating func decodeBackends(_ node: Node, _ path: ConfigFieldPath) -> [BackendConfig] {
        guard let items = sequence(node, path, expected: "a list of backends") else { return [] }
        if items.isEmpty {
            fail(path, at: node, "expected at least one backend; found an empty list")
        }
        var backends: [BackendConfig] = []
        var firstByAddress: [SocketAddressSpec: Int] = [:]
        for (index, item) in items.enumerated() {
            let itemPath = path.index(index)
            guard let map = mapping(item, itemPath, keys: Self.backendKeys,
                                    expected: "a backend mapping like { address: \"127.0.0.1:9001\" }")
            else { continue }
            var backend = BackendConfig(address: SocketAddressSpec(host: "0.0.0.0", port: 0, family: .inet))
            if let entry = map["address"] {
                if let address = address(entry.value, itemPath.key("address"), allowPortZero: false) {
                    backend.address = address
                    if let first = firstByAddress[address] {
                        fail(itemPath.key("address"), at: entry.value,
                             "duplicate backend address \(address) (already used by \(path.index(first)))")
                    } else {
                        firstByAddress[address] = index
                    }
                }
            } else {
                missing(itemPath, key: "address", in: map)
            }
            if let entry = map["weight"],
               let weight = integer(entry.value, itemPath.key("weight"), in: ConfigDefaults.weightRange) {
                backend.weight = weight
            }
            backends.append(backend)
        }
        return backends
    }

    // MARK: - listeners

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
                    if let poolNames, !poolNames.contains(pool) {
                        var message = "no pool named \(configQuoted(pool))"
                        if poolNames.isEmpty {
                            message += " (no pools are defined)"
                        } else {
                            message += " (expected one of \(poolNames.joined(separator: ", ")))"
                            message += configDidYouMean(pool, poolNames)
                        }
                        fail(itemPath.key("pool"), at: entry.value, message)
                    }
                }
            } else {
                missing(itemPath, key: "pool", in: map)
            }

            if let entry = map["max_connections"],
               let value = integer(entry.value, itemPath.key("max_connections"), in: ConfigDefaults.maxConnectionsRange) {
                listener.maxConnections = value
            }
            if let entry = map["connect_timeout"], let value = duration(entry.value, itemPath.key("connect_timeout")) {
                listener.connectTimeout = value
            }
            if let entry = map["idle_timeout"], let value = duration(entry.value, itemPath.key("idle_timeout")) {
                listener.idleTimeout = value
            }
            listeners.append(listener)
        }
        return listeners
    }

    // MARK: - Node shapes

    static func isNull(_ scalar: Node.Scalar) -> Bool {
        scalar.style == .plain && ["", "~", "null", "Null", "NULL"].contains(scalar.string)
    }

    /// "a mapping", "a list", `"text"` or "null", for "found ..." messages.
    static func describe(_ node: Node) -> String {
        switch node {
        case .scalar(let scalar): isNull(scalar) ? "null" : configQuoted(scalar.string)
        case .mapping: "a mapping"
        case .sequence: "a list"
        case .alias: "an alias"
        }
    }

    static func isAbsolutePath(_ text: String) -> Bool {
        text.hasPrefix("/") && !text.utf8.contains(0)
    }

    /// A mapping's recognised entries; reports unknown keys and a wrong node type.
    mutating func mapping(_ node: Node, _ path: ConfigFieldPath, keys: [String],
                          expected: String = "a mapping") -> ConfigMapping? {
        guard case .mapping(let map) = node else {
            fail(path, at: node, "expected \(expected); found \(Self.describe(node))")
            return nil
        }
        var result = ConfigMapping(node: node, path: path)
        var reportedUnknown = Set<String>()
        for (key, value) in flattenMerges(map, path) {
            guard case .scalar(let scalar) = key, !Self.isNull(scalar) else {
                fail(path, at: key, "expected a key name; found \(Self.describe(key))")
                continue
            }
            let name = scalar.string
            if result.entries[name] != nil || reportedUnknown.contains(name) { continue }
            guard keys.contains(name) else {
                reportedUnknown.insert(name)
                fail(path.key(name), at: key,
                     "unknown key \(configQuoted(name)) (expected one of \(keys.joined(separator: ", ")))"
                        + configDidYouMean(name, keys))
                continue
            }
            result.entries[name] = ConfigMapping.Entry(key: key, value: value)
        }
        return result
    }

    /// The pairs of `map` with YAML merge keys (`<<: *anchor`) expanded;
    /// explicit keys come first so they win over merged ones.
    mutating func flattenMerges(_ map: Node.Mapping, _ path: ConfigFieldPath) -> [(key: Node, value: Node)] {
        var explicit: [(key: Node, value: Node)] = []
        var merged: [(key: Node, value: Node)] = []
        for (key, value) in map {
            guard case .scalar(let scalar) = key, scalar.style == .plain, scalar.string == "<<" else {
                explicit.append((key, value))
                continue
            }
            let sources: [Node]
            if case .sequence(let list) = value { sources = Array(list) } else { sources = [value] }
            for source in sources {
                if case .mapping(let inner) = source {
                    merged += flattenMerges(inner, path)
                } else {
                    fail(path.key("<<"), at: source,
                         "expected a mapping or a list of mappings to merge; found \(Self.describe(source))")
                }
            }
        }
        return explicit + merged
    }

    mutating func sequence(_ node: Node, _ path: ConfigFieldPath, expected: String) -> [Node]? {
        guard case .sequence(let list) = node else {
            fail(path, at: node, "expected \(expected); found \(Self.describe(node))")
            return nil
        }
        return Array(list)
    }

    /// The text of a non-null scalar.
    mutating func scalarText(_ node: Node, _ path: ConfigFieldPath, expected: String) -> String? {
        guard case .scalar(let scalar) = node, !Self.isNull(scalar) else {
            fail(path, at: node, "expected \(expected); found \(Self.describe(node))")
            return nil
        }
        return scalar.string
    }

    // MARK: - Values

    mutating func choice<E: RawRepresentable & CaseIterable>(
        _ node: Node, _ path: ConfigFieldPath, _ type: E.Type
    ) -> E? where E.RawValue == String {
        let names = E.allCases.map(\.rawValue)
        let expected = "one of " + names.joined(separator: ", ")
        guard let text = scalarText(node, path, expected: expected) else { return nil }
        guard let value = E(rawValue: text) else {
            fail(path, at: node, "expected \(expected); found \(configQuoted(text))" + configDidYouMean(text, names))
            return nil
        }
        return value
    }

    mutating func integer(_ node: Node, _ path: ConfigFieldPath, in range: ClosedRange<Int>) -> Int? {
        let expected = "an integer in \(range.lowerBound)...\(range.upperBound)"
        guard let text = scalarText(node, path, expected: expected) else { return nil }
        guard let value = Self.parseInteger(text) else {
            fail(path, at: node, "expected \(expected); found \(configQuoted(text))")
            return nil
        }
        guard range.contains(value) else {
            fail(path, at: node, "expected \(expected); found \(text)")
            return nil
        }
        return value
    }

    /// Decimal integer with an optional sign and `_` digit separators.
    static func parseInteger(_ text: String) -> Int? {
        var body = Substring(text)
        var negative = false
        if let first = body.first, first == "-" || first == "+" {
            negative = first == "-"
            body = body.dropFirst()
        }
        guard let first = body.first, first.isASCII, first.isNumber,
              body.allSatisfy({ $0 == "_" || ($0.isASCII && $0.isNumber) })
        else { return nil }
        guard let magnitude = Int(body.filter { $0 != "_" }) else { return nil }
        return negative ? -magnitude : magnitude
    }

    static let durationExample = "a duration like 300ms, 2s, 5m"

    /// A duration greater than zero.
    mutating func duration(_ node: Node, _ path: ConfigFieldPath) -> Duration? {
        guard let text = scalarText(node, path, expected: Self.durationExample) else { return nil }
        if let value = parseDuration(text) {
            guard value > .zero else {
                fail(path, at: node, "expected a duration greater than zero; found \(configQuoted(text))")
                return nil
            }
            return value
        }
        let message: String
        if text.hasPrefix("-") {
            message = "expected a positive duration like 300ms, 2s, 5m; found \(configQuoted(text))"
        } else if !text.isEmpty, text.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }) {
            message = "expected \(Self.durationExample); found \(text) without a unit (e.g. \"\(text)s\")"
        } else {
            message = "expected \(Self.durationExample) (units: ns, us, ms, s, m, h); found \(configQuoted(text))"
        }
        fail(path, at: node, message)
        return nil
    }

    mutating func address(_ node: Node, _ path: ConfigFieldPath, allowPortZero: Bool,
                          orOff: Bool = false) -> SocketAddressSpec? {
        let expected = AddressParseError.example + (orOff ? " (or off)" : "")
        if case .sequence = node {
            fail(path, at: node,
                 "expected \(expected); found a list (IPv6 addresses need quotes: \"[::1]:8080\")")
            return nil
        }
        guard let text = scalarText(node, path, expected: expected) else { return nil }
        switch SocketAddressSpec.parse(text, allowPortZero: allowPortZero) {
        case .success(let address):
            return address
        case .failure(let error):
            fail(path, at: node, error.description)
            return nil
        }
    }

    mutating func instanceName(_ node: Node, _ path: ConfigFieldPath) -> String? {
        let rule = "1 to 64 characters from A-Z, a-z, 0-9, \"_\" and \"-\""
        guard let text = scalarText(node, path, expected: "an instance name of \(rule)") else { return nil }
        let valid = (1...64).contains(text.count)
            && text.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }
        guard valid else {
            fail(path, at: node, "expected an instance name of \(rule); found \(configQuoted(text))")
            return nil
        }
        return text
    }

    /// Listener and pool names: [A-Za-z0-9_.-]+.
    mutating func validateName(_ text: String, _ node: Node, _ path: ConfigFieldPath) -> Bool {
        let valid = !text.isEmpty
            && text.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "." || $0 == "-") }
        if !valid {
            fail(path, at: node,
                 "expected a name made of A-Z, a-z, 0-9, \"_\", \".\" and \"-\"; found \(configQuoted(text))")
        }
        return valid
    }
}

// MARK: - Did you mean

/// `; did you mean "x"?` when one candidate is a close spelling of `text`, else "".
func configDidYouMean(_ text: String, _ candidates: [String]) -> String {
    let typed = Array(text.lowercased())
    var best: (candidate: String, distance: Int)? = nil
    for candidate in candidates {
        let distance = configEditDistance(typed, Array(candidate.lowercased()))
        let limit = candidate.count >= 5 ? 2 : (candidate.count >= 3 ? 1 : 0)
        if distance <= limit, distance < (best?.distance ?? Int.max) {
            best = (candidate, distance)
        }
    }
    guard let best, best.candidate != text else { return "" }
    return "; did you mean \"\(best.candidate)\"?"
}

/// Optimal-string-alignment distance (Levenshtein plus adjacent transpositions).
func configEditDistance(_ a: [Character], _ b: [Character]) -> Int {
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var previous2 = [Int](repeating: 0, count: b.count + 1)
    var previous = Array(0...b.count)
    var current = [Int](repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        current[0] = i
        for j in 1...b.count {
            let cost = a[i - 1] == b[j - 1] ? 0 : 1
            var value = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1, j > 1, a[i - 1] == b[j - 2], a[i - 2] == b[j - 1] {
                value = min(value, previous2[j - 2] + 1)
            }
            current[j] = value
        }
        (previous2, previous, current) = (previous, current, previous2)
    }
    return previous[b.count]
}
