import Foundation
import Glibc
import SluiceTestSupport
import Testing

let udpPeerScript = packageRoot.appendingPathComponent("Tests/SluiceEndToEndTests/Scripts/udppeer.py").path

/// dnsmasq on loopback answering `example.test` with `answer` (A) and
/// `answer6` (AAAA), IPv4 and IPv6, stopped with the value. Left to
/// daemonize (its pid in a file): under Foundation's Process, which the
/// tests used then, a foreground dnsmasq stopped the reaping of the test's
/// other children (a dig that had exited was never seen to, and the test hung).
final class DNSServer {
    let port = freePort()
    let pidFile = NSTemporaryDirectory() + "sluice-dnsmasq-\(UUID().uuidString).pid"

    init(answer: String, answer6: String) throws {
        let (status, out) = try runCommand("/usr/sbin/dnsmasq", [
            "--no-resolv", "--no-hosts", "--port=\(port)", "--bind-interfaces", "--listen-address=127.0.0.1",
            "--listen-address=::1", "--user=root", "--pid-file=\(pidFile)",
            "--address=/example.test/\(answer)", "--address=/example.test/\(answer6)",
        ])
        guard status == 0 else { throw TimedOut(description: "dnsmasq did not start: \(out)") }
        try waitUntil(10, "dnsmasq answering on \(port)") {
            let reply = try? runCommand("/usr/bin/dig", ["@127.0.0.1", "-p", "\(port)", "+short", "+tries=1", "+time=1", "example.test", "A"])
            return reply?.1.contains(answer) ?? false
        }
    }

    var pid: Int32? {
        (try? String(contentsOfFile: pidFile, encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    func stop() {
        if let pid { kill(pid, SIGKILL) } // SIGTERM stays blocked: children inherit the test process's blocked stop signals
        try? FileManager.default.removeItem(atPath: pidFile)
    }

    deinit { stop() }
}

/// A UDP echo (Scripts/udppeer.py) that names itself when asked "WHO?".
func udpEcho(_ name: String, host: String = "127.0.0.1") throws -> (BackgroundProcess, String) {
    let port = freePort()
    let echo = try BackgroundProcess(["/usr/bin/python3", udpPeerScript, "echo", "\(port)", "--id", name, "--host", host], readyLine: "ready")
    return (echo, host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)")
}

func udpPeer(_ arguments: [String]) throws -> [String: Any] {
    let (_, out) = try runCommand("/usr/bin/env", ["python3", udpPeerScript] + arguments)
    return try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any], "\(out)")
}

func udpConfig(port: UInt16, backends: [String], bind: String = "127.0.0.1", udp: String = "", workers: Int = 2,
               pool: String = "", top: String = "", admin: String = "admin: { metrics: off }") -> String {
    let host = bind.contains(":") ? "[\(bind)]" : bind
    return """
        instance: e2e\(port)
        workers: \(workers)
        log: { level: info, access: text, file: stderr }
        \(admin)
        \(top)
        listeners:
          - { name: dns, bind: "\(host):\(port)", pool: udp, mode: udp\(udp.isEmpty ? "" : ", udp: { \(udp) }") }
        pools:
          - name: udp\(pool)
            backends: [ \(backends.map { "{ address: \"\($0)\" }" }.joined(separator: ", ")) ]
        """
}

@Suite("mode udp: flows steered in BPF, datagrams relayed", .serialized)
struct UDPEndToEndTests {
    @Test("dnsmasq behind Sluice, over IPv4 and IPv6: dig and a Python resolver (dnspython) get answers from both servers")
    func dns() throws {
        guard requireRoot() else { return }
        let one = try DNSServer(answer: "10.0.0.1", answer6: "fd00::1"), two = try DNSServer(answer: "10.0.0.2", answer6: "fd00::2")
        for bind in ["127.0.0.1", "::1"] {
            let port = freePort()
            let sluice = try SluiceProcess.run(config: udpConfig(port: port, backends: ["127.0.0.1:\(one.port)", "[::1]:\(two.port)"],
                                                                 bind: bind, udp: "per_packet: true"))
            var answers: Set<String> = []
            for _ in 0..<6 {
                let (_, a) = try runCommand("/usr/bin/dig", ["@\(bind)", "-p", "\(port)", "+short", "+tries=1", "+time=2", "example.test", "A"])
                answers.insert(a.trimmingCharacters(in: .whitespacesAndNewlines))
            }
            #expect(answers == ["10.0.0.1", "10.0.0.2"], "\(bind): \(answers)")
            let script = """
                import dns.resolver, sys
                r = dns.resolver.Resolver(configure=False); r.nameservers = [sys.argv[1]]; r.port = int(sys.argv[2]); r.lifetime = 3
                print(sorted({a.address for _ in range(6) for a in r.resolve('example.test', 'AAAA')}))
                """
            let (_, six) = try runCommand("/usr/bin/env", ["python3", "-c", script, bind, "\(port)"])
            #expect(six.contains("fd00::1") && six.contains("fd00::2"), "\(bind): \(six)")
            #expect(try sluice.stop() == 0, "\(sluice.log)")
            #expect(sluice.log.contains("path=udp reason=answered datagrams_in=1 datagrams_out=1"), "\(sluice.log)")
        }
    }

