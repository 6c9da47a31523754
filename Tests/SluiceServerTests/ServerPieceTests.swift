import CSluice
import Foundation
import Glibc
@testable import SluicePosix
@testable import SluiceServer
import Testing

@Suite("Posix facts the event loop relies on")
struct PosixFactTests {
    @Test("epoll_event has the kernel's packed layout (12 bytes)")
    func epollEventLayout() {
        #expect(MemoryLayout<epoll_event>.size == 12)
    }

    @Test("the epoll flags written as literals are <sys/epoll.h>'s")
    func epollFlagValues() {
        let pairs: [(EpollEvents, UInt32)] = [
            (.readable, SLUICE_EPOLLIN), (.writable, SLUICE_EPOLLOUT), (.error, SLUICE_EPOLLERR), (.hangup, SLUICE_EPOLLHUP),
            (.readHangup, SLUICE_EPOLLRDHUP), (.oneShot, SLUICE_EPOLLONESHOT), (.edgeTriggered, SLUICE_EPOLLET),
            (.exclusive, SLUICE_EPOLLEXCLUSIVE),
        ]
        for (flag, header) in pairs { #expect(flag.rawValue == header) }
    }

    @Test("a oneshot registration reports once, and again only after re-arming")
    func oneshotFiresOnce() throws {
        let epoll = try Epoll()
        let event = try EventFD()
        event.signal()
        try epoll.add(event.fd, [.readable, .oneShot], token: 42)
        var tokens: [UInt64] = []
        epoll.wait(timeoutMilliseconds: 100) { token, _ in tokens.append(token) }
        #expect(tokens == [42])
        // Still readable (not drained), but disarmed: nothing.
        #expect(epoll.wait(timeoutMilliseconds: 50) { _, _ in } == 0)
        try epoll.modify(event.fd, [.readable, .oneShot], token: 43)
        tokens = []
        epoll.wait(timeoutMilliseconds: 100) { token, _ in tokens.append(token) }
        #expect(tokens == [43])
    }

    /// The workers' arming rests on these: a level-triggered registration
    /// stays armed (no epoll_ctl to wait for the next bytes), epoll adds
    /// EPOLLHUP to any interest (an empty level-triggered one would report
    /// a hang-up on every wait, hence empty interests stay oneshot), and a
    /// socket taken out with DEL reports nothing until it is added again.
    @Test("level-triggered: armed until read; an empty interest still reports hang-ups on every wait; DEL silences")
    func levelTriggeredArming() throws {
        var pair: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &pair) == 0)
        defer { closeDescriptor(pair[0]) }
        let epoll = try Epoll()
        try epoll.add(pair[0], .readable, token: 7)
        #expect(send(pair[1], "a", 1, 0) == 1)
        for _ in 0..<2 { // reported again while unread, with no re-arming
            var tokens: [UInt64] = []
            epoll.wait(timeoutMilliseconds: 100) { token, _ in tokens.append(token) }
            #expect(tokens == [7])
        }
        var byte: UInt8 = 0
        #expect(recv(pair[0], &byte, 1, 0) == 1)
        #expect(epoll.wait(timeoutMilliseconds: 50) { _, _ in } == 0) // read: quiet, still armed
        #expect(send(pair[1], "b", 1, 0) == 1)
        #expect(epoll.wait(timeoutMilliseconds: 100) { _, _ in } == 1)
        #expect(recv(pair[0], &byte, 1, 0) == 1)

