/// One TCP connection through the proxy, as a state machine: no sockets, no
/// clock, no syscalls. The worker feeds it events and executes the actions it
/// returns, in order, skipping the rest once the session has closed; an
/// action whose outcome matters (a connect, a pump, a pairing, a flush
/// measure) is answered by the worker with the next event before the
/// following action runs.
///
/// Phases, each holding only its own data:
/// - `connecting`: the backends tried so far (the attempt number is their
///   count) and whether a connect is in flight. A backend's failure moves on
///   to the next (up to `maxAttempts`); a local one (`FailureBlame.local`)
///   closes at once, since every other backend would fail the same way.
/// - `relaying`: both flows in userspace (copy or splice(2)), each with its
///   EOF seen / passed on / bytes pending.
/// - `handingOver` → `kernel`: the pair in the SOCKHASH; userspace carries
///   only what the kernel cannot (bytes that were waiting, a direction into a
///   half-closed socket) and passes each EOF on once the peer has taken every
///   redirected byte (the kernel does not forward FIN), polling with back-off
///   and giving up only when the count stops moving.
/// - `closing`: the reason, which the access log prints.
///
/// The idle timer is common to the established phases: activity (bytes
/// pumped, or the kernel's counters moving) postpones it.
///
/// With a `SockmapPromotion` (`data_path: auto`) a relaying session watches
/// its rhythm and, after enough small request/response turns or a long
/// stream from the client, is handed to the kernel mid-stream at a quiet
/// moment (see `TCPSessionPromotion.swift`). Promotion is one-way: taking a
/// socket out of the SOCKHASH discards what the kernel queued on it.
public struct TCPSession: Sendable {
    /// One direction's progress, as far as the session needs to know it.
    public struct FlowState: Sendable, Equatable {
        public var sourceEOF = false
        public var shutdownSent = false
        /// Bytes read and not yet written (the worker holds them).
        public var pending = false
        /// The source's last read emptied it (see `PumpResult.emptied`), or it was never read: no
        /// packet sits half read on it (which the SOCKHASH would hand to the
        /// verdict program whole, the bytes already read included).
        public var emptied = true
        public init() {}

        var wantsRead: Bool { !sourceEOF && !pending }
        /// Its EOF can be passed on: seen, nothing left to write, not passed yet.
        var eofDue: Bool { sourceEOF && !pending && !shutdownSent }
    }

    public struct Attempt: Sendable, Equatable {
        /// 1-based; 0 before the first connect.
        public var number: Int { tried.count }
        /// Pool indices tried so far, the current one last.
        public var tried: [Int] = []
        /// Set while a connect to `tried.last` is under way.
        public var inFlight = false
    }

    public struct Relay: Sendable, Equatable {
        public var backend: Int
        public var upstream = FlowState()
        public var downstream = FlowState()
        public var firstEOF: Side?

        subscript(flow: Flow) -> FlowState {
            get { flow == .upstream ? upstream : downstream }
            set { if flow == .upstream { upstream = newValue } else { downstream = newValue } }
        }
    }

    /// Waiting for the kernel to hand every redirected byte to the peer
    /// before passing an EOF on (the kernel does not forward FIN).
    public struct FlushWait: Sendable, Equatable {
        /// Bytes the peer had taken at the last look, and when that last grew.
        public var taken: UInt64
        public var since: UInt64
        /// Current polling interval (doubles while nothing moves, up to 50 ms).
        public var interval: UInt64
    }

    public struct KernelPair: Sendable, Equatable {
        public var relay: Relay
        /// Whether the kernel carries backend → client bytes (see `KernelPairing.paired`).
        public var backendToClientInKernel: Bool
        public var flushFromClient: FlushWait?
        public var flushFromBackend: FlushWait?

        subscript(flush side: Side) -> FlushWait? {
            get { side == .client ? flushFromClient : flushFromBackend }
            set { if side == .client { flushFromClient = newValue } else { flushFromBackend = newValue } }
        }
    }

    /// The request/response rhythm of a relaying session, for `SockmapPromotion`.
    public struct Rhythm: Sendable, Equatable {
        /// The flow that moved bytes last, and how many since it took over.
        public var lastFlow: Flow?
        public var messageBytes: UInt64 = 0
        /// Changes of direction in a row, each ending a small message.
        public var smallChanges = 0
        /// A promotion was attempted (it is attempted once).
        public var attempted = false
    }

