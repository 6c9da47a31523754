import Foundation
import Glibc
import SluiceCore
import SluicePosix
import SluiceTestSupport
import Testing

/// Connects from `source` (a loopback address other than the default, so
/// that what arrives can be told from the proxies' own addresses).
func connectTCP(_ host: String, _ port: UInt16, from source: String) throws -> Int32 {
    let local = SocketAddress(ip: source, port: 0)!, remote = SocketAddress(ip: host, port: port)!
    let fd = socket(remote.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var tv = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    guard local.withSockaddr({ bind(fd, $0, $1) }) == 0, remote.withSockaddr({ Glibc.connect(fd, $0, $1) }) == 0 else {
        let e = errno
        close(fd)
        throw SystemCallError(call: "connect \(remote) from \(source)", errno: e)
    }
    return fd
}

/// HAProxy (Debian's 2.6) with `config` after a common preamble; stopped when released.
final class HAProxyPeer {
    let process: Child
    let file: String

    init(_ config: String) throws {
        file = NSTemporaryDirectory() + "sluice-haproxy-\(UUID().uuidString).cfg"
        try ("""
            global
              maxconn 1000
            defaults
              timeout connect 2s
              timeout client 30s
              timeout server 30s

            """ + config + "\n").write(toFile: file, atomically: true, encoding: .utf8)
        process = try Child("/usr/sbin/haproxy", ["-db", "-f", file])
    }

    deinit {
        process.terminate()
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: file)
    }
}

/// A backend that reads the PROXY v1 line first, remembers it, then echoes.
final class HeaderEchoBackend: @unchecked Sendable {
    let lines = Locked<[String]>([])
    var server: TestServer!

    init() throws {
        let lines = self.lines
        server = try TestServer { fd in
            var line: [UInt8] = []
            var byte: UInt8 = 0
            while line.suffix(2) != [13, 10], recv(fd, &byte, 1, 0) == 1 { line.append(byte) }
            lines.withLock { $0.append(String(decoding: line, as: UTF8.self)) }
            echoUntilEOF(fd)
        }
    }
}

/// Waits until HAProxy answers on `port`.
func waitForPort(_ port: UInt16, host: String = "127.0.0.1") throws {
    try waitUntil(10, "a listener on \(host):\(port)") {
        guard let fd = try? connectTCP(host, port, timeoutSeconds: 1) else { return false }
        close(fd)
        return true
    }
}

