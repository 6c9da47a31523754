import Testing
@testable import SluiceCore

/// The documented example, verbatim except `health_check: {}` (its schema is
/// not defined yet).
let documentedExampleYAML = """
    instance: default            # names the bpffs pin directory /sys/fs/bpf/sluice/<instance>
    workers: 4                   # default: online CPUs
    steering: least_loaded       # least_loaded | hash | shared_accept
    data_path: auto              # auto | sockmap | splice | copy
    stall_threshold: 200ms       # default 200ms
    drain_timeout: 30s           # default 30s
    log: { level: info, access: text, file: stderr }
    admin: { socket: /run/sluice/default.sock, metrics: 127.0.0.1:9901 }
    listeners:
      - { name: web, bind: "0.0.0.0:8080", pool: web, max_connections: 100000, connect_timeout: 2s, idle_timeout: 300s }
    pools:
      - name: web
        algorithm: least_conn    # round_robin | least_conn | p2c | maglev | random ; default least_conn
        retries: 2               # default 2, 0...16
        backends:
          - { address: "127.0.0.1:9001", weight: 1 }   # weight default 1, 1...1000
          - { address: "[::1]:9002", weight: 2 }
        health_check: {}         # reserved key (later feature)
    """

@Suite("Config decoding")
struct ConfigDecodingTests {
    static let expectedExample = SluiceConfig(
        instance: "default",
        workers: 4,
        steering: .leastLoaded,
        dataPath: .auto,
        stallThreshold: .milliseconds(200),
        drainTimeout: .seconds(30),
        log: LogConfig(level: .info, access: .text, file: "stderr"),
        admin: AdminConfig(socket: "/run/sluice/default.sock", metrics: configAddress("127.0.0.1:9901")),
        listeners: [
            ListenerConfig(
                name: "web", bind: configAddress("0.0.0.0:8080"), pool: "web", maxConnections: 100_000,
                connectTimeout: .seconds(2), idleTimeout: .seconds(300)
            ),
        ],
        pools: [
            PoolConfig(name: "web", algorithm: .leastConn, retries: 2, backends: [
                BackendConfig(address: configAddress("127.0.0.1:9001"), weight: 1),
                BackendConfig(address: configAddress("[::1]:9002"), weight: 2),
            ]),
        ]
    )

    @Test func documentedExampleDecodes() throws {
        let loaded = try decodeConfig(documentedExampleYAML)
        var expected = Self.expectedExample
        expected.pools[0].healthCheck = HealthCheckConfig() // `health_check: {}`: every default
        #expect(loaded.config == expected)
        #expect(loaded.notices == [])
        #expect(loaded.config.pool(named: "web") == expected.pools[0])
        #expect(loaded.config.pool(named: "api") == nil)
    }

