import Yams

// `mode`, `http:` and `proxy_protocol:` of a listener.
extension ConfigDecoder {
    static let httpKeys = ["routes", "head_timeout", "response_timeout", "max_head", "forwarded",
                           "keep_alive_per_backend", "keep_alive_timeout", "websocket", "tunnel_idle_timeout"]
    static let routeKeys = ["host", "path_prefix", "pool"]

    mutating func decodeMode(_ map: ConfigMapping, _ path: ConfigFieldPath, into listener: inout ListenerConfig, poolNames: [String]?) {
        if let entry = map["mode"], let mode = choice(entry.value, path.key("mode"), ListenerMode.self) {
            listener.mode = mode
        }
        let entry = map["http"]
        if let redis = map["redis"] {
            if listener.mode == .redis { listener.redis = decodeRedis(redis.value, path.key("redis")) } else {
                fail(path.key("redis"), at: redis.value, "redis settings need mode: redis")
            }
        } else if listener.mode == .redis {
            listener.redis = RedisListenerConfig()
        }
        if let udp = map["udp"] {
            if listener.mode == .udp { listener.udp = decodeUDP(udp.value, path.key("udp")) } else {
                fail(path.key("udp"), at: udp.value, "udp settings need mode: udp")
            }
        } else if listener.mode == .udp {
            listener.udp = UDPListenerConfig()
        }
        guard listener.mode == .http else {
            if let entry { fail(path.key("http"), at: entry.value, "http settings need mode: http") }
            return
        }
        listener.http = entry.map { decodeHTTP($0.value, path.key("http"), poolNames: poolNames) } ?? HTTPListenerConfig()
    }

    private mutating func decodeHTTP(_ node: Node, _ path: ConfigFieldPath, poolNames: [String]?) -> HTTPListenerConfig {
        var http = HTTPListenerConfig()
        guard let map = mapping(node, path, keys: Self.httpKeys,
                                expected: "a mapping like { routes: [ { host: api.example.com, pool: api } ], head_timeout: 10s }")
        else { return http }
        if let entry = map["head_timeout"], let value = duration(entry.value, path.key("head_timeout"), in: ConfigBounds.httpHeadTimeout) {
            http.headTimeout = value
        }
        if let entry = map["response_timeout"],
           let value = duration(entry.value, path.key("response_timeout"), in: ConfigBounds.httpResponseTimeout) {
            http.responseTimeout = value
        }
        if let entry = map["max_head"], let value = integer(entry.value, path.key("max_head"), in: ConfigBounds.httpMaxHead) {
            http.maxHead = value
        }
        if let entry = map["forwarded"], let value = choice(entry.value, path.key("forwarded"), HTTPForwardedFields.self) {
            http.forwarded = value
        }
        if let entry = map["keep_alive_per_backend"],
           let value = integer(entry.value, path.key("keep_alive_per_backend"), in: ConfigBounds.httpKeepAlivePerBackend) {
            http.keepAlivePerBackend = value
        }
        if let entry = map["keep_alive_timeout"],
           let value = duration(entry.value, path.key("keep_alive_timeout"), in: ConfigBounds.httpKeepAliveTimeout) {
            http.keepAliveTimeout = value
        }
        if let entry = map["websocket"], let value = boolean(entry.value, path.key("websocket")) {
            http.websocket = value
        }
        if let entry = map["tunnel_idle_timeout"],
           let value = duration(entry.value, path.key("tunnel_idle_timeout"), in: ConfigBounds.httpTunnelIdleTimeout) {
            http.tunnelIdleTimeout = value
        }
        if let entry = map["routes"], let items = sequence(entry.value, path.key("routes"), expected: "a list of routes") {
            if items.count > ConfigBounds.httpRoutes.upperBound {
                fail(path.key("routes"), at: entry.value, "expected at most \(ConfigBounds.httpRoutes.upperBound) routes; found \(items.count)")
            }
            for (index, item) in items.enumerated() {
                if let route = decodeRoute(item, path.key("routes").index(index), poolNames: poolNames) { http.routes.append(route) }
            }
        }
        return http
    }

