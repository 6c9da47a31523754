import SluicePosix

// Pin directories are created and removed by root. Anything in them that
// root follows (a symlink, a directory someone else could fill) would let
// that someone point root's removals or pins elsewhere: nothing here follows
// a symlink, and a directory root did not make safely is refused.

/// Creates `path` and its missing parents (mode 0755).
func makeDirectory(_ path: String) throws(SystemCallError) {
    try FileSystem.makeDirectories(path, mode: 0o755)
}

public func isBPFFileSystem(_ path: String) -> Bool { FileSystem.isOnBPFFileSystem(path) }

/// Whether `path` exists, as itself (a symlink counts, and is not followed).
func pathExists(_ path: String) -> Bool { FileSystem.linkExists(path) }

/// Refuses a directory that is a symlink, is not root's (or one of
/// `trustedOwners`'), or that others may write to. A group-writable directory
/// passes only with `allowStickyGroupWrite` and the sticky bit: the shared
/// parents the daemon's group may add its own entries to, and remove only those.
public func checkPinDirectory(_ path: String, trustedOwners: Set<UInt32> = [], allowStickyGroupWrite: Bool = false)
    throws(BPFError)
{
    let info: FileStatus
    do { info = try FileSystem.linkStatus(path) } catch {
        throw BPFError("cannot inspect \(path): \(errnoDescription(error.errno))")
    }
    if info.kind == .symbolicLink {
        throw BPFError("refusing \(path): it is a symbolic link; pins are kept only in a real directory (remove it)")
    }
    guard info.kind == .directory else { throw BPFError("refusing \(path): it is not a directory (remove it)") }
    let mode = info.mode
    let described = "owner \(UserEntry.name(of: info.owner)) (uid \(info.owner)), mode \(String(mode, radix: 8))"
    guard info.owner == 0 || info.owner == CurrentProcess.effectiveUserID || trustedOwners.contains(info.owner) else {
        throw BPFError("refusing \(path): \(described); it must belong to root or the daemon's user (remove it)")
    }
    let sticky = mode & 0o1000 != 0
    if mode & 0o002 != 0 || (mode & 0o020 != 0 && !(allowStickyGroupWrite && sticky)) {
        throw BPFError("refusing \(path): \(described); others may write to it (chmod go-w, or remove it)")
    }
}

/// Removes a pin directory and what is in it without following a symlink
/// anywhere: a symlink at `path` is left alone (nothing is removed), a
/// symlink inside is removed as a link, never its target, and only real
/// subdirectories are entered. Returns whether the directory is gone.
@discardableResult
public func removePinDirectory(_ path: String) -> Bool {
    FileSystem.removeTreeWithoutFollowing(path)
}
