import CSluice
import Glibc

/// Thin, typed wrappers over the socket calls the proxy makes. Every socket
/// is created non-blocking and close-on-exec.
public enum Socket {
    public static func tcp(family: Int32) throws(SystemCallError) -> Int32 {
        try systemCall("socket") { Glibc.socket(family, SLUICE_SOCK_STREAM | SLUICE_SOCK_NONBLOCK | SLUICE_SOCK_CLOEXEC, 0) }
    }

    public static func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32, _ label: String) throws(SystemCallError) {
        var v = value
        _ = try systemCall("setsockopt(\(label))") {
            setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size))
        }
    }

    public static func intOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ label: String) throws(SystemCallError) -> Int32 {
        var v: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        _ = try systemCall("getsockopt(\(label))") { getsockopt(fd, level, name, &v, &len) }
        return v
    }

    /// A listening socket bound to `address`. With `reusePort`, several
    /// sockets (one per worker) share the address and the kernel spreads
    /// connections over them.
    /// A listening TCP socket. With `noDelay`, every socket it accepts
    /// starts with TCP_NODELAY (accepted sockets inherit it): one setsockopt
    /// per listener instead of one per connection. With `deferAccept`
    /// (TCP_DEFER_ACCEPT, for protocols whose client speaks first) a
    /// connection is accepted once its first bytes are in, or after that
    /// many seconds without them.
    public static func listen(on address: SocketAddress, reusePort: Bool, backlog: Int32 = 4096,
                              noDelay: Bool = false, deferAcceptSeconds: Int32 = 0) throws(SystemCallError) -> Int32 {
        let fd = try tcp(family: address.family)
        do throws(SystemCallError) {
            try setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR")
            if noDelay { try setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1, "TCP_NODELAY") }
            if deferAcceptSeconds > 0 { try setDeferAccept(fd, seconds: deferAcceptSeconds) }
            if reusePort { try setOption(fd, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT") }
            if address.family == AF_INET6 { try setOption(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, 1, "IPV6_V6ONLY") }
            _ = try systemCall("bind \(address)") { address.withSockaddr { Glibc.bind(fd, $0, $1) } }
            _ = try systemCall("listen \(address)") { Glibc.listen(fd, backlog) }
            return fd
        } catch {
            closeDescriptor(fd)
            throw error
        }
    }

    /// TCP_DEFER_ACCEPT on a listening socket (0: off); it may change at any time.
    public static func setDeferAccept(_ fd: Int32, seconds: Int32) throws(SystemCallError) {
        try setOption(fd, Int32(IPPROTO_TCP), TCP_DEFER_ACCEPT, seconds, "TCP_DEFER_ACCEPT")
    }

    public static func localAddress(_ fd: Int32) throws(SystemCallError) -> SocketAddress {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = try systemCall("getsockname") {
            withUnsafeMutablePointer(to: &storage) { ptr in
                ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
            }
        }
        return SocketAddress(storage: storage, length: len)
    }

    public static func peerAddress(_ fd: Int32) throws(SystemCallError) -> SocketAddress {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = try systemCall("getpeername") {
            withUnsafeMutablePointer(to: &storage) { ptr in
                ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) }
            }
        }
        return SocketAddress(storage: storage, length: len)
    }

    /// One accept4: the new non-blocking socket and its peer, or `.wouldBlock`.
    public static func accept(_ listener: Int32) throws(SystemCallError) -> IOResult<(Int32, SocketAddress)> {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = try nonBlockingCall("accept4") {
            withUnsafeMutablePointer(to: &storage) { ptr in
                ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sluice_accept4(listener, $0, &len, SLUICE_SOCK_NONBLOCK | SLUICE_SOCK_CLOEXEC)
                }
            }
        }
        switch result {
        case .wouldBlock: return .wouldBlock
        case .done(let fd): return .done((fd, SocketAddress(storage: storage, length: len)))
        }
    }

    public enum ConnectProgress: Sendable { case connected, inProgress }

    /// Starts a non-blocking connect. Refusals that the kernel reports at
    /// once (e.g. ECONNREFUSED on loopback) are thrown.
    public static func connect(_ fd: Int32, to address: SocketAddress) throws(SystemCallError) -> ConnectProgress {
        while true {
            let rc = address.withSockaddr { Glibc.connect(fd, $0, $1) }
            if rc == 0 { return .connected }
            let code = Glibc.errno
            if code == EINTR { continue }
            if code == EINPROGRESS { return .inProgress }
            throw SystemCallError(call: "connect \(address)", errno: code)
        }
    }

    /// Segments received on a TCP socket (TCP_INFO), and how many of them
    /// carried data: what a peer's ACKs and FINs cost, seen from this end.
    public static func segmentsIn(_ fd: Int32) throws(SystemCallError) -> (all: UInt32, withData: UInt32) {
        var all: UInt32 = 0
        var withData: UInt32 = 0
        _ = try systemCall("getsockopt(TCP_INFO)") { sluice_tcp_segments_in(fd, &all, &withData) }
        return (all, withData)
    }

    /// Bytes received on a TCP socket and not read yet (SIOCINQ); 0 when unknown.
    public static func unreadBytes(_ fd: Int32) -> Int { max(0, Int(sluice_unread_bytes(fd))) }

    /// SO_ERROR: 0 once a non-blocking connect has succeeded.
    public static func pendingError(_ fd: Int32) -> Int32 {
        (try? intOption(fd, SOL_SOCKET, SO_ERROR, "SO_ERROR")) ?? EBADF
    }

    public enum ReadOutcome: Sendable, Equatable { case bytes(Int), endOfFile, wouldBlock }

    /// recv(2) rather than read(2): on a socket it skips the file layer's
    /// position lock and permission hook, a few hundred nanoseconds a call.
    public static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws(SystemCallError) -> ReadOutcome {
        switch try nonBlockingCall("recv", { Glibc.recv(fd, buffer.baseAddress, buffer.count, 0) }) {
        case .wouldBlock: return .wouldBlock
        case .done(0): return .endOfFile
        case .done(let n): return .bytes(n)
        }
    }

    /// send(2). `last`: the caller sends the FIN next (shutdown(2) or a
    /// close(2) with nothing unread), so MSG_MORE holds the bytes back and
    /// they leave in one segment with the FIN: the peer wakes once and
    /// sends one ACK fewer. Anything else after it would wait for a push.
    public static func write(_ fd: Int32, from buffer: UnsafeRawBufferPointer, last: Bool = false) throws(SystemCallError) -> IOResult<Int> {
        let flags = last ? MSG_NOSIGNAL | MSG_MORE : MSG_NOSIGNAL
        return try nonBlockingCall("write") { Glibc.send(fd, buffer.baseAddress, buffer.count, Int32(flags)) }
    }

    /// splice(2) between a socket and a pipe, without blocking.
    public static func splice(from source: Int32, to destination: Int32, maxBytes: Int) throws(SystemCallError) -> IOResult<Int> {
        try nonBlockingCall("splice") {
            sluice_splice(source, destination, maxBytes, SLUICE_SPLICE_F_MOVE | SLUICE_SPLICE_F_NONBLOCK)
        }
    }

    /// shutdown(2); ENOTCONN (peer already gone) is not an error worth reporting.
    public static func shutdownWrite(_ fd: Int32) {
        _ = Glibc.shutdown(fd, Int32(SHUT_WR))
    }

    /// Closes with an RST instead of a FIN (SO_LINGER 0): used when the peer reset.
    public static func closeWithReset(_ fd: Int32) {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        closeDescriptor(fd)
    }

    /// TCP_QUICKACK. Off before a connect, the ACK that completes the
    /// handshake waits (up to 200 ms) to leave with the first bytes written;
    /// turning it on sends an ACK that is waiting at once.
    public static func setQuickAck(_ fd: Int32, _ on: Bool) {
        var value: Int32 = on ? 1 : 0
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_QUICKACK, &value, socklen_t(MemoryLayout<Int32>.size))
    }

    public static func setNoDelay(_ fd: Int32) {
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }
}

/// A pipe for splice(2), both ends non-blocking.
public struct Pipe: Sendable {
    public let readEnd: Int32
    public let writeEnd: Int32

    public static func make(size: Int32? = nil) throws(SystemCallError) -> Pipe {
        var fds: [Int32] = [-1, -1]
        _ = try systemCall("pipe2") { sluice_pipe2(&fds, O_NONBLOCK | O_CLOEXEC) }
        if let size { _ = sluice_pipe_set_size(fds[1], size) }
        return Pipe(readEnd: fds[0], writeEnd: fds[1])
    }

    public func close() {
        closeDescriptor(readEnd)
        closeDescriptor(writeEnd)
    }
}