    public enum Phase: Sendable, Equatable {
        case connecting(Attempt)
        /// Bytes move through userspace (copy or splice(2)).
        case relaying(Relay)
        /// Connected; the worker is putting the pair in the SOCKHASH.
        case handingOver(Relay)
        /// Bytes move in the kernel (sockmap); userspace sees EOF, errors and leftovers.
        case kernel(KernelPair)
        case closing(CloseReason)
    }

    public enum Event: Sendable, Equatable {
        /// The client was accepted: find it a backend.
        case accepted
        /// The worker picked pool index `backend` and is about to connect(2) to it.
        case connecting(backend: Int, now: UInt64)
        /// No eligible backend was left to pick.
        case noEligibleBackend
        /// Creating the backend's socket failed (this host's fault, never the backend's).
        case socketFailed(backend: Int, errno: Int32)
        case connected(now: UInt64)
        case connectFailed(errno: Int32)
        /// A socket of an established session is ready.
        case ready(Side, Readiness)
        case pumped(Flow, PumpResult, now: UInt64)
        case kernelPairing(KernelPairing)
        /// After an EOF from `side` on a spliced pair: how many redirected bytes
        /// the peer has taken (nil: unknown) against how many it must take.
        case flushMeasured(Side, taken: UInt64?, expected: UInt64, now: UInt64)
        /// The kernel moved bytes (its redirect counters grew).
        case kernelActivity(now: UInt64)
        case timerFired(SessionTimer, now: UInt64)
        /// Another worker handed this session over.
        case adopted
        /// An HTTP listener hands over a tunnel (a WebSocket after its 101):
        /// both sockets established, to pool index `backend`.
        case tunnelled(backend: Int, now: UInt64)
        /// The drain deadline passed (or the worker stops with the session open).
        case drainDeadline
    }

    public enum Action: Sendable, Equatable {
        /// Pick the next backend with the pool's balancer among the eligible
        /// ones not in `excluding`, and connect to it; answer `connecting`,
        /// `connected`, `connectFailed`, `noEligibleBackend` or `socketFailed`.
        case connectNext(excluding: [Int])
        /// Read the backend's pending connect error; answer `connected` or `connectFailed`.
        case checkConnect
        /// The connect completed (the socket turned writable with no error):
        /// count the backend active and answer `connected`.
        case confirmConnect
        /// Close the backend socket of a failed attempt.
        case abandonAttempt
        /// Count a failed connect against the backend (`.backend`) or this
        /// host (`.local`); no errno: it timed out.
        case noteConnectFailure(backend: Int, errno: Int32?, blame: FailureBlame)
        /// Count a connection that found no backend (listener counter and log).
        case noteNoBackend(tried: [Int])
        /// Move bytes of one flow until the source has none, the destination
        /// is full or the fairness budget is spent; read only if `read`.
        /// Answer `pumped`.
        case pump(Flow, read: Bool)
        case shutdownWrite(Side)
        /// Put the pair in the SOCKHASH; answer `kernelPairing`.
        case handToKernel
        /// Measure how far the peer of `side` has taken the redirected bytes; answer `flushMeasured`.
        case checkFlush(Side)
        /// Poke the socket's write_space so that a redirect backlog waiting for room runs again.
        case nudgeWriteSpace(Side)
        /// The redirect backlog stopped moving: the EOF is passed on with bytes missing.
        case flushAbandoned(Side, missing: UInt64)
        /// Arm both sockets for what `interest` now says.
        case arm
        case schedule(SessionTimer, at: UInt64)
        case cancel(SessionTimer)
        /// Tear down: both sockets closed (the peer of the failing side with a
        /// reset if `resetPeer`); `connectedTo` is the backend that was
        /// counted active, if the session got that far.
        case close(CloseReason, resetPeer: Bool, connectedTo: Int?)
    }

    public private(set) var phase: Phase = .connecting(Attempt())
    public private(set) var path: DataPathKind
    /// Every path that moved bytes of this connection (kept after the close).
    public private(set) var pathsUsed: DataPathsUsed = []
    public internal(set) var rhythm = Rhythm()
    public private(set) var lastActivity: UInt64
    /// The backend of the attempt under way or the connection (kept after
    /// the close, for the access log); nil once a failed attempt is abandoned.
    public private(set) var backend: Int?
    /// Bytes each flow moved through userspace (kept after the close; the
    /// kernel's share is counted by the worker).
    public private(set) var userspaceBytes: (upstream: UInt64, downstream: UInt64) = (0, 0)
    /// What each socket waits for now (what `.arm` arms); nil: leave that
    /// socket disarmed. Stored, not computed, so that the worker reads it
    /// in place rather than through a copy of the whole session.
    public private(set) var interest: (client: Readiness?, backend: Readiness?) = (nil, nil)
    public let limits: TCPSessionLimits

