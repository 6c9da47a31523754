import Glibc
import SluiceBPF
import SluicePosix

/// Before dropping root, gives the daemon's user what it removes at stop:
/// its pin directory, lock, info file and admin socket, and lets its group
/// add and remove its own entries in their parents (sticky). The pinned maps
/// themselves stay root's, mode 0640, group `gid`: the daemon keeps using the
/// fds it opened as root and only ever reopens pins read-only (status), so
/// no process of that user, the daemon's siblings included, can open the
/// maps that steer traffic for writing. Nothing here follows a symlink.
func handOverRuntimeFiles(to uid: uid_t, group gid: gid_t, pinDirectory: String?, lock: InstanceLock?,
                          infoPath: String, adminSocket: String?) {
    if let pinDirectory {
        lchown(pinDirectory, uid, gid) // the user unpins at stop: it writes the directory
        let fd = open(pinDirectory, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if fd >= 0, let dir = fdopendir(fd) {
            while let item = readdir(dir) {
                let name = withUnsafeBytes(of: item.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                guard name != "." && name != ".." else { continue }
                fchownat(dirfd(dir), name, 0, gid, AT_SYMLINK_NOFOLLOW)
                if item.pointee.d_type != UInt8(DT_LNK) { fchmodat(dirfd(dir), name, 0o640, 0) }
            }
            closedir(dir)
        } else if fd >= 0 {
            closeDescriptor(fd)
        }
        let parent = String(pinDirectory[..<pinDirectory.lastIndex(of: "/")!])
        lchown(parent, 0, gid)
        chmod(parent, 0o1770)
    }
    if let lock {
        lock.handOver(to: uid, group: gid)
        lchown(infoPath, uid, gid)
        lchown(InstanceLock.defaultDirectory, 0, gid)
        chmod(InstanceLock.defaultDirectory, 0o1770)
    }
    if let adminSocket {
        lchown(adminSocket, uid, gid)
        chmod(adminSocket, 0o660) // the group may ask for status; nobody else may talk to it
    }
}
