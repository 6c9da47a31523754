import SluicePosix

/// A tiny HTTP/1.1 keep-alive server for `sluice demo`: answers every
/// request head with a fixed body naming the backend. Runs on its own thread.
public final class DemoBackend: @unchecked Sendable {
    public let name: String
    public let address: SocketAddress
    private let listener: Int32
    private let epoll: Epoll
    private let response: [UInt8]
    private var pendingHeads: [Int32: [UInt8]] = [:]

    public init(name: String, bindTo requested: SocketAddress) throws(SystemCallError) {
        self.name = name
        listener = try Socket.listen(on: requested, reusePort: false)
        address = try Socket.localAddress(listener)
        epoll = try Epoll()
        try epoll.add(listener, .readable, token: UInt64(UInt32.max) + 1)
        let body = "hello from \(name)\n"
        response = Array(("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\n"
            + "Server: sluice-demo\r\n\r\n" + body).utf8)
    }

    public func start() throws(SystemCallError) {
        _ = try OSThread.start(name: "demo-\(name)") { self.serve() }
    }

    private func serve() {
        while true {
            epoll.wait(timeoutMilliseconds: -1) { token, _ in
                if token > UInt64(UInt32.max) {
                    acceptAll()
                } else {
                    service(Int32(token))
                }
            }
        }
    }

    private func acceptAll() {
        while case .done(let (fd, _))? = try? Socket.accept(listener) {
            Socket.setNoDelay(fd)
            pendingHeads[fd] = []
            do { try epoll.add(fd, .readable, token: UInt64(fd)) } catch { finish(fd) }
        }
    }

    private func service(_ fd: Int32) {
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let outcome = chunk.withUnsafeMutableBytes { try? Socket.read(fd, into: $0) }
            switch outcome {
            case .bytes(let n)?:
                pendingHeads[fd, default: []].append(contentsOf: chunk[0..<n])
                // Closed while answering (a client that does not read): its
                // descriptor is gone, and may already be someone else's.
                guard answerCompleteHeads(fd) else { return }
            case .wouldBlock?:
                return
            default:
                finish(fd)
                return
            }
        }
    }

    /// One response per complete request head ("\r\n\r\n"); pipelining works.
    /// Returns false when it closed the connection.
    private func answerCompleteHeads(_ fd: Int32) -> Bool {
        guard var buffered = pendingHeads[fd] else { return true }
        var answers = 0
        while let end = headEnd(buffered) {
            buffered.removeFirst(end)
            answers += 1
        }
        if buffered.count > 64 * 1024 { finish(fd); return false } // not HTTP: drop it
        pendingHeads[fd] = buffered
        guard answers > 0 else { return true }
        var out: [UInt8] = []
        for _ in 0..<answers { out += response }
        var offset = 0
        while offset < out.count {
            // Responses are small; a full socket buffer means a client that does not read.
            guard case .done(let n)? = out[offset...].withUnsafeBytes({ try? Socket.write(fd, from: $0) }), n > 0 else {
                finish(fd)
                return false
            }
            offset += n
        }
        return true
    }

    private func headEnd(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for i in 0...(bytes.count - 4) where bytes[i] == 13 && bytes[i + 1] == 10 && bytes[i + 2] == 13 && bytes[i + 3] == 10 {
            return i + 4
        }
        return nil
    }

    private func finish(_ fd: Int32) {
        pendingHeads[fd] = nil
        closeDescriptor(fd)
    }
}
