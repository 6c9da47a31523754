import Foundation
import Glibc
import Logging
@testable import SluiceCore
@testable import SluicePosix
@testable import SluiceServer
import CAres
import SluiceTestSupport
import Synchronization
import Testing

/// dnsmasq on 127.0.0.1 answering the names of a hosts file under `.test`
/// (any other `.test` name: NXDOMAIN) with a TTL of 1 s. Daemonized with a
/// pid file and stopped with SIGKILL, like the UDP end-to-end tests' server:
/// Foundation's Process waiting on a foreground dnsmasq stops reaping other
/// children. The hosts file sits in a `--hostsdir`, which dnsmasq watches
/// with inotify: children of the test process inherit a mask that blocks
/// SIGHUP too, so dnsmasq would never see a SIGHUP asking it to re-read.
private final class HostsDNSServer {
    let port: UInt16
    private let directory: String
    private let pidFile: String

    init(hosts: String) throws {
        let base = NSTemporaryDirectory() + "sluice-dns-\(UUID().uuidString)"
        directory = base + ".hosts.d"
        pidFile = base + ".pid"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        try Self.replace(directory + "/hosts", with: hosts)
        var lastOutput = ""
        // A port free a moment ago may be taken by a parallel test before dnsmasq binds it.
        for _ in 0..<5 {
            let candidate = freeUDPPort()
            let (status, output) = try runCommand("/usr/sbin/dnsmasq", [
                "--no-resolv", "--no-hosts", "--port=\(candidate)", "--bind-interfaces", "--listen-address=127.0.0.1",
                "--user=root", "--pid-file=\(pidFile)", "--hostsdir=\(directory)", "--local-ttl=1", "--local=/test/",
            ])
            if status == 0 {
                port = candidate
                return
            }
            lastOutput = output
        }
        throw ServerError("dnsmasq did not start: \(lastOutput)")
    }

    var nameserver: SocketAddressSpec { SocketAddressSpec(host: "127.0.0.1", port: port, family: .inet) }

    /// Rewrites the hosts file; dnsmasq reads it again at once (inotify).
    func serve(_ hosts: String) throws {
        try Self.replace(directory + "/hosts", with: hosts)
    }

    /// Written beside the directory and renamed in, so that dnsmasq never reads half a file.
    private static func replace(_ path: String, with text: String) throws {
        let outside = NSTemporaryDirectory() + "sluice-dns-\(UUID().uuidString).tmp"
        try text.write(toFile: outside, atomically: false, encoding: .utf8)
        guard rename(outside, path) == 0 else { throw ServerError("rename \(outside): \(errnoDescription(errno))") }
    }

    private var pid: Int32? {
        (try? String(contentsOfFile: pidFile, encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    deinit {
        if let pid { kill(pid, SIGKILL) }
        try? FileManager.default.removeItem(atPath: pidFile)
        try? FileManager.default.removeItem(atPath: directory)
    }
}

private func freeUDPPort() -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    defer { closeDescriptor(fd) }
    var address = sockaddr_in(sin_family: sa_family_t(AF_INET), sin_port: 0, sin_addr: in_addr(s_addr: inet_addr("127.0.0.1")), sin_zero: (0, 0, 0, 0, 0, 0, 0, 0))
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = bind(fd, $0, length); _ = getsockname(fd, $0, &length) }
    }
    return UInt16(bigEndian: address.sin_port)
}

/// The descriptors of this process connected to 127.0.0.1:`port`: only the
/// resolvers of the test that owns that nameserver (tests run in parallel).
private func descriptorsConnected(toPort port: UInt16) -> [Int32] {
    openDescriptors().filter { fd in
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let peer = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) }
        }
        guard peer == 0 else { return false }
        let address = SocketAddress(storage: storage, length: length)
        return address.ipText == "127.0.0.1" && address.port == port
    }
}

/// What a discovery published and logged, gathered from its thread.
private final class DiscoveryRecord: Sendable {
    let tables = Mutex<[BackendDiscovery.Table]>([])
    let warnings = Mutex<[(message: String, metadata: Logger.Metadata)]>([])

    var logger: Logger {
        Logger(label: "test-dns") { _ in RecordingLogHandler(record: self) }
    }

