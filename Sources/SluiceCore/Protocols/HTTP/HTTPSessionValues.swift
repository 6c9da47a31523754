// The vocabulary of `HTTPSession`: its limits, the events it takes and the
// actions it returns.

/// Per-listener settings of a `mode: http` session.
public struct HTTPSessionLimits: Sendable {
    public var head: HTTPLimits
    /// From the first byte of a request to its complete head (408 beyond it), and
    /// how long a keep-alive client may stay quiet between requests.
    public var headTimeoutMilliseconds: UInt64
    /// From the request's head sent to the response's head received (504 beyond it).
    public var responseTimeoutMilliseconds: UInt64
    /// Backends tried for one request: 1 + the pool's retries.
    public var maxAttempts: Int
    public var forwarded: HTTPForwardedFields
    /// Whether records carry the method, host and path (for an access log);
    /// without one they are left empty, which saves three strings per request.
    public var namesRequests = true
    /// WebSocket handshakes pass to the backend (false: 403 from the proxy).
    public var websocket = true

    public init(head: HTTPLimits = HTTPLimits(), headTimeoutMilliseconds: UInt64 = 10_000,
                responseTimeoutMilliseconds: UInt64 = 60_000, maxAttempts: Int = 3, forwarded: HTTPForwardedFields = .xff) {
        self.head = head
        self.headTimeoutMilliseconds = headTimeoutMilliseconds
        self.responseTimeoutMilliseconds = responseTimeoutMilliseconds
        self.maxAttempts = maxAttempts
        self.forwarded = forwarded
    }
}

public enum HTTPTimer: Sendable, Equatable, Hashable {
    /// The client's head is late (or a keep-alive client stayed quiet).
    case head
    /// The backend's response head is late.
    case response
}

/// One request and its response, as the access log prints it.
public struct HTTPExchangeRecord: Sendable, Equatable {
    public var method: String
    public var host: String
    public var path: String
    public var status: Int
    public var route: Int?
    public var backend: Int?
    public var bytesFromClient: UInt64
    public var bytesToClient: UInt64
    /// From the head sent to the backend to its response head; nil without one.
    public var upstreamMilliseconds: UInt64?
    public var totalMilliseconds: UInt64
}

extension HTTPSession {
    public enum Event: Sendable, Equatable {
        case accepted(now: UInt64)
        /// Bytes read from a side, for the session to look at (heads, chunk framing).
        case received(Side, [UInt8], now: UInt64)
        case endOfFile(Side, now: UInt64)
        /// A call on this side failed (a reset, say).
        case failed(Side, errno: Int32)
        /// Everything `send` asked for on this side is written.
        case sent(Side, now: UInt64)
        /// `move` finished: the bytes went from source to destination.
        case moved(Flow, now: UInt64)
        /// A backend connection of the pool, connected (new) or taken from the idle ones (reused).
        case acquired(backend: Int, reused: Bool, now: UInt64)
        case acquireFailed(backend: Int, errno: Int32?)
        /// No eligible backend is left in the pool.
        case noBackend
        case timerFired(HTTPTimer, now: UInt64)
    }

    public enum Action: Sendable, Equatable {
        /// Read what the side has and answer `received` (or `endOfFile`, `failed`).
        case read(Side)
        /// Write these bytes to the side, then answer `sent`.
        case send(Side, [UInt8])
        /// Move exactly `count` bytes from the flow's source socket to its
        /// destination without showing them to the session (splice(2) or a
        /// buffer); nil: until the source's EOF. Answer `moved`.
        case move(Flow, count: UInt64?)
        /// Get a backend connection of `pool`, not one of `excluding`: an idle
        /// kept-alive one, or a new connect. Answer `acquired`, `acquireFailed` or `noBackend`.
        case acquire(pool: Int, excluding: [Int])
        /// Done with the backend connection: back to the pool's idle ones if `reusable`, else closed.
        case release(reusable: Bool)
        /// Count a failed connect against the backend.
        case noteBackendFailure(backend: Int)
        case schedule(HTTPTimer, at: UInt64)
        case cancel(HTTPTimer)
        /// Boxed: the record is the largest payload, and every action is
        /// copied at the size of the largest (several per request).
        indirect case log(HTTPExchangeRecord)
        /// The connection is a tunnel from here (a WebSocket, a CONNECT): once
        /// what is queued on both sides is written, both sockets go to the
        /// TCP relay; the session has nothing more to say.
        case tunnel
        case close(CloseReason)
    }
}

/// The short responses the proxy itself sends.
public enum HTTPErrorResponse {
    static let reasons: [Int: String] = [
        400: "Bad Request", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout", 414: "URI Too Long", 426: "Upgrade Required",
        431: "Request Header Fields Too Large", 501: "Not Implemented", 502: "Bad Gateway",
        503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
    ]

    /// A complete response with a one-line body; it closes the connection.
    public static func bytes(status: Int, extraFields: String = "") -> [UInt8] {
        let reason = reasons[status] ?? "Error"
        let body = "\(status) \(reason)\n"
        return Array(("HTTP/1.1 \(status) \(reason)\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\n"
            + extraFields + "Connection: close\r\n\r\n" + body).utf8)
    }
}
