import SluiceBPF
import SluicePosix

/// Before dropping root, gives the daemon's user what it removes at stop:
/// its pin directory, lock, info file and admin socket, and lets its group
/// add and remove its own entries in their parents (sticky). The pinned maps
/// themselves stay root's, mode 0640, group `gid`: the daemon keeps using the
/// fds it opened as root and only ever reopens pins read-only (status), so
/// no process of that user, the daemon's siblings included, can open the
/// maps that steer traffic for writing. Nothing here follows a symlink.
func handOverRuntimeFiles(to uid: UInt32, group gid: UInt32, pinDirectory: String?, lock: InstanceLock?,
                          infoPath: String, adminSocket: String?) {
    if let pinDirectory {
        try? FileSystem.changeOwner(pinDirectory, user: uid, group: gid) // the user unpins at stop: it writes the directory
        try? FileSystem.changeEntries(in: pinDirectory, owner: 0, group: gid, mode: 0o640)
        let parent = String(pinDirectory[..<pinDirectory.lastIndex(of: "/")!])
        try? FileSystem.changeOwner(parent, user: 0, group: gid)
        try? FileSystem.changeMode(parent, 0o1770)
    }
    if let lock {
        lock.handOver(to: uid, group: gid)
        try? FileSystem.changeOwner(infoPath, user: uid, group: gid)
        try? FileSystem.changeOwner(InstanceLock.defaultDirectory, user: 0, group: gid)
        try? FileSystem.changeMode(InstanceLock.defaultDirectory, 0o1770)
    }
    if let adminSocket {
        try? FileSystem.changeOwner(adminSocket, user: uid, group: gid)
        try? FileSystem.changeMode(adminSocket, 0o660) // the group may ask for status; nobody else may talk to it
    }
}