        try epoll.modify(pair[0], [], token: 8)
        closeDescriptor(pair[1])
        for _ in 0..<2 {
            var seen: [EpollEvents] = []
            epoll.wait(timeoutMilliseconds: 100) { _, events in seen.append(events) }
            #expect(seen.count == 1 && seen[0].contains(.hangup))
        }
        try epoll.modify(pair[0], .oneShot, token: 9)
        #expect(epoll.wait(timeoutMilliseconds: 100) { _, _ in } == 1)
        #expect(epoll.wait(timeoutMilliseconds: 50) { _, _ in } == 0) // oneshot: once
        epoll.remove(pair[0])
        try epoll.add(pair[0], .readable, token: 10)
        #expect(epoll.wait(timeoutMilliseconds: 100) { _, _ in } == 1) // added again: reported at once
        epoll.remove(pair[0])
        #expect(epoll.wait(timeoutMilliseconds: 50) { _, _ in } == 0)
    }

    @Test("a session side's due events: readiness met by the interest; hang-ups always, but once to an empty interest")
    func registrationDue() {
        var side = Registration()
        side.ready = [.readable, .writable, .readHangup]
        #expect(side.due.isEmpty) // not armed
        side.interest = [.readable]
        #expect(side.due == [.readable, .readHangup])
        side.interest = [.writable]
        #expect(side.due == [.writable])
        side.interest = [.readHangup]
        #expect(side.due == [.readHangup])
        side.ready = [.hangup]
        #expect(side.due == [.hangup])
        side.interest = []
        #expect(side.due == [.hangup])
        side.troubleReported = [.hangup] // reported once to the empty interest
        #expect(side.due.isEmpty)
        side.ready.insert(.error)
        #expect(side.due == [.error])
        side.interest = [.readable]
        #expect(side.due == [.hangup, .error]) // an interest hears of it again
    }

    @Test("with SIGPIPE ignored, writing to a reset peer is an EPIPE/ECONNRESET error, not a signal")
    func sigpipeIgnored() throws {
        ignoreSIGPIPE()
        let listener = try Socket.listen(on: SocketAddress(ip: "127.0.0.1", port: 0)!, reusePort: false)
        defer { closeDescriptor(listener) }
        let client = try Socket.tcp(family: AF_INET)
        defer { closeDescriptor(client) }
        _ = try Socket.connect(client, to: try Socket.localAddress(listener))
        var accepted: Int32 = -1
        for _ in 0..<100 {
            if case .done(let (fd, _)) = try Socket.accept(listener) { accepted = fd; break }
            usleep(1000)
        }
        #expect(accepted >= 0)
        Socket.closeWithReset(accepted)
        usleep(20_000)
        let bytes = [UInt8](repeating: 1, count: 1024)
        var failure: SystemCallError?
        for _ in 0..<10 {
            do { _ = try bytes.withUnsafeBytes { try Socket.write(client, from: $0) } } catch { failure = error as? SystemCallError; break }
        }
        #expect(failure.map { [EPIPE, ECONNRESET].contains($0.errno) } == true)
    }

    @Test("a listener closed while another process holds a copy of its descriptor keeps accepting; shutdown(2) stops it at once")
    func closedListenerSharedDescriptor() throws {
        // A child between posix_spawn's clone and its exec holds a copy of
        // every descriptor, close-on-exec or not: a dup stands for it here.
        let listener = try Socket.listen(on: SocketAddress(ip: "127.0.0.1", port: 0)!, reusePort: true)
        let address = try Socket.localAddress(listener)
        let copy = dup(listener)
        defer { close(copy) }
        closeDescriptor(listener)
        #expect(connectOutcome(address) == 0, "still listening through the copy")
        shutdown(copy, Int32(SHUT_RDWR))
        #expect(connectOutcome(address) == ECONNREFUSED, "shut down: no longer listening")
    }

    /// 0 once connected, else the connect's error.
    private func connectOutcome(_ address: SocketAddress) -> Int32 {
        guard let fd = try? Socket.tcp(family: AF_INET) else { return -1 }
        defer { closeDescriptor(fd) }
        let progress: Socket.ConnectProgress
        do { progress = try Socket.connect(fd, to: address) } catch { return error.errno }
        if case .connected = progress { return 0 }
        var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        guard poll(&pfd, 1, 2000) == 1 else { return ETIMEDOUT }
        return Socket.pendingError(fd)
    }

    @Test("socket addresses round-trip through their kernel form, IPv4 and IPv6")
    func socketAddresses() {
        #expect(SocketAddress(ip: "127.0.0.1", port: 8080)?.description == "127.0.0.1:8080")
        #expect(SocketAddress(ip: "::1", port: 443)?.description == "[::1]:443")
        #expect(SocketAddress(ip: "0:0::1", port: 1) == SocketAddress(ip: "::1", port: 1))
        #expect(SocketAddress(ip: "localhost", port: 1) == nil)
    }

    @Test("the fd inventory sees a new descriptor and its closing")
    func openDescriptorInventory() throws {
        // Other tests run in parallel and reuse low numbers; a number near the
        // limit is this test's alone.
        let event = try EventFD()
        let fd = Int32(getdtablesize()) - 3
        #expect(!openDescriptors().contains(fd))
        #expect(dup2(event.fd, fd) == fd)
        #expect(openDescriptors().contains(fd))
        close(fd)
        #expect(!openDescriptors().contains(fd))
    }
}

