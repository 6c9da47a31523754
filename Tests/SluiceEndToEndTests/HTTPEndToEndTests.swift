import Foundation
import Glibc
import SluicePosix
import SluiceTestSupport
import Testing

let httpBackendScript = packageRoot.appendingPathComponent("Tests/SluiceEndToEndTests/Scripts/httpbackend.py").path

/// A Python HTTP/1.1 backend (Scripts/httpbackend.py) answering as `name`.
func startHTTPBackend(_ name: String, idleSeconds: Double? = nil) throws -> (process: BackgroundProcess, address: String) {
    let port = freePort()
    let process = try BackgroundProcess(["/usr/bin/python3", httpBackendScript, "\(port)", name] + (idleSeconds.map { ["\($0)"] } ?? []),
                                        readyLine: "ready")
    return (process, "127.0.0.1:\(port)")
}

/// A `mode: http` listener in front of pool `one` (and `two` for the routes).
func httpConfig(port: UInt16, one: String, two: String, extraHTTP: String = "", admin: String = "admin: off") -> String {
    """
    instance: e2e\(port)
    workers: 2
    steering: hash
    drain_timeout: 5s
    stall_threshold: 2s
    log: { level: info, access: text, file: stderr }
    \(admin)
    listeners:
      - name: web
        bind: "127.0.0.1:\(port)"
        pool: one
        mode: http
        http: { routes: [ { host: "two.test", pool: two }, { path_prefix: "/b/", pool: two } ]\(extraHTTP) }
    pools:
      - { name: one, retries: 1, backends: [ { address: "\(one)" } ] }
      - { name: two, backends: [ { address: "\(two)" } ] }
    """
}

/// Sends raw bytes, then reads until the proxy closes (or `seconds` pass).
func rawExchange(port: UInt16, _ text: String, seconds: Int = 5) throws -> String {
    let fd = try connectTCP("127.0.0.1", port, timeoutSeconds: seconds)
    defer { close(fd) }
    _ = sendAll(fd, Array(text.utf8))
    return String(decoding: readToEnd(fd).bytes, as: UTF8.self)
}

func curl(_ arguments: [String]) throws -> (Int32, String) {
    try runCommand("/usr/bin/curl", ["-sS", "--max-time", "30"] + arguments)
}

@Suite("mode: http through the sluice binary", .serialized)
struct HTTPEndToEndTests {
    @Test("curl: keep-alive to the client, requests routed by host and path, X-Forwarded-For added, backends reused")
    func routingAndKeepAlive() throws {
        let (one, oneAddress) = try startHTTPBackend("one")
        let (two, twoAddress) = try startHTTPBackend("two")
        defer { _ = (one, two) }
        let port = freePort(), metricsPort = freePort()
        let sluice = try SluiceProcess.run(config: httpConfig(port: port, one: oneAddress, two: twoAddress,
                                                              admin: "admin: { metrics: \"127.0.0.1:\(metricsPort)\" }"))
        let base = "http://127.0.0.1:\(port)"
        let (code, out) = try curl(["-v", "\(base)/name", "\(base)/b/name", "-H", "Host: two.test", "\(base)/name"])
        #expect(code == 0, "\(out)")
        #expect(out.contains("Re-using existing connection"), "\(out)")
        let (_, a) = try curl(["\(base)/name"])
        let (_, b) = try curl(["-H", "Host: two.test", "\(base)/name"])
        let (_, c) = try curl(["\(base)/b/name"])
        #expect(a == "one" && b == "two" && c == "two")
        let (_, headers) = try curl(["-H", "X-Forwarded-For: 198.51.100.9", "-H", "Connection: keep-alive, X-Drop", "-H", "X-Drop: 1",
                                     "\(base)/headers"])
        #expect(headers.contains("X-Forwarded-For: 198.51.100.9, 127.0.0.1") && headers.contains("X-Forwarded-Proto: http"), "\(headers)")
        #expect(!headers.contains("X-Drop"), "a field Connection names is hop-by-hop")
        // Ten clients one after the other: the workers keep their backend connections.
        for _ in 0..<10 { _ = try curl(["\(base)/name"]) }
        let (_, established) = try runCommand("/usr/bin/ss", ["-Htn", "state", "established", "dst", oneAddress])
        let backendConnections = established.split(separator: "\n").count
        #expect(backendConnections >= 1 && backendConnections <= 2, "\(established)")
        let (_, metrics) = try curl(["http://127.0.0.1:\(metricsPort)/metrics"])
        let twoOK = metrics.split(separator: "\n").first { $0.hasPrefix("sluice_http_requests_total{") && $0.contains("pool=\"two\"")
            && $0.contains("class=\"2xx\"") }
        // Five: curl's -H applies to all three URLs of the first call, then b and c.
        #expect(twoOK.map { $0.hasSuffix(" 5") } == true, "\(metrics)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
        #expect(sluice.log.contains("method=GET host=two.test path=/name status=200"))
    }

