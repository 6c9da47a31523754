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