    var latest: BackendDiscovery.Table? { tables.withLock { $0.last } }

    /// Waits up to `seconds` for the latest table to satisfy `condition`.
    func waitFor(_ seconds: Double, _ condition: (BackendDiscovery.Table) -> Bool) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            if let table = latest, condition(table) { return true }
            usleep(20_000)
        }
        return false
    }

    func waitForWarning(_ seconds: Double, containing text: String) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            if warnings.withLock({ $0.contains { "\($0.metadata["error"] ?? "")".contains(text) } }) { return true }
            usleep(20_000)
        }
        return false
    }
}

private struct RecordingLogHandler: LogHandler {
    let record: DiscoveryRecord
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        guard event.level >= .warning else { return }
        record.warnings.withLock { $0.append(("\(event.message)", event.metadata ?? [:])) }
    }
}

private func hosts(_ name: String, _ ips: [String]) -> String {
    ips.map { "\($0) \(name)\n" }.joined()
}

private func addresses(_ ips: [String], port: UInt16) -> [SocketAddressSpec] {
    ResolveSchedule.addressSet(ips.map { SocketAddressSpec(host: $0, port: port, family: $0.contains(":") ? .inet6 : .inet) })
}

@Suite("Backends found by DNS (c-ares against a local dnsmasq)")
struct DNSDiscoveryTests {
    let app = NamedBackend(host: "app.sluice.test", port: 8080, weight: 2)

    private func settings(_ server: HostsDNSServer, timeout: Duration = .milliseconds(200)) -> ResolveConfig {
        ResolveConfig(minTTL: .milliseconds(100), maxTTL: .seconds(5), timeout: timeout, nameservers: [server.nameserver])
    }

    @Test("three A records, then two, then four: onChange follows each within the TTL and some slack")
    func followsChanges() throws {
        let server = try HostsDNSServer(hosts: hosts(app.host, ["127.0.0.1", "127.0.0.2", "127.0.0.3"]))
        let record = DiscoveryRecord()
        let discovery = try BackendDiscovery(names: [app], settings: settings(server), logger: record.logger) { table in
            record.tables.withLock { $0.append(table) }
        }
        try discovery.start()
        defer { discovery.stop() }
        let three = addresses(["127.0.0.1", "127.0.0.2", "127.0.0.3"], port: 8080)
        #expect(record.waitFor(5) { $0 == [app: three] }, "\(record.tables.withLock { $0 })")
        #expect(discovery.current == [app: three])

        try server.serve(hosts(app.host, ["127.0.0.2", "127.0.0.4"]))
        #expect(record.waitFor(5) { $0 == [app: addresses(["127.0.0.2", "127.0.0.4"], port: 8080)] })
        let four = ["127.0.0.1", "127.0.0.5", "127.0.0.6", "127.0.0.7"]
        try server.serve(hosts(app.host, four))
        #expect(record.waitFor(5) { $0 == [app: addresses(four, port: 8080)] })
        #expect(record.tables.withLock { $0.count } == 3, "one publication per change: \(record.tables.withLock { $0 })")
        #expect(record.warnings.withLock { $0.isEmpty })
    }

    @Test("A and AAAA records together are all backends; resolveNow answers without a thread")
    func ipv4AndIPv6() throws {
        let server = try HostsDNSServer(hosts: hosts(app.host, ["127.0.0.9", "::1", "fd00::7"]))
        let table = BackendDiscovery.resolveNow([app], settings: settings(server), timeoutMilliseconds: 3000)
        #expect(table == [app: addresses(["127.0.0.9", "::1", "fd00::7"], port: 8080)])
        #expect(table[app]?.filter { $0.family == .inet6 }.count == 2)
        #expect(descriptorsConnected(toPort: server.port).isEmpty, "resolveNow closes its sockets")
    }

    @Test("forty A records, more than a UDP answer holds: all forty, the truncated answer asked again over TCP")
    func truncatedAnswer() throws {
        let ips = (1...40).map { "127.0.1.\($0)" }
        let server = try HostsDNSServer(hosts: hosts(app.host, ips))
        let table = BackendDiscovery.resolveNow([app], settings: settings(server), timeoutMilliseconds: 3000)
        #expect(table == [app: addresses(ips, port: 8080)])
    }