    @Test("health_check kind dns: a server that stops answering is checked down, and every query goes to the other")
    func dnsHealthCheck() throws {
        guard requireRoot() else { return }
        let one = try DNSServer(answer: "10.0.0.1", answer6: "fd00::1"), two = try DNSServer(answer: "10.0.0.2", answer6: "fd00::2")
        let port = freePort()
        let sluice = try SluiceProcess.run(config: udpConfig(
            port: port, backends: ["127.0.0.1:\(one.port)", "127.0.0.1:\(two.port)"], udp: "per_packet: true",
            pool: "\n    health_check: { kind: dns, query: example.test, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }"))
        one.stop()
        try sluice.waitForLog("backend down")
        for _ in 0..<4 {
            let (_, a) = try runCommand("/usr/bin/dig", ["@127.0.0.1", "-p", "\(port)", "+short", "+tries=1", "+time=2", "example.test", "A"])
            #expect(a.trimmingCharacters(in: .whitespacesAndNewlines) == "10.0.0.2")
        }
        #expect(try sluice.stop() == 0, "\(sluice.log)")
        let downs = sluice.log.split(separator: "\n").filter { $0.contains("backend down") }
        // Refused at once (ICMP port unreachable), or, for a query already
        // delivered when dnsmasq was killed, unanswered until its timeout.
        #expect(downs.count == 1 && downs[0].contains("127.0.0.1:\(one.port)") && downs[0].contains("check=dns")
                && (downs[0].contains("port unreachable") || downs[0].contains("timed out after 100ms")), "\(downs)")
    }

