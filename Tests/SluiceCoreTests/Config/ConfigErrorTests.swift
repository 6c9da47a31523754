import Testing
@testable import SluiceCore

@Suite("Config errors")
struct ConfigErrorTests {
    // MARK: - Unknown keys

    @Test func unknownTopLevelKey() throws {
        let error = try #require(singleConfigError("listner: x\n" + minimalConfigYAML))
        #expect(error.path == "listner")
        #expect(error.line == 1)
        #expect(error.column == 1)
        #expect(error.message.hasPrefix("unknown key \"listner\" (expected one of instance, workers, steering,"))
        #expect(error.message.hasSuffix("; did you mean \"listeners\"?"))
    }

    @Test func unknownNestedKey() throws {
        let yaml = """
            listeners:
              - { name: web, bind: "0.0.0.0:8080", pool: web }
            pools:
              - name: web
                backends:
                  - { address: "127.0.0.1:9001" }
                  - { address: "127.0.0.1:9002", wieght: 2 }
            """
        let error = try #require(singleConfigError(yaml))
        #expect(error.path == "pools[0].backends[1].wieght")
        #expect(error.line == 7)
        #expect(error.column == 38)
        #expect(error.message == "unknown key \"wieght\" (expected one of address, weight); did you mean \"weight\"?")
        #expect(error.description == "test.yaml:7:38: pools[0].backends[1].wieght: " + error.message)
    }

    @Test func unknownKeyWithoutCloseSpelling() throws {
        let error = try #require(singleConfigError("log: { colour: red }\n" + minimalConfigYAML))
        #expect(error.path == "log.colour")
        #expect(error.message == "unknown key \"colour\" (expected one of level, access, file)")
    }

    @Test func camelCaseKeySuggestsSnakeCase() throws {
        let yaml = minimalConfigYAML.replacing("pool: web }", with: "pool: web, maxConnections: 5 }")
        let error = try #require(singleConfigError(yaml))
        #expect(error.path == "listeners[0].maxConnections")
        #expect(error.message.hasSuffix("did you mean \"max_connections\"?"))
    }

    // MARK: - Enums

    @Test func badAlgorithm() throws {
        let yaml = minimalConfigYAML.replacing("- name: web", with: "- name: web\n    algorithm: fastest")
        let error = try #require(singleConfigError(yaml))
        #expect(error.path == "pools[0].algorithm")
        #expect(error.line == 5)
        #expect(error.message == "expected one of round_robin, least_conn, p2c, maglev, random; found \"fastest\"")
    }

    @Test func badEnumSuggestsCloseValue() throws {
        let yaml = minimalConfigYAML.replacing("- name: web", with: "- name: web\n    algorithm: leastconn")
        let error = try #require(singleConfigError(yaml))
        #expect(error.message.hasSuffix("found \"leastconn\"; did you mean \"least_conn\"?"))
    }

    @Test(arguments: [
        ("steering: fast", "steering", "expected one of least_loaded, hash, shared_accept; found \"fast\""),
        ("data_path: zerocopy", "data_path", "expected one of auto, sockmap, splice, copy; found \"zerocopy\""),
        ("log: { level: verbose }", "log.level",
         "expected one of trace, debug, info, notice, warning, error, critical; found \"verbose\""),
        ("log: { access: xml }", "log.access", "expected one of off, text, json; found \"xml\""),
        ("log: { access: false }", "log.access", "expected one of off, text, json; found \"false\""),
        ("log: { level: }", "log.level",
         "expected one of trace, debug, info, notice, warning, error, critical; found null"),
        ("log: { level: INFO }", "log.level",
         "expected one of trace, debug, info, notice, warning, error, critical; found \"INFO\"; did you mean \"info\"?"),
    ])
    func badTopLevelEnums(line: String, path: String, message: String) throws {
        let error = try #require(singleConfigError(line + "\n" + minimalConfigYAML))
        #expect(error.path == path)
        #expect(error.line == 1)
        #expect(error.message == message)
    }

    // MARK: - Durations

