import CSluice
import Glibc

/// The file-system calls the daemon and the CLI make: typed errors, EINTR
/// retried, no descriptor left open on any path.
public enum FileSystem {
    /// unlink(2), for names that may already be gone: failure is not reported.
    public static func removeFile(_ path: String) {
        _ = Glibc.unlink(path)
    }

    /// unlink(2), reporting failure.
    public static func unlink(_ path: String) throws(SystemCallError) {
        _ = try systemCall("unlink \(path)") { Glibc.unlink(path) }
    }

    public static func exists(_ path: String) -> Bool { Glibc.access(path, F_OK) == 0 }

    /// mkdir -p: creates `path` and its missing parents with `mode`.
    public static func makeDirectories(_ path: String, mode: mode_t = 0o755) throws(SystemCallError) {
        if path.isEmpty || exists(path) { return }
        if let cut = path.lastIndex(of: "/"), cut != path.startIndex {
            try makeDirectories(String(path[..<cut]), mode: mode)
        }
        do throws(SystemCallError) {
            _ = try systemCall("mkdir \(path)") { Glibc.mkdir(path, mode) }
        } catch where error.errno == EEXIST {}
    }

    public static func changeMode(_ path: String, _ mode: mode_t) throws(SystemCallError) {
        _ = try systemCall("chmod \(path)") { Glibc.chmod(path, mode) }
    }

    /// lchown(2): a symlink is changed itself, never its target.
    public static func changeOwner(_ path: String, user: uid_t, group: gid_t) throws(SystemCallError) {
        _ = try systemCall("lchown \(path)") { Glibc.lchown(path, user, group) }
    }

    /// Opens (creating it with `mode` if needed) a file to append to.
    public static func openForAppend(_ path: String, mode: mode_t = 0o640) throws(SystemCallError) -> Int32 {
        try systemCall("open \(path)") { Glibc.open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, mode) }
    }

    /// Gives every entry of the directory `path` (opened without following a
    /// symlink) to `owner`:`group`, links themselves and not their targets,
    /// and sets `mode` on each entry that is not a symlink. Best effort: an
    /// entry that cannot be changed is left as it is.
    public static func changeEntries(in path: String, owner: uid_t, group: gid_t, mode: mode_t) throws(SystemCallError) {
        let fd = try systemCall("open \(path)") { Glibc.open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        guard let dir = fdopendir(fd) else {
            let code = Glibc.errno
            closeDescriptor(fd)
            throw SystemCallError(call: "fdopendir \(path)", errno: code)
        }
        defer { closedir(dir) }
        while let item = readdir(dir) {
            let name = withUnsafeBytes(of: item.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name != "." && name != ".." else { continue }
            fchownat(dirfd(dir), name, owner, group, AT_SYMLINK_NOFOLLOW)
            if item.pointee.d_type != UInt8(DT_LNK) { fchmodat(dirfd(dir), name, mode, 0) }
        }
    }

    /// The whole file, up to `limit` bytes (larger files are refused).
    public static func readFile(_ path: String, limit: Int = 64 << 20) throws(SystemCallError) -> [UInt8] {
        let fd = try systemCall("open \(path)") { Glibc.open(path, O_RDONLY | O_CLOEXEC) }
        defer { closeDescriptor(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = try systemCall("read \(path)") { chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) } }
            if n == 0 { return bytes }
            bytes.append(contentsOf: chunk[..<n])
            if bytes.count > limit { throw SystemCallError(call: "read \(path)", errno: EFBIG) }
        }
    }

    /// Writes `bytes` to a new file next to `path` and renames it over
    /// `path`: readers see the old contents or the new, never a part.
    public static func replaceFile(_ path: String, with bytes: [UInt8], mode: mode_t = 0o644) throws(SystemCallError) {
        let temporary = "\(path).tmp.\(getpid())"
        let fd = try systemCall("open \(temporary)") {
            Glibc.open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode)
        }
        do throws(SystemCallError) {
            try writeAll(fd, bytes, label: temporary)
            closeDescriptor(fd)
            _ = try systemCall("rename \(path)") { Glibc.rename(temporary, path) }
        } catch {
            removeFile(temporary)
            throw error
        }
    }

    /// Writes every byte to a blocking descriptor (a file, or stdout/stderr).
    public static func writeAll(_ fd: Int32, _ bytes: some Collection<UInt8>, label: String = "write") throws(SystemCallError) {
        let array = Array(bytes)
        var offset = 0
        while offset < array.count {
            let n = try systemCall(label) {
                array.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            }
            offset += n
        }
    }

    /// The entries of a directory opened without following a symlink at `path`.
    public static func directoryEntries(_ path: String) throws(SystemCallError) -> [DirectoryEntry] {
        let fd = try systemCall("open \(path)") { Glibc.open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        guard let dir = fdopendir(fd) else {
            let code = Glibc.errno
            closeDescriptor(fd)
            throw SystemCallError(call: "fdopendir \(path)", errno: code)
        }
        defer { closedir(dir) }
        var entries: [DirectoryEntry] = []
        while let item = readdir(dir) {
            let name = withUnsafeBytes(of: item.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name != "." && name != ".." else { continue }
            entries.append(DirectoryEntry(name: name, isSymbolicLink: item.pointee.d_type == UInt8(DT_LNK)))
        }
        return entries
    }

    public struct DirectoryEntry: Sendable {
        public let name: String
        public let isSymbolicLink: Bool
    }

    /// The target of a symbolic link.
    public static func readLink(_ path: String) throws(SystemCallError) -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = try systemCall("readlink \(path)") { Glibc.readlink(path, &buffer, buffer.count - 1) }
        return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// The calling process.
public enum CurrentProcess {
    public static var id: Int32 { getpid() }
    public static var effectiveUserID: uid_t { geteuid() }

    /// _exit(2): no atexit handlers, no stdio flush (the log writer flushes itself).
    public static func exit(_ status: Int32) -> Never { _exit(status) }
}

public func exitProcess(_ status: Int32) -> Never { CurrentProcess.exit(status) }

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

extension CurrentProcess {
    /// Number of CPUs online (sysconf(_SC_NPROCESSORS_ONLN)), at least 1.
    public static var onlineCPUCount: Int {
        let count = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        return count > 0 ? count : 1
    }
}