    @Test("max_flows: new flows beyond it are dropped and counted, open ones keep flowing; /metrics counts datagrams, bytes and drops")
    func maxFlowsAndMetrics() throws {
        guard requireRoot() else { return }
        let (a, first) = try udpEcho("a")
        defer { a.stop() }
        let port = freePort(), metricsPort = freePort()
        let sluice = try SluiceProcess.run(config: udpConfig(port: port, backends: [first], udp: "max_flows: 6",
                                                             admin: "admin: { metrics: \"127.0.0.1:\(metricsPort)\" }"))
        let who = try udpPeer(["who", "127.0.0.1", "\(port)", "10", "--per-flow", "2", "--timeout", "0.3"])
        let answered = ((who["flows"] as? [[Any]]) ?? []).filter { flow in flow.contains { $0 is String } }.count
        #expect(answered == 6 && who["affine"] as? Int == 6, "6 flows fit, 4 do not: \(who)")
        let (_, metrics) = try curl(["http://127.0.0.1:\(metricsPort)/metrics"])
        func sample(_ name: String, _ labels: String...) -> Double? {
            metrics.split(separator: "\n").first { line in line.hasPrefix(name + "{") && labels.allSatisfy { line.contains($0) } }
                .flatMap { Double($0.split(separator: " ").last ?? "") }
        }
        let dropped = try #require(sample("sluice_udp_dropped_total", "reason=\"max_flows\""), "\(metrics)")
        #expect(dropped >= 8, "4 flows' datagrams and retries: \(dropped)")
        // 6 flows × 2 WHO? (more if one was sent again, its answer late), each answered with a 1-byte name.
        let inbound = try #require(sample("sluice_udp_datagrams_total", "direction=\"in\""))
        #expect(inbound >= 12 && sample("sluice_udp_datagrams_total", "direction=\"out\"") == inbound, "\(metrics)")
        #expect(sample("sluice_udp_bytes_total", "direction=\"out\"") == inbound && sample("sluice_udp_bytes_total", "direction=\"in\"") == inbound * 4)
        #expect(sample("sluice_listener_rejected_total") == dropped && sample("sluice_listener_active_connections") == 6, "\(metrics)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("a flow's backend gone silent (stopped: no ICMP error) and checked down: the flow ends, its next datagram reaches the other")
    func flowLeavesADeadBackend() throws {
        guard requireRoot() else { return }
        let servers = [try DNSServer(answer: "10.0.0.1", answer6: "fd00::1"), try DNSServer(answer: "10.0.0.2", answer6: "fd00::2")]
        let port = freePort()
        let sluice = try SluiceProcess.run(config: udpConfig(
            port: port, backends: servers.map { "127.0.0.1:\($0.port)" },
            pool: "\n    health_check: { kind: dns, query: example.test, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }"))
        // One client socket, one source port: one flow, on one backend.
        let script = """
            import dns.message, dns.query, socket, sys
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', 0))
            print('ready', flush=True)
            for line in sys.stdin:
                try:
                    r = dns.query.udp(dns.message.make_query('example.test', 'A'), '127.0.0.1', port=int(sys.argv[1]), sock=s, timeout=1)
                    print(r.answer[0][0].address, flush=True)
                except Exception as e:
                    print('timeout', flush=True)
            """
        let client = try BackgroundProcess(["/usr/bin/env", "python3", "-u", "-c", script, "\(port)"], readyLine: "ready\n")
        defer { client.stop() }
        let first = try client.ask("query")
        let served = try #require(["10.0.0.1", "10.0.0.2"].firstIndex(of: first), "\(first)")
        #expect(try client.ask("query") == first, "the flow stays on its backend")
        let silent = try #require(servers[served].pid)
        kill(silent, SIGSTOP)
        defer { kill(silent, SIGCONT) }
        try sluice.waitForLog("backend down")
        usleep(1_200_000) // the workers' sweep runs every second
        #expect(try client.ask("query") == (served == 0 ? "10.0.0.2" : "10.0.0.1"), "the same client port, now on the other backend")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
        #expect(sluice.log.contains("reason=backend_down"), "\(sluice.log)")
    }

    @Test("200 concurrent flows × 1,000 datagrams of random sizes up to 64 KiB, each echoed byte-exact")
    func echoLoad() throws {
        guard requireRoot() else { return }
        let (a, first) = try udpEcho("a"), (b, second) = try udpEcho("b")
        defer { a.stop(); b.stop() }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: udpConfig(port: port, backends: [first, second])
            .replacingOccurrences(of: "access: text", with: "access: off"))
        let result = try udpPeer(["load", "127.0.0.1", "\(port)", "200", "1000", "--max-size", "65507"])
        #expect(result["ok_flows"] as? Int == 200 && result["mismatched"] as? Int == 0, "\(result)")
        #expect((result["lost"] as? Int ?? -1) == 0, "\(result)")
        let status = try statusJSON("e2e\(port)")
        #expect(workerField(status, "flows").reduce(0, +) == 200, "every flow open on one worker: \(workerField(status, "flows"))")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("affinity: every datagram of a flow reaches one backend; flows spread evenly over the workers; idle flows expire and leave no map entry")
    func affinityAndExpiry() throws {
        guard requireRoot() else { return }
        let (a, first) = try udpEcho("a"), (b, second) = try udpEcho("b")
        defer { a.stop(); b.stop() }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: udpConfig(port: port, backends: [first, second], udp: "flow_idle_timeout: 3s"))
        let who = try udpPeer(["who", "127.0.0.1", "\(port)", "100", "--per-flow", "5"])
        #expect(who["affine"] as? Int == 100, "\(who)")
        let names = try #require(who["names"] as? [String: Int])
        #expect(names["a"] == 50 && names["b"] == 50, "least_conn over two backends: \(names)")
        let flows = workerField(try statusJSON("e2e\(port)"), "flows")
        // A burst of new flows: placed ones a worker has not read yet count too (flows_unseen).
        #expect(flows.count == 2 && flows.allSatisfy { abs($0 - 50) <= 3 }, "even over the workers: \(flows)")
        try waitUntil(15, "the flows expired") { workerField((try? statusJSON("e2e\(port)")) ?? [:], "flows") == [0, 0] }
        #expect(try sluice.stop() == 0, "\(sluice.log)")
        // 5 each way, or one more where the client sent a WHO? again (its answer late under load).
        let idle = sluice.log.split(separator: "\n").filter { $0.contains("path=udp reason=idle datagrams_in=") }
        #expect(idle.count == 100 && idle.allSatisfy { $0.contains("datagrams_in=5") || $0.contains("datagrams_in=6") }, "\(idle.count) idle closes")
    }