    public init(path: DataPathKind, limits: TCPSessionLimits, now: UInt64) {
        self.path = path
        self.limits = limits
        self.lastActivity = now
    }

    /// Appends what to do about `event` to `actions`.
    public mutating func handle(_ event: Event, into actions: inout [Action]) {
        switch phase {
        case .closing: return
        case .connecting(let attempt): connecting(attempt, event, &actions)
        case .handingOver(let relay): handingOver(relay, event, &actions)
        case .relaying(let relay): relaying(relay, event, &actions)
        case .kernel(let pair): kernel(pair, event, &actions)
        }
        interest = Self.interest(in: phase)
    }

    // MARK: - Connecting

    /// Both sockets are up: relay, in userspace or (sockmap) in the kernel.
    private mutating func established(_ backend: Int, _ now: UInt64, _ actions: inout [Action]) {
        lastActivity = now
        actions.append(.schedule(.idle, at: now.saturatingAdd(limits.idleTimeoutMilliseconds)))
        let relay = Relay(backend: backend)
        if path == .sockmap {
            phase = .handingOver(relay)
            actions.append(.handToKernel)
        } else {
            phase = .relaying(relay)
            // Bytes the client sent while we connected are already waiting.
            startRelaying(relay, &actions)
        }
    }

    private mutating func connecting(_ attempt: Attempt, _ event: Event, _ actions: inout [Action]) {
        var attempt = attempt
        switch event {
        case .accepted:
            nextAttempt(attempt, &actions)
        case .connecting(let backend, let now):
            attempt.tried.append(backend)
            attempt.inFlight = true
            self.backend = backend
            phase = .connecting(attempt)
            actions.append(.schedule(.connect(attempt: attempt.number), at: now.saturatingAdd(limits.connectTimeoutMilliseconds)))
        case .noEligibleBackend:
            actions.append(.noteNoBackend(tried: attempt.tried))
            close(attempt.tried.isEmpty ? .noBackend : .connectFailed, &actions)
        case .socketFailed(let backend, let errno):
            self.backend = backend // picked: the access log names it
            if FailureBlame(errno: errno) == .local {
                actions.append(.noteConnectFailure(backend: backend, errno: errno, blame: .local))
            }
            close(.resourceExhausted, &actions)
        case .connected(let now):
            guard attempt.inFlight, let backend = attempt.tried.last else { return }
            actions.append(.cancel(.connect(attempt: attempt.number)))
            established(backend, now, &actions)
        case .tunnelled(let backend, let now):
            guard attempt.tried.isEmpty else { return }
            self.backend = backend
            established(backend, now, &actions)
        case .connectFailed(let errno):
            guard attempt.inFlight, let backend = attempt.tried.last else { return }
            let blame = FailureBlame(errno: errno)
            actions.append(.noteConnectFailure(backend: backend, errno: errno, blame: blame))
            actions.append(.cancel(.connect(attempt: attempt.number)))
            actions.append(.abandonAttempt)
            attempt.inFlight = false
            self.backend = nil
            phase = .connecting(attempt)
            // This host ran short: every other backend would fail the same
            // way while the client waits and holds more of what ran out.
            if blame == .local { close(.resourceExhausted, &actions) } else { nextAttempt(attempt, &actions) }
        case .ready(.backend, let ready):
            guard attempt.inFlight else { return }
            // A failed connect always raises EPOLLERR or EPOLLHUP: writable
            // without them is a completed handshake, and SO_ERROR need not be read.
            actions.append(ready.contains(.writable) && ready.isDisjoint(with: [.error, .hangup]) ? .confirmConnect : .checkConnect)
        case .timerFired(.connect(let number), _):
            guard attempt.inFlight, number == attempt.number, let backend = attempt.tried.last else { return }
            actions.append(.noteConnectFailure(backend: backend, errno: nil, blame: .backend))
            actions.append(.abandonAttempt)
            attempt.inFlight = false
            self.backend = nil
            phase = .connecting(attempt)
            nextAttempt(attempt, &actions)
        case .drainDeadline:
            close(.drainTimeout, &actions)
        default:
            return
        }
    }

