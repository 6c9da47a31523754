import Atomics
import CSluice
import Glibc
import Logging
import SluiceBPF
import SluiceCore
import SluicePosix
import Synchronization

/// Messages from the control thread; delivered through a queue plus an eventfd wake-up.
enum WorkerCommand: Sendable {
    /// Stop accepting now; close whatever is still open at the deadline.
    case drain(deadlineMilliseconds: UInt64)
    /// Test and benchmark knob: block this worker's loop, as a worker stuck
    /// in a slow call would be (no heartbeat, no events handled).
    case stall(milliseconds: UInt64)
    /// Rebalancing: hand up to `count` established connections to `worker`.
    /// An order older than the stall threshold when it runs (this worker
    /// was stalled) is stale and dropped.
    case give(count: Int, to: Worker, issuedAtNanoseconds: UInt64)
    /// Rebalancing: take over connections another worker handed over.
    case adopt(MigratingSessions)
}

/// Sessions in transit between two workers. The giver has taken them out of
/// its epoll and timer wheel and no longer touches them; the receiver is the
/// only thread that will.
struct MigratingSessions: @unchecked Sendable {
    let sessions: [Session]
    let from: Int
}

/// A worker's commands, closed when it leaves its loop.
struct CommandQueue {
    var items: [WorkerCommand] = []
    var closed = false
}

/// What a timer on the worker's wheel stands for.
enum WorkerTimer {
    case connect(session: UInt64, attempt: Int)
    case idle(session: UInt64)
    case rearmListener(Int)
    case drainDeadline
    /// A spliced session waits for the kernel to hand every redirected byte
    /// from `side` to its peer before passing the EOF on.
    case sockmapFlush(session: UInt64, side: Side)
}

/// Shared, immutable settings for every worker of one server.
struct WorkerSettings: Sendable {
    var dataPath: DataPathKind
    /// `shared_accept`: one listening socket per listener in every worker's
    /// epoll with EPOLLEXCLUSIVE; otherwise each worker has its own socket,
    /// armed EPOLLONESHOT.
    var sharedAccept = false
    /// A worker whose heartbeat is older than this is stalled: it is given
    /// no connections, and rebalancing orders that waited this long are stale.
    var stallThresholdNanoseconds: UInt64 = 200_000_000
    /// Longest sleep in epoll_wait: the heartbeat must stay fresher than the
    /// stall threshold even when there is nothing to do.
    var maxWaitMilliseconds: Int32 = 1000
    var accessLog: AccessLogFormat
    /// Bytes one direction may move per wake-up before yielding to other sessions.
    var fairnessBudget = 1 << 20
    var copyBufferSize = 64 * 1024
    /// A read of fewer bytes than this is taken to have drained the socket.
    var shortReadBytes = 64 * 1024
    /// The splice path moves a direction to splice(2) after a read this big,
    /// and back to read/write after a splice this small (hysteresis).
    var bulkEntryBytes = 32 * 1024
    var bulkExitBytes = 4 * 1024
    /// Pipes and buffers kept for reuse; beyond this they are freed.
    var poolLimit = 64
    /// Pause accepting on a listener after EMFILE/ENFILE.
    var acceptBackoffMilliseconds: UInt64 = 100
    /// Shared by every worker (and the health checker) of one server.
    var localResourceErrors = LocalResourceErrors()
    /// After an EOF, how long the kernel's redirect backlog may make no
    /// progress before the EOF is passed on anyway.
    var sockmapFlushTimeoutMilliseconds: UInt64 = 5000
}

/// A worker thread: its own epoll instance, its own listening socket per
/// listener, its own timer wheel and sessions. Nothing here is touched by
/// another thread except `commands` (locked) and the atomic counters.
final class Worker: @unchecked Sendable {
    let id: Int
    let counters = WorkerCounters()
    /// This worker's record in worker_load: read by the steering program and `sluice status`.
    let record: WorkerLoadRecord
    let epoll: Epoll
    let wakeup: EventFD
    let commands = Mutex(CommandQueue())
    let settings: WorkerSettings
    /// The SOCKHASH data path, when `splice` resolved to sockmap.
    let sockmapPairs: SockmapPairs?
    var logger: Logger
    private let accessLogger: LogSink?