@Suite("PROXY protocol with HAProxy as the peer, both ways", .serialized)
struct ProxyProtocolEndToEndTests {
    @Test("HAProxy send-proxy and send-proxy-v2 (with its CRC32c) in front: the client's address, IPv4 and IPv6, in Sluice's log and X-Forwarded-For",
          arguments: ["send-proxy", "send-proxy-v2 proxy-v2-options crc32c"])
    func acceptFromHAProxy(send: String) throws {
        let echo = try TestServer.echo()
        let (web, webAddress) = try startHTTPBackend("web")
        defer { _ = web }
        let tcpPort = freePort(), httpPort = freePort()
        let accept = send.contains("v2") ? "v2" : "v1"
        let sluice = try SluiceProcess.run(config: """
            instance: e2e\(tcpPort)
            workers: 2
            log: { level: info, access: text, file: stderr }
            admin: off
            listeners:
              - { name: tcp, bind: "127.0.0.1:\(tcpPort)", pool: echo, proxy_protocol: { accept: \(accept) } }
              - { name: web, bind: "127.0.0.1:\(httpPort)", pool: web, mode: http, proxy_protocol: { accept: any } }
            pools:
              - { name: echo, backends: [ { address: "\(echo.address)" } ] }
              - { name: web, backends: [ { address: "\(webAddress)" } ] }
            """)
        let front4 = freePort(), front6 = freePort(ipv6: true), frontHTTP = freePort()
        let haproxy = try HAProxyPeer("""
            listen tcp4
              mode tcp
              bind 127.0.0.1:\(front4)
              bind [::1]:\(front6)
              server sluice 127.0.0.1:\(tcpPort) \(send)
            listen web
              mode tcp
              bind 127.0.0.1:\(frontHTTP)
              server sluice 127.0.0.1:\(httpPort) \(send)
            """)
        defer { withExtendedLifetime(haproxy) {} }
        try waitForPort(front4)
        for (host, source, port) in [("127.0.0.1", "127.0.0.2", front4), ("::1", "::1", front6)] {
            let fd = try connectTCP(host, port, from: source)
            let local = try Socket.localAddress(fd)
            #expect(sendAll(fd, Array("through haproxy".utf8)))
            shutdown(fd, Int32(SHUT_WR))
            #expect(String(decoding: readToEnd(fd).bytes, as: UTF8.self) == "through haproxy", "no header bytes leak into the stream")
            close(fd)
            try sluice.waitForLog("client=\(local) backend=\(echo.address)")
        }
        let fd = try connectTCP("127.0.0.1", frontHTTP, from: "127.0.0.2")
        #expect(sendAll(fd, Array("GET /headers HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".utf8)))
        let answer = String(decoding: readToEnd(fd).bytes, as: UTF8.self)
        close(fd)
        #expect(answer.contains("X-Forwarded-For: 127.0.0.2\n"), "\(answer)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("Sluice sends v1 and v2 to HAProxy's accept-proxy (TCP and HTTP listeners, IPv4 and IPv6); health checks send LOCAL",
          arguments: ["v1", "v2"])
    func sendToHAProxy(version: String) throws {
        let back = freePort()
        let haproxy = try HAProxyPeer("""
            frontend who
              mode http
              bind 127.0.0.1:\(back) accept-proxy
              http-request return status 200 content-type text/plain lf-string "%[src]"
            """)
        defer { withExtendedLifetime(haproxy) {} }
        try waitForPort(back)
        let tcp4 = freePort(), tcp6 = freePort(ipv6: true), web = freePort()
        let sluice = try SluiceProcess.run(config: """
            instance: e2e\(tcp4)
            workers: 2
            log: { level: info, access: text, file: stderr }
            admin: { metrics: off }
            listeners:
              - { name: tcp4, bind: "127.0.0.1:\(tcp4)", pool: haproxy }
              - { name: tcp6, bind: "[::1]:\(tcp6)", pool: haproxy }
              - { name: web, bind: "127.0.0.1:\(web)", pool: haproxy, mode: http }
            pools:
              - name: haproxy
                proxy_protocol: \(version)
                health_check: { kind: http, path: /, interval: 200ms, timeout: 150ms, rise: 1, fall: 1 }
                backends: [ { address: "127.0.0.1:\(back)" } ]
            """)
        for (host, source, port) in [("127.0.0.1", "127.0.0.2", tcp4), ("::1", "::1", tcp6), ("127.0.0.1", "127.0.0.2", web)] {
            let fd = try connectTCP(host, port, from: source)
            #expect(sendAll(fd, Array("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".utf8)))
            let answer = String(decoding: readToEnd(fd).bytes, as: UTF8.self)
            close(fd)
            #expect(answer.hasPrefix("HTTP/1.1 200") && answer.hasSuffix("\r\n\r\n\(source)"), "\(port): \(answer)")
        }
        // HAProxy accepts the checks' LOCAL header and answers them: the backend stays up.
        usleep(600_000)
        let backends = try #require(try statusJSON("e2e\(tcp4)")["backends"] as? [[String: Any]])
        #expect(backends.first?["state"] as? String == "up", "\(backends)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
        #expect(!sluice.log.contains("health check failed"), "\(sluice.log)")
    }

