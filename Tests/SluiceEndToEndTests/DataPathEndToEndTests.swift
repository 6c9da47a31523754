import Foundation
import Glibc
import SluicePosix
import Testing

/// 1 MiB of random bytes; streams are built from it with each chunk's index
/// stamped in its first 8 bytes, so a lost, repeated or reordered chunk changes the digest.
let streamBlock = payload(size: 1 << 20, seed: 42)

func streamChunk(_ index: Int) -> [UInt8] {
    var chunk = streamBlock
    withUnsafeBytes(of: UInt64(index).littleEndian) { for (i, b) in $0.enumerated() { chunk[i] = b } }
    return chunk
}

func expectedStreamDigest(chunks: Int) -> StreamDigest {
    var digest = StreamDigest()
    for i in 0..<chunks { streamChunk(i).withUnsafeBytes { digest.update($0) } }
    return digest
}

/// Reads to EOF, digesting as it goes.
func digestToEnd(_ fd: Int32) -> (StreamDigest, Bool) {
    var digest = StreamDigest()
    var buffer = [UInt8](repeating: 0, count: 256 * 1024)
    while true {
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n == 0 { return (digest, true) }
        if n < 0 { if errno == EINTR { continue }; return (digest, false) }
        buffer.withUnsafeBytes { digest.update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
    }
}

func sendStream(_ fd: Int32, chunks: Int) -> Bool {
    for i in 0..<chunks where !sendAll(fd, streamChunk(i)) { return false }
    return true
}

/// Reads everything, then answers "<count> <hash>" and closes.
func digestingBackend() throws -> TestServer {
    try TestServer { fd in
        let (digest, _) = digestToEnd(fd)
        _ = sendAll(fd, Array("\(digest.count) \(digest.hash)".utf8))
    }
}

/// Sends `chunks` MiB of the stream, then closes.
func streamingBackend(chunks: Int) throws -> TestServer {
    try TestServer { fd in
        _ = sendStream(fd, chunks: chunks)
        shutdown(fd, Int32(SHUT_WR))
        _ = readToEnd(fd)
    }
}

@Suite("Data paths through the sluice binary", .serialized)
struct DataPathEndToEndTests {
    @Test("100 MiB each way, byte-exact", arguments: ["sockmap", "splice", "copy"])
    func bulkBothWays(path: String) throws {
        let chunks = 100
        let expected = expectedStreamDigest(chunks: chunks)
        let sink = try digestingBackend()
        let source = try streamingBackend(chunks: chunks)
        let upPort = freePort(), downPort = freePort()
        let up = try SluiceProcess.run(config: proxyConfig(port: upPort, backends: [sink.address], dataPath: path))
        let down = try SluiceProcess.run(config: proxyConfig(port: downPort, backends: [source.address], dataPath: path))

        let fd = try connectTCP("127.0.0.1", upPort, timeoutSeconds: 60)
        #expect(sendStream(fd, chunks: chunks))
        shutdown(fd, Int32(SHUT_WR))
        let (reply, _) = readToEnd(fd)
        close(fd)
        #expect(String(decoding: reply, as: UTF8.self) == "\(expected.count) \(expected.hash)")

        let fd2 = try connectTCP("127.0.0.1", downPort, timeoutSeconds: 60)
        let (got, clean) = digestToEnd(fd2)
        close(fd2)
        #expect(clean && got == expected, "download: \(got.count) of \(expected.count) bytes")

        #expect(try up.stop() == 0)
        #expect(try down.stop() == 0)
        if path == "sockmap" {
            #expect(up.log.contains("path=sockmap") && down.log.contains("path=sockmap"))
        }
    }

    @Test("a reset is passed on as a reset, both ways", arguments: ["sockmap", "splice", "copy"])
    func resetsEachWay(path: String) throws {
        // Backend resets: the client sees ECONNRESET, not a clean EOF.
        let resetting = try TestServer { fd in
            _ = sendAll(fd, Array("partial".utf8))
            usleep(50_000)
            var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(port: port, backends: [resetting.address], dataPath: path))
        let fd = try connectTCP("127.0.0.1", port)
        let (bytes, clean) = readToEnd(fd)
        let readErrno = errno
        close(fd)
        #expect(String(decoding: bytes, as: UTF8.self) == "partial")
        #expect(!clean && readErrno == ECONNRESET)

        // Client resets: the backend sees ECONNRESET.
        let backendSaw = Locked<Int32>(0)
        let observing = try TestServer { fd in
            _ = sendAll(fd, [1])
            let (_, clean) = readToEnd(fd)
            backendSaw.withLock { $0 = clean ? -1 : errno }
        }
        let port2 = freePort()
        let sluice2 = try SluiceProcess.run(config: proxyConfig(port: port2, backends: [observing.address], dataPath: path))
        let client = try connectTCP("127.0.0.1", port2)
        var one: UInt8 = 0
        #expect(recv(client, &one, 1, 0) == 1)
        Socket.closeWithReset(client)
        try waitUntil(5, "the backend to see the reset") { backendSaw.value != 0 }
        #expect(backendSaw.value == ECONNRESET)
        #expect(try sluice.stop() == 0)
        #expect(try sluice2.stop() == 0)
        #expect(sluice.log.contains("reason=backend_reset") && sluice2.log.contains("reason=client_reset"))
    }

    @Test("a client that disappears mid-transfer: the backend is closed too and nothing is left open", arguments: ["sockmap", "splice"])
    func clientVanishes(path: String) throws {
        let backendDone = Locked<Bool>(false)
        let source = try TestServer { fd in
            _ = sendStream(fd, chunks: 200) // fails once the proxy closes us
            backendDone.withLock { $0 = true }
        }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(port: port, backends: [source.address], dataPath: path))
        let fd = try connectTCP("127.0.0.1", port)
        var buffer = [UInt8](repeating: 0, count: 65536)
        _ = recv(fd, &buffer, buffer.count, Int32(MSG_WAITALL))
        Socket.closeWithReset(fd)
        try waitUntil(10, "the backend to be cut off") { backendDone.value }
        try sluice.waitForLog("reason=client_reset")
        #expect(try sluice.stop() == 0)
        #expect(sluice.log.contains("clean exit"))
    }

    @Test("a connection that cannot be paired in the sockmap (client already half-closed) goes through userspace without losing a byte")
    func fallbackWithoutLoss() throws {
        guard requireRoot() else { return }
        // The first backend never answers, so the client's bytes and FIN are
        // all in before the proxy reaches the second one: it cannot be paired.
        let blackhole = try BlackholeBackend()
        let sink = try digestingBackend()
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(
            port: port, backends: ["127.0.0.1:\(blackhole.port)", sink.address], dataPath: "sockmap", workers: 1,
            retries: 1, extraListener: ", connect_timeout: 150ms"))
        // Small enough for the proxy's receive buffer: bytes and FIN arrive at once.
        let request = payload(size: 60_000, seed: 9)
        var expected = StreamDigest()
        request.withUnsafeBytes { expected.update($0) }
        let fd = try connectTCP("127.0.0.1", port)
        #expect(sendAll(fd, request))
        shutdown(fd, Int32(SHUT_WR))
        let (reply, _) = readToEnd(fd)
        close(fd)
        #expect(String(decoding: reply, as: UTF8.self) == "\(expected.count) \(expected.hash)")
        #expect(try sluice.stop() == 0)
        #expect(sluice.log.contains("path=copy"), "\(sluice.log)")
    }

    @Test("after every connection closes, the SOCKHASH and pairing maps are empty")
    func mapsEmptyAfterClose() throws {
        guard requireRoot() else { return }
        let echo = try TestServer.echo()
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(port: port, backends: [echo.address], dataPath: "sockmap"))
        let dir = "/sys/fs/bpf/sluice/e2e\(port)"
        let held = try holdConnections(20, port: port)
        #expect(try !pinnedMapIsEmpty("\(dir)/sockmap_socks"))
        #expect(try !pinnedMapIsEmpty("\(dir)/sockmap_peers"))
        for fd in held { close(fd) }
        try waitUntil(5, "the sockmap maps to empty") {
            ((try? pinnedMapIsEmpty("\(dir)/sockmap_socks")) ?? false) && ((try? pinnedMapIsEmpty("\(dir)/sockmap_peers")) ?? false)
        }
        #expect(try sluice.stop() == 0)
    }

    @Test("no busy loop: the proxy's CPU stays near zero while 64 sockmap pairs stream")
    func idleWhilePairedInSockmap() throws {
        guard requireRoot() else { return }
        let sink = try TestServer { fd in _ = digestToEnd(fd) }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(port: port, backends: [sink.address], dataPath: "sockmap"))
        let stop = Locked<Bool>(false)
        var threads: [OSThread] = []
        let clients = try (0..<64).map { _ in try connectTCP("127.0.0.1", port, timeoutSeconds: 10) }
        for fd in clients {
            threads.append(startThread {
                let chunk = [UInt8](repeating: 7, count: 64 * 1024)
                while !stop.value { if !sendAll(fd, chunk) { break } }
            })
        }
        usleep(300_000) // all paired and streaming
        let pid = sluice.process.processIdentifier
        let before = cpuTicks(pid: pid)
        let streamed = try pinnedWorkerLoad(instance: "e2e\(port)").map { $0["bytes_in"] ?? 0 }.reduce(0, +)
        sleep(2)
        let used = cpuTicks(pid: pid) - before
        let streamedAfter = try pinnedWorkerLoad(instance: "e2e\(port)").map { $0["bytes_in"] ?? 0 }.reduce(0, +)
        stop.withLock { $0 = true }
        for fd in clients { shutdown(fd, Int32(SHUT_RDWR)) }
        for t in threads { t.join() }
        for fd in clients { close(fd) }
        #expect(streamedAfter - streamed > 100 << 20, "streamed \((streamedAfter - streamed) >> 20) MiB in 2 s")
        // 2 s of wall time is 200 ticks; userspace must not be moving the bytes.
        #expect(used <= 10, "the proxy used \(used) ticks of CPU in 2 s")
        #expect(try sluice.stop() == 0)
    }

    @Test("without CAP_NET_ADMIN (nor CAP_SYS_ADMIN, which implies it): auto with sockmap_after_turns stays in userspace saying why; an explicit sockmap refuses to start")
    func needsNetAdmin() throws {
        guard requireRoot() else { return }
        let echo = try TestServer.echo()
        let withoutNetAdmin = ["/usr/bin/setpriv", "--bounding-set=-net_admin,-sys_admin", "--inh-caps=-net_admin,-sys_admin", "--"]
        let port = freePort()
        let auto = try SluiceProcess(arguments: ["run"], configYAML: proxyConfig(port: port, backends: [echo.address], dataPath: "auto",
                                                                              extraTop: "sockmap_after_turns: 4"),
                                     launcher: withoutNetAdmin)
        try auto.waitForLog("ready", seconds: 20)
        #expect(auto.log.contains("data path: auto without sockmap (userspace, splice(2) for bulk), because the sockmap path is unavailable"))
        #expect(auto.log.contains("data_path=auto"))
        #expect(echoRoundTrip(port: port, size: 100_000, seed: 5) == nil)
        #expect(try auto.stop() == 0)

        let explicit = try SluiceProcess(arguments: ["run"], configYAML: proxyConfig(port: freePort(), backends: [echo.address], dataPath: "sockmap"),
                                         launcher: withoutNetAdmin)
        #expect(try explicit.waitForExit(seconds: 20) != 0)
        #expect(explicit.log.contains("missing privilege: CAP_NET_ADMIN"))
    }
}