    private mutating func nextAttempt(_ attempt: Attempt, _ actions: inout [Action]) {
        guard attempt.tried.count < limits.maxAttempts else {
            actions.append(.noteNoBackend(tried: attempt.tried))
            close(attempt.tried.isEmpty ? .noBackend : .connectFailed, &actions)
            return
        }
        actions.append(.connectNext(excluding: attempt.tried))
    }

    private mutating func handingOver(_ relay: Relay, _ event: Event, _ actions: inout [Action]) {
        switch event {
        case .kernelPairing(.refused) where path != .sockmap:
            // A promotion the worker could not carry out: stay in userspace,
            // where nothing was held back.
            phase = .relaying(relay)
            actions.append(.arm)
        case .kernelPairing(.refused):
            // splice(2) here lost a backend's first bytes in about 2% of
            // half-closed connections (it returned 0 with bytes queued):
            // the userspace fallback is read/write.
            path = .copy
            phase = .relaying(relay)
            startRelaying(relay, &actions)
        case .kernelPairing(.failed(let reason, let reset)):
            close(reason, resetPeer: reset, &actions)
        case .kernelPairing(.paired(let backendInKernel, let clientOpen)):
            path = .sockmap
            pathsUsed.insert(.sockmap)
            phase = .kernel(KernelPair(relay: relay, backendToClientInKernel: backendInKernel))
            // What the kernel will not carry waits on the socket: forward it.
            if !backendInKernel { actions.append(.pump(.downstream, read: true)) }
            if !clientOpen { actions.append(.pump(.upstream, read: true)) }
            actions.append(.arm)
        default:
            common(event, &actions)
        }
    }

    // MARK: - Relaying in userspace

    private mutating func startRelaying(_ relay: Relay, _ actions: inout [Action]) {
        actions.append(.pump(.upstream, read: !relay.upstream.sourceEOF))
        actions.append(.arm)
    }

    private mutating func relaying(_ relay: Relay, _ event: Event, _ actions: inout [Action]) {
        var relay = relay
        switch event {
        case .ready(let side, let ready):
            let trouble = !ready.isDisjoint(with: [.error, .hangup])
            let readable = trouble || !ready.isDisjoint(with: [.readable, .readHangup])
            let writable = trouble || ready.contains(.writable)
            // A readable client or a writable backend moves bytes upstream; the reverse downstream.
            if side == .client ? readable : writable { actions.append(.pump(.upstream, read: !relay.upstream.sourceEOF)) }
            if side == .client ? writable : readable { actions.append(.pump(.downstream, read: !relay.downstream.sourceEOF)) }
            actions.append(.arm)
        case .pumped(let flow, let result, let now):
            if note(result, on: flow, in: &relay, now: now, &actions) { return }
            if relay[flow].eofDue {
                relay[flow].shutdownSent = true
                // The other way is done too: the close that follows sends this FIN.
                if !relay[flow.reverse].shutdownSent { actions.append(.shutdownWrite(flow.destination)) }
            }
            phase = .relaying(relay)
            if relay.upstream.shutdownSent && relay.downstream.shutdownSent {
                close(relay.firstEOF == .backend ? .backendClosed : .clientClosed, &actions)
            } else if promotionDue(after: flow, result, relay) {
                rhythm.attempted = true
                phase = .handingOver(relay)
                actions.append(.handToKernel)
            }
        case .adopted:
            // Level-triggered readiness fires again for whatever was pending.
            actions.append(.schedule(.idle, at: lastActivity.saturatingAdd(limits.idleTimeoutMilliseconds)))
            actions.append(.pump(.upstream, read: !relay.upstream.sourceEOF))
            actions.append(.pump(.downstream, read: !relay.downstream.sourceEOF))
            actions.append(.arm)
        default:
            common(event, &actions)
        }
    }