    @Test func defaultsWhenKeysAreAbsent() throws {
        let loaded = try decodeConfig(minimalConfigYAML, cpus: 6)
        let config = loaded.config
        #expect(config.instance == "default")
        #expect(config.workers == 6)
        #expect(config.steering == .leastLoaded)
        #expect(config.dataPath == .auto)
        #expect(config.stallThreshold == .milliseconds(200))
        #expect(config.drainTimeout == .seconds(30))
        #expect(config.log == LogConfig(level: .info, access: .text, file: "stderr"))
        #expect(config.admin == AdminConfig(socket: "/run/sluice/default.sock", metrics: configAddress("127.0.0.1:9901")))
        #expect(config.listeners == [
            ListenerConfig(name: "web", bind: configAddress("0.0.0.0:8080"), pool: "web", maxConnections: 100_000,
                           connectTimeout: .seconds(2), idleTimeout: .seconds(300)),
        ])
        #expect(config.pools == [
            PoolConfig(name: "web", algorithm: .leastConn, retries: 2,
                       backends: [BackendConfig(address: configAddress("127.0.0.1:9001"), weight: 1)]),
        ])
        #expect(loaded.notices == [])
    }

    @Test func oldSpliceKeySaysItWasRenamed() throws {
        let error = try #require(singleConfigError("splice: copy\n" + minimalConfigYAML))
        #expect(error.path == "splice")
        #expect(error.line == 1)
        #expect(error.message == "\"splice\" was renamed to \"data_path\" (same values); write data_path: instead")
        // Reported once, even next to the new key.
        let both = configErrors("splice: copy\ndata_path: copy\n" + minimalConfigYAML)
        #expect(both.map(\.path) == ["splice"])
    }

    @Test func publicParseCountsOnlineCPUs() throws {
        let loaded = try ConfigLoader.parse(yaml: minimalConfigYAML, file: "x.yaml", onlineCPUs: 3)
        #expect(loaded.config.workers == 3)
    }

    @Test func explicitValuesGiveNoNotices() throws {
        let loaded = try decodeConfig("steering: hash\ndata_path: copy\n" + minimalConfigYAML)
        #expect(loaded.config.steering == .hash)
        #expect(loaded.config.dataPath == .copy)
        #expect(loaded.notices.isEmpty)
    }

    @Test(arguments: [(1, 1), (4, 4), (64, 64), (200, 64), (0, 1)])
    func defaultWorkersFollowOnlineCPUsWithinLimits(cpus: Int, workers: Int) throws {
        #expect(try decodeConfig(minimalConfigYAML, cpus: cpus).config.workers == workers)
    }

    @Test func everyEnumValueIsAccepted() throws {
        for algorithm in BalancingAlgorithm.allCases {
            let yaml = minimalConfigYAML.replacing("- name: web", with: "- name: web\n    algorithm: \(algorithm.rawValue)")
            #expect(try decodeConfig(yaml).config.pools[0].algorithm == algorithm)
        }
        for level in LogLevelName.allCases {
            #expect(try decodeConfig("log: { level: \(level.rawValue) }\n" + minimalConfigYAML).config.log.level == level)
        }
        for access in AccessLogFormat.allCases {
            // `off` is a YAML 1.1 boolean; it must still read as the word.
            #expect(try decodeConfig("log: { access: \(access.rawValue) }\n" + minimalConfigYAML).config.log.access == access)
        }
        for mode in SteeringMode.allCases {
            #expect(try decodeConfig("steering: \(mode.rawValue)\n" + minimalConfigYAML).config.steering == mode)
        }
        for mode in DataPathMode.allCases {
            #expect(try decodeConfig("data_path: \(mode.rawValue)\n" + minimalConfigYAML).config.dataPath == mode)
        }
    }

    @Test func valuesAcrossTheFile() throws {
        let yaml = """
            instance: edge_01-a
            workers: 64
            stall_threshold: 1.5s
            drain_timeout: 2m
            log:
              level: debug
              access: json
              file: /var/log/sluice.log
            listeners:
              - name: web.v4
                bind: 0.0.0.0:80
                pool: web
              - name: web.v6
                bind: "[::]:80"
                pool: web
                max_connections: 10_000_000
                connect_timeout: 500ms
                idle_timeout: 1h
              - { name: ephemeral-a, bind: "127.0.0.1:0", pool: api }
              - { name: ephemeral-b, bind: "127.0.0.1:0", pool: api }
            pools:
              - name: web
                algorithm: maglev
                retries: 0
                backends:
                  - { address: 10.0.0.1:80, weight: 1000 }
                  - { address: "[2001:db8::5]:8080" }
              - { name: api, algorithm: p2c, retries: 16, backends: [ { address: "192.0.2.7:9000" } ] }
            """
        let config = try decodeConfig(yaml).config
        #expect(config.instance == "edge_01-a")
        #expect(config.workers == 64)
        #expect(config.stallThreshold == .milliseconds(1500))
        #expect(config.drainTimeout == .seconds(120))
        #expect(config.log == LogConfig(level: .debug, access: .json, file: "/var/log/sluice.log"))
        #expect(config.listeners.map(\.name) == ["web.v4", "web.v6", "ephemeral-a", "ephemeral-b"])
        #expect(config.listeners[1].bind == SocketAddressSpec(host: "::", port: 80, family: .inet6))
        #expect(config.listeners[1].maxConnections == 10_000_000)
        #expect(config.listeners[1].connectTimeout == .milliseconds(500))
        #expect(config.listeners[1].idleTimeout == .seconds(3600))
        #expect(config.listeners[2].bind.port == 0)
        #expect(config.pools[0].algorithm == .maglev)
        #expect(config.pools[0].retries == 0)
        #expect(config.pools[0].backends.map(\.weight) == [1000, 1])
        #expect(config.pools[0].backends[1].address.description == "[2001:db8::5]:8080")
        #expect(config.pool(named: "api")?.retries == 16)
        #expect(config.pool(named: "api")?.algorithm == .p2c)
    }

    @Test func unusedPoolGivesANotice() throws {
        let yaml = minimalConfigYAML + """

              - name: spare
                backends: [ { address: "127.0.0.1:9100" } ]
            """
        let loaded = try decodeConfig(yaml)
        #expect(loaded.config.pools.count == 2)
        #expect(loaded.notices.contains("pools: pool \"spare\" is not used by any listener"))
    }

    @Test func yamlMergeKeysAreHonoured() throws {
        let yaml = """
            listeners:
              - &base { name: a, bind: "0.0.0.0:8080", pool: web, idle_timeout: 10s }
              - { <<: *base, name: b, bind: "0.0.0.0:8081" }
            pools:
              - name: web
                backends: [ { address: "127.0.0.1:9001" } ]
            """
        let config = try decodeConfig(yaml).config
        #expect(config.listeners[1].name == "b")
        #expect(config.listeners[1].bind.port == 8081)
        #expect(config.listeners[1].idleTimeout == .seconds(10))
        #expect(config.listeners[1].pool == "web")
    }

    @Test func adminBlockShapeWhenAvailable() throws {
        let config = try decodeConfig("admin: { socket: /tmp/s.sock, metrics: \"[::1]:9000\" }\n" + minimalConfigYAML).config
        #expect(config.admin == AdminConfig(socket: "/tmp/s.sock", metrics: configAddress("[::1]:9000")))
        let off = try decodeConfig("admin: { metrics: off }\n" + minimalConfigYAML).config
        #expect(off.admin == AdminConfig(socket: "/run/sluice/default.sock", metrics: nil))
        let empty = try decodeConfig("admin: {}\n" + minimalConfigYAML).config
        #expect(empty.admin == AdminConfig(socket: "/run/sluice/default.sock", metrics: configAddress("127.0.0.1:9901")))
    }

    @Test func healthCheckKeyIsAcceptedOnceAvailable() throws {
        let yaml = minimalConfigYAML + "\n    health_check: { interval: 1s }"
        #expect(try decodeConfig(yaml).config.pools.count == 1)
    }
}

