import Testing
@testable import SluiceCore

/// One bounded key: where it goes in a file, the values at its edges that
/// must be accepted, and values just (or far) beyond that must be refused.
struct BoundedKey: Sendable, CustomTestStringConvertible {
    var path: String
    var place: @Sendable (String) -> String
    var accepted: [String]
    var rejected: [String]
    /// The range as the error message states it.
    var range: String

    var testDescription: String { path }
}

private func topLevel(_ key: String) -> @Sendable (String) -> String {
    { "\(key): \($0)\n" + minimalConfigYAML }
}

private func listenerKey(_ key: String) -> @Sendable (String) -> String {
    { minimalConfigYAML.replacing("pool: web }", with: "pool: web, \(key): \($0) }") }
}

private func poolLines(_ line: @escaping @Sendable (String) -> String) -> @Sendable (String) -> String {
    { minimalConfigYAML + "\n    " + line($0) }
}

private let boundedKeys: [BoundedKey] = [
    BoundedKey(path: "stall_threshold", place: topLevel("stall_threshold"),
               accepted: ["100ms", "60s", "1m"], rejected: ["99ms", "60001ms", "18446744073709s"], range: "100ms...1m"),
    BoundedKey(path: "drain_timeout", place: topLevel("drain_timeout"),
               accepted: ["1ms", "24h", "86400s"], rejected: ["0.999ms", "86401s", "5124095576030431h"], range: "1ms...24h"),
    BoundedKey(path: "listeners[0].connect_timeout", place: listenerKey("connect_timeout"),
               accepted: ["1ms", "24h"], rejected: ["1441m", "9223372036854775807s"], range: "1ms...24h"),
    BoundedKey(path: "listeners[0].idle_timeout", place: listenerKey("idle_timeout"),
               accepted: ["1ms", "86400s"], rejected: ["86400001ms", "18446744073709000s", "99999999999999999999999h"],
               range: "1ms...24h"),
    BoundedKey(path: "pools[0].health_check.interval",
               place: poolLines { "health_check: { interval: \($0), timeout: 1ms }" },
               accepted: ["10ms", "1h"], rejected: ["9ms", "3601s", "999999999999999999999999999999h"], range: "10ms...1h"),
    BoundedKey(path: "pools[0].health_check.timeout",
               place: poolLines { "health_check: { interval: 1h, timeout: \($0) }" },
               accepted: ["1ms", "1h"], rejected: ["999us", "3601s"], range: "1ms...1h"),
    BoundedKey(path: "pools[0].passive.ejection", place: poolLines { "passive: { ejection: \($0) }" },
               accepted: ["1ms", "5m", "300s"], rejected: ["301s", "24h"], range: "1ms...5m"),
    BoundedKey(path: "rebalance.interval", place: { "rebalance: { interval: \($0) }\n" + minimalConfigYAML },
               accepted: ["10ms", "1s"], rejected: ["9ms", "1001ms"], range: "10ms...1s"),
    BoundedKey(path: "rebalance.ratio", place: { "rebalance: { ratio: \($0) }\n" + minimalConfigYAML },
               accepted: ["1.0001", "100"], rejected: ["1", "1.0", "100.5", ".inf", ".nan", "1e400"],
               range: "above 1.0 and at most 100"),
    BoundedKey(path: "workers", place: topLevel("workers"),
               accepted: ["1", "64"], rejected: ["0", "65", "9223372036854775808"], range: "1...64"),
    BoundedKey(path: "listeners[0].max_connections", place: listenerKey("max_connections"),
               accepted: ["1", "10_000_000"], rejected: ["0", "10000001"], range: "1...10000000"),
    BoundedKey(path: "pools[0].retries", place: poolLines { "retries: \($0)" },
               accepted: ["0", "16"], rejected: ["-1", "17"], range: "0...16"),
    BoundedKey(path: "pools[0].backends[0].weight",
               place: { minimalConfigYAML.replacing("\"127.0.0.1:9001\" }", with: "\"127.0.0.1:9001\", weight: \($0) }") },
               accepted: ["1", "1000"], rejected: ["0", "1001"], range: "1...1000"),
    BoundedKey(path: "pools[0].health_check.rise", place: poolLines { "health_check: { rise: \($0) }" },
               accepted: ["1", "100"], rejected: ["0", "101"], range: "1...100"),
    BoundedKey(path: "pools[0].health_check.fall", place: poolLines { "health_check: { fall: \($0) }" },
               accepted: ["1", "100"], rejected: ["0", "101"], range: "1...100"),
    BoundedKey(path: "pools[0].health_check.expect_status",
               place: poolLines { "health_check: { kind: http, expect_status: \($0) }" },
               accepted: ["100", "599"], rejected: ["99", "600"], range: "100...599"),
    BoundedKey(path: "pools[0].passive.failures", place: poolLines { "passive: { failures: \($0) }" },
               accepted: ["1", "1000"], rejected: ["0", "1001"], range: "1...1000"),
    BoundedKey(path: "pools[0].min_healthy", place: poolLines { "min_healthy: \($0)" },
               accepted: ["0", "1000"], rejected: ["-1", "1001"], range: "0...1000"),
    BoundedKey(path: "sockmap_after_turns", place: topLevel("sockmap_after_turns"),
               accepted: ["1", "1000000", "off"], rejected: ["0", "1000001"], range: "1...1000000"),
    BoundedKey(path: "sockmap_after_bytes", place: topLevel("sockmap_after_bytes"),
               accepted: ["1048576", "1099511627776", "off"], rejected: ["1048575", "1099511627777"],
               range: "1048576...1099511627776"),
]

