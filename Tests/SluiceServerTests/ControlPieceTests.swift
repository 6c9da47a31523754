import Glibc
@testable import SluicePosix
@testable import SluiceServer
import Testing

@Suite("Control-thread pieces: one release path, the syscall boundary")
struct ControlPieceTests {
    @Test("the release stack releases in reverse order, each once")
    func releaseOrder() {
        var order: [Int] = []
        let stack = ReleaseStack()
        for k in 0..<3 { stack.push { order.append(k) } }
        stack.releaseAll()
        stack.releaseAll()
        #expect(order == [2, 1, 0])
    }

    @Test("bound listeners close what no worker took, and nothing a worker took")
    func boundListenersHandOver() throws {
        let bound = BoundListeners(workers: 2)
        let loopback = try #require(SocketAddress(ip: "127.0.0.1", port: 0))
        let taken = try Socket.listen(on: loopback, reusePort: false)
        bound.add(taken, worker: 0)
        let left = try Socket.listen(on: loopback, reusePort: false)
        let leftAddress = try Socket.localAddress(left)
        bound.add(left, worker: 1)
        #expect(bound.sockets(listener: 0) == [taken, left])
        bound.handOver(worker: 0)
        bound.close()
        #expect(bound.byWorker == [[], []])
        // The socket left behind is closed: its port takes a new listener (a
        // listener still there would make this bind fail; the fd number
        // itself proves nothing, other cases may have reused it).
        let again = try Socket.listen(on: leftAddress, reusePort: false)
        closeDescriptor(again)
        #expect(fcntl(taken, F_GETFD) >= 0)
        closeDescriptor(taken)
    }

    @Test("TCP_NODELAY set on a listener is inherited by the sockets it accepts (the worker sets none itself)")
    func noDelayInherited() throws {
        func acceptedNoDelay(listenerNoDelay: Bool) throws -> Int32 {
            let listener = try Socket.listen(on: SocketAddress(ip: "127.0.0.1", port: 0)!, reusePort: false, noDelay: listenerNoDelay)
            defer { closeDescriptor(listener) }
            let client = try Socket.blockingTCP(family: AF_INET)
            defer { closeDescriptor(client) }
            let address = try Socket.localAddress(listener)
            #expect(address.withSockaddr { connect(client, $0, $1) } == 0)
            var accepted: Int32 = -1
            for _ in 0..<100 where accepted < 0 {
                if case .done(let (fd, _)) = try Socket.accept(listener) { accepted = fd } else { sleepMilliseconds(5) }
            }
            try #require(accepted >= 0)
            defer { closeDescriptor(accepted) }
            var value: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            #expect(getsockopt(accepted, Int32(IPPROTO_TCP), TCP_NODELAY, &value, &length) == 0)
            return value
        }
        #expect(try acceptedNoDelay(listenerNoDelay: true) == 1)
        #expect(try acceptedNoDelay(listenerNoDelay: false) == 0)
    }

    @Test("a unix socket listens with the asked mode, answers a client, and errors name the call")
    func unixSocketRoundTrip() throws {
        let directory = "/tmp/sluice-control-test-\(CurrentProcess.id)/nested"
        try FileSystem.makeDirectories(directory)
        let path = directory + "/admin.sock"
        defer { FileSystem.removeFile(path); rmdir(directory); rmdir(String(directory.dropLast(7))) }
        let listener = try UnixSocket.listen(path: path, mode: 0o600)
        defer { closeDescriptor(listener) }
        var info = stat()
        #expect(lstat(path, &info) == 0 && info.st_mode & 0o777 == 0o600)
        let client = try UnixSocket.connect(path: path, timeoutMilliseconds: 500)
        defer { closeDescriptor(client) }
        try Socket.sendAll(client, Array("ping\n".utf8))
        var accepted: Int32 = -1
        for _ in 0..<100 where accepted < 0 {
            if case .done(let (fd, _)) = try Socket.accept(listener) { accepted = fd } else { sleepMilliseconds(5) }
        }
        try #require(accepted >= 0)
        defer { closeDescriptor(accepted) }
        var buffer = [UInt8](repeating: 0, count: 5)
        #expect(try Socket.receiveExactly(accepted, into: &buffer))
        #expect(buffer == Array("ping\n".utf8))
        #expect(throws: SystemCallError(call: "connect \(directory)/missing.sock", errno: ENOENT)) {
            _ = try UnixSocket.connect(path: directory + "/missing.sock", timeoutMilliseconds: 100)
        }
    }

    @Test("reading a file that is not there is a typed ENOENT naming the path")
    func readMissingFile() {
        #expect(throws: SystemCallError(call: "open /nonexistent/sluice", errno: ENOENT)) {
            _ = try FileSystem.readFile("/nonexistent/sluice")
        }
    }
}