    var listenerFDs: [Int32?]
    let listeners: [RuntimeListener]
    var balancers: [String: Balancer]
    var sessions: [UInt64: Session] = [:]
    var nextSessionID: UInt64 = 1
    var timers: TimerWheel<WorkerTimer>
    var draining = false
    /// Set when the wake-up eventfd fired: only then is the command queue
    /// (and its lock) looked at, not on every loop turn.
    private var commandsWaiting = false
    private var pipePool: [Pipe] = []
    private var bufferPool: [UnsafeMutableRawBufferPointer] = []
    var lastAcceptErrorLog: UInt64 = 0
    /// Listeners not re-armed until their back-off timer fires.
    var pausedListeners: Set<Int> = []
    private let onExit: @Sendable () -> Void
    /// Set by the worker thread as it leaves its loop.
    private let exited = Atomic<Bool>(false)
    var hasExited: Bool { exited.load(ordering: .acquiring) }

    private static let wakeupToken: UInt64 = 0
    private static let listenerKind: UInt64 = 1 << 56
    static let sessionKind: UInt64 = 2 << 56
    private static let kindMask: UInt64 = 0xFF << 56

    init(
        id: Int, listeners: [RuntimeListener], listenerFDs: [Int32], settings: WorkerSettings,
        record: WorkerLoadRecord, sockmapPairs: SockmapPairs?, logger: Logger, accessLog: LogSink?, seed: UInt64,
        onExit: @escaping @Sendable () -> Void
    ) throws(SystemCallError) {
        self.id = id
        self.record = record
        self.sockmapPairs = sockmapPairs
        self.listeners = listeners
        self.listenerFDs = listenerFDs
        self.settings = settings
        self.logger = logger
        self.accessLogger = settings.accessLog == .off ? nil : accessLog
        self.onExit = onExit
        epoll = try Epoll()
        wakeup = try EventFD()
        timers = TimerWheel(tickMilliseconds: 10, slotCount: 512, nowMilliseconds: monotonicMilliseconds())
        var balancers: [String: Balancer] = [:]
        for listener in listeners where balancers[listener.pool.name] == nil {
            let pool = listener.pool
            var balancer = Balancer(
                algorithm: pool.config.algorithm,
                backends: pool.config.backends.map { BalancerBackend(weight: $0.weight, key: $0.address.description) },
                seed: seed &+ UInt64(id) &* 0x9E37_79B9_7F4A_7C15
            )
            if pool.config.algorithm == .roundRobin {
                // Each worker rotates on its own; start them at different
                // places so that N workers do not all begin with backend 0.
                for _ in 0..<(id % max(1, balancer.count)) {
                    _ = balancer.pick(clientKey: 0, active: { _ in 0 }, eligible: { _ in true })
                }
            }
            balancers[pool.name] = balancer
        }
        self.balancers = balancers
    }

    deinit {
        for pipe in pipePool { pipe.close() }
        for buffer in bufferPool { buffer.deallocate() }
    }

    // MARK: - Control thread side

    /// Queues a command; false once the worker has left its loop (nothing
    /// would ever run it: a caller handing connections over keeps them).
    @discardableResult
    func send(_ command: WorkerCommand) -> Bool {
        guard commands.withLock({ queue in
            guard !queue.closed else { return false }
            queue.items.append(command)
            return true
        }) else { return false }
        wakeup.signal()
        return true
    }

    // MARK: - Event loop