@Suite("Config bounds")
struct ConfigBoundsTests {
    @Test("values at the edge of each range are accepted", arguments: boundedKeys)
    func edgesAreAccepted(key: BoundedKey) throws {
        for value in key.accepted {
            _ = try decodeConfig(key.place(value))
        }
    }

    @Test("values beyond each range are refused with the field path, line and range", arguments: boundedKeys)
    func beyondIsRefused(key: BoundedKey) throws {
        for value in key.rejected {
            let error = try #require(singleConfigError(key.place(value)), "\(key.path): \(value)")
            #expect(error.path == key.path, "\(value)")
            #expect(error.line != nil && error.column != nil, "\(value)")
            #expect(error.message.contains(key.range), "\(value): \(error.message)")
            #expect(error.message.hasSuffix(value) || error.message.hasSuffix("\"\(value)\""), "\(value): \(error.message)")
        }
    }

    @Test("the edges decode to the values written")
    func edgesDecodeExactly() throws {
        let high = try decodeConfig("""
            stall_threshold: 60s
            drain_timeout: 24h
            rebalance: { interval: 1s, ratio: 100 }
            listeners:
              - { name: web, bind: "0.0.0.0:8080", pool: web, connect_timeout: 24h, idle_timeout: 24h }
            pools:
              - name: web
                backends: [ { address: "127.0.0.1:9001" } ]
                health_check: { interval: 1h, timeout: 1h }
                passive: { ejection: 5m }
            """).config
        #expect(high.stallThreshold == .seconds(60))
        #expect(high.drainTimeout == .seconds(86_400))
        #expect(high.rebalance == RebalanceConfig(interval: .seconds(1), ratio: 100))
        #expect(high.listeners[0].connectTimeout == .seconds(86_400))
        #expect(high.listeners[0].idleTimeout == .seconds(86_400))
        #expect(high.pools[0].healthCheck?.interval == .seconds(3600))
        #expect(high.pools[0].passive?.ejection == .seconds(300))
    }

    @Test("a duration too large for Duration itself is reported as out of range, not as a bad unit")
    func overflowingDurationNamesTheRange() throws {
        let error = try #require(singleConfigError(topLevel("drain_timeout")("99999999999999999999999999999999h")))
        #expect(error.message == "expected a duration in 1ms...24h; found \"99999999999999999999999999999999h\"")
    }

    @Test("zero keeps its own message")
    func zeroDuration() throws {
        let error = try #require(singleConfigError(listenerKey("idle_timeout")("0s")))
        #expect(error.message == "expected a duration greater than zero; found \"0s\"")
    }

    @Test("sockmap_after_turns: off by default; a count only with data_path auto, since no other path promotes")
    func sockmapAfterTurns() throws {
        #expect(try decodeConfig(minimalConfigYAML).config.sockmapAfterTurns == nil)
        #expect(try decodeConfig("data_path: auto\nsockmap_after_turns: 8\n" + minimalConfigYAML).config.sockmapAfterTurns == 8)
        #expect(try decodeConfig("sockmap_after_turns: 8\n" + minimalConfigYAML).config.sockmapAfterTurns == 8)
        #expect(try decodeConfig("data_path: copy\nsockmap_after_turns: off\n" + minimalConfigYAML).config.sockmapAfterTurns == nil)
        let error = try #require(singleConfigError("data_path: splice\nsockmap_after_turns: 8\n" + minimalConfigYAML))
        #expect(error.path == "sockmap_after_turns" && error.line == 2)
        #expect(error.message.contains("only data_path: auto moves connections into the sockmap"))
    }

    @Test("sockmap_after_bytes: 64 MiB by default with data_path auto, absent with the others; set only with auto")
    func sockmapAfterBytes() throws {
        #expect(try decodeConfig(minimalConfigYAML).config.sockmapAfterBytes == 64 << 20)
        #expect(try decodeConfig("data_path: splice\n" + minimalConfigYAML).config.sockmapAfterBytes == nil)
        #expect(try decodeConfig("sockmap_after_bytes: 1048576\n" + minimalConfigYAML).config.sockmapAfterBytes == 1 << 20)
        #expect(try decodeConfig("sockmap_after_bytes: off\n" + minimalConfigYAML).config.sockmapAfterBytes == nil)
        #expect(try decodeConfig("data_path: copy\nsockmap_after_bytes: off\n" + minimalConfigYAML).config.sockmapAfterBytes == nil)
        let error = try #require(singleConfigError("data_path: sockmap\nsockmap_after_bytes: 1048576\n" + minimalConfigYAML))
        #expect(error.path == "sockmap_after_bytes" && error.line == 2)
        #expect(error.message.contains("only data_path: auto moves connections into the sockmap"))
    }

    @Test("the default values are inside their ranges")
    func defaultsAreInRange() {
        #expect(ConfigBounds.sockmapAfterBytes.contains(ConfigDefaults.sockmapAfterBytes))
        #expect(ConfigBounds.stallThreshold.contains(ConfigDefaults.stallThreshold))
        #expect(ConfigBounds.drainTimeout.contains(ConfigDefaults.drainTimeout))
        #expect(ConfigBounds.connectTimeout.contains(ConfigDefaults.connectTimeout))
        #expect(ConfigBounds.idleTimeout.contains(ConfigDefaults.idleTimeout))
        #expect(ConfigBounds.healthInterval.contains(HealthCheckConfig().interval))
        #expect(ConfigBounds.healthTimeout.contains(HealthCheckConfig().timeout))
        #expect(ConfigBounds.ejection.contains(PassiveConfig().ejection))
        #expect(ConfigBounds.rebalanceInterval.contains(RebalanceConfig().interval))
        #expect(ConfigBounds.maxConnections.contains(ConfigDefaults.maxConnections))
    }
}
