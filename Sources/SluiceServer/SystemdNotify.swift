import CSluice
import Glibc

/// sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET
/// ("READY=1" once listening, "STOPPING=1" when draining). A no-op when not
/// started by systemd (Type=notify) or a compatible supervisor.
enum SystemdNotify {
    static func send(_ state: String) {
        guard let raw = getenv("NOTIFY_SOCKET") else { return }
        var path = Array(String(cString: raw).utf8)
        guard !path.isEmpty, path.count < 108 else { return }
        if path[0] == UInt8(ascii: "@") { path[0] = 0 } // abstract namespace
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | SLUICE_SOCK_CLOEXEC, 0)
        guard fd >= 0 else { return }
        defer { Glibc.close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: path) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + path.count)
        let message = Array(state.utf8)
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(fd, message, message.count, Int32(MSG_NOSIGNAL), $0, length)
            }
        }
    }
}
