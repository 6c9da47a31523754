import CSluice
import Glibc

/// The file-system calls the daemon and the CLI make: typed errors, EINTR
/// retried, no descriptor left open on any path.
public enum FileSystem {
    /// unlink(2), for names that may already be gone: failure is not reported.
    public static func removeFile(_ path: String) {
        _ = Glibc.unlink(path)
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
}
