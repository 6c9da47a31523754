// The vocabulary of `TCPSession`: the values its events and actions carry.

/// How a session's bytes move between its two sockets.
public enum DataPathKind: String, Sendable, CaseIterable {
    /// The kernel moves the bytes: both sockets in a SOCKHASH whose verdict
    /// program redirects every skb to the peer; userspace sees only EOF and errors.
    case sockmap
    /// splice(2) through a pipe taken from the worker's pool while bytes are in flight.
    case splice
    /// read/write through a buffer taken from the worker's pool while bytes are in flight.
    case copy
}

/// The data paths one connection used, for its access log line and the
/// per-path counts: a connection that starts in userspace may splice bulk
/// and be promoted to sockmap.
public struct DataPathsUsed: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let copy = DataPathsUsed(rawValue: 1 << 0)
    public static let splice = DataPathsUsed(rawValue: 1 << 1)
    public static let sockmap = DataPathsUsed(rawValue: 1 << 2)

    public init(_ kind: DataPathKind) {
        switch kind {
        case .copy: self = .copy
        case .splice: self = .splice
        case .sockmap: self = .sockmap
        }
    }

    /// In the order a connection can take them: `copy+splice+sockmap`.
    public var description: String {
        [(DataPathsUsed.copy, "copy"), (.splice, "splice"), (.sockmap, "sockmap")]
            .filter { contains($0.0) }.map(\.1).joined(separator: "+")
    }
}

/// When `data_path: auto` moves a userspace session into the kernel
/// (sockmap), by either of two rules:
/// - `turns` request/response exchanges in a row whose messages were all
///   small (off by default: with the kworker hop counted, small requests
///   cost more in the kernel here);
/// - a one-way stream: `streamBytes` from the client without a change of
///   direction (in the lab the kernel carried 8 streams at about 1.5×
///   splice(2)'s rate). Only the client's direction: a backend that keeps
///   sending while the pair forms would keep its direction in userspace (see
///   `KernelPairing`), slower than the splice(2) it left.
/// Bulk request/response exchanges stay on splice(2), which moves them
/// faster than the sockmap's kworker hop; short connections stay in
/// userspace, where they cost no map updates.
public struct SockmapPromotion: Sendable, Equatable {
    /// Request/response exchanges (a message each way) before promotion; nil: never by turns.
    public var turns: Int?
    /// Bytes from the client in one message before promotion; nil: never by streaming.
    public var streamBytes: UInt64?
    /// A message (the bytes one way between two changes of direction)
    /// larger than this is bulk: the count of small turns starts over.
    public var smallMessageBytes: UInt64

    public init(turns: Int?, streamBytes: UInt64? = nil, smallMessageBytes: UInt64) {
        self.turns = turns
        self.streamBytes = streamBytes
        self.smallMessageBytes = smallMessageBytes
    }
}

/// Why a session ended; the access log prints the raw value.
public enum CloseReason: String, Sendable {
    case clientClosed = "client_eof"
    case backendClosed = "backend_eof"
    case clientReset = "client_reset"
    case backendReset = "backend_reset"
    case idleTimeout = "idle_timeout"
    case connectFailed = "connect_failed"
    case noBackend = "no_backend"
    case drainTimeout = "drain_timeout"
    case resourceExhausted = "resource_exhausted"
    case internalError = "internal_error"
}

/// One socket of a proxied connection.
public enum Side: UInt64, Sendable {
    case client = 0
    case backend = 1

    public var peer: Side { self == .client ? .backend : .client }
    /// The flow whose bytes come from this side.
    public var outgoing: Flow { self == .client ? .upstream : .downstream }
    /// The flow whose bytes go to this side.
    public var incoming: Flow { self == .client ? .downstream : .upstream }
}

/// One direction of a proxied connection.
public enum Flow: Sendable, Equatable {
    /// client → backend
    case upstream
    /// backend → client
    case downstream

    public var source: Side { self == .upstream ? .client : .backend }
    public var reverse: Flow { self == .upstream ? .downstream : .upstream }
    public var destination: Side { self == .upstream ? .backend : .client }
}

