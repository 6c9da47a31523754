import CSluice
import Foundation
import Glibc
import Logging
import SluicePosix

/// What the admin socket can ask of the running server.
protocol AdminHandler: AnyObject {
    func adminStatus() -> StatusSnapshot?
    func adminBackends() -> AdminBackendsReply
    func adminDrainBackend(pool: String, backend: String, drained: Bool) -> String?  // nil = done, else why not
    func adminDrainWorker(_ worker: Int, drained: Bool) -> String?
    func metricsText() -> String
}

/// The admin unix socket (JSON lines) and the Prometheus endpoint, both
/// served from the control thread's epoll. Nothing a client sends can take
/// the daemon down: every request is bounded, parsed defensively and
/// answered with a JSON error if it is not understood.
final class AdminEndpoints {
    private final class Connection {
        let fd: Int32
        let isMetrics: Bool
        var input: [UInt8] = []
        var output: [UInt8] = []
        var closeAfterWrite = false
        init(fd: Int32, isMetrics: Bool) {
            self.fd = fd
            self.isMetrics = isMetrics
        }
    }

    static let maxRequestBytes = 64 * 1024
    static let maxConnections = 64

    let socketPath: String
    private let adminFD: Int32
    private let metricsFD: Int32?
    private var connections: [UInt64: Connection] = [:]
    private var nextToken: UInt64
    private let tokenBase: UInt64
    private weak var handler: AdminHandler?
    private let epoll: Epoll
    private let logger: Logger

    /// Tokens at and above `tokenBase` belong to these endpoints.
    init(socketPath: String, metrics: SocketAddress?, epoll: Epoll, tokenBase: UInt64, handler: AdminHandler, logger: Logger) throws(ServerError) {
        self.socketPath = socketPath
        self.epoll = epoll
        self.tokenBase = tokenBase
        self.nextToken = tokenBase + 2
        self.handler = handler
        self.logger = logger
        // We hold the instance lock: a socket file here was left by a run that died.
        let directory = String(socketPath[..<(socketPath.lastIndex(of: "/") ?? socketPath.startIndex)])
        if !directory.isEmpty { try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
        unlink(socketPath)
        let fd = socket(AF_UNIX, SLUICE_SOCK_STREAM | SLUICE_SOCK_NONBLOCK | SLUICE_SOCK_CLOEXEC, 0)
        guard fd >= 0 else { throw ServerError("admin socket: \(errnoDescription(errno))") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: socketPath.utf8.prefix(raw.count - 1))
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, chmod(socketPath, 0o600) == 0, listen(fd, 64) == 0 else {
            let code = errno
            closeDescriptor(fd)
            throw ServerError("admin socket \(socketPath): \(errnoDescription(code))")
        }
        adminFD = fd
        if let metrics {
            do {
                metricsFD = try Socket.listen(on: metrics, reusePort: false, backlog: 64)
            } catch {
                closeDescriptor(fd)
                unlink(socketPath)
                throw ServerError("metrics endpoint \(metrics): \(error)")
            }
        } else {
            metricsFD = nil
        }
        do {
            try epoll.add(adminFD, .readable, token: tokenBase)
            if let metricsFD { try epoll.add(metricsFD, .readable, token: tokenBase + 1) }
        } catch {
            close()
            throw ServerError("admin endpoints: \(error)")
        }
    }

    func close() {
        for connection in connections.values { closeDescriptor(connection.fd) }
        connections.removeAll()
        closeDescriptor(adminFD)
        if let metricsFD { closeDescriptor(metricsFD) }
        unlink(socketPath)
    }

    func owns(_ token: UInt64) -> Bool { token >= tokenBase }

    func handle(token: UInt64, events: EpollEvents) {
        if token == tokenBase { accept(from: adminFD, isMetrics: false); return }
        if token == tokenBase + 1, let metricsFD { accept(from: metricsFD, isMetrics: true); return }
        guard let connection = connections[token] else { return }
        if events.contains(.writable) { flush(connection, token: token) }
        if !events.isDisjoint(with: [.readable, .hangup, .error]) { read(connection, token: token) }
    }

    private func accept(from listener: Int32, isMetrics: Bool) {
        while case .done(let (fd, _))? = try? Socket.accept(listener) {
            guard connections.count < Self.maxConnections else {
                closeDescriptor(fd) // too many at once: shed, never queue unboundedly
                continue
            }
            let token = nextToken
            nextToken += 1
            connections[token] = Connection(fd: fd, isMetrics: isMetrics)
            do { try epoll.add(fd, .readable, token: token) } catch { drop(token) }
        }
    }

    private func drop(_ token: UInt64) {
        guard let connection = connections.removeValue(forKey: token) else { return }
        closeDescriptor(connection.fd) // also leaves the epoll set
    }

    private func read(_ connection: Connection, token: UInt64) {
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let outcome = chunk.withUnsafeMutableBytes { try? Socket.read(connection.fd, into: $0) }
            switch outcome {
            case .bytes(let n)?:
                connection.input.append(contentsOf: chunk[0..<n])
                if connection.input.count > Self.maxRequestBytes {
                    respond(connection, token: token, error: "request too large (limit \(Self.maxRequestBytes) bytes)", close: true)
                    return
                }
            case .wouldBlock?:
                process(connection, token: token)
                return
            default: // EOF or error
                process(connection, token: token)
                if connection.output.isEmpty { drop(token) } else { connection.closeAfterWrite = true }
                return
            }
        }
    }

