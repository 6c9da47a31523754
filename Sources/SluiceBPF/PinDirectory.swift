import CSluice
import Glibc
import SluicePosix

// Pin directories are created and removed by root. Anything in them that
// root follows (a symlink, a directory someone else could fill) would let
// that someone point root's removals or pins elsewhere: nothing here follows
// a symlink, and a directory root did not make safely is refused.

func makeDirectory(_ path: String) -> Int32 {
    if access(path, F_OK) == 0 { return 0 }
    let parent = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
    if !parent.isEmpty && access(parent, F_OK) != 0 { _ = makeDirectory(parent) }
    return mkdir(path, 0o755)
}

public func isBPFFileSystem(_ path: String) -> Bool { sluice_is_bpffs(path) == 1 }

/// Whether `path` exists, as itself (a symlink counts, and is not followed).
func pathExists(_ path: String) -> Bool {
    var info = stat()
    return lstat(path, &info) == 0
}

/// Refuses a directory that is a symlink, is not root's (or one of
/// `trustedOwners`'), or that others may write to. A group-writable directory
/// passes only with `allowStickyGroupWrite` and the sticky bit: the shared
/// parents the daemon's group may add its own entries to, and remove only those.
public func checkPinDirectory(_ path: String, trustedOwners: Set<uid_t> = [], allowStickyGroupWrite: Bool = false)
    throws(BPFError)
{
    var info = stat()
    guard lstat(path, &info) == 0 else { throw BPFError("cannot inspect \(path): \(errnoDescription(errno))") }
    let kind = info.st_mode & S_IFMT
    if kind == S_IFLNK {
        throw BPFError("refusing \(path): it is a symbolic link; pins are kept only in a real directory (remove it)")
    }
    guard kind == S_IFDIR else { throw BPFError("refusing \(path): it is not a directory (remove it)") }
    let mode = info.st_mode & 0o7777
    let described = "owner \(userName(info.st_uid)) (uid \(info.st_uid)), mode \(String(mode, radix: 8))"
    guard info.st_uid == 0 || info.st_uid == geteuid() || trustedOwners.contains(info.st_uid) else {
        throw BPFError("refusing \(path): \(described); it must belong to root or the daemon's user (remove it)")
    }
    let sticky = mode & 0o1000 != 0
    if mode & 0o002 != 0 || (mode & 0o020 != 0 && !(allowStickyGroupWrite && sticky)) {
        throw BPFError("refusing \(path): \(described); others may write to it (chmod go-w, or remove it)")
    }
}

private func userName(_ uid: uid_t) -> String {
    guard let entry = getpwuid(uid), let name = entry.pointee.pw_name else { return "\(uid)" }
    return String(cString: name)
}

/// Removes a pin directory and what is in it without following a symlink
/// anywhere: a symlink at `path` is left alone (nothing is removed), a
/// symlink inside is removed as a link, never its target, and only real
/// subdirectories are entered. Returns whether the directory is gone.
@discardableResult
public func removePinDirectory(_ path: String) -> Bool {
    let cut = path.lastIndex(of: "/") ?? path.startIndex
    let parentPath = cut == path.startIndex ? (path.hasPrefix("/") ? "/" : ".") : String(path[..<cut])
    let name = String(path[path.index(after: cut)...])
    let parent = open(parentPath, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
    guard parent >= 0 else { return false }
    defer { closeDescriptor(parent) }
    return removeTree(in: parent, name: name, depth: 0)
}

/// Empties and removes the directory `name` under `parent` (depth-bounded).
private func removeTree(in parent: Int32, name: String, depth: Int) -> Bool {
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
        if unlinkat(dirFD, entryName, 0) != 0 && errno == EISDIR {
            _ = removeTree(in: dirFD, name: entryName, depth: depth + 1)
        }
    }
    closedir(dir)
    return unlinkat(parent, name, AT_REMOVEDIR) == 0
}