    /// Records a pump's outcome; true when it closed the session.
    private mutating func note(_ result: PumpResult, on flow: Flow, in relay: inout Relay, now: UInt64,
                               _ actions: inout [Action]) -> Bool {
        if result.moved > 0 {
            if flow == .upstream { userspaceBytes.upstream += UInt64(result.moved) } else { userspaceBytes.downstream += UInt64(result.moved) }
            lastActivity = now
            if case .relaying = phase {
                pathsUsed.insert(result.spliced ? .splice : .copy)
                if let promotion = limits.promotion { keepTime(flow, moved: UInt64(result.moved), promotion) }
            }
        }
        relay[flow].pending = result.pending
        if let emptied = result.emptied { relay[flow].emptied = emptied }
        if result.endOfFile {
            relay[flow].sourceEOF = true
            if relay.firstEOF == nil { relay.firstEOF = flow.source }
        }
        if let failure = result.failure {
            close(failure.side == .client ? .clientReset : .backendReset, resetPeer: true, connectedTo: relay.backend, &actions)
            return true
        }
        return false
    }

    // MARK: - In the kernel

    private mutating func kernel(_ pair: KernelPair, _ event: Event, _ actions: inout [Action]) {
        var pair = pair
        switch event {
        case .ready(let side, let ready):
            if !pair.relay[side.outgoing].sourceEOF && !ready.isDisjoint(with: [.readHangup, .readable, .error, .hangup]) {
                actions.append(.pump(side.outgoing, read: true))
            } else if !ready.isDisjoint(with: [.readHangup, .readable, .error, .hangup]) {
                actions.append(.pump(side.outgoing, read: false))
            }
            if ready.contains(.writable) || !ready.isDisjoint(with: [.error, .hangup]) {
                // Leftover bytes headed to this side.
                actions.append(.pump(side.incoming, read: false))
            }
            actions.append(.arm)
        case .pumped(let flow, let result, let now):
            if note(result, on: flow, in: &pair.relay, now: now, &actions) { return }
            phase = .kernel(pair)
            // The kernel does not forward FIN: pass it on ourselves, once
            // the peer has taken what was redirected before it.
            if pair.relay[flow].eofDue && pair[flush: flow.source] == nil {
                actions.append(.checkFlush(flow.source))
            }
        case .flushMeasured(let side, let taken, let expected, let now):
            flushMeasured(&pair, side, taken: taken, expected: expected, now: now, &actions)
        case .timerFired(.flush(let side), _):
            if pair.relay[side.outgoing].eofDue { actions.append(.checkFlush(side)) }
        case .kernelActivity(let now):
            lastActivity = now
        case .adopted:
            actions.append(.schedule(.idle, at: lastActivity.saturatingAdd(limits.idleTimeoutMilliseconds)))
            actions.append(.arm)
        default:
            common(event, &actions)
        }
    }

    /// Passes the EOF from `side` on once the peer has taken every redirected
    /// byte; waits while the count moves (a slow reader is fine) and gives
    /// up only when it stops moving for the flush timeout.
    private mutating func flushMeasured(_ pair: inout KernelPair, _ side: Side, taken: UInt64?, expected: UInt64,
                                        now: UInt64, _ actions: inout [Action]) {
        let flow = side.outgoing
        guard pair.relay[flow].eofDue else { return }
        if let taken, taken < expected {
            var wait = pair[flush: side] ?? FlushWait(taken: taken, since: now, interval: 1)
            if taken > wait.taken {
                wait = FlushWait(taken: taken, since: now, interval: 1)
            } else {
                wait.interval = min(wait.interval * 2, 50)
                actions.append(.nudgeWriteSpace(side.peer))
            }
            pair[flush: side] = wait
            if now &- wait.since < limits.flushTimeoutMilliseconds {
                phase = .kernel(pair)
                actions.append(.schedule(.flush(side), at: now + wait.interval))
                return
            }
            actions.append(.flushAbandoned(side, missing: expected - taken))
        }
        pair.relay[flow].shutdownSent = true
        phase = .kernel(pair)
        actions.append(.shutdownWrite(side.peer))
        if pair.relay.upstream.shutdownSent && pair.relay.downstream.shutdownSent {
            close(pair.relay.firstEOF == .backend ? .backendClosed : .clientClosed, &actions)
        } else {
            actions.append(.arm)
        }
    }

    // MARK: - Every established phase

    private mutating func common(_ event: Event, _ actions: inout [Action]) {
        switch event {
        case .timerFired(.idle, let now):
            if now &- lastActivity >= limits.idleTimeoutMilliseconds {
                close(.idleTimeout, &actions)
            } else {
                actions.append(.schedule(.idle, at: lastActivity.saturatingAdd(limits.idleTimeoutMilliseconds)))
            }
        case .drainDeadline:
            close(.drainTimeout, &actions)
        default:
            return
        }
    }