@Suite("Access log and log lines")
struct LogTests {
    @Test("JSON access lines escape what needs escaping and parse")
    func jsonAccessLine() throws {
        let record = AccessRecord(
            worker: 3, listener: "we\"b\\\n", client: "127.0.0.1:5555", backend: nil,
            bytesFromClient: 10, bytesToClient: 20, durationMicroseconds: 1500, dataPath: "splice", closeReason: "client_eof")
        let line = try #require(record.render(.json))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["listener"] as? String == "we\"b\\\n")
        #expect(object["backend"] is NSNull)
        #expect(object["duration_ms"] as? Double == 1.5)
        #expect(record.render(.off) == nil)
        #expect(record.render(.text)?.contains("backend=- bytes_in=10 bytes_out=20 duration_ms=1.5 path=splice reason=client_eof") == true)
    }

    @Test("each log line is written whole, with the worker tag")
    func logLines() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-log-\(UUID().uuidString)").path
        let sink = try LogSink(path: path)
        let logger = LogFactory(sink: sink, level: .info).logger("test", worker: 2)
        logger.info("hello", metadata: ["b": "2", "a": "1"])
        logger.debug("not shown")
        #expect(sink.flush())
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(text.hasSuffix(" info [worker=2] hello a=1 b=2\n"))
        #expect(!text.contains("not shown"))
    }
}

@Suite("Demo backend")
struct DemoBackendTests {
    @Test("answers pipelined requests one response each, keeps the connection")
    func pipelined() throws {
        let backend = try DemoBackend(name: "b1", bindTo: SocketAddress(ip: "127.0.0.1", port: 0)!)
        try backend.start()
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        #expect(backend.address.withSockaddr { connect(fd, $0, $1) } == 0)
        let requests = String(repeating: "GET / HTTP/1.1\r\nHost: x\r\n\r\n", count: 3)
        _ = requests.withCString { send(fd, $0, strlen($0), 0) }
        var received = ""
        var buffer = [UInt8](repeating: 0, count: 4096)
        while received.components(separatedBy: "hello from b1").count - 1 < 3 {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            received += String(decoding: buffer[0..<n], as: UTF8.self)
        }
        #expect(received.components(separatedBy: "HTTP/1.1 200 OK").count - 1 == 3)
    }

    @Test("a client that pipelines without reading, then resets, leaves the backend serving")
    func resetWhileAnswering() throws {
        let backend = try DemoBackend(name: "b2", bindTo: SocketAddress(ip: "127.0.0.1", port: 0)!)
        try backend.start()
        for _ in 0..<20 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var small: Int32 = 1024
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, 4)
            #expect(backend.address.withSockaddr { connect(fd, $0, $1) } == 0)
            let requests = String(repeating: "GET / HTTP/1.1\r\nHost: x\r\n\r\n", count: 2000)
            _ = requests.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
            var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
            close(fd)
        }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        #expect(backend.address.withSockaddr { connect(fd, $0, $1) } == 0)
        _ = "GET / HTTP/1.1\r\nHost: x\r\n\r\n".withCString { send(fd, $0, strlen($0), 0) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = recv(fd, &buffer, buffer.count, 0)
        #expect(n > 0 && String(decoding: buffer[0..<max(0, n)], as: UTF8.self).contains("hello from b2"))
    }
}
