import SluiceCore
import SluicePosix

/// Bytes of one flow in flight through userspace: a pooled buffer (copy) or
/// a pooled pipe (splice(2)), held only while bytes are in flight; an idle
/// connection holds neither. What the flow means (EOF seen, passed on,
/// bytes counted) is the session's (`TCPSession.FlowState`).
struct Carrier {
    var pending = 0
    var buffer: UnsafeMutableRawBufferPointer?
    var bufferStart = 0
    var pipe: Pipe?
    /// On the splice path: whether the next read goes through a pipe. Small
    /// exchanges are cheaper with read/write; a read that fills a whole
    /// buffer means a bulk transfer, which splice(2) moves with no copy.
    var bulk = false
}

/// A proxied connection as its worker holds it: the descriptors, timers,
/// epoll registrations and carriers that the pure `TCPSession` (its
/// `machine`) decides about. Owned and touched by one worker thread only.
final class Session {
    /// Unique within the owning worker (a moved session gets a new one).
    var id: UInt64
    /// Set by the worker's `close`: actions still queued for it are skipped.
    var isClosed = false
    let listener: RuntimeListener
    /// The pool of its backend: the listener's, or the route's for a tunnel
    /// an HTTP listener handed over.
    let pool: RuntimePool
    /// The HTTP listener this tunnel came from (its open tunnels count it), and what kind.
    var tunnel: (http: RuntimeHTTP, kind: String)?
    let client: Int32
    let clientAddress: SocketAddress
    /// The PROXY header the client's connection began with, if its listener takes one.
    var receivedHeader: ProxyHeader?
    let clientKey: UInt64
    let startedNanoseconds: UInt64
    var machine: TCPSession

    /// The backend socket of the attempt under way or of the connection; -1 between attempts.
    var backend: Int32 = -1
    /// The backend this session counts in its pool's `active` from the
    /// pick on (a connect under way is load: a burst of accepts must see it).
    var countedBackend: Int?
    var connectTimer: TimerID?
    var idleTimer: TimerID?

    /// What each fd is armed for in epoll right now; nil when not armed
    /// (oneshot fired, or never added).
    var clientArmed: EpollEvents?
    var clientAdded = false
    /// Whether the backend socket is in this worker's epoll (it is added at
    /// connect; a session adopted from another worker starts outside).
    var backendAdded = false
    var backendArmed: EpollEvents?
    /// Per side: whether its registration stays armed after it fires (see
    /// `Worker.arm`), and whether it fired and has not been armed since.
    var clientStaysArmed = false
    var backendStaysArmed = false
    var clientFired = false
    var backendFired = false

    /// Whether epoll reported the side's FIN (EPOLLRDHUP): a short read from
    /// it did not drain it, the EOF is still to be read.
    private(set) var clientFinArrived = false
    private(set) var backendFinArrived = false

    var upstream = Carrier()   // client → backend
    var downstream = Carrier() // backend → client
    /// The kernel objects of a pair in the SOCKHASH.
    var sockmapPair: SockmapPair?

    init(id: UInt64, listener: RuntimeListener, pool: RuntimePool? = nil, client: Int32, clientAddress: SocketAddress,
         path: DataPathKind, promotion: SockmapPromotion?, flushTimeoutMilliseconds: UInt64, idleTimeoutMilliseconds: UInt64? = nil,
         now: UInt64, startedNanoseconds: UInt64 = monotonicNanoseconds()) {
        self.id = id
        self.listener = listener
        let pool = pool ?? listener.pool
        self.pool = pool
        self.client = client
        self.clientAddress = clientAddress
        self.clientKey = clientAddress.withIPBytes { hashClientAddress($0) }
        self.startedNanoseconds = startedNanoseconds
        let limits = Self.limits(listener: listener, pool: pool, promotion: promotion,
                                 flushTimeoutMilliseconds: flushTimeoutMilliseconds, idleTimeoutMilliseconds: idleTimeoutMilliseconds)
        self.machine = TCPSession(path: path, limits: limits, now: now)
    }

    static func limits(listener: RuntimeListener, pool: RuntimePool, promotion: SockmapPromotion?,
                       flushTimeoutMilliseconds: UInt64, idleTimeoutMilliseconds: UInt64?) -> TCPSessionLimits {
        TCPSessionLimits(
            maxAttempts: 1 + pool.config.retries,
            connectTimeoutMilliseconds: listener.config.connectTimeout.milliseconds,
            idleTimeoutMilliseconds: idleTimeoutMilliseconds ?? listener.config.idleTimeout.milliseconds,
            flushTimeoutMilliseconds: flushTimeoutMilliseconds, promotion: promotion)
    }

    var backendDescription: String? {
        machine.backend.map { pool.addresses[$0].description }
    }

    func fd(_ side: Side) -> Int32 { side == .client ? client : backend }

    /// An event for `side`: a oneshot registration is disarmed by the
    /// kernel; a level-triggered one stays armed until `fired` is cleared
    /// by arming it again (or the worker disarms it).
    func noteFired(_ side: Side) {
        if side == .client {
            if clientStaysArmed { clientFired = true } else { clientArmed = nil }
        } else {
            if backendStaysArmed { backendFired = true } else { backendArmed = nil }
        }
    }

    func fired(_ side: Side) -> Bool { side == .client ? clientFired : backendFired }

    /// The side's socket left this epoll (or was closed): it starts over.
    func forgetRegistration(_ side: Side) {
        if side == .client {
            clientAdded = false
            clientArmed = nil
            clientStaysArmed = false
            clientFired = false
        } else {
            backendAdded = false
            backendArmed = nil
            backendStaysArmed = false
            backendFired = false
        }
    }

    func noteFinArrived(_ side: Side) {
        if side == .client { clientFinArrived = true } else { backendFinArrived = true }
    }

    func finArrived(_ side: Side) -> Bool { side == .client ? clientFinArrived : backendFinArrived }
}

/// Kernel-side state of a session spliced through the SOCKHASH: what the
/// worker needs to measure the kernel's progress (the decisions are the
/// session's).
final class SockmapPair {
    let clientCookie: UInt64
    let backendCookie: UInt64
    /// Bytes that had entered each socket's send path before splicing began:
    /// the baseline for "has the peer taken every redirected byte".
    let clientSentBase: UInt64
    let backendSentBase: UInt64
    /// Bytes userspace itself wrote (data that reached a socket before its pairing).
    var userspaceToClient: UInt64 = 0
    var userspaceToBackend: UInt64 = 0
    /// Redirected byte total at the last idle check.
    var lastRedirected: UInt64 = 0

    init(clientCookie: UInt64, backendCookie: UInt64, clientSentBase: UInt64, backendSentBase: UInt64) {
        self.clientCookie = clientCookie
        self.backendCookie = backendCookie
        self.clientSentBase = clientSentBase
        self.backendSentBase = backendSentBase
    }

    func cookie(_ side: Side) -> UInt64 { side == .client ? clientCookie : backendCookie }
}
