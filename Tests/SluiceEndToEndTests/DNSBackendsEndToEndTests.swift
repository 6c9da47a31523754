import Foundation
import Glibc
import SluiceTestSupport
import Testing

/// dnsmasq serving `app.test` from a hosts directory the test rewrites
/// (dnsmasq watches it with inotify: SIGHUP would not do, test children
/// inherit it blocked), with a TTL of 1 s; other `.test` names are NXDOMAIN.
/// Daemonized and stopped with SIGKILL, as `DNSServer` is (see there why).
private final class ChangingDNS {
    let port = freePort()
    let directory = NSTemporaryDirectory() + "sluice-dns-\(UUID().uuidString)"
    var hostsDirectory: String { directory + "/hosts.d" }
    var pidFile: String { directory + "/pid" }

    init(_ addresses: [String]) throws {
        try FileManager.default.createDirectory(atPath: hostsDirectory, withIntermediateDirectories: true)
        try write(addresses)
        let (status, out) = try runCommand("/usr/sbin/dnsmasq", [
            "--no-resolv", "--no-hosts", "--port=\(port)", "--bind-interfaces", "--listen-address=127.0.0.1",
            "--user=root", "--pid-file=\(pidFile)", "--hostsdir=\(hostsDirectory)", "--local=/test/", "--local-ttl=1",
        ])
        guard status == 0 else { throw TimedOut(description: "dnsmasq did not start: \(out)") }
        try waitUntil(10, "dnsmasq answering on \(port)") { lookup().count == addresses.count }
    }

    /// Written beside the directory, renamed in: dnsmasq never reads half a file.
    private func write(_ addresses: [String]) throws {
        let staged = directory + "/hosts"
        try addresses.map { "\($0) app.test\n" }.joined().write(toFile: staged, atomically: false, encoding: .utf8)
        guard rename(staged, hostsDirectory + "/app") == 0 else { throw TimedOut(description: "rename: errno \(errno)") }
    }

    /// New records.
    func serve(_ addresses: [String]) throws {
        try write(addresses)
        try waitUntil(10, "dnsmasq to serve \(addresses)") { Set(lookup()) == Set(addresses) }
    }

    func lookup() -> [String] {
        let reply = try? runCommand("/usr/bin/dig", ["@127.0.0.1", "-p", "\(port)", "+short", "+tries=1", "+time=1", "app.test", "A"])
        return (reply?.1 ?? "").split(separator: "\n").map(String.init).filter { $0.first?.isNumber == true }
    }

