import CSluice
import Glibc

/// Blocking sockets and calls that wait: the admin client, the loopback
/// self-tests and the data-path probe (the event loops never block).
extension Socket {
    /// Sends every byte on a blocking socket (MSG_NOSIGNAL).
    public static func sendAll(_ fd: Int32, _ bytes: [UInt8], label: String = "send") throws(SystemCallError) {
        var offset = 0
        while offset < bytes.count {
            let n = try systemCall(label) {
                bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            }
            offset += n
        }
    }

    /// One recv(2) on a blocking socket of at most `maxBytes` (default: the
    /// buffer's size): the byte count, 0 at end of file.
    public static func receive(_ fd: Int32, into buffer: inout [UInt8], maxBytes: Int? = nil, label: String = "recv")
        throws(SystemCallError) -> Int
    {
        try systemCall(label) {
            buffer.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, min($0.count, maxBytes ?? $0.count), 0) }
        }
    }

    /// Fills `buffer` from a blocking socket (MSG_WAITALL); false if the
    /// stream ended first.
    public static func receiveExactly(_ fd: Int32, into buffer: inout [UInt8], label: String = "recv") throws(SystemCallError) -> Bool {
        var filled = 0
        while filled < buffer.count {
            let n = try systemCall(label) {
                buffer.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress! + filled, $0.count - filled, Int32(MSG_WAITALL)) }
            }
            if n == 0 { return false }
            filled += n
        }
        return true
    }

    /// shutdown(2) both ways; a socket already disconnected is not an error.
    public static func shutdownBoth(_ fd: Int32) {
        _ = Glibc.shutdown(fd, Int32(SHUT_RDWR))
    }

    /// A blocking TCP socket (close-on-exec): for the loopback self-tests.
    public static func blockingTCP(family: Int32) throws(SystemCallError) -> Int32 {
        try systemCall("socket") { Glibc.socket(family, SLUICE_SOCK_STREAM | SLUICE_SOCK_CLOEXEC, 0) }
    }

    /// accept4 that hands back a blocking socket (close-on-exec), without its peer's address.
    public static func acceptBlocking(_ listener: Int32) throws(SystemCallError) -> Int32 {
        try systemCall("accept") { sluice_accept4(listener, nil, nil, SLUICE_SOCK_CLOEXEC) }
    }

    /// SO_RCVTIMEO: a blocking receive gives up after this long.
    public static func setReceiveTimeout(_ fd: Int32, seconds: Int) throws(SystemCallError) {
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        _ = try systemCall("setsockopt(SO_RCVTIMEO)") {
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    /// One send(2) that does not wait, even on a blocking socket (MSG_DONTWAIT).
    public static func sendWithoutWaiting(_ fd: Int32, from buffer: UnsafeRawBufferPointer) throws(SystemCallError) -> IOResult<Int> {
        try nonBlockingCall("send") { Glibc.send(fd, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
    }

    /// One recv(2) that does not wait, even on a blocking socket (MSG_DONTWAIT).
    public static func receiveWithoutWaiting(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws(SystemCallError) -> IOResult<Int> {
        try nonBlockingCall("recv") { Glibc.recv(fd, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT)) }
    }
}