    @Test(arguments: [
        ("5 parsecs", "expected a duration like 300ms, 2s, 5m (units: ns, us, ms, s, m, h); found \"5 parsecs\""),
        ("10", "expected a duration like 300ms, 2s, 5m; found 10 without a unit (e.g. \"10s\")"),
        ("1.5", "expected a duration like 300ms, 2s, 5m; found 1.5 without a unit (e.g. \"1.5s\")"),
        ("-1s", "expected a positive duration like 300ms, 2s, 5m; found \"-1s\""),
        ("0s", "expected a duration greater than zero; found \"0s\""),
        ("0.0ms", "expected a duration greater than zero; found \"0.0ms\""),
        ("[1s]", "expected a duration like 300ms, 2s, 5m; found a list"),
    ])
    func badConnectTimeout(value: String, message: String) throws {
        let yaml = minimalConfigYAML.replacing("pool: web }", with: "pool: web, connect_timeout: \(value) }")
        let error = try #require(singleConfigError(yaml))
        #expect(error.path == "listeners[0].connect_timeout")
        #expect(error.line == 2)
        #expect(error.message == message)
    }

    @Test func badTopLevelDurations() {
        let errors = configErrors("stall_threshold: 0ms\ndrain_timeout: 30 s\n" + minimalConfigYAML)
        #expect(errors.map(\.path) == ["stall_threshold", "drain_timeout"])
        #expect(errors.map(\.line) == [1, 2])
    }

    // MARK: - Addresses

    @Test(arguments: [
        ("local_host:9001", "invalid hostname (the label \"local_host\" has characters other than letters, digits and \"-\")"),
        ("localhost", "missing port: expected a hostname and port"),
        ("127.0.0.1:70000", "port 70000 is out of range: expected 1...65535"),
        ("127.0.0.1", "missing port"),
        ("\"[::gg]:9001\"", "invalid IPv6 address"),
        ("\"[127.0.0.1]:9001\"", "IPv4 addresses must not be in brackets"),
        ("\"::1:9001\"", "IPv6 addresses must be in brackets"),
        ("127.0.0.1:0", "port 0 is out of range: expected 1...65535"),
        ("300.0.0.1:80", "invalid IPv4 address"),
    ])
    func badBackendAddress(value: String, messagePrefix: String) throws {
        let yaml = minimalConfigYAML.replacing("{ address: \"127.0.0.1:9001\" }", with: "{ address: \(value) }")
        let error = try #require(singleConfigError(yaml))
        #expect(error.path == "pools[0].backends[0].address")
        #expect(error.line == 6)
        #expect(error.message.hasPrefix(messagePrefix), "\(error.message)")
    }

    @Test func badBindAddresses() {
        let yaml = """
            listeners:
              - { name: a, bind: "example.com:80", pool: web }
              - { name: b, bind: ":80", pool: web }
              - { name: c, bind: "0.0.0.0:65536", pool: web }
              - { name: d, bind: "0.0.0.0:0", pool: web }
            pools:
              - name: web
                backends: [ { address: "127.0.0.1:9001" } ]
            """
        let errors = configErrors(yaml)
        #expect(errors.map(\.path) == ["listeners[0].bind", "listeners[1].bind", "listeners[2].bind"])
        #expect(errors.map(\.line) == [2, 3, 4])
        #expect(errors[2].message == "port 65536 is out of range: expected 0...65535; found \"0.0.0.0:65536\"")
    }

    @Test func unquotedIPv6IsAListAndSaysSo() throws {
        let yaml = minimalConfigYAML.replacing("{ address: \"127.0.0.1:9001\" }", with: "{ address: [\"::1\"] }")
        let error = try #require(singleConfigError(yaml))
        #expect(error.path == "pools[0].backends[0].address")
        #expect(error.message.contains("IPv6 addresses need quotes"))
    }

    // MARK: - Duplicates and references

    @Test func duplicateListenerNamesAndBinds() {
        let yaml = """
            listeners:
              - { name: web, bind: "0.0.0.0:8080", pool: web }
              - { name: web, bind: "0.0.0.0:8081", pool: web }
              - { name: other, bind: "0.0.0.0:8080", pool: web }
              - { name: v6a, bind: "[::0]:9000", pool: web }
              - { name: v6b, bind: "[0:0::]:9000", pool: web }
            pools:
              - name: web
                backends: [ { address: "127.0.0.1:9001" } ]
            """
        let errors = configErrors(yaml)
        #expect(errors.map(\.path) == ["listeners[1].name", "listeners[2].bind", "listeners[4].bind"])
        #expect(errors.map(\.line) == [3, 4, 6])
        #expect(errors[0].message == "duplicate listener name \"web\" (already used by listeners[0])")
        #expect(errors[1].message == "bind address 0.0.0.0:8080 is already used by listeners[0]")
        #expect(errors[2].message == "bind address [::]:9000 is already used by listeners[3]")
    }

