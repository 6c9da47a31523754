import SluiceCore
import Testing

private func httpListener(_ extra: String) -> String {
    """
    listeners:
      - { name: web, bind: "0.0.0.0:8080", pool: web, mode: http\(extra) }
    pools:
      - { name: web, backends: [ { address: "127.0.0.1:9001" } ] }
      - { name: api, backends: [ { address: "127.0.0.1:9002" } ] }
    """
}

@Suite("Config: mode http")
struct ConfigHTTPTests {
    @Test("mode defaults to tcp; mode http gets default http settings; routes, timeouts and limits decode")
    func decodes() throws {
        let tcp = try decodeConfig(minimalConfigYAML).config.listeners[0]
        #expect(tcp.mode == .tcp && tcp.http == nil)
        let plain = try decodeConfig(httpListener("")).config.listeners[0]
        #expect(plain.mode == .http && plain.http == HTTPListenerConfig())
        let full = try decodeConfig(httpListener("""
            , http: { routes: [ { host: "*.example.com", path_prefix: /v1/, pool: api }, { path_prefix: /static/, pool: web } ],
                      head_timeout: 2s, response_timeout: 30s, max_head: 16384, forwarded: both,
                      keep_alive_per_backend: 8, keep_alive_timeout: 5s, websocket: false, tunnel_idle_timeout: 90s }
            """))
        let http = try #require(full.config.listeners[0].http)
        #expect(http.routes == [HTTPRouteConfig(host: "*.example.com", pathPrefix: "/v1/", pool: "api"),
                                HTTPRouteConfig(pathPrefix: "/static/", pool: "web")])
        #expect(http.headTimeout == .seconds(2) && http.responseTimeout == .seconds(30) && http.maxHead == 16384)
        #expect(http.forwarded == .both && http.keepAlivePerBackend == 8 && http.keepAliveTimeout == .seconds(5))
        #expect(!http.websocket && http.tunnelIdleTimeout == .seconds(90))
        #expect(plain.http?.websocket == true && plain.http?.tunnelIdleTimeout == .seconds(3600), "WebSocket on, tunnels idle up to an hour")
        #expect(!full.notices.contains { $0.contains("api") }, "a pool used by a route is used")
    }

    @Test("refused with the field path: unknown pool, bad host or path, a route matching everything, http without mode http, limits",
          arguments: [
              (", http: { routes: [ { host: a.com, pool: nope } ] }", "listeners[0].http.routes[0].pool", "nope"),
              (", http: { routes: [ { host: \"a b\", pool: api } ] }", "listeners[0].http.routes[0].host", "host name"),
              (", http: { routes: [ { path_prefix: v1, pool: api } ] }", "listeners[0].http.routes[0].path_prefix", "starting with /"),
              (", http: { routes: [ { pool: api } ] }", "listeners[0].http.routes[0]", "host or a path_prefix"),
              (", http: { max_head: 100 }", "listeners[0].http.max_head", "1024...1048576"),
              (", http: { head_timeout: 10ms }", "listeners[0].http.head_timeout", "100ms"),
              (", http: { forwarded: yes }", "listeners[0].http.forwarded", "off, xff, forwarded, both"),
              (", http: { colour: blue }", "listeners[0].http.colour", "unknown"),
              (", http: { websocket: yes }", "listeners[0].http.websocket", "true or false"),
              (", http: { tunnel_idle_timeout: 25h }", "listeners[0].http.tunnel_idle_timeout", "1ms"),
          ])
    func refused(extra: String, path: String, message: String) throws {
        let error = try #require(singleConfigError(httpListener(extra)))
        #expect(error.path == path, "\(error)")
        #expect(error.message.contains(message), "\(error)")
    }

    @Test("proxy_protocol: accept and timeout on listeners, off, v1 or v2 on pools; off by default; bad values refused with their path")
    func proxyProtocol() throws {
        let plain = try decodeConfig(httpListener("")).config
        #expect(plain.listeners[0].proxyProtocol == ProxyAcceptConfig() && plain.pools[0].proxyProtocol == .off)
        #expect(ProxyAcceptConfig().accept == .off && ProxyAcceptConfig().timeout == .seconds(3))
        let yaml = httpListener(", proxy_protocol: { accept: any, timeout: 500ms }")
            .replacing("{ name: api, backends", with: "{ name: api, proxy_protocol: v2, backends")
        let config = try decodeConfig(yaml).config
        #expect(config.listeners[0].proxyProtocol.accept == .any && config.listeners[0].proxyProtocol.timeout == .milliseconds(500))
        #expect(config.pools[1].proxyProtocol == .v2)
        for (extra, path, message) in [
            (", proxy_protocol: { accept: v3 }", "listeners[0].proxy_protocol.accept", "off, v1, v2, any"),
            (", proxy_protocol: { timeout: 2m }", "listeners[0].proxy_protocol.timeout", "10ms"),
            (", proxy_protocol: v1", "listeners[0].proxy_protocol", "accept: v2"),
        ] {
            let error = try #require(singleConfigError(httpListener(extra)))
            #expect(error.path == path && error.message.contains(message), "\(error)")
        }
        let pool = try #require(singleConfigError(httpListener("").replacing("{ name: api, backends", with: "{ name: api, proxy_protocol: any, backends")))
        #expect(pool.path == "pools[1].proxy_protocol" && pool.message.contains("off, v1, v2"), "\(pool)")
    }

    @Test("a mode http listener without a pool: routes only, what none matches is 404; without routes either, an error; tcp still needs one")
    func withoutPool() throws {
        let yaml = httpListener(", http: { routes: [ { host: api.example.com, pool: api } ] }").replacing("pool: web, mode: http", with: "mode: http")
        let listener = try decodeConfig(yaml).config.listeners[0]
        #expect(listener.http?.fallback == false && listener.pool == "api")
        #expect(HTTPListenerConfig().fallback, "with a pool, no match goes to it")
        let bare = try #require(singleConfigError(httpListener("").replacing("pool: web, mode: http", with: "mode: http")))
        #expect(bare.path == "listeners[0]" && bare.message.contains("needs a pool, or routes"), "\(bare)")
        let tcp = try #require(singleConfigError(minimalConfigYAML.replacing("pool: web }", with: "}")))
        #expect(tcp.message.contains("missing required key \"pool\""), "\(tcp)")
    }

    @Test("mode redis: redis settings decode with defaults; on another mode, or out of range, they are refused")
    func redis() throws {
        let yaml = httpListener("").replacing("mode: http", with: "mode: redis, redis: { password: pw, connections_per_backend: 4 }")
        let listener = try decodeConfig(yaml).config.listeners[0]
        #expect(listener.mode == .redis && listener.redis?.password == "pw" && listener.redis?.connectionsPerBackend == 4)
        let plain = try decodeConfig(httpListener("").replacing("mode: http", with: "mode: redis")).config.listeners[0]
        #expect(plain.redis == RedisListenerConfig() && plain.redis?.connectionsPerBackend == 1 && plain.http == nil)
        let wrong = try #require(singleConfigError(httpListener(", redis: { password: pw }")))
        #expect(wrong.path == "listeners[0].redis" && wrong.message.contains("mode: redis"), "\(wrong)")
        let range = try #require(singleConfigError(httpListener("").replacing("mode: http", with: "mode: redis, redis: { connections_per_backend: 0 }")))
        #expect(range.path == "listeners[0].redis.connections_per_backend", "\(range)")
        let placed = try decodeConfig(httpListener("").replacing("{ name: api,", with: "{ name: api, redis: { hash: ketama },"))
        #expect(placed.config.pools[1].redisHash == .ketama && placed.config.pools[0].redisHash == .crc16)
        let hash = try #require(singleConfigError(httpListener("").replacing("{ name: api,", with: "{ name: api, redis: { hash: ketma },")))
        #expect(hash.path == "pools[1].redis.hash" && hash.message.contains("crc16, ketama") && hash.message.contains("did you mean \"ketama\""), "\(hash)")
    }

    @Test("http settings on a tcp listener are an error, as is an unknown mode")
    func modeMismatch() throws {
        let yaml = minimalConfigYAML.replacing("pool: web }", with: "pool: web, http: { head_timeout: 1s } }")
        let error = try #require(singleConfigError(yaml))
        #expect(error.path == "listeners[0].http" && error.message.contains("mode: http"))
        let mode = try #require(singleConfigError(minimalConfigYAML.replacing("pool: web }", with: "pool: web, mode: quic }")))
        #expect(mode.path == "listeners[0].mode" && mode.message.contains("tcp, http, redis, udp"))
    }
}
