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
final class Session: Slotted {
    /// Unique within the owning worker, given by its table (a moved session gets a new one).
    var id: UInt64 = 0
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

    /// Each socket's place in this worker's epoll (see `Registration`).
    var clientRegistration = Registration()
    var backendRegistration = Registration()

    /// Whether epoll reported the side's FIN (EPOLLRDHUP): a short read from
    /// it did not drain it, the EOF is still to be read.
    private(set) var clientFinArrived = false
    private(set) var backendFinArrived = false

    var upstream = Carrier()   // client → backend
    var downstream = Carrier() // backend → client
    /// The kernel objects of a pair in the SOCKHASH.
    var sockmapPair: SockmapPair?

    init(listener: RuntimeListener, pool: RuntimePool? = nil, client: Int32, clientAddress: SocketAddress,
         path: DataPathKind, promotion: SockmapPromotion?, flushTimeoutMilliseconds: UInt64, idleTimeoutMilliseconds: UInt64? = nil,
         now: UInt64, startedNanoseconds: UInt64 = monotonicNanoseconds()) {
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

    subscript(registration side: Side) -> Registration {
        get { side == .client ? clientRegistration : backendRegistration }
        set { if side == .client { clientRegistration = newValue } else { backendRegistration = newValue } }
    }

    /// A read found the side empty: its next bytes raise a new edge.
    func noteEmptied(_ side: Side) {
        if side == .client { clientRegistration.ready.remove(.readable) } else { backendRegistration.ready.remove(.readable) }
    }

    /// A write found the side full: room raises a new edge.
    func noteFull(_ side: Side) {
        if side == .client { clientRegistration.ready.remove(.writable) } else { backendRegistration.ready.remove(.writable) }
    }

    /// The side's socket left this epoll (or was closed): it starts over.
    func forgetRegistration(_ side: Side) {
        self[registration: side] = Registration()
    }

    /// A new backend socket (the next connect attempt): no FIN seen on it.
    func forgetBackendFin() { backendFinArrived = false }

    func noteFinArrived(_ side: Side) {
        if side == .client { clientFinArrived = true } else { backendFinArrived = true }
    }

    func finArrived(_ side: Side) -> Bool { side == .client ? clientFinArrived : backendFinArrived }
}

/// A session's socket in the worker's epoll. It is added once, edge-
/// triggered, for reading, writing and the peer's FIN, and never modified:
/// no epoll_ctl per event, as with nginx. The session still sees oneshot
/// semantics: `interest` is what it armed, and an event is delivered only
/// when readiness meets an interest, which it then uses up (errors and
/// hang-ups meet any interest). `ready` keeps what the kernel reported and
/// no read or write has used up since: a read that empties the socket
/// clears readable, a write that fills it clears writable; the next edge
/// sets them again. Arming an interest that `ready` already meets queues
/// the side for delivery after the current batch of events, as the kernel
/// would have reported a re-armed oneshot socket in the next wait.
struct Registration {
    var added = false
    var interest: EpollEvents?
    var ready: EpollEvents = []
    /// In the worker's list of sides due for delivery.
    var queued = false
    /// Hang-ups and errors delivered to an empty interest: each is reported
    /// there once, as a oneshot registration with no events reported it
    /// (a session waiting on a timer, a sockmap flush, would otherwise be
    /// handed the same hang-up on every turn of the loop).
    var troubleReported: EpollEvents = []

    /// What an event for this side would report now; empty when nothing would fire.
    var due: EpollEvents {
        guard let interest else { return [] }
        var due = ready.intersection([.hangup, .error])
        if interest.isEmpty { due.subtract(troubleReported) }
        if interest.contains(.readable) { due.formUnion(ready.intersection([.readable, .readHangup])) }
        if interest.contains(.readHangup) { due.formUnion(ready.intersection(.readHangup)) }
        if interest.contains(.writable) { due.formUnion(ready.intersection(.writable)) }
        return due
    }

    static let events: EpollEvents = [.readable, .writable, .readHangup, .edgeTriggered]
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
