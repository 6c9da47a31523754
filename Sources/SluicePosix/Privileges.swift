import CSluice
import Glibc

/// The calling thread's capabilities and identity.
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
