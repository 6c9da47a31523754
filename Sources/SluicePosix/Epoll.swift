import CSluice
import Glibc

/// Interest bits, as epoll names them.
public struct EpollEvents: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }

    // Literals (Linux's ABI values, checked against <sys/epoll.h> by a test)
    // rather than stored constants: a stored one costs a call and a lazy
    // initialisation check on every use from another module, several per event.
    @inlinable public static var readable: EpollEvents { EpollEvents(rawValue: 0x001) }
    @inlinable public static var writable: EpollEvents { EpollEvents(rawValue: 0x004) }
    @inlinable public static var error: EpollEvents { EpollEvents(rawValue: 0x008) }
    @inlinable public static var hangup: EpollEvents { EpollEvents(rawValue: 0x010) }
    @inlinable public static var readHangup: EpollEvents { EpollEvents(rawValue: 0x2000) }
    @inlinable public static var oneShot: EpollEvents { EpollEvents(rawValue: 1 << 30) }
    @inlinable public static var edgeTriggered: EpollEvents { EpollEvents(rawValue: 1 << 31) }
    @inlinable public static var exclusive: EpollEvents { EpollEvents(rawValue: 1 << 28) }
}

/// One epoll instance. The 64-bit user data carries a registration token,
/// never a bare fd, so an event for a closed-and-reused fd cannot be
/// mistaken for the new owner's.
public final class Epoll {
    public let fd: Int32
    private var events: UnsafeMutableBufferPointer<epoll_event>

    public init(maxEventsPerWait: Int = 256) throws(SystemCallError) {
        fd = try systemCall("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
        events = .allocate(capacity: maxEventsPerWait)
    }

    deinit {
        events.deallocate()
        closeDescriptor(fd)
    }

    public func add(_ target: Int32, _ interest: EpollEvents, token: UInt64) throws(SystemCallError) {
        try control(EPOLL_CTL_ADD, target, interest, token, "epoll_ctl(ADD)")
    }

    public func modify(_ target: Int32, _ interest: EpollEvents, token: UInt64) throws(SystemCallError) {
        try control(EPOLL_CTL_MOD, target, interest, token, "epoll_ctl(MOD)")
    }

    public func remove(_ target: Int32) {
        _ = epoll_ctl(fd, EPOLL_CTL_DEL, target, nil)
    }

    private func control(_ op: Int32, _ target: Int32, _ interest: EpollEvents, _ token: UInt64, _ name: String) throws(SystemCallError) {
        var event = epoll_event()
        event.events = interest.rawValue
        event.data.u64 = token
        _ = try systemCall(name) { epoll_ctl(fd, op, target, &event) }
    }

    /// Waits up to `timeoutMilliseconds` (-1: forever) and calls `handle`
    /// for each ready registration. Returns the number of events.
    @discardableResult
    public func wait(timeoutMilliseconds: Int32, _ handle: (UInt64, EpollEvents) -> Void) -> Int {
        let n = epoll_wait(fd, events.baseAddress, Int32(events.count), timeoutMilliseconds)
        if n <= 0 { return 0 }
        for i in 0..<Int(n) {
            handle(events[i].data.u64, EpollEvents(rawValue: events[i].events))
        }
        return Int(n)
    }
}

/// An eventfd used to wake a thread that sleeps in epoll_wait.
public final class EventFD: @unchecked Sendable {
    public let fd: Int32

    public init() throws(SystemCallError) {
        fd = try systemCall("eventfd") { eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC)) }
    }

    deinit { closeDescriptor(fd) }

    public func signal() {
        var one: UInt64 = 1
        _ = Glibc.write(fd, &one, 8)
    }

    /// Clears the counter; returns how many signals were pending.
    @discardableResult
    public func drain() -> UInt64 {
        var value: UInt64 = 0
        return Glibc.read(fd, &value, 8) == 8 ? value : 0
    }
}

/// A signalfd for the given signals, which are also blocked in the calling
/// thread (call before starting other threads so they inherit the mask).
public final class SignalFD {
    public let fd: Int32

    public init(signals: [Int32]) throws(SystemCallError) {
        _ = try systemCall("pthread_sigmask") { () -> Int32 in
            let rc = signals.withUnsafeBufferPointer { sluice_block_signals($0.baseAddress, Int32($0.count), nil) }
            if rc != 0 { Glibc.errno = rc; return -1 }
            return 0
        }
        fd = try systemCall("signalfd") {
            signals.withUnsafeBufferPointer { sluice_signalfd($0.baseAddress, Int32($0.count)) }
        }
    }

    deinit { closeDescriptor(fd) }

    /// The next pending signal number, or nil.
    public func next() -> Int32? {
        var info = signalfd_siginfo()
        let n = Glibc.read(fd, &info, MemoryLayout<signalfd_siginfo>.size)
        return n == MemoryLayout<signalfd_siginfo>.size ? Int32(info.ssi_signo) : nil
    }
}

extension SignalFD {
    /// The signals the daemon takes through its signalfd: one list for the
    /// signalfd and for every thread's mask.
    public static var daemonSignals: [Int32] {
        var count: Int32 = 0
        let list = sluice_daemon_signals(&count)!
        return Array(UnsafeBufferPointer(start: list, count: Int(count)))
    }
}
