import CSluice
import Glibc

/// Calls on any descriptor: files, pipes, sockets.
public enum Descriptor {
    public static let standardOutput: Int32 = STDOUT_FILENO
    public static let standardError: Int32 = STDERR_FILENO
    /// PIPE_BUF: a write to a pipe up to this size is atomic.
    public static let atomicPipeWriteBytes = Int(PIPE_BUF)

    /// dup(2) with close-on-exec.
    public static func duplicate(_ fd: Int32) throws(SystemCallError) -> Int32 {
        try systemCall("dup") { sluice_dup_cloexec(fd) }
    }

    /// One write(2); `.wouldBlock` when a non-blocking output is full.
    public static func write(_ fd: Int32, from buffer: UnsafeRawBufferPointer, label: String = "write") throws(SystemCallError) -> IOResult<Int> {
        try nonBlockingCall(label) { Glibc.write(fd, buffer.baseAddress, buffer.count) }
    }

    /// Whether fstat(2) says `fd` is a regular file (false if it cannot tell).
    public static func isRegularFile(_ fd: Int32) -> Bool {
        var info = stat()
        return fstat(fd, &info) == 0 && (info.st_mode & S_IFMT) == S_IFREG
    }
}

/// poll(2), for the few blocking threads that wait on more than one fd
/// without an epoll of their own (the log writer).
public enum Poll {
    public struct Interest: OptionSet, Sendable {
        public let rawValue: Int16
        public init(rawValue: Int16) { self.rawValue = rawValue }
        public static let readable = Interest(rawValue: Int16(POLLIN))
        public static let writable = Interest(rawValue: Int16(POLLOUT))
    }

    /// Waits up to `timeoutMilliseconds` (-1: forever); for each entry, whether
    /// anything happened on it (the interest, or an error or hang-up).
    public static func wait(_ entries: [(fd: Int32, interest: Interest)], timeoutMilliseconds: Int32) throws(SystemCallError) -> [Bool] {
        var fds = entries.map { pollfd(fd: $0.fd, events: $0.interest.rawValue, revents: 0) }
        _ = try systemCall("poll") { poll(&fds, nfds_t(fds.count), timeoutMilliseconds) }
        return fds.map { $0.revents != 0 }
    }
}

/// Sleeps the calling thread (nanosleep; a signal may end it early).
public func sleepMilliseconds(_ milliseconds: UInt32) {
    usleep(milliseconds &* 1000)
}

extension Pipe {
    /// A pipe whose ends block: for a thread that moves bytes with blocking splice(2).
    public static func makeBlocking() throws(SystemCallError) -> Pipe {
        let pipe = try make()
        do throws(SystemCallError) {
            _ = try systemCall("fcntl(F_SETFL)") { sluice_fcntl_setfl(pipe.readEnd, 0) }
            _ = try systemCall("fcntl(F_SETFL)") { sluice_fcntl_setfl(pipe.writeEnd, 0) }
            return pipe
        } catch {
            pipe.close()
            throw error
        }
    }
}

extension Socket {
    /// splice(2) that waits for bytes: how many moved, 0 at end of file.
    public static func spliceBlocking(from source: Int32, to destination: Int32, maxBytes: Int) throws(SystemCallError) -> Int {
        try systemCall("splice") { sluice_splice(source, destination, maxBytes, SLUICE_SPLICE_F_MOVE) }
    }
}

extension Socket {
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