    @Test func duplicatePoolNamesAndBackends() {
        let yaml = """
            listeners:
              - { name: web, bind: "0.0.0.0:8080", pool: web }
            pools:
              - name: web
                backends:
                  - { address: "[::1]:9002" }
                  - { address: "[0:0::1]:9002" }
              - name: web
                backends: [ { address: "127.0.0.1:9001" }, { address: "127.0.0.1:9001", weight: 3 } ]
            """
        let errors = configErrors(yaml)
        #expect(errors.map(\.path) == [
            "pools[0].backends[1].address", "pools[1].name", "pools[1].backends[1].address",
        ])
        #expect(errors.map(\.line) == [7, 8, 9])
        #expect(errors[0].message == "duplicate backend address [::1]:9002 (already used by pools[0].backends[0])")
        #expect(errors[1].message == "duplicate pool name \"web\" (already used by pools[0])")
    }

    @Test func danglingPoolReference() throws {
        let yaml = minimalConfigYAML.replacing("pool: web }", with: "pool: wbe }")
        let error = try #require(singleConfigError(yaml))
        #expect(error.path == "listeners[0].pool")
        #expect(error.line == 2)
        #expect(error.message == "no pool named \"wbe\" (expected one of web); did you mean \"web\"?")
    }

    @Test func listenerAndPoolMayShareAName() throws {
        #expect(try decodeConfig(minimalConfigYAML).config.listeners[0].name == "web")
    }

    // MARK: - Missing and empty

    @Test func emptyAndMissingBackends() {
        let yaml = """
            listeners:
              - { name: a, bind: "0.0.0.0:8080", pool: one }
              - { name: b, bind: "0.0.0.0:8081", pool: two }
            pools:
              - name: one
                backends: []
              - name: two
            """
        let errors = configErrors(yaml)
        #expect(errors.map(\.path) == ["pools[0].backends", "pools[1].backends"])
        #expect(errors.map(\.line) == [6, 7])
        #expect(errors[0].message == "expected at least one backend; found an empty list")
        #expect(errors[1].message == "missing required key \"backends\"")
    }

    @Test func missingTopLevelKeys() {
        let errors = configErrors("workers: 2\n")
        #expect(errors.map(\.path) == ["pools", "listeners"])
        #expect(errors.allSatisfy { $0.message.hasPrefix("missing required key") && $0.line == 1 })
        #expect(errors[1].description == "test.yaml:1:1: listeners: missing required key \"listeners\"")
    }

    @Test func missingNestedKeys() throws {
        let yaml = """
            listeners:
              - { name: web }
              - { bind: "0.0.0.0:81", pool: web }
            pools:
              - backends:
                  - { weight: 2 }
            """
        let errors = configErrors(yaml)
        #expect(Set(errors.map(\.path)) == [
            "listeners[0].bind", "listeners[0].pool", "listeners[1].name",
            "pools[0].name", "pools[0].backends[0].address",
        ])
        #expect(errors.allSatisfy { $0.message.hasPrefix("missing required key \"") })
        #expect(errors.first { $0.path == "pools[0].backends[0].address" }?.line == 6)
    }

    @Test func poolReferencesAreNotCheckedWhenAPoolHasNoUsableName() throws {
        // Reporting listeners[0].pool too would only repeat the real problem.
        let yaml = minimalConfigYAML.replacing("- name: web", with: "- name: [web]")
        let error = try #require(singleConfigError(yaml))
        #expect(error.path == "pools[0].name")
        #expect(error.message == "expected a pool name; found a list")
    }

    @Test func emptyListenersAndPools() {
        let errors = configErrors("listeners: []\npools: []\n")
        #expect(errors.map(\.path) == ["listeners", "pools"])
        #expect(errors.map(\.message) == [
            "expected at least one listener; found an empty list",
            "expected at least one pool; found an empty list",
        ])
    }

    // MARK: - Wrong node types

    @Test func wrongNodeTypes() {
        let yaml = """
            workers: [1, 2]
            log: stderr
            listeners:
              name: web
            pools:
              - name: web
                retries: lots
                backends:
                  - 127.0.0.1:9001
            """
        let errors = configErrors(yaml)
        #expect(errors.map(\.path) == ["workers", "log", "listeners", "pools[0].retries", "pools[0].backends[0]"])
        #expect(errors.map(\.line) == [1, 2, 4, 7, 9])
        #expect(errors[0].message == "expected an integer in 1...64; found a list")
        #expect(errors[1].message == "expected a mapping; found \"stderr\"")
        #expect(errors[2].message == "expected a list of listeners; found a mapping")
        #expect(errors[3].message == "expected an integer in 0...16; found \"lots\"")
        #expect(errors[4].message.hasPrefix("expected a backend mapping like { address: \"127.0.0.1:9001\" }"))
    }

    @Test func topLevelMustBeAMapping() throws {
        let list = try #require(singleConfigError("- a\n- b\n"))
        #expect(list.path == "")
        #expect(list.line == 1)
        #expect(list.message.hasPrefix("expected a mapping with at least \"listeners\" and \"pools\"; found a list"))
        #expect(list.description.hasPrefix("test.yaml:1:1: expected a mapping"))
        let scalar = try #require(singleConfigError("just text\n"))
        #expect(scalar.message.hasSuffix("found \"just text\""))
    }

    @Test(arguments: ["", "\n\n", "# only a comment\n", "---\n", "~\n", "--- null\n"])
    func emptyDocument(yaml: String) throws {
        let error = try #require(singleConfigError(yaml))
        #expect(error.line == nil)
        #expect(error.path == "")
        #expect(error.message.hasPrefix("the configuration is empty"))
        #expect(error.description.hasPrefix("test.yaml: the configuration is empty"))
    }

    // MARK: - Ranges and names

    @Test(arguments: [
        ("workers: 0", "workers", "expected an integer in 1...64; found 0"),
        ("workers: 65", "workers", "expected an integer in 1...64; found 65"),
        ("workers: 2.5", "workers", "expected an integer in 1...64; found \"2.5\""),
        ("instance: \"a/b\"", "instance",
         "expected an instance name of 1 to 64 characters from A-Z, a-z, 0-9, \"_\" and \"-\"; found \"a/b\""),
        ("instance: \(String(repeating: "x", count: 65))", "instance", ""),
        ("instance: \"\"", "instance", ""),
        ("log: { file: sluice.log }", "log.file",
         "expected stderr, stdout or an absolute file path; found \"sluice.log\""),
    ])
    func outOfRangeValues(line: String, path: String, message: String) throws {
        let error = try #require(singleConfigError(line + "\n" + minimalConfigYAML))
        #expect(error.path == path)
        if !message.isEmpty { #expect(error.message == message) }
    }

    @Test func listenerAndBackendLimits() {
        let yaml = """
            listeners:
              - { name: "bad name", bind: "0.0.0.0:8080", pool: web, max_connections: 0 }
              - { name: b, bind: "0.0.0.0:8081", pool: web, max_connections: 10000001 }
            pools:
              - name: web
                retries: 17
                backends: [ { address: "127.0.0.1:9001", weight: 0 }, { address: "127.0.0.1:9002", weight: 1001 } ]
            """
        let errors = configErrors(yaml)
        #expect(errors.map(\.path) == [
            "listeners[0].name", "listeners[0].max_connections", "listeners[1].max_connections",
            "pools[0].retries", "pools[0].backends[0].weight", "pools[0].backends[1].weight",
        ])
        #expect(errors[0].message.hasPrefix("expected a name made of A-Z, a-z, 0-9"))
        #expect(errors[2].message == "expected an integer in 1...10000000; found 10000001")
        #expect(errors[5].message == "expected an integer in 1...1000; found 1001")
    }

    // MARK: - YAML itself

    @Test func yamlSyntaxError() throws {
        let yaml = """
            listeners:
              - { name: web, bind: "0.0.0.0:8080", pool: web
            pools: []
            """
        let error = try #require(singleConfigError(yaml))
        #expect(error.path == "")
        #expect(error.line == 3)
        #expect(error.message.hasPrefix("invalid YAML: "))
    }

    @Test func yamlTabIndentationError() throws {
        let error = try #require(singleConfigError("listeners:\n\t- x\n"))
        #expect(error.line == 2)
        #expect(error.message.hasPrefix("invalid YAML: "))
    }

    @Test func duplicateYAMLKey() throws {
        let error = try #require(singleConfigError("workers: 2\nworkers: 3\n" + minimalConfigYAML))
        #expect(error.line == 1)
        #expect(error.message == "invalid YAML: duplicate key \"workers\" in a mapping")
    }

    @Test func multipleDocumentsAreAnError() throws {
        let error = try #require(singleConfigError(minimalConfigYAML + "\n---\nworkers: 2\n"))
        #expect(error.line == 7)
        #expect(error.message.hasPrefix("invalid YAML: "))
    }

    // MARK: - Collecting everything

    @Test func reportsEveryErrorTogetherInFileOrder() throws {
        let yaml = """
            instance: "my instance"
            workers: 0
            steering: fastest
            data_path: copy
            stall_threshold: 10
            log: { level: loud, access: text, file: stderr }
            listeners:
              - { name: web, bind: "localhost:8080", pool: web, connect_timeout: 0s }
              - { name: web, bind: "0.0.0.0:8081", pool: api, idle_timeout: 5 parsecs }
            pools:
              - name: web
                algorithm: fastest
                retries: 2
                backends:
                  - { address: "127.0.0.1:9001", wieght: 1 }
                  - { address: "127.0.0.1:9001" }
                  - { address: "127.0.0.1" }
            """
        var thrown: ConfigErrors?
        do {
            _ = try ConfigLoader.parse(yaml: yaml, file: "multi.yaml", onlineCPUs: 4)
        } catch {
            thrown = error
        }
        let errors = try #require(thrown).errors
        #expect(errors.count == 14)
        #expect(errors.map(\.path) == [
            "instance", "workers", "steering", "stall_threshold", "log.level",
            "listeners[0].bind", "listeners[0].connect_timeout",
            "listeners[1].name", "listeners[1].pool", "listeners[1].idle_timeout",
            "pools[0].algorithm",
            "pools[0].backends[0].wieght", "pools[0].backends[1].address", "pools[0].backends[2].address",
        ])
        #expect(errors.map(\.line) == [1, 2, 3, 5, 6, 8, 8, 9, 9, 9, 12, 15, 16, 17])
        #expect(errors.allSatisfy { $0.file == "multi.yaml" })
        let description = try #require(thrown).description
        #expect(description.split(separator: "\n").count == 14)
        #expect(description.hasPrefix("multi.yaml:1:11: instance: expected an instance name"))
    }

    // MARK: - Formatting

    @Test func errorDescriptionFormats() {
        #expect(ConfigError(file: "f.yaml", line: 3, column: 7, path: "a.b", message: "m").description == "f.yaml:3:7: a.b: m")
        #expect(ConfigError(file: "f.yaml", line: 3, path: "a.b", message: "m").description == "f.yaml:3: a.b: m")
        #expect(ConfigError(file: "f.yaml", path: "a.b", message: "m").description == "f.yaml: a.b: m")
        #expect(ConfigError(file: "f.yaml", path: "", message: "m").description == "f.yaml: m")
        let both = ConfigErrors([
            ConfigError(file: "f", line: 1, column: 1, path: "x", message: "one"),
            ConfigError(file: "f", line: 2, column: 1, path: "y", message: "two"),
        ])
        #expect(both.description == "f:1:1: x: one\nf:2:1: y: two")
    }
}

