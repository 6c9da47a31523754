import Foundation
import SluicePosix

/// A blocking client of the admin socket (for `sluice status` and tests).
public enum AdminClient {
    public static func request(socket path: String, _ request: [String: Any], timeoutMilliseconds: Int = 1000) throws -> String {
        let data = try JSONSerialization.data(withJSONObject: request)
        return try send(socket: path, line: String(decoding: data, as: UTF8.self), timeoutMilliseconds: timeoutMilliseconds)
    }

    /// Sends one raw line, returns the first line of the answer.
    public static func send(socket path: String, line: String, timeoutMilliseconds: Int = 1000) throws -> String {
        let fd = try UnixSocket.connect(path: path, timeoutMilliseconds: timeoutMilliseconds)
        defer { closeDescriptor(fd) }
        try Socket.sendAll(fd, Array((line + "\n").utf8), label: "send \(path)")
        var reply: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while !reply.contains(UInt8(ascii: "\n")) {
            let n = try Socket.receive(fd, into: &buffer, label: "recv \(path)")
            if n == 0 { break }
            reply += buffer[0..<n]
        }
        guard let end = reply.firstIndex(of: UInt8(ascii: "\n")) else {
            throw SystemCallError(call: "recv \(path)", errno: EPIPE)
        }
        return String(decoding: reply[..<end], as: UTF8.self)
    }
}