    func run() {
        do {
            try epoll.add(wakeup.fd, .readable, token: Self.wakeupToken)
            for index in listenerFDs.indices { try armListener(index, firstTime: true) }
        } catch {
            logger.critical("cannot register with epoll: \(error)")
            closeListeners()
            onExit()
            return
        }
        logger.debug("worker started")

        while !(draining && sessions.isEmpty) {
            let idleSince = monotonicNanoseconds()
            record.store(.heartbeatNanoseconds, idleSince)
            let now = idleSince / 1_000_000
            var timeout = settings.maxWaitMilliseconds
            if let next = timers.nextDeadline {
                timeout = next <= now ? 0 : Int32(min(UInt64(timeout), next - now))
            }
            var wokeAt: UInt64 = 0
            epoll.wait(timeoutMilliseconds: timeout) { token, events in
                if wokeAt == 0 { wokeAt = monotonicNanoseconds() }
                dispatch(token: token, events: events)
            }
            if wokeAt == 0 { wokeAt = monotonicNanoseconds() }
            for (_, timer) in timers.advance(to: wokeAt / 1_000_000) {
                fire(timer)
            }
            if commandsWaiting {
                commandsWaiting = false
                processCommands()
            }
            record.add(.busyNanoseconds, monotonicNanoseconds() &- wokeAt)
        }
        closeLeftoverAdoptions()
        closeListeners()
        exited.store(true, ordering: .releasing)
        logger.debug("worker stopped", metadata: [
            "accepted": "\(counters.accepted.load(ordering: .relaxed))",
            "bytes_in": "\(record.load(.bytesIn))",
            "bytes_out": "\(record.load(.bytesOut))",
        ])
        onExit()
    }

    private func dispatch(token: UInt64, events: EpollEvents) {
        switch token & Self.kindMask {
        case Self.sessionKind:
            let value = token & ~Self.kindMask
            guard let session = sessions[value >> 1] else { return } // closed earlier in this batch
            let side: Side = (value & 1) == 0 ? .client : .backend
            if side == .client { session.clientArmed = nil } else { session.backendArmed = nil }
            handle(session, side: side, events: events)
        case Self.listenerKind:
            acceptConnections(listenerIndex: Int(token & ~Self.kindMask))
        default:
            wakeup.drain()
            commandsWaiting = true
        }
    }

    /// Takes commands one at a time: what is still queued behind a command
    /// that blocks (a stall) stays reclaimable by the control thread.
    private func processCommands() {
        while let command = commands.withLock({ $0.items.isEmpty ? nil : $0.items.removeFirst() }) {
            switch command {
            case .drain(let deadline):
                guard !draining else { continue }
                draining = true
                record.setBits(.flags, UInt64(SLUICE_WORKER_DRAINING))
                closeListeners()
                _ = timers.schedule(at: deadline, .drainDeadline)
                logger.info("draining", metadata: ["open": "\(sessions.count)"])
            case .stall(let milliseconds):
                logger.warning("stalling on request", metadata: ["ms": "\(milliseconds)"])
                usleep(UInt32(min(milliseconds, 60_000)) * 1000)
            case .give(let count, let receiver, let issuedAt):
                let now = monotonicNanoseconds()
                if now &- issuedAt > settings.stallThresholdNanoseconds || !receiver.isLive(now: now) {
                    logger.debug("dropping a stale rebalancing order", metadata: ["to": "\(receiver.id)"])
                    continue
                }
                give(count, to: receiver)
            case .adopt(let migrating):
                adopt(migrating)
            }
        }
    }

    private func fire(_ timer: WorkerTimer) {
        switch timer {
        case .connect(let id, let attempt):
            guard let session = sessions[id], session.phase == .connecting, session.triedBackends.count == attempt else { return }
            session.connectTimer = nil
            logger.warning("connect timed out", metadata: ["backend": "\(session.backendDescription ?? "-")"])
            abandonBackendAttempt(session)
            connectNextBackend(session)
        case .idle(let id):
            guard let session = sessions[id] else { return }
            session.idleTimer = nil
            let idle = session.listener.config.idleTimeout.milliseconds
            let now = monotonicMilliseconds()
            noteSockmapActivity(session, now: now)
            if now &- session.lastActivityMilliseconds >= idle {
                close(session, reason: .idleTimeout)
            } else {
                session.idleTimer = timers.schedule(at: session.lastActivityMilliseconds.saturatingAdd(idle), .idle(session: id))
            }
        case .rearmListener(let index):
            pausedListeners.remove(index)
            try? armListener(index)
        case .sockmapFlush(let id, let side):
            if let session = sessions[id] { passSockmapEOF(session, from: side) }
        case .drainDeadline:
            if !sessions.isEmpty {
                logger.warning("drain deadline reached; closing open connections", metadata: ["open": "\(sessions.count)"])
            }
            for session in Array(sessions.values) { close(session, reason: .drainTimeout) }
        }
    }