@Suite("Config: admin and rebalance")
struct ConfigAdminRebalanceTests {
    @Test func adminOffAndRebalanceOff() throws {
        let loaded = try decodeConfig("admin: off\nrebalance: off\n" + minimalConfigYAML)
        #expect(loaded.config.admin == nil)
        #expect(loaded.config.rebalance == nil)
    }

    @Test func rebalanceDefaultsAndValues() throws {
        #expect(try decodeConfig(minimalConfigYAML).config.rebalance == RebalanceConfig())
        let loaded = try decodeConfig("rebalance: { interval: 250ms, ratio: 1.25 }\n" + minimalConfigYAML)
        #expect(loaded.config.rebalance?.interval == .milliseconds(250))
        #expect(loaded.config.rebalance?.ratio == 1.25)
    }

    @Test func rebalanceErrors() {
        let errors = configErrors("rebalance: { interval: soon, ratio: 0.9, every: 1 }\n" + minimalConfigYAML)
        #expect(errors.map(\.path) == ["rebalance.interval", "rebalance.ratio", "rebalance.every"])
        #expect(errors[1].message == "expected a number above 1.0 and at most 100, such as 1.1; found \"0.9\"")
    }

    @Test func tooManyListeners() {
        let listeners = (0..<65).map { "  - { name: l\($0), bind: \"127.0.0.1:\(10000 + $0)\", pool: web }" }.joined(separator: "\n")
        let yaml = "listeners:\n\(listeners)\npools:\n  - { name: web, backends: [ { address: \"127.0.0.1:9001\" } ] }\n"
        #expect(configErrors(yaml).map(\.message).contains("expected at most 64 listeners; found 65"))
    }
}
