import SluiceCore
import SluicePosix

/// What a socket of an HTTP connection has to take, in order: bytes the
/// session produced (heads, chunk framing, the proxy's own answers), or a
/// move of body bytes straight from the other socket.
enum HTTPOutput {
    case bytes([UInt8], written: Int)
    /// From the flow's source; nil: until the source's EOF.
    case move(Flow, remaining: UInt64?)
}

/// A client connection of a `mode: http` listener as its worker holds it:
/// the descriptors, the backend connection of the request under way, the
/// output queues, epoll registrations and timers that the pure `HTTPSession`
/// (its `machine`) decides about. Owned and touched by one worker thread only.
final class HTTPConnection: Slotted {
    /// Given by the worker's table.
    var id: UInt64 = 0
    /// Replaced between requests when a reload changes the listener.
    var listener: RuntimeListener
    var http: RuntimeHTTP
    let client: Int32
    let clientAddress: SocketAddress
    /// What `hash` balancing keys on, computed once.
    private(set) lazy var clientKey = clientAddress.withIPBytes { hashClientAddress($0) }
    /// The PROXY header the client's connection began with, if its listener takes one.
    var receivedHeader: ProxyHeader?
    let startedNanoseconds = monotonicNanoseconds()
    var machine: HTTPSession
    var isClosed = false

    /// The backend connection of the request under way; -1 when none.
    var backend: Int32 = -1
    var backendIndex: Int?
    var backendPoolIndex = 0
    /// Where this connection counts in a pool's `active`, from the pick
    /// until the backend connection is released or its connect fails.
    var counted: (pool: RuntimePool, backend: Int)?
    /// A connect is under way on `backend`.
    var connecting = false
    /// The session made it a tunnel: handed to the TCP relay once both output queues are written.
    var becomesTunnel = false
    /// The side's last read filled the buffer, so a packet may sit half read
    /// on its socket (a shorter read drained the queue): see `safePath`.
    var clientReadFilled = false
    var backendReadFilled = false

    /// Nothing the client sent can be left unread when the connection
    /// closes: it sent its FIN, or its last request, read to the end (and
    /// no further: the read that took it did not fill the buffer), said
    /// close. Only then does `close(2)` send a FIN rather than a reset.
    var clientDone: Bool { machine.clientFinished || (machine.clientSaidLast && !clientReadFilled) }

    var clientOutput: [HTTPOutput] = []
    var backendOutput: [HTTPOutput] = []
    /// The session asked to read from the side.
    var clientWantsRead = false
    var backendWantsRead = false
    /// The side's writes said EAGAIN: wait for EPOLLOUT.
    var clientWriteBlocked = false
    var backendWriteBlocked = false
    /// A move waits for bytes from the side: wait for EPOLLIN.
    var clientMoveWaits = false
    var backendMoveWaits = false
    /// Bytes of a move read and not yet written, per direction (a tunnel
    /// moves both ways at once): in a pipe (splice(2), for bulk) or a buffer.
    var upstreamMove = Carrier()
    var downstreamMove = Carrier()
    /// A flush of the side's queue is under way (a nested one leaves the work to it).
    var clientFlushing = false
    var backendFlushing = false

    var clientAdded = false
    var backendAdded = false
    var clientArmed: EpollEvents?
    var backendArmed: EpollEvents?
    /// Per side: fired without being armed since (registrations are
    /// level-triggered and stay armed after firing; see `Worker.arm(_:)`).
    var clientFired = false
    var backendFired = false

    var headTimer = MovingTimer()
    /// Closing: the grace period for the last answer to go out.
    var lingerTimer: TimerID?
    var responseTimer = MovingTimer()
    var connectTimer: TimerID?

    subscript(timer kind: HTTPTimer) -> MovingTimer {
        get { kind == .head ? headTimer : responseTimer }
        set { if kind == .head { headTimer = newValue } else { responseTimer = newValue } }
    }

