import Foundation
import Glibc
import SluicePosix
import Testing

@Suite("Proxying through the sluice binary", .serialized)
struct ProxyTests {
    @Test("64 concurrent clients: checksummed payloads up to 8 MiB come back byte-exact", arguments: ["auto", "sockmap", "splice", "copy"])
    func concurrentEcho(path: String) throws {
        let echo1 = try TestServer.echo()
        let echo2 = try TestServer.echo()
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(port: port, backends: [echo1.address, echo2.address], dataPath: path))
        let failures = Locked<[String]>([])
        var threads: [OSThread] = []
        for i in 0..<64 {
            // Sizes from 1 byte to 8 MiB, spread log-uniformly.
            let size = i == 0 ? 1 : min(8 << 20, Int(pow(2.0, Double(i % 24))) + i * 7919)
            threads.append(startThread {
                if let failure = echoRoundTrip(port: port, size: size, seed: UInt64(i)) {
                    failures.withLock { $0.append(failure) }
                }
            })
        }
        for t in threads { t.join() }
        #expect(failures.value.isEmpty, "\(failures.value)")
        #expect(echo1.accepted > 0 && echo2.accepted > 0, "round robin used both backends")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
        #expect(sluice.log.contains("clean exit"))
        let accessLines = sluice.log.split(separator: "\n").filter { $0.contains(" access ") }
        #expect(accessLines.count == 64)
        let paths = accessPaths(sluice.log)
        switch path {
        case "sockmap":
            // A client whose FIN arrives before its connection is paired in the sockmap goes through userspace.
            #expect(paths.filter { $0 == "sockmap" }.count >= 32, "\(paths)")
        case "copy":
            #expect(paths.allSatisfy { $0 == "copy" }, "\(paths)")
        default:
            // One exchange each: never promoted; bulk reads go through splice(2), small ones through a buffer.
            #expect(paths.allSatisfy { ["copy", "splice", "copy+splice"].contains($0) }, "\(paths)")
            #expect(paths.contains { $0.contains("splice") }, "\(paths)")
        }
    }

    @Test("IPv6 listener and backend")
    func ipv6() throws {
        let echo = try TestServer.echo(host: "::1")
        let port = freePort(ipv6: true)
        let sluice = try SluiceProcess.run(config: proxyConfig(port: port, backends: [echo.address], bindHost: "::1"))
        #expect(echoRoundTrip(port: port, host: "::1", size: 100_000, seed: 7) == nil)
        #expect(try sluice.stop() == 0)
        #expect(sluice.log.contains("backend=[::1]:\(echo.port)"))
    }

    @Test("client half-close: the backend answers after reading the client's EOF", arguments: ["sockmap", "splice", "copy"])
    func clientHalfClose(path: String) throws {
        // Request/response: the backend reads to EOF, then answers with the byte count and closes.
        let backend = try TestServer { fd in
            let (request, _) = readToEnd(fd)
            _ = sendAll(fd, Array("got \(request.count) bytes".utf8))
        }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(port: port, backends: [backend.address], dataPath: path))
        let fd = try connectTCP("127.0.0.1", port)
        #expect(sendAll(fd, payload(size: 300_000, seed: 1)))
        shutdown(fd, Int32(SHUT_WR))
        let (reply, clean) = readToEnd(fd)
        close(fd)
        #expect(clean)
        #expect(String(decoding: reply, as: UTF8.self) == "got 300000 bytes")
        #expect(try sluice.stop() == 0)
        #expect(sluice.log.contains("reason=client_eof"))
    }

    @Test("backend half-close: the client keeps sending after the backend's EOF", arguments: ["sockmap", "splice", "copy"])
    func backendHalfClose(path: String) throws {
        let received = Locked<Int>(-1)
        let backend = try TestServer { fd in
            _ = sendAll(fd, Array("banner\n".utf8))
            shutdown(fd, Int32(SHUT_WR))
            let (rest, _) = readToEnd(fd)
            received.withLock { $0 = rest.count }
        }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(port: port, backends: [backend.address], dataPath: path))
        let fd = try connectTCP("127.0.0.1", port)
        let (banner, clean) = readToEnd(fd)
        #expect(clean && String(decoding: banner, as: UTF8.self) == "banner\n")
        // The client's direction is still open: send after the backend's EOF.
        #expect(sendAll(fd, payload(size: 500_000, seed: 2)))
        shutdown(fd, Int32(SHUT_WR))
        try waitUntil(5, "the backend to read the client's bytes") { received.value == 500_000 }
        close(fd)
        #expect(try sluice.stop() == 0)
        #expect(sluice.log.contains("reason=backend_eof"))
    }

    @Test("a backend's last bytes and its FIN reach the client in one segment, as they left the backend", arguments: ["auto", "splice", "copy"])
    func lastBytesWithFin(path: String) throws {
        let backend = try TestServer { fd in
            // MSG_MORE holds the banner until the shutdown: one segment, data and FIN.
            let banner = Array("220 ready, bye\r\n".utf8)
            _ = banner.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_MORE | MSG_NOSIGNAL)) }
            shutdown(fd, Int32(SHUT_WR))
            _ = readToEnd(fd)
        }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(port: port, backends: [backend.address], dataPath: path))
        let fd = try connectTCP("127.0.0.1", port)
        let (banner, clean) = readToEnd(fd)
        #expect(clean && String(decoding: banner, as: UTF8.self) == "220 ready, bye\r\n")
        // The client sent nothing, so all it received is the SYN-ACK and
        // then the banner; a FIN passed on after the banner adds a third.
        let segments = try Socket.segmentsIn(fd)
        #expect(segments.all == 2 && segments.withData == 1, "received \(segments)")
        close(fd)
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    // Not with data_path: sockmap, where pairing the sockets sends the ACK on its own.
    @Test("the handshake's last ACK to the backend leaves with the client's first bytes", arguments: ["auto", "splice", "copy"])
    func handshakeAckWithFirstBytes(path: String) throws {
        let seen = Locked<[(all: UInt32, withData: UInt32)]>([])
        let backend = try TestServer { fd in
            var buffer = [UInt8](repeating: 0, count: 64)
            _ = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if let segments = try? Socket.segmentsIn(fd) { seen.withLock { $0.append(segments) } }
            _ = sendAll(fd, Array("pong".utf8))
            _ = readToEnd(fd)
        }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(port: port, backends: [backend.address], dataPath: path))
        // Up to three tries: a proxy held off the CPU for 200 ms after its
        // connect (a loaded machine) lets the kernel send the ACK alone.
        for _ in 0..<3 where !seen.value.contains(where: { $0.all == 2 }) {
            // The request is in before the proxy accepts (it is stopped
            // meanwhile), as it usually is when a client speaks at once.
            sluice.signal(SIGSTOP)
            try waitUntil(5, "sluice's threads stopped") { sluice.threadStates.allSatisfy { $0 == "T" } }
            let fd = try connectTCP("127.0.0.1", port)
            #expect(sendAll(fd, Array("ping".utf8)))
            sluice.signal(SIGCONT)
            var buffer = [UInt8](repeating: 0, count: 16)
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            close(fd)
            #expect(n == 4)
        }
        // The SYN, then the request carrying the ACK; a separate ACK makes three.
        #expect(seen.value.contains { $0.all == 2 && $0.withData == 1 }, "the backend received \(seen.value) by each request")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("a backend that speaks first: the handshake's ACK is not held for client bytes, the banner comes at once",
          arguments: ["auto", "sockmap", "copy"])
    func serverFirstBannerAtOnce(path: String) throws {
        let banner = try TestServer { fd in
            _ = sendAll(fd, Array("220 ready\r\n".utf8))
            _ = readToEnd(fd)
        }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(port: port, backends: [banner.address], dataPath: path))
        var waits: [UInt64] = []
        for _ in 0..<3 {
            let silent = try connectTCP("127.0.0.1", port)
            let started = monotonicMilliseconds()
            var buffer = [UInt8](repeating: 0, count: 16)
            let got = buffer.withUnsafeMutableBytes { recv(silent, $0.baseAddress, $0.count, 0) }
            waits.append(monotonicMilliseconds() - started)
            close(silent)
            #expect(got == 11)
        }
        // A held ACK keeps the backend from accepting for 200 ms, every time;
        // the median leaves room for one hiccup of a loaded machine.
        #expect(waits.sorted()[1] < 150, "banners after \(waits) ms")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("a refused backend is retried on another; every client is served")
    func retriesRefusedBackend() throws {
        let echo = try TestServer.echo()
        let dead = "127.0.0.1:\(freePort())" // nothing listens here
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(port: port, backends: [dead, echo.address], workers: 1, retries: 1))
        for i in 0..<20 {
            #expect(echoRoundTrip(port: port, size: 1000, seed: UInt64(i)) == nil)
        }
        #expect(try sluice.stop() == 0)
        #expect(sluice.log.contains("backend connect failed"))
        #expect(!sluice.log.contains("reason=connect_failed"))
    }

    @Test("all backends down: the client is closed promptly and the failure logged")
    func allBackendsDown() throws {
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(
            port: port, backends: ["127.0.0.1:\(freePort())", "127.0.0.1:\(freePort())"], retries: 1))
        let start = Date()
        let fd = try connectTCP("127.0.0.1", port)
        let (bytes, _) = readToEnd(fd)
        close(fd)
        #expect(bytes.isEmpty)
        #expect(Date().timeIntervalSince(start) < 1.0, "closed within a second")
        try sluice.waitForLog("reason=connect_failed")
        #expect(try sluice.stop() == 0)
    }

    @Test("an idle connection is closed after idle_timeout")
    func idleTimeout() throws {
        let echo = try TestServer.echo()
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(
            port: port, backends: [echo.address], extraListener: ", idle_timeout: 300ms"))
        let fd = try connectTCP("127.0.0.1", port)
        // Activity pushes the deadline forward.
        let opened = Date()
        var start = Date()
        for round in 0..<4 {
            if round > 0 { usleep(150_000) }
            #expect(sendAll(fd, [1, 2, 3]))
            var back = [UInt8](repeating: 0, count: 3)
            #expect(recv(fd, &back, 3, Int32(MSG_WAITALL)) == 3)
            start = Date()
        }
        #expect(start.timeIntervalSince(opened) > 0.4, "activity outlived one idle_timeout")
        let (bytes, _) = readToEnd(fd)
        let idle = Date().timeIntervalSince(start)
        close(fd)
        #expect(bytes.isEmpty)
        #expect(idle > 0.25 && idle < 1.5, "closed after \(idle)s of silence")
        try sluice.waitForLog("reason=idle_timeout")
        #expect(try sluice.stop() == 0)
    }

    @Test("max_connections: connections above the limit are closed at once, the rest served")
    func maxConnections() throws {
        let echo = try TestServer.echo()
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(
            port: port, backends: [echo.address], workers: 1, extraListener: ", max_connections: 2"))
        let held = try (0..<2).map { _ in try connectTCP("127.0.0.1", port) }
        for fd in held {
            #expect(sendAll(fd, [9]))
            var b: UInt8 = 0
            #expect(recv(fd, &b, 1, 0) == 1)
        }
        let extra = try connectTCP("127.0.0.1", port)
        let (bytes, _) = readToEnd(extra)
        close(extra)
        #expect(bytes.isEmpty)
        for fd in held { close(fd) }
        // Once the two are gone, a new one is served again.
        try waitUntil(5, "a slot to free up") { echoRoundTrip(port: port, size: 10, seed: 3) == nil }
        #expect(try sluice.stop() == 0)
    }

    @Test("JSON access log lines parse and carry every field")
    func jsonAccessLog() throws {
        let echo = try TestServer.echo()
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(port: port, backends: [echo.address], access: "json"))
        #expect(echoRoundTrip(port: port, size: 4321, seed: 4) == nil)
        #expect(try sluice.stop() == 0)
        let line = try #require(sluice.log.split(separator: "\n").first { $0.hasPrefix("{") })
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["bytes_in"] as? Int == 4321)
        #expect(object["bytes_out"] as? Int == 4321)
        #expect(object["backend"] as? String == echo.address)
        #expect(object["reason"] as? String == "client_eof")
        for key in ["time", "worker", "listener", "client", "duration_ms", "path"] { #expect(object[key] != nil, "\(key)") }
    }
}

@Suite("Connect timeouts")
struct ConnectTimeoutTests {
    @Test("a backend that never answers is abandoned after connect_timeout and the next one serves")
    func connectTimeoutThenRetry() throws {
        let blackhole = try BlackholeBackend()
        let echo = try TestServer.echo()
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(
            port: port, backends: ["127.0.0.1:\(blackhole.port)", echo.address], workers: 1, retries: 1,
            extraListener: ", connect_timeout: 200ms"))
        // Round robin: the first client tries the blackhole first.
        let start = Date()
        #expect(echoRoundTrip(port: port, size: 1000, seed: 1) == nil)
        let took = Date().timeIntervalSince(start)
        #expect(took > 0.15 && took < 1.5, "served after \(took)s")
        try sluice.waitForLog("connect timed out") // lines reach the log through a queue
        #expect(try sluice.stop() == 0)
    }
}
