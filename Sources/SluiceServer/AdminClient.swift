import CSluice
import Foundation
import Glibc
import SluicePosix

/// A blocking client of the admin socket (for `sluice status` and tests).
public enum AdminClient {
    public static func request(socket path: String, _ request: [String: Any], timeoutMilliseconds: Int = 1000) throws -> String {
        let data = try JSONSerialization.data(withJSONObject: request)
        return try send(socket: path, line: String(decoding: data, as: UTF8.self), timeoutMilliseconds: timeoutMilliseconds)
    }

    /// Sends one raw line, returns the first line of the answer.
    public static func send(socket path: String, line: String, timeoutMilliseconds: Int = 1000) throws -> String {
        let fd = socket(AF_UNIX, SLUICE_SOCK_STREAM | SLUICE_SOCK_CLOEXEC, 0)
        guard fd >= 0 else { throw SystemCallError(call: "socket(AF_UNIX)", errno: errno) }
        defer { closeDescriptor(fd) }
        var tv = timeval(tv_sec: timeoutMilliseconds / 1000, tv_usec: Int((timeoutMilliseconds % 1000) * 1000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in raw.copyBytes(from: path.utf8.prefix(raw.count - 1)) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else { throw SystemCallError(call: "connect \(path)", errno: errno) }
        let out = Array((line + "\n").utf8)
        guard Glibc.send(fd, out, out.count, Int32(MSG_NOSIGNAL)) == out.count else {
            throw SystemCallError(call: "send \(path)", errno: errno)
        }
        var reply: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while !reply.contains(UInt8(ascii: "\n")) {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            reply += buffer[0..<n]
        }
        guard let end = reply.firstIndex(of: UInt8(ascii: "\n")) else {
            throw SystemCallError(call: "recv \(path)", errno: errno == 0 ? EPIPE : errno)
        }
        return String(decoding: reply[..<end], as: UTF8.self)
    }
}