    private var listenerInterest: EpollEvents { settings.sharedAccept ? [.readable, .exclusive] : [.readable, .oneShot] }

    /// Oneshot listeners are re-armed with MOD; an EPOLLEXCLUSIVE one cannot
    /// be modified, so pausing removes it and arming adds it back.
    func armListener(_ index: Int, firstTime: Bool = false) throws(SystemCallError) {
        guard let fd = listenerFDs[index] else { return }
        let token = Self.listenerKind | UInt64(index)
        if firstTime || settings.sharedAccept {
            try epoll.add(fd, listenerInterest, token: token)
        } else {
            try epoll.modify(fd, listenerInterest, token: token)
        }
    }

    private func closeListeners() {
        for (index, fd) in listenerFDs.enumerated() {
            if let fd {
                epoll.remove(fd)
                closeDescriptor(fd)
                listenerFDs[index] = nil
            }
        }
    }

    // MARK: - Moving bytes

    private func handle(_ session: Session, side: Side, events: EpollEvents) {
        if session.phase == .connecting {
            guard side == .backend else { return }
            let error = Socket.pendingError(session.backend)
            if error == 0 {
                backendConnected(session)
            } else if !closeOnLocalFailure(session, errno: error) {
                logger.warning("backend connect failed", metadata: [
                    "backend": "\(session.backendDescription ?? "-")", "error": "\(errnoDescription(error))",
                ])
                abandonBackendAttempt(session)
                connectNextBackend(session)
            }
            return
        }
        if session.sockmapPair != nil {
            handleSockmapEvent(session, side: side, events: events)
            return
        }
        let trouble = !events.isDisjoint(with: [.error, .hangup])
        let readable = trouble || !events.isDisjoint(with: [.readable, .readHangup])
        let writable = trouble || events.contains(.writable)
        // A readable client or writable backend moves bytes upstream; the reverse downstream.
        let up = side == .client ? readable : writable
        let down = side == .client ? writable : readable
        pumpAndRearm(session, upstream: up, downstream: down)
    }

    func pumpAndRearm(_ session: Session, upstream: Bool, downstream: Bool) {
        do {
            if upstream {
                try pump(&session.upstream, from: session.client, to: session.backend,
                         sourceSide: .client, session: session)
            }
            if downstream {
                try pump(&session.downstream, from: session.backend, to: session.client,
                         sourceSide: .backend, session: session)
            }
        } catch {
            let reason: CloseReason = error.side == .client ? .clientReset : .backendReset
            if error.error.errno != ECONNRESET && error.error.errno != EPIPE {
                logger.debug("connection error", metadata: ["error": "\(error.error)"])
            }
            close(session, reason: reason, resetPeer: true)
            return
        }
        if session.upstream.finished && session.downstream.finished {
            close(session, reason: session.firstEOF == .backend ? .backendClosed : .clientClosed)
            return
        }
        rearm(session)
    }