    @Test("resolveNow: a name that does not exist is absent; a silent nameserver costs the timeout, not more")
    func resolveNowFailures() throws {
        let server = try HostsDNSServer(hosts: hosts(app.host, ["127.0.0.1"]))
        let missing = NamedBackend(host: "missing.sluice.test", port: 80)
        let table = BackendDiscovery.resolveNow([app, missing], settings: settings(server), timeoutMilliseconds: 3000)
        #expect(table == [app: addresses(["127.0.0.1"], port: 8080)])

        let silent = try SilentNameserver()
        let start = monotonicMilliseconds()
        var slow = settings(server, timeout: .seconds(5))
        slow.nameservers = [silent.address]
        #expect(BackendDiscovery.resolveNow([app], settings: slow, timeoutMilliseconds: 300).isEmpty)
        let elapsed = monotonicMilliseconds() - start
        #expect(elapsed >= 290 && elapsed < 1500, "\(elapsed) ms")
        #expect(descriptorsConnected(toPort: silent.address.port).isEmpty, "the unanswered query's socket is closed")
    }

    @Test("NXDOMAIN keeps the last good answer and logs a warning naming the host and the error")
    func nxdomainKeepsAnswer() throws {
        let server = try HostsDNSServer(hosts: hosts(app.host, ["127.0.0.1", "127.0.0.2"]))
        let record = DiscoveryRecord()
        let discovery = try BackendDiscovery(names: [app], settings: settings(server), logger: record.logger) { table in
            record.tables.withLock { $0.append(table) }
        }
        try discovery.start()
        defer { discovery.stop() }
        let good = [app: addresses(["127.0.0.1", "127.0.0.2"], port: 8080)]
        #expect(record.waitFor(5) { $0 == good })
        try server.serve("127.0.0.1 other.sluice.test\n")
        #expect(record.waitForWarning(5, containing: "NXDOMAIN"), "\(record.warnings.withLock { $0 })")
        let warning = try #require(record.warnings.withLock { $0.first })
        #expect(warning.metadata["host"] == "app.sluice.test:8080")
        #expect(warning.message.contains("keeping the last 2 addresses"))
        #expect(discovery.current == good)
        #expect(record.tables.withLock { $0.count } == 1)
    }

    @Test("a nameserver that stops answering: the answers stay, the timeout is logged")
    func silentNameserverKeepsAnswer() throws {
        let server = try HostsDNSServer(hosts: hosts(app.host, ["127.0.0.3"]))
        let record = DiscoveryRecord()
        let discovery = try BackendDiscovery(names: [app], settings: settings(server), logger: record.logger) { table in
            record.tables.withLock { $0.append(table) }
        }
        try discovery.start()
        defer { discovery.stop() }
        let good = [app: addresses(["127.0.0.3"], port: 8080)]
        #expect(record.waitFor(5) { $0 == good })
        let silent = try SilentNameserver()
        var moved = settings(server)
        moved.nameservers = [silent.address]
        discovery.update(names: [app], settings: moved)
        #expect(record.waitForWarning(5, containing: "ETIMEOUT"), "\(record.warnings.withLock { $0 })")
        #expect(discovery.current == good)
        #expect(record.tables.withLock { $0.count } == 1)
    }

    @Test("update: a name removed leaves the table at once, a name added is looked up; answers kept stay")
    func updateNames() throws {
        let db = NamedBackend(host: "db.sluice.test", port: 5432)
        let web = NamedBackend(host: "web.sluice.test", port: 80)
        let server = try HostsDNSServer(hosts: hosts(app.host, ["127.0.0.1"]) + hosts(db.host, ["127.0.0.2"]) + hosts(web.host, ["::1"]))
        let record = DiscoveryRecord()
        let discovery = try BackendDiscovery(names: [app, db], settings: settings(server), logger: record.logger) { table in
            record.tables.withLock { $0.append(table) }
        }
        try discovery.start()
        defer { discovery.stop() }
        #expect(record.waitFor(5) { $0.count == 2 })
        discovery.update(names: [app], settings: settings(server))
        #expect(record.waitFor(5) { $0 == [app: addresses(["127.0.0.1"], port: 8080)] })
        discovery.update(names: [app, web], settings: settings(server))
        #expect(record.waitFor(5) { $0 == [app: addresses(["127.0.0.1"], port: 8080), web: addresses(["::1"], port: 80)] })
    }

