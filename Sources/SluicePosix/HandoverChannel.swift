import CSluice
import Glibc

/// The binary upgrade's conversation: a SOCK_SEQPACKET unix socket, one
/// message per send, descriptors riding on messages as SCM_RIGHTS.
public final class HandoverChannel {
    public let fd: Int32
    /// The largest message either side sends or takes.
    public static let maxMessageBytes = 1 << 20

    init(fd: Int32) {
        self.fd = fd
        var size: Int32 = 4 << 20
        // As root past net.core.wmem_max: a batch of sessions is one message.
        if setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, 4) != 0 { setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, 4) }
        if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, 4) != 0 { setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, 4) }
        // A peer that stops reading (stopped, wedged) fails a send instead of holding it forever.
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { closeDescriptor(fd) }

    public static let seqPacket = Int32(SOCK_SEQPACKET.rawValue)

    /// The old process's side: a listening socket only root (the daemon) may connect to.
    public static func listen(path: String) throws(SystemCallError) -> Int32 {
        try UnixSocket.listen(path: path, mode: 0o600, backlog: 1, type: seqPacket)
    }

    /// Waits at most `timeoutMilliseconds` for the new process to connect.
    public static func accept(_ listener: Int32, timeoutMilliseconds: Int32) throws(SystemCallError) -> HandoverChannel {
        var polled = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
        guard try pollDescriptors(&polled, timeoutMilliseconds: timeoutMilliseconds) > 0 else {
            throw SystemCallError(call: "accept (upgrade)", errno: ETIMEDOUT)
        }
        let fd = try systemCall("accept (upgrade)") { sluice_accept4(listener, nil, nil, SLUICE_SOCK_CLOEXEC) }
        return HandoverChannel(fd: fd)
    }

    public static func connect(path: String, timeoutMilliseconds: Int) throws(SystemCallError) -> HandoverChannel {
        HandoverChannel(fd: try UnixSocket.connect(path: path, timeoutMilliseconds: timeoutMilliseconds, type: seqPacket))
    }

    public func send(_ bytes: [UInt8], fds: [Int32] = []) throws(SystemCallError) {
        guard fds.count <= Int(SLUICE_HANDOVER_MAX_FDS), !bytes.isEmpty, bytes.count <= Self.maxMessageBytes else {
            throw SystemCallError(call: "sendmsg (upgrade)", errno: EMSGSIZE)
        }
        let sent = bytes.withUnsafeBytes { raw in
            fds.withUnsafeBufferPointer { sluice_send_with_fds(fd, raw.baseAddress, raw.count, $0.baseAddress, Int32(fds.count)) }
        }
        if sent < 0 { throw SystemCallError(call: "sendmsg (upgrade)", errno: errno) }
        if sent != bytes.count { throw SystemCallError(call: "sendmsg (upgrade)", errno: EMSGSIZE) }
    }

    /// The next message and its descriptors; the peer's end is ECONNRESET,
    /// and nothing within `timeoutMilliseconds` is ETIMEDOUT.
    public func receive(timeoutMilliseconds: Int32) throws(SystemCallError) -> (bytes: [UInt8], fds: [Int32]) {
        var polled = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
        guard try pollDescriptors(&polled, timeoutMilliseconds: timeoutMilliseconds) > 0 else {
            throw SystemCallError(call: "recvmsg (upgrade)", errno: ETIMEDOUT)
        }
        var bytes = [UInt8](repeating: 0, count: Self.maxMessageBytes)
        var fds = [Int32](repeating: -1, count: Int(SLUICE_HANDOVER_MAX_FDS))
        var count: Int32 = 0
        let received = bytes.withUnsafeMutableBytes { raw in
            fds.withUnsafeMutableBufferPointer {
                sluice_receive_with_fds(fd, raw.baseAddress, raw.count, $0.baseAddress, Int32($0.count), &count)
            }
        }
        if received < 0 { throw SystemCallError(call: "recvmsg (upgrade)", errno: errno) }
        if received == 0 {
            for fd in fds[0..<Int(max(0, count))] { closeDescriptor(fd) }
            throw SystemCallError(call: "recvmsg (upgrade)", errno: ECONNRESET)
        }
        return (Array(bytes[0..<received]), Array(fds[0..<Int(count)]))
    }
}