    @Test("bodies: a 100 MiB POST and a chunked upload arrive byte-exact; 3 MB comes back byte-exact; HEAD and 304 carry no body")
    func bodies() throws {
        let (one, oneAddress) = try startHTTPBackend("one")
        defer { _ = one }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: httpConfig(port: port, one: oneAddress, two: oneAddress))
        let base = "http://127.0.0.1:\(port)"
        let file = "/tmp/sluice-http-body-\(port)"
        let body = payload(size: 100 << 20, seed: 42)
        FileManager.default.createFile(atPath: file, contents: Data(body))
        defer { unlink(file) }
        let (_, expected) = try runCommand("/usr/bin/sha256sum", [file])
        let digest = String(expected.prefix(64))
        let (_, posted) = try curl(["--data-binary", "@\(file)", "\(base)/sum"])
        #expect(posted == "\(body.count) \(digest)")
        let (_, chunked) = try curl(["-H", "Transfer-Encoding: chunked", "--data-binary", "@\(file)", "\(base)/sum"])
        #expect(chunked == "\(body.count) \(digest)")
        let (_, download) = try runCommand("/bin/sh", ["-c", "curl -sS --max-time 30 \(base)/bytes/3000000 | sha256sum"])
        let (_, reference) = try runCommand("/usr/bin/python3", ["-c", """
            import hashlib; b = bytes(range(256)) * 4096; o = bytearray()
            while len(o) < 3000000: o += b[:3000000 - len(o)]
            print(hashlib.sha256(bytes(o)).hexdigest())
            """])
        #expect(download.prefix(64) == reference.prefix(64))
        let (_, head) = try curl(["-I", "\(base)/bytes/1000"])
        #expect(head.hasPrefix("HTTP/1.1 200") && head.contains("Content-Length: 1000"))
        let (_, notModified) = try curl(["-o", "/dev/null", "-w", "%{http_code} %{size_download}", "-H", "If-None-Match: \"v1\"", "\(base)/etag"])
        #expect(notModified == "304 0")
        let (_, untilClose) = try curl(["\(base)/close"])
        #expect(untilClose.count == 12_000)
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("bodies of 64 KiB and more move through a pipe (splice(2)); with data_path: copy never: byte-exact either way",
          arguments: ["auto", "copy"])
    func bodyPath(dataPath: String) throws {
        let (one, oneAddress) = try startHTTPBackend("one")
        defer { _ = one }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: "data_path: \(dataPath)\n" + httpConfig(port: port, one: oneAddress, two: oneAddress))
        func pipes() -> Int {
            let fds = "/proc/\(sluice.process.processIdentifier)/fd"
            let names = (try? FileManager.default.contentsOfDirectory(atPath: fds)) ?? []
            return names.filter { (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(fds)/\($0)"))?.hasPrefix("pipe:") == true }.count
        }
        let before = pipes()
        let base = "http://127.0.0.1:\(port)"
        let (_, download) = try runCommand("/bin/sh", ["-c", "curl -sS --max-time 30 \(base)/bytes/3000000 \(base)/bytes/3000000 | sha256sum"])
        let (_, reference) = try runCommand("/usr/bin/python3", ["-c", """
            import hashlib; b = bytes(range(256)) * 4096; o = bytearray()
            while len(o) < 3000000: o += b[:3000000 - len(o)]
            print(hashlib.sha256(bytes(o) * 2).hexdigest())
            """])
        #expect(download.prefix(64) == reference.prefix(64))
        // A pipe, once made, is kept in its worker's pool.
        if dataPath == "copy" { #expect(pipes() == before) } else { #expect(pipes() > before, "\(before) pipes before") }
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("refusals and failures: smuggling 400, slowloris 408, pipelined requests answered in order, a dead backend 502, a backend dying mid-response")
    func refusals() throws {
        let (one, oneAddress) = try startHTTPBackend("one")
        let (two, twoAddress) = try startHTTPBackend("two")
        defer { _ = (one, two) }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: httpConfig(port: port, one: oneAddress, two: twoAddress, extraHTTP: ", head_timeout: 500ms"))
        let smuggled = try rawExchange(port: port, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        #expect(smuggled.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(smuggled)")
        let started = monotonicMilliseconds()
        let slow = try rawExchange(port: port, "GET / HTTP/1.1\r\nHo")
        let waited = monotonicMilliseconds() - started
        #expect(slow.hasPrefix("HTTP/1.1 408 Request Timeout\r\n") && waited >= 450 && waited < 3000, "\(waited) ms: \(slow)")
        let pipelined = try rawExchange(port: port,
            "GET /name HTTP/1.1\r\nHost: a\r\n\r\nGET /name HTTP/1.1\r\nHost: two.test\r\n\r\nGET /name HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        let bodies = pipelined.components(separatedBy: "\r\n\r\n").dropFirst().map { $0.prefix(3) }
        #expect(bodies == ["one", "two", "one"], "\(pipelined)")
        let dying = try rawExchange(port: port, "GET /die HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(dying.hasPrefix("HTTP/1.1 200") && dying.hasSuffix(String(repeating: "x", count: 1000)), "cut short, never completed")
        kill(two.process.processIdentifier, SIGKILL)
        two.process.waitUntilExit()
        let dead = try rawExchange(port: port, "GET /name HTTP/1.1\r\nHost: two.test\r\n\r\n")
        #expect(dead.hasPrefix("HTTP/1.1 502 Bad Gateway\r\n"), "\(dead)")
        // The proxy still serves.
        let (_, after) = try curl(["http://127.0.0.1:\(port)/name"])
        #expect(after == "one")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("accepts wait for the request (TCP_DEFER_ACCEPT): a silent client is accepted after about a second, then head_timeout closes it; a late request is served")
    func deferredAccept() throws {
        let (one, oneAddress) = try startHTTPBackend("one")
        defer { _ = one }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: httpConfig(port: port, one: oneAddress, two: oneAddress, extraHTTP: ", head_timeout: 500ms"))
        let started = monotonicMilliseconds()
        let silent = try connectTCP("127.0.0.1", port, timeoutSeconds: 8)
        let (bytes, _) = readToEnd(silent)
        close(silent)
        let waited = monotonicMilliseconds() - started
        // Not deferred, the close would come after head_timeout alone (500 ms).
        #expect(bytes.isEmpty && waited >= 1400 && waited < 5000, "closed after \(waited) ms: \(bytes.count) bytes")
        let late = try connectTCP("127.0.0.1", port)
        defer { close(late) }
        usleep(300_000)
        _ = sendAll(late, Array("GET /name HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".utf8))
        let answer = String(decoding: readToEnd(late).bytes, as: UTF8.self)
        #expect(answer.hasPrefix("HTTP/1.1 200") && answer.hasSuffix("one"), "\(answer)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("head_timeout counts from each answer: an idle keep-alive client is closed that long after its last answer, not its first")
    func headTimeoutMovesWithEachRequest() throws {
        let (one, oneAddress) = try startHTTPBackend("one")
        defer { _ = one }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: httpConfig(port: port, one: oneAddress, two: oneAddress, extraHTTP: ", head_timeout: 600ms"))
        let fd = try connectTCP("127.0.0.1", port)
        defer { close(fd) }
        #expect(httpExchange(fd, "/name") == "one")
        // Past the first deadline's timer, well before the second deadline.
        usleep(400_000)
        #expect(httpExchange(fd, "/name") == "one", "served: the deadline moved with the first answer")
        let answered = monotonicMilliseconds()
        let (rest, _) = readToEnd(fd)
        let waited = monotonicMilliseconds() - answered
        #expect(rest.isEmpty && waited >= 550 && waited < 3000, "closed \(waited) ms after the last answer")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("a new backend connection's handshake ACK leaves with the first request; the answer to Connection: close leaves with the FIN")
    func answerWithFin() throws {
        let firstSegments = Locked<(all: UInt32, withData: UInt32)?>(nil)
        // Each answer in one write, so that it reaches the proxy in one read.
        let backend = try TestServer { fd in
            var head: [UInt8] = []
            var byte: UInt8 = 0
            while recv(fd, &byte, 1, 0) == 1 {
                firstSegments.withLock { $0 = $0 ?? (try? Socket.segmentsIn(fd)) }
                head.append(byte)
                guard head.suffix(4) == Array("\r\n\r\n".utf8) else { continue }
                head.removeAll()
                _ = sendAll(fd, Array("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none".utf8))
            }
        }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: httpConfig(port: port, one: backend.address, two: backend.address))
        for _ in 0..<3 {
            let fd = try connectTCP("127.0.0.1", port)
            defer { close(fd) }
            _ = sendAll(fd, Array("GET /name HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".utf8))
            let answer = String(decoding: readToEnd(fd).bytes, as: UTF8.self)
            #expect(answer.hasPrefix("HTTP/1.1 200") && answer.hasSuffix("one"), "\(answer)")
            // The SYN-ACK, the ACK of the request, then the answer with the
            // FIN; a FIN sent after the answer would be a fourth.
            let segments = try Socket.segmentsIn(fd)
            #expect(segments.all == 3 && segments.withData == 1, "received \(segments)")
        }
        // The SYN, then the first request with the ACK on it.
        let first = try #require(firstSegments.value)
        #expect(first.all == 2 && first.withData == 1, "the backend received \(first) by the first request")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("a listener without a pool: routed requests are served, the rest get 404 on the same kept-alive connection")
    func withoutPool() throws {
        let (two, twoAddress) = try startHTTPBackend("two")
        defer { _ = two }
        let port = freePort()
        let yaml = httpConfig(port: port, one: twoAddress, two: twoAddress)
            .replacingOccurrences(of: "    pool: one\n", with: "")
            .replacingOccurrences(of: "  - { name: one, retries: 1, backends: [ { address: \"\(twoAddress)\" } ] }\n", with: "")
        #expect(!yaml.contains("pool: one"), "\(yaml)")
        let sluice = try SluiceProcess.run(config: yaml)
        let answer = try rawExchange(port: port, "GET /name HTTP/1.1\r\nHost: elsewhere\r\n\r\nGET /name HTTP/1.1\r\nHost: two.test\r\nConnection: close\r\n\r\n")
        #expect(answer.hasPrefix("HTTP/1.1 404 Not Found\r\n") && answer.hasSuffix("\r\n\r\ntwo"), "\(answer)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("a kept-alive backend connection its backend closes while idle is closed at once; the next request gets a new one")
    func idleBackendClosed() throws {
        let (one, oneAddress) = try startHTTPBackend("one", idleSeconds: 0.3)
        defer { _ = one }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: httpConfig(port: port, one: oneAddress, two: oneAddress))
        let (_, first) = try curl(["http://127.0.0.1:\(port)/name"])
        #expect(first == "one")
        func backendSockets() -> [Substring] {
            let (_, out) = (try? runCommand("/usr/bin/ss", ["-Htn", "state", "all", "dst", oneAddress])) ?? (1, "")
            return out.split(separator: "\n").filter { !$0.hasPrefix("TIME-WAIT") }
        }
        #expect(backendSockets().count == 1, "kept alive after the answer: \(backendSockets())")
        // The backend closes it after 0.3 s; the worker sees the FIN while the
        // connection is idle and closes its side (no CLOSE-WAIT left behind).
        let waited = try waitUntil(3, "the idle connection closed by sluice") { backendSockets().isEmpty }
        #expect(waited < 2, "\(waited) s")
        let (_, second) = try curl(["http://127.0.0.1:\(port)/name"])
        #expect(second == "one")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("wrk for two seconds: no socket errors, no non-2xx answers; status shows the listener's requests per second")
    func underLoad() throws {
        let (one, oneAddress) = try startHTTPBackend("one")
        defer { _ = one }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: httpConfig(port: port, one: oneAddress, two: oneAddress, admin: "admin: { metrics: off }")
            .replacingOccurrences(of: "access: text", with: "access: off"))
        let result = Locked<(Int32, String)>((-1, ""))
        let load = startThread {
            let outcome = (try? runCommand("/usr/bin/wrk", ["-t2", "-c16", "-d2s", "--timeout", "10s", "http://127.0.0.1:\(port)/bytes/100"])) ?? (-1, "")
            result.withLock { $0 = outcome }
        }
        usleep(1_000_000)
        let listener = try #require((try statusJSON("e2e\(port)")["listeners"] as? [[String: Any]])?.first)
        let rate = listener["requests_per_second"] as? Double ?? 0, answered = listener["requests"] as? Int ?? 0
        #expect(rate > 100 && answered > 100, "\(listener)")
        let (_, text) = try runCommand(sluiceBinary, ["status", "--instance", "e2e\(port)"])
        #expect(text.contains("http web: ") && text.contains("requests/s"), "\(text)")
        load.join()
        let (code, out) = result.withLock { $0 }
        #expect(code == 0)
        #expect(!out.contains("Socket errors") && !out.contains("Non-2xx"), "\(out)")
        let requests = out.split(separator: "\n").first { $0.contains("requests in") }
        #expect(requests != nil, "\(out)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }
}