    /// Moves bytes one way until the source has none, the destination is
    /// full, or this direction's fairness budget is spent.
    private func pump(_ direction: inout Direction, from source: Int32, to destination: Int32,
                      sourceSide: Side, session: Session) throws(SideFailure) {
        let destinationSide: Side = sourceSide == .client ? .backend : .client
        var budget = settings.fairnessBudget
        var moved = 0
        defer {
            if moved > 0 {
                session.lastActivityMilliseconds = monotonicMilliseconds()
                record.add(sourceSide == .client ? .bytesIn : .bytesOut, UInt64(moved))
            }
        }
        // A read shorter than a full buffer almost always emptied the socket:
        // skip the read that would only say EAGAIN. Oneshot re-arming brings
        // us back if more arrived meanwhile (level-triggered).
        var sourceLikelyDrained = false
        while budget > 0 {
            if direction.pending > 0 {
                let result: IOResult<Int>
                do {
                    result = try writeOut(&direction, to: destination)
                } catch {
                    throw SideFailure(side: destinationSide, error: error)
                }
                switch result {
                case .wouldBlock:
                    return
                case .done(let n):
                    direction.pending -= n
                    direction.bytes += UInt64(n)
                    moved += n
                    budget -= n
                    continue
                }
            }
            releaseCarrier(&direction)
            if direction.sourceEOF {
                if !direction.shutdownSent {
                    Socket.shutdownWrite(destination)
                    direction.shutdownSent = true
                }
                return
            }
            if sourceLikelyDrained { return }
            let result: Socket.ReadOutcome
            do {
                result = try readIn(&direction, from: source, path: session.path)
            } catch {
                releaseCarrier(&direction)
                throw SideFailure(side: sourceSide, error: error)
            }
            switch result {
            case .wouldBlock:
                releaseCarrier(&direction)
                return
            case .endOfFile:
                direction.sourceEOF = true
                if session.firstEOF == nil { session.firstEOF = sourceSide }
            case .bytes(let n):
                direction.pending = n
                sourceLikelyDrained = n < settings.shortReadBytes
            }
        }
    }

    private func readIn(_ direction: inout Direction, from source: Int32, path: DataPathKind) throws(SystemCallError) -> Socket.ReadOutcome {
        if path == .splice && direction.bulk && direction.pipe == nil {
            // Out of fds for a pipe: this transfer goes through a buffer instead.
            direction.pipe = try? takePipe()
        }
        if let pipe = direction.pipe {
            switch try Socket.splice(from: source, to: pipe.writeEnd, maxBytes: 1 << 20) {
            case .wouldBlock: return .wouldBlock
            case .done(0): return .endOfFile
            case .done(let n):
                if n < settings.bulkExitBytes { direction.bulk = false }
                return .bytes(n)
            }
        }
        if direction.buffer == nil { direction.buffer = takeBuffer() }
        direction.bufferStart = 0
        let outcome = try Socket.read(source, into: direction.buffer!)
        if path == .splice, case .bytes(let n) = outcome, n >= settings.bulkEntryBytes { direction.bulk = true }
        return outcome
    }

    private func writeOut(_ direction: inout Direction, to destination: Int32) throws(SystemCallError) -> IOResult<Int> {
        if let pipe = direction.pipe {
            return try Socket.splice(from: pipe.readEnd, to: destination, maxBytes: direction.pending)
        }
        let buffer = direction.buffer!
        let chunk = UnsafeRawBufferPointer(rebasing: buffer[direction.bufferStart..<(direction.bufferStart + direction.pending)])
        let result = try Socket.write(destination, from: chunk)
        if case .done(let n) = result { direction.bufferStart += n }
        return result
    }

    /// Returns an empty direction's buffer or pipe to the worker's pool.
    func releaseCarrier(_ direction: inout Direction) {
        precondition(direction.pending == 0, "releasing a carrier that still holds bytes")
        if let buffer = direction.buffer {
            direction.buffer = nil
            if bufferPool.count < settings.poolLimit { bufferPool.append(buffer) } else { buffer.deallocate() }
        }
        if let pipe = direction.pipe {
            direction.pipe = nil
            if pipePool.count < settings.poolLimit { pipePool.append(pipe) } else { pipe.close() }
        }
    }

    /// Frees a carrier whose bytes will never be delivered (connection torn down).
    private func discardCarrier(_ direction: inout Direction) {
        if let buffer = direction.buffer {
            direction.buffer = nil
            if bufferPool.count < settings.poolLimit { bufferPool.append(buffer) } else { buffer.deallocate() }
        }
        if let pipe = direction.pipe {
            direction.pipe = nil
            pipe.close() // may hold bytes: never reuse
        }
        direction.pending = 0
    }

    func takeBuffer() -> UnsafeMutableRawBufferPointer {
        bufferPool.popLast() ?? .allocate(byteCount: settings.copyBufferSize, alignment: 64)
    }