    @Test("malformed, truncated or late headers: closed, counted, no backend connection; a silent client is accepted only after the deferral (TCP_DEFER_ACCEPT)")
    func malformed() throws {
        let echo = try TestServer.echo()
        let port = freePort(), metricsPort = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(
            port: port, backends: [echo.address], extraListener: ", proxy_protocol: { accept: any, timeout: 300ms }",
            extraTop: "admin: { metrics: \"127.0.0.1:\(metricsPort)\" }"))
        let bad: [[UInt8]] = [
            Array("GET / HTTP/1.1\r\nHost: a\r\n\r\n".utf8),                         // no header at all
            ProxyHeaderParser.signature + [0x21, 0x11, 0x00, 0x08] + Array(repeating: 0, count: 8), // wrong length
            Array(("PROXY TCP4 " + String(repeating: "1", count: 120)).utf8),      // a v1 line over 107 bytes
            Array("PROXY NONSENSE\r\n".utf8),                                       // garbage after PROXY
            Array("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".utf8),                         // LF without CR
            Array(ProxyHeaderParser.signature.prefix(9)),                           // truncated, then nothing (timeout)
            [],                                                                     // silent (timeout)
        ]
        for bytes in bad {
            let fd = try connectTCP("127.0.0.1", port)
            _ = sendAll(fd, bytes)
            let started = monotonicMilliseconds()
            let (rest, _) = readToEnd(fd)
            close(fd)
            let waited = monotonicMilliseconds() - started
            if bytes.isEmpty {
                // Accepted after about a second without a byte, then the 300 ms timeout.
                #expect(rest.isEmpty && waited >= 1000 && waited < 5000, "silent: closed after \(waited) ms")
            } else {
                #expect(rest.isEmpty && waited < 2000, "\(bytes.count) bytes: closed at once or at the timeout")
            }
        }
        #expect(echo.accepted == 0, "no backend connection for any of them")
        let (_, metrics) = try curl(["http://127.0.0.1:\(metricsPort)/metrics"])
        #expect(metrics.contains("sluice_listener_proxy_header_rejected_total{listener=\"test\"} \(bad.count)"), "\(metrics)")
        // A good header still works after all that.
        let fd = try connectTCP("127.0.0.1", port)
        #expect(sendAll(fd, Array("PROXY TCP4 192.0.2.7 127.0.0.1 4242 \(port)\r\nping".utf8)))
        shutdown(fd, Int32(SHUT_WR))
        #expect(String(decoding: readToEnd(fd).bytes, as: UTF8.self) == "ping")
        close(fd)
        #expect(try sluice.stop() == 0, "\(sluice.log)")
        #expect(sluice.log.contains("client=192.0.2.7:4242"), "\(sluice.log)")
        #expect(sluice.log.contains("closed a connection without a valid PROXY header"))
    }

    @Test("8 MiB after a v2 header in, a v1 header out: byte-exact on every data path", arguments: ["auto", "sockmap", "splice", "copy"])
    func byteExact(dataPath: String) throws {
        let backend = try HeaderEchoBackend()
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(
            port: port, backends: [backend.server.address], dataPath: dataPath,
            extraListener: ", proxy_protocol: { accept: v2 }")
            .replacingOccurrences(of: "    backends:", with: "    proxy_protocol: v1\n    backends:"))
        let source = ProxyAddress(family: .inet, address: [203, 0, 113, 9], port: 40_000)
        let destination = ProxyAddress(family: .inet, address: [127, 0, 0, 1], port: port)
        let header = ProxyHeader.encode(.v2, source: source, destination: destination)
        let body = payload(size: 8 << 20, seed: 99)
        let fd = try connectTCP("127.0.0.1", port)
        // The header and the first bytes in one write: the reader must stop at the header's end.
        #expect(sendAll(fd, header + body.prefix(1000)))
        let writer = startThread { _ = body.dropFirst(1000).withUnsafeBytes { sendAll(fd, $0) }; shutdown(fd, Int32(SHUT_WR)) }
        let (echoed, clean) = readToEnd(fd)
        writer.join()
        close(fd)
        #expect(clean && echoed.count == body.count && echoed == body, "\(echoed.count) of \(body.count) bytes")
        #expect(backend.lines.withLock { $0 } == ["PROXY TCP4 203.0.113.9 127.0.0.1 40000 \(port)\r\n"])
        // The header alone first, the bytes after a pause: nothing half read
        // waits on the socket, and an explicit sockmap pairs this one.
        let alone = try connectTCP("127.0.0.1", port)
        #expect(sendAll(alone, header))
        usleep(200_000)
        let tail = Array(body.prefix(1 << 20))
        let tailWriter = startThread { _ = tail.withUnsafeBytes { sendAll(alone, $0) }; shutdown(alone, Int32(SHUT_WR)) }
        let (second, _) = readToEnd(alone)
        tailWriter.join()
        close(alone)
        #expect(second == tail, "\(second.count) of \(tail.count) bytes")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
        if dataPath == "sockmap" {
            let lines = sluice.log.split(separator: "\n").filter { $0.contains("client=203.0.113.9:40000") }
            #expect(lines.count == 2 && !lines[0].contains("sockmap") && lines[1].contains("path=sockmap"), "\(lines)")
        }
    }

    @Test("a reload that stops taking PROXY headers stops deferring accepts: a server-first backend's banner comes at once")
    func reloadStopsDeferring() throws {
        let banner = try TestServer { fd in
            _ = sendAll(fd, Array("220 ready\r\n".utf8))
            echoUntilEOF(fd)
        }
        let port = freePort()
        let withHeader = proxyConfig(port: port, backends: [banner.address], extraListener: ", proxy_protocol: { accept: v1 }")
        let sluice = try SluiceProcess.run(config: withHeader)
        let path = try #require(sluice.configURL?.path)
        try proxyConfig(port: port, backends: [banner.address]).write(toFile: path, atomically: true, encoding: .utf8)
        let (code, out) = try runCommand(sluiceBinary, ["reload", "-c", path])
        #expect(code == 0, "\(out)")
        // The client says nothing and waits for the banner, as SMTP's does.
        let fd = try connectTCP("127.0.0.1", port)
        defer { close(fd) }
        let started = monotonicMilliseconds()
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        let waited = monotonicMilliseconds() - started
        #expect(n > 0 && String(decoding: buffer[0..<max(n, 0)], as: UTF8.self) == "220 ready\r\n" && waited < 800,
                "\(n) bytes after \(waited) ms (a deferred accept waits about a second)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }
}