    private func process(_ connection: Connection, token: UInt64) {
        if connection.isMetrics {
            guard let end = connection.input.firstRange(of: Array("\r\n\r\n".utf8)) else { return }
            let head = String(decoding: connection.input[..<end.lowerBound], as: UTF8.self)
            connection.input.removeAll()
            let requestLine = head.split(separator: "\r\n").first.map(String.init) ?? ""
            let parts = requestLine.split(separator: " ")
            let response: String
            if parts.count >= 2, parts[0] == "GET", parts[1] == "/metrics" || parts[1].hasPrefix("/metrics?") {
                let body = handler?.metricsText() ?? ""
                response = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                    + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
            } else {
                let body = "not found: the metrics are at /metrics\n"
                response = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\n"
                    + "Connection: close\r\n\r\n" + body
            }
            connection.output += Array(response.utf8)
            connection.closeAfterWrite = true
            flush(connection, token: token)
            return
        }
        while let newline = connection.input.firstIndex(of: UInt8(ascii: "\n")) {
            let line = Array(connection.input[..<newline])
            connection.input.removeSubrange(...newline)
            if line.allSatisfy({ $0 == 32 || $0 == 13 || $0 == 9 }) { continue }
            connection.output += Array((answer(line) + "\n").utf8)
        }
        flush(connection, token: token)
    }

    private func respond(_ connection: Connection, token: UInt64, error: String, close: Bool) {
        connection.output += Array((Self.json(["error": error]) + "\n").utf8)
        connection.closeAfterWrite = close
        connection.input.removeAll()
        flush(connection, token: token)
    }

    private func flush(_ connection: Connection, token: UInt64) {
        while !connection.output.isEmpty {
            let result = connection.output.withUnsafeBytes { try? Socket.write(connection.fd, from: $0) }
            switch result {
            case .done(let n)?:
                connection.output.removeFirst(n)
            case .wouldBlock?:
                try? epoll.modify(connection.fd, [.readable, .writable], token: token)
                return
            default:
                drop(token)
                return
            }
        }
        if connection.closeAfterWrite { drop(token); return }
        try? epoll.modify(connection.fd, .readable, token: token)
    }

    /// One request, one JSON answer. Never throws, never traps.
    func answer(_ line: [UInt8]) -> String {
        guard let object = try? JSONSerialization.jsonObject(with: Data(line)),
              let request = object as? [String: Any] else {
            return Self.json(["error": "expected one JSON object per line, such as {\"cmd\":\"status\"}"])
        }
        guard let command = request["cmd"] as? String else {
            return Self.json(["error": "missing \"cmd\" (status, backends, drain_backend, undrain_backend, drain_worker, undrain_worker)"])
        }
        guard let handler else { return Self.json(["error": "shutting down"]) }
        switch command {
        case "status":
            guard let status = handler.adminStatus(), let data = try? JSONEncoder().encode(status) else {
                return Self.json(["error": "status unavailable"])
            }
            return String(decoding: data, as: UTF8.self)
        case "backends":
            guard let data = try? JSONEncoder().encode(handler.adminBackends()) else { return Self.json(["error": "unavailable"]) }
            return String(decoding: data, as: UTF8.self)
        case "drain_backend", "undrain_backend":
            guard let pool = request["pool"] as? String, let backend = request["backend"] as? String else {
                return Self.json(["error": "\(command) needs \"pool\" and \"backend\" (an address as in the configuration)"])
            }
            if let problem = handler.adminDrainBackend(pool: pool, backend: backend, drained: command == "drain_backend") {
                return Self.json(["error": problem])
            }
            logger.notice("admin: \(command)", metadata: ["pool": "\(pool)", "backend": "\(backend)"])
            return Self.json(["ok": true])
        case "drain_worker", "undrain_worker":
            guard let worker = request["worker"] as? Int else {
                return Self.json(["error": "\(command) needs \"worker\" (a number)"])
            }
            if let problem = handler.adminDrainWorker(worker, drained: command == "drain_worker") {
                return Self.json(["error": problem])
            }
            logger.notice("admin: \(command)", metadata: ["worker": "\(worker)"])
            return Self.json(["ok": true])
        default:
            return Self.json(["error": "unknown cmd \"\(command)\" (status, backends, drain_backend, undrain_backend, drain_worker, undrain_worker)"])
        }
    }

    static func json(_ object: [String: Any]) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }
}

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