    @Test("stop does not wait for a lookup under way, and closes the resolver's sockets; it may be called twice")
    func stopIsClean() throws {
        let silent = try SilentNameserver()
        let record = DiscoveryRecord()
        let settings = ResolveConfig(minTTL: .milliseconds(100), timeout: .seconds(10), nameservers: [silent.address])
        let discovery = try BackendDiscovery(names: [app], settings: settings, logger: record.logger) { table in
            record.tables.withLock { $0.append(table) }
        }
        try discovery.start()
        let end = Date().addingTimeInterval(5)
        while descriptorsConnected(toPort: silent.address.port).isEmpty && Date() < end { usleep(10_000) }
        #expect(!descriptorsConnected(toPort: silent.address.port).isEmpty, "the lookup's socket, while it waits")
        let start = monotonicMilliseconds()
        discovery.update(names: [app], settings: settings)
        discovery.stop()
        #expect(monotonicMilliseconds() - start < 2000)
        #expect(descriptorsConnected(toPort: silent.address.port).isEmpty)
        discovery.stop()
        discovery.update(names: [], settings: settings)
        #expect(throws: ServerError.self) { try discovery.start() }
        #expect(discovery.current.isEmpty)
        #expect(record.warnings.withLock { $0.isEmpty }, "a lookup cut short by stop is not a failure")
    }

    @Test("DNSResolver: the records' TTL comes with the answer; NXDOMAIN is an error that says so")
    func resolverAnswers() throws {
        let server = try HostsDNSServer(hosts: hosts(app.host, ["127.0.0.1", "::1"]))
        var settings = settings(server)
        // A second nameserver, IPv6 with a port of its own, that is never needed.
        settings.nameservers.append(SocketAddressSpec(host: "::1", port: server.port, family: .inet6))
        let resolver = try DNSResolver(settings: settings)
        var results: [String: Result<DNSAnswer, DNSLookupError>] = [:]
        for host in [app.host, "missing.sluice.test"] {
            resolver.lookup(host: host, port: 443) { results[host] = $0 }
        }
        let end = monotonicMilliseconds() + 5000
        #expect(resolver.pendingLookups == 2)
        while resolver.pendingLookups > 0, monotonicMilliseconds() < end {
            resolver.process(timeoutMilliseconds: 100)
        }
        #expect(results.count == 2)
        let answer = try #require(try results[app.host]?.get())
        #expect(ResolveSchedule.addressSet(answer.addresses) == addresses(["127.0.0.1", "::1"], port: 443))
        #expect(answer.ttl == .seconds(1))
        #expect(throws: DNSLookupError(status: ARES_ENOTFOUND)) { try results["missing.sluice.test"]?.get() }
        #expect(DNSLookupError(status: ARES_ENOTFOUND).description == "NXDOMAIN, no such name (ARES_ENOTFOUND)")
        resolver.close()
        resolver.close()
        var late: Result<DNSAnswer, DNSLookupError>?
        resolver.lookup(host: app.host, port: 1) { late = $0 }
        #expect(throws: DNSLookupError(status: ARES_EDESTRUCTION)) { try late?.get() }
    }
}

/// A UDP socket on 127.0.0.1 that reads nothing: queries sent to it time out.
private final class SilentNameserver {
    let fd: Int32
    let address: SocketAddressSpec

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        self.fd = fd
        var sin = sockaddr_in(sin_family: sa_family_t(AF_INET), sin_port: 0, sin_addr: in_addr(s_addr: inet_addr("127.0.0.1")), sin_zero: (0, 0, 0, 0, 0, 0, 0, 0))
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &sin) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw ServerError("silent nameserver: \(errnoDescription(errno))") }
        address = SocketAddressSpec(host: "127.0.0.1", port: UInt16(bigEndian: sin.sin_port), family: .inet)
    }

    deinit { closeDescriptor(fd) }
}
