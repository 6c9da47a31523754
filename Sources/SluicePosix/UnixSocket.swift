import CSluice
import Glibc

/// AF_UNIX sockets: the admin socket (stream) and sd_notify (datagram).
public enum UnixSocket {
    /// sun_path's size, terminating zero included.
    public static let maxPathBytes = MemoryLayout.size(ofValue: sockaddr_un().sun_path)

    /// A non-blocking listening socket at `path`, file mode `mode`. A file
    /// already at `path` is removed first (the caller holds the instance lock).
    public static func listen(path: String, mode: mode_t, backlog: Int32 = 64,
                              type: Int32 = SLUICE_SOCK_STREAM) throws(SystemCallError) -> Int32 {
        FileSystem.removeFile(path)
        let fd = try systemCall("socket(AF_UNIX)") {
            Glibc.socket(AF_UNIX, type | SLUICE_SOCK_NONBLOCK | SLUICE_SOCK_CLOEXEC, 0)
        }
        do throws(SystemCallError) {
            _ = try systemCall("bind \(path)") { withAddress(Array(path.utf8)) { Glibc.bind(fd, $0, $1) } }
            try FileSystem.changeMode(path, mode)
            _ = try systemCall("listen \(path)") { Glibc.listen(fd, backlog) }
            return fd
        } catch {
            closeDescriptor(fd)
            throw error
        }
    }

    /// A blocking stream connection to `path`; sends and receives give up
    /// after `timeoutMilliseconds`.
    public static func connect(path: String, timeoutMilliseconds: Int,
                               type: Int32 = SLUICE_SOCK_STREAM) throws(SystemCallError) -> Int32 {
        let fd = try systemCall("socket(AF_UNIX)") { Glibc.socket(AF_UNIX, type | SLUICE_SOCK_CLOEXEC, 0) }
        do throws(SystemCallError) {
            var tv = timeval(tv_sec: timeoutMilliseconds / 1000, tv_usec: Int((timeoutMilliseconds % 1000) * 1000))
            let size = socklen_t(MemoryLayout<timeval>.size)
            _ = try systemCall("setsockopt(SO_RCVTIMEO)") { setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, size) }
            _ = try systemCall("setsockopt(SO_SNDTIMEO)") { setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, size) }
            _ = try systemCall("connect \(path)") { withAddress(Array(path.utf8)) { Glibc.connect(fd, $0, $1) } }
            return fd
        } catch {
            closeDescriptor(fd)
            throw error
        }
    }

    /// One datagram to the socket at `path` (a leading "@": the abstract
    /// namespace), from a socket made for it and closed at once.
    public static func sendDatagram(_ message: [UInt8], to path: String) throws(SystemCallError) {
        var name = Array(path.utf8)
        guard !name.isEmpty, name.count < maxPathBytes else { throw SystemCallError(call: "sendto \(path)", errno: ENAMETOOLONG) }
        if name[0] == UInt8(ascii: "@") { name[0] = 0 }
        let fd = try systemCall("socket(AF_UNIX)") { Glibc.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | SLUICE_SOCK_CLOEXEC, 0) }
        defer { closeDescriptor(fd) }
        _ = try systemCall("sendto \(path)") {
            withAddress(name, exactLength: true) { Glibc.sendto(fd, message, message.count, Int32(MSG_NOSIGNAL), $0, $1) }
        }
    }

    /// Runs `body` with a sockaddr_un for `path` (truncated to fit). With
    /// `exactLength` the length covers the name only (abstract names need it).
    private static func withAddress<T>(_ path: [UInt8], exactLength: Bool = false,
                                       _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let name = path.prefix(maxPathBytes - 1)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: name) }
        let length = exactLength ? socklen_t(MemoryLayout<sa_family_t>.size + name.count) : socklen_t(MemoryLayout<sockaddr_un>.size)
        return withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) } }
    }
}