    private mutating func decodeRedis(_ node: Node, _ path: ConfigFieldPath) -> RedisListenerConfig {
        var config = RedisListenerConfig()
        guard let map = mapping(node, path, keys: ["password", "connections_per_backend", "reply_timeout"],
                                expected: "a mapping like { password: secret, connections_per_backend: 1, reply_timeout: 3s }")
        else { return config }
        if let entry = map["password"], let text = scalarText(entry.value, path.key("password"), expected: "a password") {
            config.password = text
        }
        if let entry = map["connections_per_backend"],
           let value = integer(entry.value, path.key("connections_per_backend"), in: ConfigBounds.redisConnectionsPerBackend) {
            config.connectionsPerBackend = value
        }
        if let entry = map["reply_timeout"], let value = duration(entry.value, path.key("reply_timeout"), in: ConfigBounds.redisReplyTimeout) {
            config.replyTimeout = value
        }
        return config
    }

    private mutating func decodeUDP(_ node: Node, _ path: ConfigFieldPath) -> UDPListenerConfig {
        var config = UDPListenerConfig()
        guard let map = mapping(node, path, keys: ["flow_idle_timeout", "per_packet", "max_flows"],
                                expected: "a mapping like { flow_idle_timeout: 30s, per_packet: false, max_flows: 10000 }")
        else { return config }
        if let entry = map["flow_idle_timeout"],
           let value = duration(entry.value, path.key("flow_idle_timeout"), in: ConfigBounds.udpFlowIdleTimeout) {
            config.flowIdleTimeout = value
        }
        if let entry = map["per_packet"], let value = boolean(entry.value, path.key("per_packet")) { config.perPacket = value }
        if let entry = map["max_flows"], let value = integer(entry.value, path.key("max_flows"), in: ConfigBounds.udpMaxFlows) {
            config.maxFlows = value
        }
        return config
    }

    /// A pool's `redis:`: how `mode: redis` listeners place keys on its servers.
    mutating func decodePoolRedis(_ node: Node, _ path: ConfigFieldPath) -> RedisHash? {
        guard let map = mapping(node, path, keys: ["hash"], expected: "a mapping like { hash: ketama }") else { return nil }
        guard let entry = map["hash"] else { return nil }
        return choice(entry.value, path.key("hash"), RedisHash.self)
    }

    mutating func decodeProxyAccept(_ node: Node, _ path: ConfigFieldPath) -> ProxyAcceptConfig {
        var config = ProxyAcceptConfig()
        guard let map = mapping(node, path, keys: ["accept", "timeout"], expected: "a mapping like { accept: v2, timeout: 3s }")
        else { return config }
        if let entry = map["accept"], let value = choice(entry.value, path.key("accept"), ProxyAccept.self) { config.accept = value }
        if let entry = map["timeout"], let value = duration(entry.value, path.key("timeout"), in: ConfigBounds.proxyHeaderTimeout) {
            config.timeout = value
        }
        return config
    }

    private mutating func decodeRoute(_ node: Node, _ path: ConfigFieldPath, poolNames: [String]?) -> HTTPRouteConfig? {
        guard let map = mapping(node, path, keys: Self.routeKeys,
                                expected: "a route like { host: api.example.com, path_prefix: /v1/, pool: api }")
        else { return nil }
        var route = HTTPRouteConfig(pool: "")
        if let entry = map["pool"] {
            guard let pool = scalarText(entry.value, path.key("pool"), expected: "the name of a pool") else { return nil }
            route.pool = pool
            if let poolNames { checkPoolReference(pool, entry.value, path.key("pool"), poolNames: poolNames) }
        } else {
            missing(path, key: "pool", in: map)
        }
        if let entry = map["host"], let host = scalarText(entry.value, path.key("host"), expected: "a host name") {
            let name = host.hasPrefix("*.") ? String(host.dropFirst(2)) : host
            let valid = !name.isEmpty && name.utf8.count <= 253
                && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-.[]:".contains($0)) }
            if valid { route.host = host } else {
                fail(path.key("host"), at: entry.value, "expected a host name such as api.example.com or *.example.com; found \(configQuoted(host))")
            }
        }
        if let entry = map["path_prefix"], let prefix = scalarText(entry.value, path.key("path_prefix"), expected: "a path such as /v1/") {
            if prefix.hasPrefix("/") && prefix.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) { route.pathPrefix = prefix } else {
                fail(path.key("path_prefix"), at: entry.value, "expected a path starting with / (visible ASCII); found \(configQuoted(prefix))")
            }
        }
        if route.host == nil && route.pathPrefix == nil && map["host"] == nil && map["path_prefix"] == nil {
            fail(path, at: node, "a route needs a host or a path_prefix (without both it matches every request: use the listener's pool)")
        }
        return route
    }
}