/// What a socket is ready for, as the worker's poller reports it.
public struct Readiness: OptionSet, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    // Literals, not stored constants: the worker tests these on every event,
    // and a stored constant is reached through an addressor from another module.
    @inlinable public static var readable: Readiness { Readiness(rawValue: 1 << 0) }
    @inlinable public static var writable: Readiness { Readiness(rawValue: 1 << 1) }
    /// The peer sent its FIN (EPOLLRDHUP).
    @inlinable public static var readHangup: Readiness { Readiness(rawValue: 1 << 2) }
    @inlinable public static var hangup: Readiness { Readiness(rawValue: 1 << 3) }
    @inlinable public static var error: Readiness { Readiness(rawValue: 1 << 4) }
}

/// What one pump of one flow did (the worker moves the bytes, see `TCPSession.Action.pump`).
public struct PumpResult: Sendable, Equatable {
    /// Bytes written to the destination.
    public var moved: Int
    /// Bytes read but not yet written: the destination is full.
    public var pending: Bool
    /// The source said EOF during this pump.
    public var endOfFile: Bool
    /// Some of the bytes went through a pipe (splice(2)) rather than a buffer.
    public var spliced: Bool
    /// A call failed on this side with this errno; nothing more moves.
    public var failure: (side: Side, errno: Int32)?
    /// How the pump's last read ended: true when it left no packet half read
    /// on the source (EAGAIN, or a read(2) shorter than its buffer, which
    /// walks the whole receive queue), false when it may have; nil when the
    /// pump did not read.
    public var emptied: Bool?

    public init(moved: Int = 0, pending: Bool = false, endOfFile: Bool = false, spliced: Bool = false,
                failure: (side: Side, errno: Int32)? = nil, emptied: Bool? = nil) {
        self.moved = moved
        self.pending = pending
        self.endOfFile = endOfFile
        self.spliced = spliced
        self.failure = failure
        self.emptied = emptied
    }

    public static func == (a: PumpResult, b: PumpResult) -> Bool {
        a.moved == b.moved && a.pending == b.pending && a.endOfFile == b.endOfFile && a.spliced == b.spliced
            && a.emptied == b.emptied && a.failure?.side == b.failure?.side && a.failure?.errno == b.failure?.errno
    }
}

/// How an attempt to hand a connected pair to the kernel (SOCKHASH) ended.
public enum KernelPairing: Sendable, Equatable {
    /// Both sockets are in the SOCKHASH. The client's bytes go to the backend
    /// in the kernel; the backend's too unless `backendToClientInKernel` is
    /// false (the backend spoke before the pairing, or the client's FIN
    /// arrived around it: the kernel would drop or reorder those bytes).
    /// `clientOpen` false: the client's FIN arrived during the pairing, so its
    /// EOF waits on the socket for userspace to read.
    case paired(backendToClientInKernel: Bool, clientOpen: Bool)
    /// Nothing was redirected: the pair stays in userspace (read/write).
    case refused
    /// The pairing broke half-way and the connection cannot be kept.
    case failed(CloseReason, resetPeer: Bool)
}

/// A timer a session asks the worker to keep.
public enum SessionTimer: Sendable, Equatable, Hashable {
    /// The `attempt`-th connect (1-based) takes too long.
    case connect(attempt: Int)
    /// Nothing moved for the listener's idle timeout.
    case idle
    /// Look again whether the kernel has handed every redirected byte from `side` to its peer.
    case flush(Side)
}

/// Per-connection limits, from the listener and its pool.
public struct TCPSessionLimits: Sendable {
    /// 1 + the pool's retries.
    public var maxAttempts: Int
    public var connectTimeoutMilliseconds: UInt64
    public var idleTimeoutMilliseconds: UInt64
    /// After an EOF on a spliced pair: how long the redirect backlog may make
    /// no progress before the EOF is passed on anyway.
    public var flushTimeoutMilliseconds: UInt64
    /// `data_path: auto`: when a userspace session moves into the kernel; nil: never.
    public var promotion: SockmapPromotion?

    public init(maxAttempts: Int, connectTimeoutMilliseconds: UInt64, idleTimeoutMilliseconds: UInt64,
                flushTimeoutMilliseconds: UInt64 = 5000, promotion: SockmapPromotion? = nil) {
        self.maxAttempts = maxAttempts
        self.connectTimeoutMilliseconds = connectTimeoutMilliseconds
        self.idleTimeoutMilliseconds = idleTimeoutMilliseconds
        self.flushTimeoutMilliseconds = flushTimeoutMilliseconds
        self.promotion = promotion
    }
}
