import Yams

// A pool's `backends:` list, whose addresses are IP literals or hostnames,
// and the top-level `resolve:` block that says how the hostnames are looked up.

extension ConfigDecoder {
    /// What a backend's `address` names.
    enum BackendAddress {
        case ip(SocketAddressSpec)
        case name(NamedBackend)
    }

    static let backendAddressExample = "an address like 127.0.0.1:8080, [::1]:8080 or app.example.com:8080"

    /// The IP backends and the hostname backends of a pool, each in the order written.
    mutating func decodeBackends(_ node: Node, _ path: ConfigFieldPath) -> ([BackendConfig], [NamedBackend]) {
        guard let items = sequence(node, path, expected: "a list of backends") else { return ([], []) }
        if items.isEmpty {
            fail(path, at: node, "expected at least one backend; found an empty list")
        }
        var backends: [BackendConfig] = []
        var named: [NamedBackend] = []
        var firstByAddress: [String: Int] = [:]
        for (index, item) in items.enumerated() {
            let itemPath = path.index(index)
            guard let map = mapping(item, itemPath, keys: Self.backendKeys,
                                    expected: "a backend mapping like { address: \"127.0.0.1:9001\" }")
            else { continue }
            var weight = ConfigDefaults.weight
            if let entry = map["weight"],
               let value = integer(entry.value, itemPath.key("weight"), in: ConfigDefaults.weightRange) {
                weight = value
            }
            guard let entry = map["address"] else {
                missing(itemPath, key: "address", in: map)
                continue
            }
            let addressPath = itemPath.key("address")
            guard let address = backendAddress(entry.value, addressPath) else { continue }
            let key: String
            switch address {
            case .ip(let ip):
                key = ip.canonical.description
                backends.append(BackendConfig(address: ip, weight: weight))
                backendSites.append(BackendSite(address: ip, node: entry.value, path: addressPath))
            case .name(var name):
                key = name.description
                name.weight = weight
                named.append(name)
            }
            if let first = firstByAddress[key] {
                fail(addressPath, at: entry.value, "duplicate backend address \(key) (already used by \(path.index(first)))")
            } else {
                firstByAddress[key] = index
            }
        }
        return (backends, named)
    }

    /// An IP literal and port, or else a hostname and port.
    mutating func backendAddress(_ node: Node, _ path: ConfigFieldPath) -> BackendAddress? {
        if case .sequence = node {
            fail(path, at: node,
                 "expected \(Self.backendAddressExample); found a list (IPv6 addresses need quotes: \"[::1]:8080\")")
            return nil
        }
        guard let text = scalarText(node, path, expected: Self.backendAddressExample) else { return nil }
        switch SocketAddressSpec.parse(text) {
        case .success(let address):
            return .ip(address)
        case .failure(.hostname):
            switch NamedBackend.parse(text) {
            case .success(let name): return .name(name)
            case .failure(let error): fail(path, at: node, error.description)
            }
        case .failure(let error):
            fail(path, at: node, error.description)
        }
        return nil
    }

    /// `resolve: { min_ttl: 1s, max_ttl: 300s, timeout: 2s, nameservers: [...] }`, every key optional.
    mutating func decodeResolve(_ entry: ConfigMapping.Entry?, _ path: ConfigFieldPath) -> ResolveConfig {
        var resolve = ResolveConfig()
        guard let entry, let map = mapping(entry.value, path, keys: Self.resolveKeys,
                                           expected: "a mapping like { min_ttl: 1s, max_ttl: 300s, timeout: 2s, nameservers: [\"10.0.0.10\"] }")
        else { return resolve }
        if let value = map["min_ttl"].flatMap({ duration($0.value, path.key("min_ttl"), in: ConfigBounds.resolveTTL) }) {
            resolve.minTTL = value
        }
        if let value = map["max_ttl"].flatMap({ duration($0.value, path.key("max_ttl"), in: ConfigBounds.resolveTTL) }) {
            resolve.maxTTL = value
        }
        if let value = map["timeout"].flatMap({ duration($0.value, path.key("timeout"), in: ConfigBounds.resolveTimeout) }) {
            resolve.timeout = value
        }
        if resolve.minTTL > resolve.maxTTL {
            let (key, other) = map["min_ttl"] != nil ? ("min_ttl", "max_ttl") : ("max_ttl", "min_ttl")
            fail(path.key(key), at: map[key]?.value ?? map.node,
                 "expected min_ttl (\(formatDuration(resolve.minTTL))) no longer than max_ttl (\(formatDuration(resolve.maxTTL)))"
                    + (map[other] == nil ? " (\(other) is its default)" : ""))
        }
        if let nameservers = map["nameservers"] {
            resolve.nameservers = decodeNameservers(nameservers.value, path.key("nameservers"))
        }
        return resolve
    }

    mutating func decodeNameservers(_ node: Node, _ path: ConfigFieldPath) -> [SocketAddressSpec] {
        let expected = "a list of IP addresses with an optional port, like [\"10.0.0.10\", \"127.0.0.1:5353\", \"[::1]:53\"]"
        guard let items = sequence(node, path, expected: expected) else { return [] }
        let bounds = ConfigBounds.nameservers
        if !bounds.contains(items.count) {
            fail(path, at: node, "expected at most \(bounds.upperBound) nameservers; found \(items.count)")
        }
        var servers: [SocketAddressSpec] = []
        var firstIndex: [SocketAddressSpec: Int] = [:]
        for (index, item) in items.enumerated() {
            let itemPath = path.index(index)
            guard let text = scalarText(item, itemPath, expected: "an IP address with an optional port, like \"127.0.0.1:5353\"")
            else { continue }
            switch SocketAddressSpec.parseNameserver(text) {
            case .success(let server):
                if let first = firstIndex[server] {
                    fail(itemPath, at: item, "duplicate nameserver \(server) (already \(path.index(first)))")
                } else {
                    firstIndex[server] = index
                    servers.append(server)
                }
            case .failure(let error):
                fail(itemPath, at: item, error.description)
            }
        }
        return servers
    }
}