    init(listener: RuntimeListener, http: RuntimeHTTP, client: Int32, clientAddress: SocketAddress, namesRequests: Bool) {
        self.listener = listener
        self.http = http
        self.client = client
        self.clientAddress = clientAddress
        var limits = http.limits
        limits.namesRequests = namesRequests
        // The address as text only where a forwarded field carries it (inet_ntop formats with printf).
        machine = HTTPSession(limits: limits, router: http.router, client: limits.forwarded == .off ? "" : clientAddress.ipText)
    }

    /// An event for `side`: its registration stays armed until the event is handled.
    func noteFired(_ side: Side) {
        if side == .client { clientFired = true } else { backendFired = true }
    }

    func fired(_ side: Side) -> Bool { side == .client ? clientFired : backendFired }

    /// The side's socket is out of this epoll (or closed, or idle in a pool).
    func forgetRegistration(_ side: Side) {
        if side == .client {
            clientAdded = false
            clientArmed = nil
            clientFired = false
        } else {
            backendAdded = false
            backendArmed = nil
            backendFired = false
        }
    }

    func fd(_ side: Side) -> Int32 { side == .client ? client : backend }

    // `_modify`, not `set`: an append through a getter and a setter copies
    // the whole queue (two references to one buffer while it grows).
    subscript(move flow: Flow) -> Carrier {
        get { flow == .upstream ? upstreamMove : downstreamMove }
        _modify { if flow == .upstream { yield &upstreamMove } else { yield &downstreamMove } }
    }

    subscript(output side: Side) -> [HTTPOutput] {
        get { side == .client ? clientOutput : backendOutput }
        _modify { if side == .client { yield &clientOutput } else { yield &backendOutput } }
    }

    func wantsRead(_ side: Side) -> Bool { side == .client ? clientWantsRead : backendWantsRead }
    func setWantsRead(_ side: Side, _ value: Bool) { if side == .client { clientWantsRead = value } else { backendWantsRead = value } }
    func writeBlocked(_ side: Side) -> Bool { side == .client ? clientWriteBlocked : backendWriteBlocked }
    func setWriteBlocked(_ side: Side, _ value: Bool) { if side == .client { clientWriteBlocked = value } else { backendWriteBlocked = value } }
    func flushing(_ side: Side) -> Bool { side == .client ? clientFlushing : backendFlushing }
    func setFlushing(_ side: Side, _ value: Bool) { if side == .client { clientFlushing = value } else { backendFlushing = value } }
    func moveWaits(_ side: Side) -> Bool { side == .client ? clientMoveWaits : backendMoveWaits }
    func setMoveWaits(_ side: Side, _ value: Bool) { if side == .client { clientMoveWaits = value } else { backendMoveWaits = value } }

    /// What the side's socket waits for now.
    func interest(_ side: Side) -> EpollEvents {
        var events: EpollEvents = []
        if wantsRead(side) || moveWaits(side) { events.insert(.readable) }
        if writeBlocked(side) || (side == .backend && connecting) { events.insert(.writable) }
        return events
    }
}

/// Which HTTP connection each backend descriptor serves now, by descriptor
/// (an array: descriptors are small and dense); none while it is idle.
/// A deadline the session sets and clears on every request (the head's,
/// the response's), kept off the timer wheel: clearing it leaves the
/// wheel's timer in place, and a later deadline does not move it. The
/// timer, when it fires, finds the deadline cleared (nothing to do) or
/// later (it is scheduled again for it). A request that starts and ends
/// within the deadline costs no work on the wheel.
struct MovingTimer {
    /// What the session asked for; nil: nothing is due.
    var deadline: UInt64?
    /// The wheel's timer, and when it fires.
    var id: TimerID?
    var firesAt: UInt64 = 0
}

struct DescriptorOwners {
    private var owners: [UInt64] = [] // 0 for none: connection ids start at 1

    subscript(fd: Int32) -> UInt64? {
        get {
            let i = Int(fd)
            return i >= 0 && i < owners.count && owners[i] != 0 ? owners[i] : nil
        }
        set {
            let i = Int(fd)
            guard i >= 0 else { return }
            if i >= owners.count {
                guard newValue != nil else { return }
                owners += Array(repeating: 0, count: max(i + 1 - owners.count, 256))
            }
            owners[i] = newValue ?? 0
        }
    }
}