    @Test("steering: hash (no BPF): the kernel's reuseport hash keeps every flow on one worker, and so on one backend")
    func kernelHashSteering() throws {
        let (a, first) = try udpEcho("a"), (b, second) = try udpEcho("b")
        defer { a.stop(); b.stop() }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: udpConfig(port: port, backends: [first, second], top: "steering: hash"))
        let who = try udpPeer(["who", "127.0.0.1", "\(port)", "40", "--per-flow", "4"])
        #expect(who["affine"] as? Int == 40, "\(who)")
        let names = try #require(who["names"] as? [String: Int])
        #expect(names["a"] ?? 0 > 0 && names["b"] ?? 0 > 0, "\(names)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("the listener bound to 0.0.0.0 and [::]: replies leave from the address the client sent to")
    func repliesFromTheAddressUsed() throws {
        guard requireRoot() else { return }
        let (a, first) = try udpEcho("a")
        defer { a.stop() }
        for (bind, target) in [("0.0.0.0", "127.0.0.2"), ("::", "::1")] {
            let port = freePort()
            let sluice = try SluiceProcess.run(config: udpConfig(port: port, backends: [first], bind: bind))
            // udppeer's sockets are connected to the target: an answer from another address is never seen.
            let who = try udpPeer(["who", target, "\(port)", "4", "--per-flow", "2"])
            #expect(who["affine"] as? Int == 4 && (who["names"] as? [String: Int])?["a"] == 4, "\(bind): \(who)")
            #expect(try sluice.stop() == 0, "\(sluice.log)")
        }
    }

    @Test("a backend that is not listening (ICMP port unreachable) is ejected; flows then go to the live one")
    func deadBackend() throws {
        guard requireRoot() else { return }
        let (a, live) = try udpEcho("a")
        defer { a.stop() }
        let dead = "127.0.0.1:\(freePort())"
        let port = freePort()
        let sluice = try SluiceProcess.run(config: udpConfig(port: port, backends: [live, dead],
                                                             pool: "\n    passive: { failures: 1, ejection: 30s }"))
        _ = try udpPeer(["who", "127.0.0.1", "\(port)", "10", "--per-flow", "3", "--timeout", "0.3"])
        try sluice.waitForLog("backend ejected")
        let after = try udpPeer(["who", "127.0.0.1", "\(port)", "20", "--per-flow", "2"])
        #expect(after["affine"] as? Int == 20 && (after["names"] as? [String: Int])?["a"] == 20, "\(after)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
        #expect(sluice.log.contains("reason=backend_refused"), "\(sluice.log)")
    }

    @Test("a stalled worker gets no new flows; its own flows stay with it")
    func stalledWorker() throws {
        guard requireRoot() else { return }
        let (a, first) = try udpEcho("a")
        defer { a.stop() }
        let port = freePort(), instance = "e2e\(port)"
        let yaml = udpConfig(port: port, backends: [first], workers: 2, top: "stall_threshold: 300ms")
        let sluice = try SluiceProcess(arguments: ["run", "--stall-on-sigusr1", "1:4000"], configYAML: yaml)
        try sluice.waitForLog("ready", seconds: 20)
        sluice.signal(SIGUSR1)
        try waitUntil(5, "worker 1 seen stalled") {
            ((try? statusJSON(instance))?["workers"] as? [[String: Any]])?[1]["state"] as? String == "stalled"
        }
        let who = try udpPeer(["who", "127.0.0.1", "\(port)", "30", "--per-flow", "2"])
        #expect(who["affine"] as? Int == 30, "every new flow answered at once: \(who)")
        #expect(workerField(try statusJSON(instance), "flows") == [30, 0], "all on the live worker")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }
}
