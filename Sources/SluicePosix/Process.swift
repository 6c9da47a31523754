import CSluice
import Glibc

/// The calling thread's capabilities.
public enum Privileges {
    /// Whether this thread has the capability (bit number) in its effective set.
    public static func hasCapability(_ cap: Int32) -> Bool {
        var mask: UInt64 = 0
        return sluice_effective_capabilities(&mask) == 0 && mask & (1 << UInt64(cap)) != 0
    }

    /// Becomes uid:gid keeping exactly the capabilities in `keep` (one bit
    /// per capability). Must run before any other thread starts.
    public static func drop(to uid: uid_t, group gid: gid_t, keeping keep: UInt64) throws(SystemCallError) {
        _ = try systemCall("drop privileges") { sluice_drop_privileges(uid, gid, keep) }
    }

    public static var isRoot: Bool { geteuid() == 0 }
}

/// The calling process.
public enum CurrentProcess {
    public static var id: Int32 { getpid() }

    /// _exit(2): no atexit handlers, no stdio flush (the log writer flushes itself).
    public static func exit(_ status: Int32) -> Never { _exit(status) }

    /// Number of CPUs online (sysconf(_SC_NPROCESSORS_ONLN)), at least 1.
    public static var onlineCPUCount: Int {
        let count = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        return count > 0 ? count : 1
    }

    /// getenv(3).
    public static func environment(_ name: String) -> String? {
        guard let raw = getenv(name) else { return nil }
        return String(cString: raw)
    }

    public static var effectiveUserID: uid_t { geteuid() }
}

/// A user from the password database.
public struct UserEntry: Sendable {
    public let name: String
    public let uid: uid_t
    public let gid: gid_t

    /// getpwnam(3); nil if there is no such user.
    public static func named(_ name: String) -> UserEntry? {
        guard let entry = getpwnam(name) else { return nil }
        return UserEntry(name: name, uid: entry.pointee.pw_uid, gid: entry.pointee.pw_gid)
    }

    /// The name of `uid`, or the number when it has none.
    public static func name(of uid: uid_t) -> String {
        guard let entry = getpwuid(uid), let name = entry.pointee.pw_name else { return "\(uid)" }
        return String(cString: name)
    }
}
