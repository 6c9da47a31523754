import Glibc
import SluicePosix
import Testing

/// Takes what `fd` sends until its EOF, then answers with the byte count
/// and digest (16 bytes) and closes: a sink, so the client's stream is
/// one-way. It keeps up with the stream (the digest comes after the EOF),
/// so that the proxy is not held by a full backend socket.
func sinkAndReport(_ fd: Int32) {
    var chunk = [UInt8](repeating: 0, count: 256 * 1024)
    var received: [UInt8] = []
    while true {
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        received += chunk[0..<n]
    }
    var digest = StreamDigest()
    received.withUnsafeBytes { digest.update($0) }
    _ = sendAll(fd, streamReport(digest))
    shutdown(fd, Int32(SHUT_WR))
}

func streamReport(_ digest: StreamDigest) -> [UInt8] {
    withUnsafeBytes(of: (UInt64(digest.count).littleEndian, digest.hash.littleEndian)) { Array($0) }
}

@Suite("data_path auto: streams promoted to the kernel mid-stream", .serialized)
struct StreamPromotionEndToEndTests {
    @Test("8 clients stream checksummed random-size writes, promoted mid-stream, half-closing at the end (or just past the threshold): byte-exact",
          arguments: [8 << 20, (1 << 20) + 70_000])
    func streamsArePromotedByteExact(streamBytes: Int) throws {
        guard requireRoot() else { return }
        let sink = try TestServer { fd in sinkAndReport(fd) }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(port: port, backends: [sink.address], dataPath: "auto",
                                                               extraTop: "sockmap_after_bytes: 1048576"))
        let failures = Locked<[String]>([])
        let clients = (0..<8).map { i in
            startThread {
                guard let fd = try? connectTCP("127.0.0.1", port, timeoutSeconds: 30) else {
                    failures.withLock { $0.append("client \(i): no connection") }
                    return
                }
                defer { close(fd) }
                let bytes = payload(size: streamBytes, seed: UInt64(1000 + i))
                var digest = StreamDigest()
                bytes.withUnsafeBytes { digest.update($0) }
                var rng = SplitMix(UInt64(i))
                var offset = 0, writes = 0
                while offset < bytes.count {
                    let size = min(bytes.count - offset, 1 + Int(rng.next() % 200_000))
                    guard bytes.withUnsafeBytes({ sendAll(fd, UnsafeRawBufferPointer(rebasing: $0[offset..<(offset + size)])) }) else {
                        failures.withLock { $0.append("client \(i): send failed at \(offset)") }
                        return
                    }
                    offset += size
                    writes += 1
                    // Now and then the proxy drains the socket: the quiet moment a promotion waits for.
                    if writes % 8 == 0 { usleep(300) }
                }
                shutdown(fd, Int32(SHUT_WR))
                let (report, clean) = readToEnd(fd)
                if !clean || report != streamReport(digest) {
                    failures.withLock { $0.append("client \(i): report \(report) (\(report.count) bytes), clean EOF \(clean)") }
                }
            }
        }
        for c in clients { c.join() }
        #expect(failures.value.isEmpty, "\(failures.value)")
        let status = try statusJSON("e2e\(port)")
        let counts = status["data_paths"] as? [String: Int]
        #expect(try sluice.stop() == 0, "\(sluice.log)")
        let paths = accessPaths(sluice.log)
        #expect(paths.count == 8)
        // Promotion waits for a read that empties the client's socket; the
        // pauses above make one likely, not certain: most long streams, and
        // any number of those that end as they pass the threshold.
        let promoted = paths.filter { $0.hasSuffix("+sockmap") }.count
        if streamBytes >= 4 << 20 { #expect(promoted >= 4, "\(paths)") }
        #expect(counts?["promotions"] == promoted, "\(String(describing: counts))")
    }
}
