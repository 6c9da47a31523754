import CSluice
import Glibc

/// A failed system call: which call, and the errno it returned.
public struct SystemCallError: Error, Sendable, Equatable, CustomStringConvertible {
    public let call: String
    public let errno: Int32

    public init(call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }

    public var description: String { "\(call): \(errnoDescription(errno))" }
}

public func errnoDescription(_ code: Int32) -> String {
    guard let text = strerror(code) else { return "errno \(code)" }
    return String(cString: text)
}

/// Outcome of a non-blocking call that may have nothing to do right now.
public enum IOResult<T: Sendable>: Sendable {
    case done(T)
    case wouldBlock
}

/// Runs a syscall, retrying EINTR. Throws a `SystemCallError` naming `call`
/// for any other failure; EBADF and EFAULT are programming errors and trap.
@inline(__always)
public func systemCall<T: FixedWidthInteger>(_ call: @autoclosure () -> String, _ body: () -> T) throws(SystemCallError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = Glibc.errno
        if code == EINTR { continue }
        precondition(code != EBADF && code != EFAULT, "\(call()): \(errnoDescription(code)) (a bug: bad fd or pointer)")
        throw SystemCallError(call: call(), errno: code)
    }
}

/// Like `systemCall`, but maps EAGAIN/EWOULDBLOCK (and EINPROGRESS-free
/// non-blocking would-block) to `.wouldBlock`.
@inline(__always)
public func nonBlockingCall<T: FixedWidthInteger & Sendable>(_ call: @autoclosure () -> String, _ body: () -> T) throws(SystemCallError) -> IOResult<T> {
    while true {
        let result = body()
        if result != -1 { return .done(result) }
        let code = Glibc.errno
        if code == EINTR { continue }
        if code == EAGAIN || code == EWOULDBLOCK { return .wouldBlock }
        precondition(code != EBADF && code != EFAULT, "\(call()): \(errnoDescription(code)) (a bug: bad fd or pointer)")
        throw SystemCallError(call: call(), errno: code)
    }
}

/// close(2) is never retried: on Linux the fd is gone even when it reports EINTR.
public func closeDescriptor(_ fd: Int32) {
    precondition(fd >= 0, "closing a negative fd")
    let result = Glibc.close(fd)
    if result == -1 {
        let code = Glibc.errno
        precondition(code != EBADF, "close(\(fd)): EBADF (double close)")
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock bpf_ktime_get_ns() reads.
@inline(__always)
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

@inline(__always)
public func monotonicMilliseconds() -> UInt64 { monotonicNanoseconds() / 1_000_000 }

/// UTC wall-clock time with milliseconds, RFC 3339.
public func wallClockTimestamp() -> String {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    var seconds = ts.tv_sec
    var parts = tm()
    gmtime_r(&seconds, &parts)
    func pad(_ v: Int32, _ width: Int) -> String {
        let s = String(v)
        return String(repeating: "0", count: max(0, width - s.count)) + s
    }
    return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
        + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(ts.tv_nsec / 1_000_000), 3))Z"
}

/// CLOCK_REALTIME in seconds since the epoch.
public func wallClockSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// Lists this process's open file descriptors (from /proc/self/fd).
public func openDescriptors() -> Set<Int32> {
    var result = Set<Int32>()
    guard let dir = opendir("/proc/self/fd") else { return result }
    let own = dirfd(dir)
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        if let fd = Int32(name), fd != own { result.insert(fd) }
    }
    closedir(dir)
    return result
}

public func ignoreSIGPIPE() { sluice_ignore_sigpipe() }

/// The soft open-files limit (RLIMIT_NOFILE), clamped to Int; nil if unknown.
public func openFilesLimit() -> Int? {
    var limit = rlimit()
    guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return nil }
    // RLIM_INFINITY is all ones; clamping makes it Int.max like any huge limit.
    return Int(clamping: limit.rlim_cur)
}