    private mutating func close(_ reason: CloseReason, resetPeer: Bool = false, _ actions: inout [Action]) {
        close(reason, resetPeer: resetPeer, connectedTo: connectedBackend, &actions)
    }

    private mutating func close(_ reason: CloseReason, resetPeer: Bool, connectedTo: Int?, _ actions: inout [Action]) {
        phase = .closing(reason)
        actions.append(.close(reason, resetPeer: resetPeer, connectedTo: connectedTo))
    }

    // MARK: - Questions the worker asks

    /// The backend this session counts against, once connected.
    public var connectedBackend: Int? {
        switch phase {
        case .relaying(let relay), .handingOver(let relay): relay.backend
        case .kernel(let pair): pair.relay.backend
        case .connecting, .closing: nil
        }
    }



    /// Connected, no EOF under way: may be handed to another worker.
    public var isSteady: Bool {
        switch phase {
        case .relaying(let relay):
            !relay.upstream.sourceEOF && !relay.downstream.sourceEOF
        case .kernel(let pair):
            !pair.relay.upstream.sourceEOF && !pair.relay.downstream.sourceEOF
                && pair.flushFromClient == nil && pair.flushFromBackend == nil
        case .connecting, .handingOver, .closing:
            false
        }
    }

    /// What each socket waits for in `phase`; nil: leave that socket disarmed.
    private static func interest(in phase: Phase) -> (client: Readiness?, backend: Readiness?) {
        switch phase {
        case .relaying(let relay):
            // EPOLLRDHUP with EPOLLIN: a FIN that came with the last bytes is
            // read in the same pump rather than on another wake-up.
            var client: Readiness = []
            if relay.upstream.wantsRead { client.formUnion([.readable, .readHangup]) }
            if relay.downstream.pending { client.insert(.writable) }
            var backend: Readiness = []
            if relay.downstream.wantsRead { backend.formUnion([.readable, .readHangup]) }
            if relay.upstream.pending { backend.insert(.writable) }
            // An empty interest is left disarmed: nothing to wait for on that side.
            return (client.isEmpty ? nil : client, backend.isEmpty ? nil : backend)
        case .kernel(let pair):
            // EOF (EPOLLRDHUP) only: the verdict program raises spurious
            // EPOLLIN. Always armed, if only for errors: a reset must reach us.
            let up = pair.relay.upstream, down = pair.relay.downstream
            var client: Readiness = up.sourceEOF ? [] : [.readHangup]
            if down.pending { client.insert(.writable) }
            var backend: Readiness = down.sourceEOF ? [] : [.readHangup]
            if !pair.backendToClientInKernel && down.wantsRead { backend.insert(.readable) }
            if up.pending { backend.insert(.writable) }
            return (client, backend)
        case .connecting, .handingOver, .closing:
            return (nil, nil)
        }
    }

    /// Whether the backend's health gains from how a connected session ended:
    /// a reset before its first byte counts against it; bytes received or a
    /// clean EOF count for it; anything else says nothing.
    public static func backendVerdict(reason: CloseReason, bytesToClient: UInt64) -> Bool? {
        if reason == .backendReset && bytesToClient == 0 { return false }
        if bytesToClient > 0 || reason == .clientClosed || reason == .backendClosed { return true }
        return nil
    }
}

extension TCPSession {
    /// A session taken over from another process, steady, to pool index
    /// `backend`; nil when the state names a path this build does not know.
    public init?(resuming state: TCPSessionHandover, backend: Int, limits: TCPSessionLimits) {
        guard let path = DataPathKind(rawValue: state.path) else { return nil }
        self.init(path: path, limits: limits, now: state.lastActivity)
        let relay = Relay(backend: backend)
        phase = state.inKernel
            ? .kernel(KernelPair(relay: relay, backendToClientInKernel: state.backendToClientInKernel))
            : .relaying(relay)
        interest = Self.interest(in: phase)
        self.backend = backend
        pathsUsed = DataPathsUsed(rawValue: state.pathsUsed)
        userspaceBytes = (state.userspaceUpstream, state.userspaceDownstream)
        rhythm.attempted = state.rhythmAttempted
        rhythm.smallChanges = state.rhythmSmallChanges
        rhythm.messageBytes = state.rhythmMessageBytes
        rhythm.lastFlow = state.rhythmLastFlow.map { $0 == "upstream" ? .upstream : .downstream }
    }
}
