import Testing
@testable import SluiceCore

/// `minimalConfigYAML` with its one backend replaced by `backends` (flow items).
private func poolYAML(_ backends: [String], top: String = "") -> String {
    top + """
        listeners:
          - { name: web, bind: "0.0.0.0:8080", pool: web }
        pools:
          - name: web
            backends:
        """ + backends.map { "\n      - \($0)" }.joined()
}

@Suite("Config: hostname backends and resolve:")
struct ConfigResolveTests {
    // MARK: - Backends

    @Test("a hostname address becomes a named backend; IP addresses stay in backends, in order")
    func namedAndStaticBackends() throws {
        let yaml = poolYAML([
            #"{ address: "10.0.0.1:80" }"#,
            #"{ address: "App.Default.svc.cluster.local:8080", weight: 3 }"#,
            #"{ address: "[::1]:81", weight: 2 }"#,
            #"{ address: "db.:5432" }"#,
        ])
        let pool = try decodeConfig(yaml).config.pools[0]
        #expect(pool.backends == [
            BackendConfig(address: configAddress("10.0.0.1:80")),
            BackendConfig(address: configAddress("[::1]:81"), weight: 2),
        ])
        #expect(pool.named == [
            NamedBackend(host: "app.default.svc.cluster.local", port: 8080, weight: 3),
            NamedBackend(host: "db.", port: 5432),
        ])
    }

    @Test("a pool of hostnames only is valid; an empty list still is not")
    func onlyNamedBackends() throws {
        let pool = try decodeConfig(poolYAML([#"{ address: "localhost:9001" }"#])).config.pools[0]
        #expect(pool.backends.isEmpty)
        #expect(pool.named == [NamedBackend(host: "localhost", port: 9001)])
        let error = try #require(singleConfigError(poolYAML([]).replacing("backends:", with: "backends: []")))
        #expect(error.path == "pools[0].backends")
        #expect(error.message == "expected at least one backend; found an empty list")
    }

    @Test("the same hostname and port twice, whatever the case, is a duplicate")
    func duplicateNames() throws {
        let error = try #require(singleConfigError(poolYAML([#"{ address: "app.local:80" }"#, #"{ address: "APP.local:80" }"#])))
        #expect(error.path == "pools[0].backends[1].address")
        #expect(error.message == "duplicate backend address app.local:80 (already used by pools[0].backends[0])")
        #expect(try decodeConfig(poolYAML([#"{ address: "app.local:80" }"#, #"{ address: "app.local:81" }"#])).config.pools[0].named.count == 2)
    }

    @Test("malformed hostnames are refused at the field, saying what is wrong", arguments: [
        ("-app.local:80", "the label \"-app\" starts or ends with \"-\""),
        ("app-.local:80", "the label \"app-\" starts or ends with \"-\""),
        ("app..local:80", "a label is empty (two dots in a row, or a leading dot)"),
        (".app:80", "a label is empty (two dots in a row, or a leading dot)"),
        ("a_b.local:80", "the label \"a_b\" has characters other than letters, digits and \"-\""),
        (String(repeating: "a", count: 64) + ".local:80", "is longer than 63 characters"),
        (Array(repeating: String(repeating: "a", count: 63), count: 4).joined(separator: ".") + ":80",
         "the hostname is longer than 253 characters"),
    ])
    func malformedHostnames(address: String, problem: String) throws {
        let error = try #require(singleConfigError(poolYAML(["{ address: \"\(address)\" }"])))
        #expect(error.path == "pools[0].backends[0].address")
        #expect(error.message.hasPrefix("invalid hostname ("), "\(error.message)")
        #expect(error.message.contains(problem), "\(error.message)")
    }

    @Test("a hostname needs a port in 1...65535", arguments: [
        ("app.local", "missing port: expected a hostname and port like app.default.svc.cluster.local:8080; found \"app.local\""),
        ("app.local:", "missing port: expected a hostname and port like app.default.svc.cluster.local:8080; found \"app.local:\""),
        ("app.local:0", "invalid port \"0\": expected a number 1...65535; found \"app.local:0\""),
        ("app.local:65536", "invalid port \"65536\": expected a number 1...65535; found \"app.local:65536\""),
        ("app.local:http", "invalid port \"http\": expected a number 1...65535; found \"app.local:http\""),
    ])
    func hostnamePorts(address: String, message: String) throws {
        let error = try #require(singleConfigError(poolYAML(["{ address: \"\(address)\" }"])))
        #expect(error.message == message)
    }

    @Test("the longest hostname allowed: 253 characters, and a trailing dot on top")
    func longestHostname() throws {
        let host = Array(repeating: String(repeating: "a", count: 63), count: 3).joined(separator: ".") + "." + String(repeating: "b", count: 61)
        #expect(host.count == 253)
        #expect(NamedBackend.parse(host + ".:80") == .success(NamedBackend(host: host + ".", port: 80)))
        #expect(NamedBackend.parse("9lives.example:80") == .success(NamedBackend(host: "9lives.example", port: 80)))
    }

    // MARK: - resolve:

    @Test("resolve: defaults when absent")
    func resolveDefaults() throws {
        let resolve = try decodeConfig(minimalConfigYAML).config.resolve
        #expect(resolve == ResolveConfig(minTTL: .seconds(1), maxTTL: .seconds(300), timeout: .seconds(2), nameservers: []))
    }

    @Test("resolve: every key, nameservers with and without a port")
    func resolveEveryKey() throws {
        let top = #"resolve: { min_ttl: 500ms, max_ttl: 1h, timeout: 300ms, nameservers: ["127.0.0.1:5353", "10.0.0.10", "[::1]:53", "::2", "[fd00::3]"] }"# + "\n"
        let resolve = try decodeConfig(top + minimalConfigYAML).config.resolve
        #expect(resolve.minTTL == .milliseconds(500))
        #expect(resolve.maxTTL == .seconds(3600))
        #expect(resolve.timeout == .milliseconds(300))
        #expect(resolve.nameservers.map(\.description) == ["127.0.0.1:5353", "10.0.0.10:53", "[::1]:53", "[::2]:53", "[fd00::3]:53"])
    }

    @Test("resolve: errors at their field", arguments: [
        ("resolve: { min_tll: 1s }", "resolve.min_tll", "unknown key \"min_tll\" (expected one of min_ttl, max_ttl, timeout, nameservers); did you mean \"min_ttl\"?"),
        ("resolve: { min_ttl: 10s, max_ttl: 5s }", "resolve.min_ttl", "expected min_ttl (10s) no longer than max_ttl (5s)"),
        ("resolve: { max_ttl: 500ms }", "resolve.max_ttl", "expected min_ttl (1s) no longer than max_ttl (500ms) (min_ttl is its default)"),
        ("resolve: { min_ttl: 10ms }", "resolve.min_ttl", "expected a duration in 100ms...24h; found \"10ms\""),
        ("resolve: { max_ttl: 2d }", "resolve.max_ttl", "expected a duration like 300ms, 2s, 5m (units: ns, us, ms, s, m, h); found \"2d\""),
        ("resolve: { max_ttl: 25h }", "resolve.max_ttl", "expected a duration in 100ms...24h; found \"25h\""),
        ("resolve: { timeout: 2m }", "resolve.timeout", "expected a duration in 10ms...1m; found \"2m\""),
        ("resolve: { nameservers: \"127.0.0.1\" }", "resolve.nameservers",
         "expected a list of IP addresses with an optional port, like [\"10.0.0.10\", \"127.0.0.1:5353\", \"[::1]:53\"]; found \"127.0.0.1\""),
        ("resolve: { nameservers: [dns.google] }", "resolve.nameservers[0]", "hostnames are not supported, only IP addresses"),
        ("resolve: { nameservers: [\"127.0.0.1:0\"] }", "resolve.nameservers[0]", "port 0 is out of range"),
        ("resolve: { nameservers: [\"127.0.0.1\", \"127.0.0.1:53\"] }", "resolve.nameservers[1]",
         "duplicate nameserver 127.0.0.1:53 (already resolve.nameservers[0])"),
        ("resolve: off", "resolve", "expected a mapping like { min_ttl: 1s, max_ttl: 300s, timeout: 2s, nameservers: [\"10.0.0.10\"] }; found \"off\""),
    ])
    func resolveErrors(line: String, path: String, message: String) throws {
        let error = try #require(singleConfigError(line + "\n" + minimalConfigYAML))
        #expect(error.path == path)
        #expect(error.line == 1)
        #expect(error.message.hasPrefix(message), "\(error.message)")
    }

    @Test("more than 16 nameservers are refused")
    func tooManyNameservers() throws {
        let servers = (1...17).map { "\"127.0.0.\($0)\"" }.joined(separator: ", ")
        let error = try #require(singleConfigError("resolve: { nameservers: [\(servers)] }\n" + minimalConfigYAML))
        #expect(error.message == "expected at most 16 nameservers; found 17")
    }

    // MARK: - Expansion

    @Test("expanded: IP backends first, then each name's addresses sorted, with its weight; repeats dropped")
    func expansion() {
        var pool = PoolConfig(name: "web", backends: [BackendConfig(address: configAddress("10.0.0.9:80"), weight: 5)])
        let app = NamedBackend(host: "app.local", port: 80, weight: 2)
        let db = NamedBackend(host: "db.local", port: 80, weight: 7)
        let gone = NamedBackend(host: "gone.local", port: 80)
        pool.named = [app, gone, db]
        let expanded = pool.expanded(resolved: [
            app: [configAddress("10.0.0.3:80"), configAddress("[::1]:80"), configAddress("10.0.0.1:80"), configAddress("10.0.0.3:80")],
            db: [configAddress("10.0.0.9:80"), configAddress("10.0.0.1:80"), configAddress("10.0.0.2:80")],
        ])
        #expect(expanded.named == [])
        #expect(expanded.backends.map { "\($0.address) \($0.weight)" } == [
            "10.0.0.9:80 5", "10.0.0.1:80 2", "10.0.0.3:80 2", "[::1]:80 2", "10.0.0.2:80 7",
        ])
        #expect(expanded.name == "web")
    }

    @Test("expanded: addresses compare by canonical form; nothing resolved leaves the IP backends")
    func expansionCanonical() {
        var pool = PoolConfig(name: "web", backends: [BackendConfig(address: configAddress("[::1]:80"))])
        let app = NamedBackend(host: "app.local", port: 80)
        pool.named = [app]
        let spelled = SocketAddressSpec(host: "0:0::1", port: 80, family: .inet6)
        #expect(pool.expanded(resolved: [app: [spelled]]).backends == pool.backends)
        #expect(pool.expanded(resolved: [:]).backends == pool.backends)
        let other = SocketAddressSpec(host: "0:0::2", port: 80, family: .inet6)
        #expect(pool.expanded(resolved: [app: [other]]).backends.last?.address.host == "::2")
    }
}