    private func takePipe() throws(SystemCallError) -> Pipe {
        if let pipe = pipePool.popLast() { return pipe }
        return try Pipe.make()
    }

    /// Arms each socket for what its session now waits on. The socket whose
    /// event was just handled is disarmed (oneshot) and is re-armed only if
    /// it has something to wait for; the other is changed only if needed.
    func rearm(_ session: Session) {
        var clientInterest: EpollEvents = []
        if session.upstream.wantsRead { clientInterest.insert(.readable) }
        if session.downstream.wantsWrite { clientInterest.insert(.writable) }
        var backendInterest: EpollEvents = []
        if session.downstream.wantsRead { backendInterest.insert(.readable) }
        if session.upstream.wantsWrite { backendInterest.insert(.writable) }
        // An empty interest is left disarmed: nothing to wait for on that side.
        arm(session, client: clientInterest.isEmpty ? nil : clientInterest,
            backend: backendInterest.isEmpty ? nil : backendInterest)
        // Neither side armed while both directions still run would stall the
        // session forever; it cannot happen (one side always reads or writes),
        // and the idle timer would end it if it did.
    }

    /// Arms each socket of a session for `interest` (nil: leave it as it
    /// is) unless it is armed for exactly that already; a socket not yet in
    /// this epoll is added. A failure closes the session.
    func arm(_ session: Session, client: EpollEvents?, backend: EpollEvents?) {
        func apply(_ fd: Int32, _ side: Side, _ interest: EpollEvents, added: inout Bool, armed: inout EpollEvents?) throws(SystemCallError) {
            guard armed != interest else { return }
            if added {
                try epoll.modify(fd, interest.union(.oneShot), token: token(session, side))
            } else {
                try epoll.add(fd, interest.union(.oneShot), token: token(session, side))
                added = true
            }
            armed = interest
        }
        do {
            if let client { try apply(session.client, .client, client, added: &session.clientAdded, armed: &session.clientArmed) }
            if let backend { try apply(session.backend, .backend, backend, added: &session.backendAdded, armed: &session.backendArmed) }
        } catch {
            logger.error("epoll re-arm failed", metadata: ["error": "\(error)"])
            close(session, reason: .internalError)
        }
    }

    // MARK: - Closing

    func close(_ session: Session, reason: CloseReason, resetPeer: Bool = false) {
        guard sessions.removeValue(forKey: session.id) != nil else { return }
        finishSplicing(session)
        if let timer = session.connectTimer { _ = timers.cancel(timer) }
        if let timer = session.idleTimer { _ = timers.cancel(timer) }
        discardCarrier(&session.upstream)
        discardCarrier(&session.downstream)
        if session.backend >= 0 {
            if resetPeer && reason == .clientReset { Socket.closeWithReset(session.backend) } else { closeDescriptor(session.backend) }
        }
        if resetPeer && reason == .backendReset { Socket.closeWithReset(session.client) } else { closeDescriptor(session.client) }
        if session.phase == .proxying, let index = session.backendIndex {
            let pool = session.listener.pool
            pool.active[index].wrappingDecrement(ordering: .relaxed)
            if reason == .backendReset && session.downstream.bytes == 0 {
                noteBackendFailure(pool, index) // reset before its first byte
            } else if session.downstream.bytes > 0 || reason == .clientClosed || reason == .backendClosed {
                pool.noteSuccess(index)
            }
        }
        session.listener.counters.release(.active)
        releaseActive()

        if let accessLogger {
            let record = AccessRecord(
                worker: id, listener: session.listener.name, client: session.clientAddress.description,
                backend: session.backendDescription, bytesFromClient: session.upstream.bytes,
                bytesToClient: session.downstream.bytes,
                durationMicroseconds: (monotonicNanoseconds() &- session.startedNanoseconds) / 1000,
                dataPath: session.path.rawValue, closeReason: reason.rawValue
            )
            if let line = record.render(settings.accessLog) { accessLogger.write(line: line) }
        }
    }
}