@Suite("Config: health checks and passive ejection")
struct ConfigHealthTests {
    @Test func fullHealthCheck() throws {
        let yaml = minimalConfigYAML + """

                health_check: { kind: http, interval: 500ms, timeout: 200ms, rise: 1, fall: 2, path: /healthz, expect_status: 204 }
                passive: { failures: 5, ejection: 30s }
                min_healthy: 0
            """
        let pool = try decodeConfig(yaml).config.pools[0]
        var expected = HealthCheckConfig()
        expected.kind = .http
        expected.interval = .milliseconds(500)
        expected.timeout = .milliseconds(200)
        expected.rise = 1
        expected.fall = 2
        expected.path = "/healthz"
        expected.expectStatus = 204
        #expect(pool.healthCheck == expected)
        #expect(pool.passive?.failures == 5 && pool.passive?.ejection == .seconds(30))
        #expect(pool.minHealthy == 0)
    }

    @Test func healthCheckErrors() {
        let yaml = minimalConfigYAML + "\n    health_check: { kind: icmp, rise: 0, timeout: 5s, interval: 1s, path: no-slash }"
        let paths = configErrors(yaml).map(\.path)
        #expect(paths.contains("pools[0].health_check.kind"))
        #expect(paths.contains("pools[0].health_check.rise"))
        #expect(paths.contains("pools[0].health_check.path"))
        #expect(paths.contains("pools[0].health_check.timeout"))
    }

    @Test func tcpChecksTakeNoPath() {
        let yaml = minimalConfigYAML + "\n    health_check: { kind: tcp, path: /x }"
        #expect(configErrors(yaml).map(\.message).contains("path and expect_status need kind: http"))
    }
}