    var pid: Int32? {
        (try? String(contentsOfFile: pidFile, encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    deinit {
        if let pid { kill(pid, SIGKILL) }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// Echo servers on four loopback addresses and one port: each says which
/// it is ("127.0.0.1x\n"), then echoes.
private func namedEchoes(_ hosts: [String]) throws -> [TestServer] {
    var servers: [TestServer] = []
    var port: UInt16 = 0
    for host in hosts {
        let server = try TestServer(host: host, port: port) { fd in
            _ = sendAll(fd, Array("\(host)\n".utf8))
            echoUntilEOF(fd)
        }
        port = server.port
        servers.append(server)
    }
    return servers
}

/// Connections through the proxy, by the backend that answered each.
private final class Reached {
    var connections: [(host: String, fd: Int32)] = []

    /// Opens `count` connections; the backends they reached.
    func open(_ count: Int, port: UInt16) -> Set<String> {
        var hosts = Set<String>()
        for _ in 0..<count {
            guard let fd = try? connectTCP("127.0.0.1", port) else { continue }
            var line: [UInt8] = []
            var byte: UInt8 = 0
            while recv(fd, &byte, 1, 0) == 1 && byte != 10 { line.append(byte) }
            let host = String(decoding: line, as: UTF8.self)
            connections.append((host, fd))
            hosts.insert(host)
        }
        return hosts
    }

    /// Whether each connection to `host` still echoes.
    func echoing(_ host: String) -> [Bool] {
        connections.filter { $0.host == host }.map { connection in
            guard sendAll(connection.fd, [42]) else { return false }
            var byte: UInt8 = 0
            return recv(connection.fd, &byte, 1, 0) == 1 && byte == 42
        }
    }

    deinit { for connection in connections { close(connection.fd) } }
}

@Suite("Backends found by DNS: the pool follows the records", .serialized)
struct DNSBackendsEndToEndTests {
    @Test("three records, then two, then four: the pool follows within the TTL; a vanished backend's connections drain")
    func poolFollowsRecords() throws {
        let hosts = ["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14"]
        let echoes = try namedEchoes(hosts)
        let dns = try ChangingDNS(Array(hosts.prefix(3)))
        let port = freePort()
        let config = """
            instance: e2e\(port)
            workers: 2
            drain_timeout: 2s
            log: { level: info, access: off, file: stderr }
            admin: { metrics: off }
            resolve: { min_ttl: 200ms, max_ttl: 1s, nameservers: ["127.0.0.1:\(dns.port)"] }
            listeners:
              - { name: app, bind: "127.0.0.1:\(port)", pool: app }
            pools:
              - { name: app, algorithm: round_robin, backends: [ { address: "app.test:\(echoes[0].port)" } ] }
            """
        let sluice = try SluiceProcess.run(config: config)
        let reached = Reached()
        #expect(reached.open(9, port: port) == Set(hosts.prefix(3)), "resolved at start: \(sluice.log)")

        try dns.serve(Array(hosts.prefix(2)))
        let followed = try waitUntil(5, "the pool to drop 127.0.0.13") { sluice.log.contains("backend 127.0.0.13:\(echoes[0].port) removed") }
        #expect(followed < 2.5, "max_ttl is 1 s: the pool followed after \(followed) s")
        let changedAt = Date()
        #expect(reached.open(8, port: port) == Set(hosts.prefix(2)))
        let draining = reached.echoing("127.0.0.13")
        #expect(!draining.isEmpty && draining.allSatisfy { $0 }, "a vanished backend's connections go on: \(draining)")
        try waitUntil(6, "drain_timeout to end 127.0.0.13's connections") { sluice.log.contains("drain_timeout after a reload") }
        #expect(Date().timeIntervalSince(changedAt) > 1.5)
        #expect(reached.echoing("127.0.0.13").allSatisfy { !$0 }, "ended at drain_timeout")
        #expect(reached.echoing("127.0.0.11").allSatisfy { $0 }, "the others go on")

        try dns.serve(hosts)
        try waitUntil(5, "the pool to take 127.0.0.14") { sluice.log.contains("backend 127.0.0.14:\(echoes[0].port) added") }
        #expect(reached.open(12, port: port) == Set(hosts))
        let status = try runCommand(sluiceBinary, ["status", "--instance", "e2e\(port)"]).1
        #expect(hosts.allSatisfy { status.contains($0) }, "\(status)")
        let lines = status.split(separator: "\n")
        let header = try #require(lines.firstIndex { $0 == "dns app.test:\(echoes[0].port) (pool app): 4 addresses" }, "\(status)")
        #expect(hosts.allSatisfy { lines[header + 1].contains($0) }, "status names the record's addresses: \(status)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("a name that stops resolving keeps its last good answer; one that never resolved leaves the pool without it")
    func failedLookups() throws {
        let hosts = ["127.0.0.21", "127.0.0.22"]
        let echoes = try namedEchoes(hosts)
        let dns = try ChangingDNS(hosts)
        let port = freePort()
        let config = """
            instance: e2e\(port)
            workers: 1
            log: { level: info, access: off, file: stderr }
            admin: { metrics: off }
            resolve: { min_ttl: 200ms, max_ttl: 1s, timeout: 200ms, nameservers: ["127.0.0.1:\(dns.port)"] }
            listeners:
              - { name: app, bind: "127.0.0.1:\(port)", pool: app }
            pools:
              - name: app
                backends: [ { address: "app.test:\(echoes[0].port)" }, { address: "nothing.test:\(echoes[0].port)" } ]
            """
        let sluice = try SluiceProcess.run(config: config)
        #expect(sluice.log.contains("did not resolve at start"), "\(sluice.log)")
        dns.stopAnswering()
        try waitUntil(8, "a failed lookup logged") {
            sluice.log.split(separator: "\n").contains { $0.contains("warning") && $0.contains("app.test") }
        }
        let hostsReached = Reached().open(6, port: port)
        #expect(hostsReached == Set(hosts), "the last good answer is kept: \(hostsReached)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }
}

extension ChangingDNS {
    /// dnsmasq killed: queries go unanswered (refused by the closed port).
    func stopAnswering() {
        if let pid { kill(pid, SIGKILL) }
    }
}
