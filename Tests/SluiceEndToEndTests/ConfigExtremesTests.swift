import Foundation
import Glibc
import SluicePosix
import SluiceTestSupport
import Testing

// Issue 11: values that `sluice check` accepted and `sluice run` then trapped
// on (at start, at the first connection, or at SIGTERM). Each is now either
// refused by check, or, at the largest value check accepts, survives a run.

/// An edit of the standard e2e configuration for one extreme value.
struct ExtremeValue: Sendable, CustomTestStringConvertible {
    var name: String
    var edit: @Sendable (String) -> String
    var testDescription: String { name }
}

private func listenerExtra(_ text: String) -> @Sendable (String) -> String {
    { $0.replacingOccurrences(of: "pool: backends }", with: "pool: backends, \(text) }") }
}

private func replacing(_ old: String, _ new: String) -> @Sendable (String) -> String {
    { $0.replacingOccurrences(of: old, with: new) }
}

private func poolExtra(_ line: String) -> @Sendable (String) -> String {
    { $0 + "\n    " + line }
}

/// Previously accepted, previously fatal: now refused, with the field path.
private let refusedValues: [(ExtremeValue, String)] = [
    (ExtremeValue(name: "idle_timeout 18446744073709000s", edit: listenerExtra("idle_timeout: 18446744073709000s")),
     "listeners[0].idle_timeout"),
    (ExtremeValue(name: "connect_timeout 9223372036854775807s", edit: listenerExtra("connect_timeout: 9223372036854775807s")),
     "listeners[0].connect_timeout"),
    (ExtremeValue(name: "stall_threshold 18446744073709s", edit: replacing("stall_threshold: 2s", "stall_threshold: 18446744073709s")),
     "stall_threshold"),
    (ExtremeValue(name: "drain_timeout 5124095576030431h", edit: replacing("drain_timeout: 5s", "drain_timeout: 5124095576030431h")),
     "drain_timeout"),
    (ExtremeValue(name: "health interval 5124095576030431h",
                  edit: poolExtra("health_check: { kind: tcp, interval: 5124095576030431h, timeout: 1s }")),
     "pools[0].health_check.interval"),
    (ExtremeValue(name: "just beyond: idle_timeout 86401s", edit: listenerExtra("idle_timeout: 86401s")),
     "listeners[0].idle_timeout"),
    (ExtremeValue(name: "just beyond: stall_threshold 61s", edit: replacing("stall_threshold: 2s", "stall_threshold: 61s")),
     "stall_threshold"),
]

/// The largest value of each that check accepts.
private let acceptedMaxima: [ExtremeValue] = [
    ExtremeValue(name: "idle_timeout 24h", edit: listenerExtra("idle_timeout: 24h")),
    ExtremeValue(name: "connect_timeout 24h", edit: listenerExtra("connect_timeout: 24h")),
    ExtremeValue(name: "stall_threshold 60s", edit: replacing("stall_threshold: 2s", "stall_threshold: 60s")),
    ExtremeValue(name: "drain_timeout 24h", edit: replacing("drain_timeout: 5s", "drain_timeout: 24h")),
    ExtremeValue(name: "health interval and timeout 1h",
                 edit: poolExtra("health_check: { kind: tcp, interval: 1h, timeout: 1h }")),
    ExtremeValue(name: "passive ejection 5m", edit: poolExtra("passive: { failures: 1000, ejection: 5m }")),
    ExtremeValue(name: "max_connections 10000000", edit: listenerExtra("max_connections: 10000000")),
]

private func writeConfig(_ yaml: String) throws -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("extreme-\(UUID().uuidString).yaml").path
    try yaml.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

@Suite("Extreme configuration values: refused by check, or survived by run", .serialized)
struct ConfigExtremesTests {
    @Test("values that used to trap are refused by sluice check, naming the field", arguments: refusedValues)
    func refusedByCheck(value: ExtremeValue, path: String) throws {
        let yaml = value.edit(proxyConfig(port: freePort(), backends: ["127.0.0.1:9001"]))
        let file = try writeConfig(yaml)
        defer { unlink(file) }
        let (status, output) = try runCommand(sluiceBinary, ["check", "-c", file])
        #expect(status == 2, "\(output)")
        #expect(output.contains(": \(path): expected a duration in "), "\(output)")
    }

    @Test("a backend that is the proxy's own listener is refused by sluice check")
    func selfBackendRefused() throws {
        let port = freePort()
        let yaml = proxyConfig(port: port, backends: ["127.0.0.1:\(port)"], bindHost: "0.0.0.0")
        let file = try writeConfig(yaml)
        defer { unlink(file) }
        let (status, output) = try runCommand(sluiceBinary, ["check", "-c", file])
        #expect(status == 2, "\(output)")
        #expect(output.contains("pools[0].backends[0].address: backend 127.0.0.1:\(port) is this proxy's own listener"), "\(output)")
    }

    @Test("the largest accepted values pass check, proxy a connection and drain cleanly on SIGTERM", arguments: acceptedMaxima)
    func maximaRunCleanly(value: ExtremeValue) throws {
        let echo = try TestServer.echo()
        defer { echo.stop() }
        let port = freePort()
        let yaml = value.edit(proxyConfig(port: port, backends: [echo.address]))
        let file = try writeConfig(yaml)
        defer { unlink(file) }
        let (checkStatus, checkOutput) = try runCommand(sluiceBinary, ["check", "-c", file])
        #expect(checkStatus == 0, "\(checkOutput)")

        let sluice = try SluiceProcess.run(config: yaml)
        let fd = try connectTCP("127.0.0.1", port)
        #expect(sendAll(fd, Array("ping".utf8)))
        shutdown(fd, Int32(SHUT_WR))
        let (bytes, cleanEOF) = readToEnd(fd)
        close(fd)
        #expect(String(decoding: bytes, as: UTF8.self) == "ping" && cleanEOF, "\(sluice.log)")
        // The session is gone before the signal, so the drain does not wait for drain_timeout.
        try sluice.waitForLog("bytes_in=", seconds: 10)

        let status = try sluice.stop(seconds: 15)
        #expect(status == 0, "\(sluice.log)")
        #expect(!sluice.log.contains("Fatal error"), "\(sluice.log)")
        #expect(sluice.log.contains("clean exit"), "\(sluice.log)")
    }

    @Test("check and run warn, with the numbers, when max_connections needs more descriptors than RLIMIT_NOFILE")
    func descriptorWarning() throws {
        let echo = try TestServer.echo()
        defer { echo.stop() }
        let port = freePort()
        // 100 descriptors: far below 2 x 1000 connections, enough to start one worker.
        let yaml = listenerExtra("max_connections: 1000")(proxyConfig(port: port, backends: [echo.address], workers: 1))
        let file = try writeConfig(yaml)
        defer { unlink(file) }
        let (status, output) = try runCommand("/usr/bin/prlimit", ["--nofile=100", "--", sluiceBinary, "check", "-c", file])
        #expect(status == 0, "a warning, not an error: \(output)")
        #expect(output.contains("warning: the listeners' max_connections add up to 1000"), "\(output)")
        #expect(output.contains("open-files limit (RLIMIT_NOFILE) is 100"), "\(output)")

        let sluice = try SluiceProcess(arguments: ["run"], configYAML: yaml, launcher: ["/usr/bin/prlimit", "--nofile=100", "--"])
        try sluice.waitForLog("ready", seconds: 20)
        #expect(sluice.log.contains("open-files limit (RLIMIT_NOFILE) is 100"), "\(sluice.log)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }
}
