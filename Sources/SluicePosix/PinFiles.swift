import CSluice
import Glibc

// The file-system calls behind pin directories and the instance lock, made
// by root in directories others may share: nothing here follows a symlink
// where that would let someone point root's removals elsewhere.

/// What lstat(2) says about a path, as itself (a symlink is not followed).
public struct FileStatus: Sendable, Equatable {
    public enum Kind: Sendable { case directory, symbolicLink, other }
    public let kind: Kind
    /// Permission bits, sticky bit included (0o7777).
    public let mode: mode_t
    public let owner: uid_t
}

extension FileSystem {
    /// lstat(2).
    public static func linkStatus(_ path: String) throws(SystemCallError) -> FileStatus {
        var info = stat()
        _ = try systemCall("lstat \(path)") { lstat(path, &info) }
        let type = info.st_mode & S_IFMT
        let kind: FileStatus.Kind = type == S_IFDIR ? .directory : type == S_IFLNK ? .symbolicLink : .other
        return FileStatus(kind: kind, mode: info.st_mode & 0o7777, owner: info.st_uid)
    }

    /// Whether `path` exists, as itself (a dangling symlink counts).
    public static func linkExists(_ path: String) -> Bool { (try? linkStatus(path)) != nil }

    /// mkdir(2) of one directory.
    public static func makeDirectory(_ path: String, mode: mode_t) throws(SystemCallError) {
        _ = try systemCall("mkdir \(path)") { Glibc.mkdir(path, mode) }
    }

    public static func rename(_ from: String, to: String) throws(SystemCallError) {
        _ = try systemCall("rename \(from)") { Glibc.rename(from, to) }
    }

    /// Whether `path` is on a bpffs (statfs(2)); false if it cannot tell.
    public static func isOnBPFFileSystem(_ path: String) -> Bool { sluice_is_bpffs(path) == 1 }

    /// Removes the directory `path` and what is in it without following a
    /// symlink anywhere: a symlink at `path` is left alone (nothing is
    /// removed), a symlink inside is removed as a link, never its target,
    /// and only real subdirectories are entered (8 levels at most).
    /// Returns whether the directory is gone.
    public static func removeTreeWithoutFollowing(_ path: String) -> Bool {
        let cut = path.lastIndex(of: "/") ?? path.startIndex
        let parentPath = cut == path.startIndex ? (path.hasPrefix("/") ? "/" : ".") : String(path[..<cut])
        let name = String(path[path.index(after: cut)...])
        let parent = Glibc.open(parentPath, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard parent >= 0 else { return false }
        defer { closeDescriptor(parent) }
        return removeTree(in: parent, name: name, depth: 0)
    }

    /// Empties and removes the directory `name` under `parent` (depth-bounded).
    private static func removeTree(in parent: Int32, name: String, depth: Int) -> Bool {
        guard depth < 8 else { return false }
        // O_NOFOLLOW: a symlink here fails (ELOOP) instead of being entered.
        let fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return false }
        guard let dir = fdopendir(fd) else {
            closeDescriptor(fd)
            return false
        }
        var names: [String] = []
        while let entry = readdir(dir) {
            let entryName = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if entryName != "." && entryName != ".." { names.append(entryName) }
        }
        let dirFD = dirfd(dir)
        for entryName in names {
            // unlinkat removes a symlink itself; a directory answers EISDIR.
            if unlinkat(dirFD, entryName, 0) != 0 && Glibc.errno == EISDIR {
                _ = removeTree(in: dirFD, name: entryName, depth: depth + 1)
            }
        }
        closedir(dir)
        return unlinkat(parent, name, AT_REMOVEDIR) == 0
    }
}

/// An exclusive, non-blocking flock(2) on a file it creates if needed
/// (never through a symlink); the file is removed when the lock is released.
public final class FileLock {
    public let path: String
    public let fd: Int32
    /// Set when the lock went to another process (its descriptor passed):
    /// the file stays, for the lock is still held there.
    public var leavesFile = false

    public enum Failure: Error, Sendable {
        /// Another process holds it.
        case held
        case cannotOpen(SystemCallError)
    }

    public init(path: String, mode: mode_t = 0o644) throws(Failure) {
        self.path = path
        let fd: Int32
        do { fd = try systemCall("open \(path)") { Glibc.open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, mode) } } catch {
            throw .cannotOpen(error)
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            closeDescriptor(fd)
            throw .held
        }
        self.fd = fd
    }

    /// A lock held through a descriptor another process passed over (the
    /// same open file, so the same flock).
    /// It is not this process's to remove until it says so (`leavesFile`):
    /// should this process fail to take over, the other one still holds it.
    public init(adopting fd: Int32, path: String) {
        self.fd = fd
        self.path = path
        leavesFile = true
    }

    deinit {
        if !leavesFile { FileSystem.removeFile(path) }
        closeDescriptor(fd)
    }

    /// Gives the file to `uid`:`gid` through the descriptor (the name may
    /// have been swapped since it was opened).
    public func handOver(to uid: uid_t, group gid: gid_t) {
        _ = fchown(fd, uid, gid)
    }
}
