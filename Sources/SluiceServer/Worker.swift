import Atomics
import CSluice
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
    /// A reload (or a DNS change): the listeners and pools to serve from now on.
    case reconfigure(WorkerReconfiguration)
    /// Binary upgrade, old process: stop (or start again) taking new
    /// connections; the new process serves the same sockets.
    case pauseAccepting(Bool)
    /// Binary upgrade, old process: hand what is at rest to the mailbox.
    case export(HandoverMailbox)
    /// Binary upgrade, old process, at the end: drain what stayed, without
    /// marking the worker's record draining (the new worker shares it).
    case drainAfterUpgrade(deadlineMilliseconds: UInt64)
    /// Binary upgrade, new process: connections the old one handed over.
    case adoptHanded(AdoptedConnections)
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
    /// A sockmap-paired session waits for the kernel to hand every redirected byte
    /// from `side` to its peer before passing the EOF on.
    case sockmapFlush(session: UInt64, side: Side)
    /// An HTTP connection's head or response timer.
    case http(connection: UInt64, HTTPTimer)
    /// An HTTP connection's backend connect takes too long.
    case httpConnect(connection: UInt64)
    /// A closing HTTP connection's last answer did not go out in time.
    case httpLinger(connection: UInt64)
    /// A client's PROXY header did not come in time.
    case proxyHeader(id: UInt64)
    /// A connect to a Redis backend takes too long.
    case redisConnect(link: Int)
    /// A Redis backend's oldest command may have waited too long for its reply.
    case redisReply(link: Int)
    /// Time to see whether Redis key placement must follow a health change.
    case redisShards
    /// A UDP flow may have been idle for its timeout.
    case udpFlow(id: UInt64)
    /// Time to end the UDP flows whose backend is no longer healthy.
    case udpSweep
    /// `drain_timeout` after a reload: what it retired and is still open ends.
    case retired(RetiredByReload)
}

/// Shared, immutable settings for every worker of one server.
struct WorkerSettings: Sendable {
    /// The path every session starts on.
    var dataPath: DataPathKind
    /// `data_path: auto`: when a session moves into the SOCKHASH (nil: never).
    var promotion: SockmapPromotion?
    /// `shared_accept`: one listening socket per listener in every worker's
    /// epoll with EPOLLEXCLUSIVE; otherwise each worker has its own socket.
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
    /// An HTTP body move of at least this many bytes (or until close) goes
    /// through a pipe with splice(2); shorter ones through a buffer.
    var httpSpliceBytes: UInt64 = 64 * 1024
    /// Pause accepting on a listener after EMFILE/ENFILE.
    var acceptBackoffMilliseconds: UInt64 = 100
    /// Shared by every worker (and the health checker) of one server.
    var localResourceErrors = LocalResourceErrors()
    /// After an EOF, how long the kernel's redirect backlog may make no
    /// progress before the EOF is passed on anyway.
    var sockmapFlushTimeoutMilliseconds: UInt64 = 5000
    /// Per listener: the `udp_flows` map of a UDP listener steered in BPF.
    var flowMaps: [Int32?] = []
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
    /// Fixed for the life of the process but for what a reload changes
    /// (the access log format, the flow maps of added listeners).
    var settings: WorkerSettings
    /// The SOCKHASH, when `data_path` is sockmap, or auto and it loaded.
    let sockmapPairs: SockmapPairs?
    var logger: Logger
    var accessLogger: LogSink?
    let accessSink: LogSink?

    /// By listener slot (`RuntimeListener.index`): the listeners served now,
    /// and this worker's socket of each.
    var listenerFDs: [Int32?]
    var listeners: [RuntimeListener?]
    /// By pool object: a pool replaced by a reload gets a balancer of its own
    /// again should a connection opened before the reload need one.
    var balancers = PoolTable<PoolBalancer>()
    let balancerSeed: UInt64
    var sessions = SlotTable<Session>()
    /// `mode: http` client connections (a closed one stays until its last answer is written).
    var httpConnections = SlotTable<HTTPConnection>()
    /// Kept-alive backend connections of `mode: http` listeners, per pool.
    var idleBackends = PoolTable<IdleConnections>()
    /// The HTTP connection each backend descriptor serves (none while idle).
    var backendOwners = DescriptorOwners()
    /// `mode: redis` clients, and this worker's connections to Redis backends.
    var redisClients: [UInt64: RedisClient] = [:]
    var redisLinks: [RedisLink] = []
    var redisLinkIndex: [RedisLinkKey: Int] = [:]
    var redisDirtyClients: [RedisClient] = []
    var redisDirtyLinks: [RedisLink] = []
    var redisShardStates: [RedisShardKey: RedisShardState] = [:]
    /// `mode: udp`: flows by client (per_packet ones only by id), and the
    /// batch the worker receives datagrams into.
    var udpFlows: [UDPFlowKey: UDPFlow] = [:]
    var udpFlowsByID: [UInt64: UDPFlow] = [:]
    lazy var udpBatch = DatagramBatch(count: 32)
    /// Replies gathered per UDP listener during a batch of events, and how
    /// many each holds: they go to their clients in one sendmmsg.
    var udpReplies: [Int: DatagramBatch] = [:]
    var udpReplyCounts: [Int: Int] = [:]
    /// Datagrams to ask each UDP listener's recvmmsg for (see `DatagramBatch.receive`).
    var udpListenerWindows: [Int: Int] = [:]
    var udpSweepScheduled = false
    /// When `flows_unseen` may next be reset (see `seenAllFlows`).
    var udpUnseenResetAt: UInt64 = 0
    /// Clients whose PROXY header is still to come.
    var awaitingHeaders: [UInt64: AwaitingHeader] = [:]
    var lastHeaderRejectionLog: UInt64 = 0
    var nextSessionID: UInt64 = 1
    /// Session sides armed for a readiness they already had: delivered
    /// after the current batch of events (see `Registration`).
    var dueSides: [(session: UInt64, side: Side)] = []
    private var dueSpare: [(session: UInt64, side: Side)] = []
    /// The clock read once per wake-up, for what needs milliseconds (idle
    /// deadlines, head timeouts): not a clock_gettime per event.
    var wakeMilliseconds = monotonicMilliseconds()
    var timers: TimerWheel<WorkerTimer>
    var draining = false
    /// A binary upgrade's new process takes the new connections.
    var acceptPaused = false
    /// The new process took over: what stays here finishes without beating
    /// in the worker_load record it now shares.
    var upgradedAway = false
    /// Set when the wake-up eventfd fired: only then is the command queue
    /// (and its lock) looked at, not on every loop turn.
    private var commandsWaiting = false
    var pipePool: [Pipe] = []
    var bufferPool: [UnsafeMutableRawBufferPointer] = []
    /// The actions of the sessions being driven, innermost `drive` on top.
    var pendingActions: [TCPSession.Action] = []
    var pendingHTTPActions: [HTTPSession.Action] = []
    var lastAcceptErrorLog: UInt64 = 0
    /// Listeners not re-armed until their back-off timer fires.
    var pausedListeners: Set<Int> = []
    private let onExit: @Sendable () -> Void
    /// Set by the worker thread as it leaves its loop.
    private let exited = Atomic<Bool>(false)
    var hasExited: Bool { exited.load(ordering: .acquiring) }
    /// Reconfigurations applied so far: the control thread waits for the
    /// count, so that what it reports (a reload's answer, a DNS change in
    /// the log) is already what new connections meet.
    let reconfigurations = Atomic<UInt64>(0)

    private static let wakeupToken: UInt64 = 0
    private static let listenerKind: UInt64 = 1 << 56
    static let sessionKind: UInt64 = 2 << 56
    static let httpKind: UInt64 = 3 << 56
    /// A `mode: http` backend socket, by descriptor: a kept-alive one changes
    /// hands without an epoll_ctl.
    static let httpBackendKind: UInt64 = 4 << 56
    /// A client whose PROXY header is awaited.
    static let proxyHeaderKind: UInt64 = 5 << 56
    static let redisClientKind: UInt64 = 6 << 56
    static let redisLinkKind: UInt64 = 7 << 56
    static let udpFlowKind: UInt64 = 8 << 56
    private static let kindMask: UInt64 = 0xFF << 56

    init(
        id: Int, listeners: [RuntimeListener?], listenerFDs: [Int32?], settings: WorkerSettings,
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
        self.accessSink = accessLog
        self.accessLogger = settings.accessLog == .off ? nil : accessLog
        self.onExit = onExit
        balancerSeed = seed &+ UInt64(id) &* 0x9E37_79B9_7F4A_7C15
        epoll = try Epoll()
        wakeup = try EventFD()
        timers = TimerWheel(tickMilliseconds: 10, slotCount: 512, nowMilliseconds: monotonicMilliseconds())
        for case let listener? in listeners {
            for pool in [listener.pool] + (listener.http?.pools ?? []) { _ = balancer(pool) }
        }
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
            for index in listenerFDs.indices { try armListener(index) }
        } catch {
            logger.critical("cannot register with epoll: \(error)")
            closeListeners()
            onExit()
            return
        }
        logger.debug("worker started")

        while !(draining && sessions.isEmpty && httpConnections.isEmpty && awaitingHeaders.isEmpty && redisClients.isEmpty
                && udpFlowsByID.isEmpty) {
            let idleSince = monotonicNanoseconds()
            // After an upgrade the record is the new worker's: its beat, not ours.
            if !upgradedAway { record.store(.heartbeatNanoseconds, idleSince) }
            let now = idleSince / 1_000_000
            var timeout = settings.maxWaitMilliseconds
            if let next = timers.nextDeadline {
                timeout = next <= now ? 0 : Int32(min(UInt64(timeout), next - now))
            }
            if !dueSides.isEmpty { timeout = 0 }
            var wokeAt: UInt64 = 0
            epoll.wait(timeoutMilliseconds: timeout) { token, events in
                if wokeAt == 0 {
                    wokeAt = monotonicNanoseconds()
                    wakeMilliseconds = wokeAt / 1_000_000
                }
                dispatch(token: token, events: events)
            }
            if wokeAt == 0 { wokeAt = monotonicNanoseconds() }
            wakeMilliseconds = wokeAt / 1_000_000
            for (_, timer) in timers.advance(to: wokeAt / 1_000_000) {
                fire(timer)
            }
            if !dueSides.isEmpty { deliverDue() }
            // Redis writes wait for the whole batch of events: the commands of
            // many clients go to a backend in one write.
            if !redisDirtyLinks.isEmpty || !redisDirtyClients.isEmpty { flushRedis() }
            if !udpReplyCounts.isEmpty { flushReplies() }
            if commandsWaiting {
                commandsWaiting = false
                processCommands()
            }
            if !upgradedAway { record.add(.busyNanoseconds, monotonicNanoseconds() &- wokeAt) }
        }
        closeLeftoverAdoptions()
        closeIdleBackends()
        for link in redisLinks where link.fd >= 0 { closeDescriptor(link.fd) }
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
            if events.contains(.readHangup) { session.noteFinArrived(side) }
            session[registration: side].ready.formUnion(events.intersection([.readable, .writable, .readHangup, .hangup, .error]))
            deliver(session, side)
        case Self.httpKind:
            let value = token & ~Self.kindMask
            guard let connection = httpConnections[value >> 1] else { return }
            if connection.isClosed {
                lingerWritable(connection, force: false)
            } else {
                dispatch(connection, (value & 1) == 0 ? .client : .backend, events)
            }
        case Self.httpBackendKind:
            let fd = Int32(truncatingIfNeeded: token & ~Self.kindMask)
            if let owner = backendOwners[fd] {
                if let connection = httpConnections[owner], !connection.isClosed { dispatch(connection, .backend, events) }
            } else {
                idleBackendStirred(fd)
            }
        case Self.proxyHeaderKind:
            headerReadable(token & ~Self.kindMask)
        case Self.redisClientKind:
            redisClientReady(token & ~Self.kindMask, events)
        case Self.redisLinkKind:
            redisLinkReady(Int(token & ~Self.kindMask), events)
        case Self.udpFlowKind:
            udpBackendReadable(token & ~Self.kindMask)
        case Self.listenerKind:
            let index = Int(token & ~Self.kindMask)
            guard let listener = listeners[index] else { return }
            if listener.config.mode == .udp { udpListenerReadable(index) } else { acceptConnections(listenerIndex: index) }
        default:
            wakeup.drain()
            commandsWaiting = true
        }
    }

    /// An event for a session's side, when its readiness meets the
    /// session's interest: the interest is used up (oneshot).
    func deliver(_ session: Session, _ side: Side) {
        var registration = session[registration: side]
        let due = registration.due
        guard !due.isEmpty else { return }
        if registration.interest == [] { registration.troubleReported.formUnion(due) }
        registration.interest = nil
        session[registration: side] = registration
        drive(session, .ready(side, Readiness(due)))
    }

    /// Sides armed during the last batch for what they were already ready for.
    private func deliverDue() {
        swap(&dueSides, &dueSpare)
        for (id, side) in dueSpare {
            guard let session = sessions[id] else { continue }
            session[registration: side].queued = false
            deliver(session, side)
        }
        dueSpare.removeAll(keepingCapacity: true)
    }

    /// Takes commands one at a time: what is still queued behind a command
    /// that blocks (a stall) stays reclaimable by the control thread.
    private func processCommands() {
        while let command = commands.withLock({ $0.items.isEmpty ? nil : $0.items.removeFirst() }) {
            switch command {
            case .drain(let deadline):
                startDraining(deadline: deadline, marksRecord: true)
            case .stall(let milliseconds):
                logger.warning("stalling on request", metadata: ["ms": "\(milliseconds)"])
                sleepMilliseconds(UInt32(min(milliseconds, 60_000)))
            case .give(let count, let receiver, let issuedAt):
                let now = monotonicNanoseconds()
                if now &- issuedAt > settings.stallThresholdNanoseconds || !receiver.isLive(now: now) {
                    logger.debug("dropping a stale rebalancing order", metadata: ["to": "\(receiver.id)"])
                    continue
                }
                give(count, to: receiver)
            case .adopt(let migrating):
                adopt(migrating)
            case .reconfigure(let next):
                reconfigure(next)
            case .pauseAccepting(let paused):
                pauseAccepting(paused)
            case .export(let mailbox):
                mailbox.deliver(worker: id) { exportConnections(limit: 2000, to: mailbox) }
            case .drainAfterUpgrade(let deadline):
                upgradedAway = true
                startDraining(deadline: deadline, marksRecord: false)
            case .adoptHanded(let adopted):
                adoptHanded(adopted)
            }
        }
    }

    private func startDraining(deadline: UInt64, marksRecord: Bool) {
        guard !draining else { return }
        draining = true
        if marksRecord { record.setBits(.flags, UInt64(SLUICE_WORKER_DRAINING)) }
        closeListeners(keepingDatagramSockets: true)
        drainFlows()
        for connection in httpConnections.values where connection.machine.isWaiting {
            close(connection, reason: .clientClosed)
        }
        _ = timers.schedule(at: deadline, .drainDeadline)
        logger.info("draining", metadata: ["open": "\(sessions.count)"])
    }

    private func fire(_ timer: WorkerTimer) {
        switch timer {
        case .connect(let id, let attempt):
            guard let session = sessions[id] else { return }
            session.connectTimer = nil
            drive(session, .timerFired(.connect(attempt: attempt), now: monotonicMilliseconds()))
        case .idle(let id):
            guard let session = sessions[id] else { return }
            session.idleTimer = nil
            let now = monotonicMilliseconds()
            if kernelMoved(session) { drive(session, .kernelActivity(now: now)) }
            drive(session, .timerFired(.idle, now: now))
        case .rearmListener(let index):
            pausedListeners.remove(index)
            try? armListener(index)
        case .sockmapFlush(let id, let side):
            if let session = sessions[id] { drive(session, .timerFired(.flush(side), now: monotonicMilliseconds())) }
        case .drainDeadline:
            if !sessions.isEmpty {
                logger.warning("drain deadline reached; closing open connections", metadata: ["open": "\(sessions.count)"])
            }
            for session in sessions.values { drive(session, .drainDeadline) }
            for connection in httpConnections.values where !connection.isClosed { close(connection, reason: .drainTimeout) }
            for connection in httpConnections.values { lingerWritable(connection, force: true) }
            for waiting in Array(awaitingHeaders.values) { rejectHeader(waiting, "the drain deadline passed") }
            for client in Array(redisClients.values) { closeRedis(client) }
            for flow in Array(udpFlowsByID.values) { closeFlow(flow, reason: "drain_timeout") }
        case .http(let id, let timer):
            guard let connection = httpConnections[id], !connection.isClosed else { return }
            var moving = connection[timer: timer]
            moving.id = nil
            let now = monotonicMilliseconds()
            if let deadline = moving.deadline, deadline > now {
                moving.id = timers.schedule(at: deadline, .http(connection: id, timer))
                moving.firesAt = deadline
            }
            connection[timer: timer] = moving
            guard let deadline = moving.deadline, deadline <= now else { return }
            connection[timer: timer].deadline = nil
            drive(connection, .timerFired(timer, now: now))
        case .proxyHeader(let id):
            headerTimedOut(id)
        case .redisConnect(let index):
            redisConnectTimedOut(index)
        case .redisReply(let index):
            redisReplyTimedOut(index)
        case .redisShards:
            checkRedisShards()
        case .udpFlow(let id):
            udpFlowTimerFired(id)
        case .udpSweep:
            sweepFlows()
        case .retired(let retired):
            endRetired(retired)
        case .httpConnect(let id):
            guard let connection = httpConnections[id], connection.connecting else { return }
            connection.connectTimer = nil
            connectFailed(connection, errno: nil)
        case .httpLinger(let id):
            if let connection = httpConnections[id], connection.isClosed { lingerWritable(connection, force: true) }
        }
    }

    /// Level-triggered, added once and never modified: accepting a client
    /// costs no epoll_ctl. `shared_accept` adds EPOLLEXCLUSIVE (one worker
    /// woken per client). Pausing takes a listener out of epoll; arming
    /// puts it back.
    private var listenerInterest: EpollEvents { settings.sharedAccept ? [.readable, .exclusive] : [.readable] }

    func armListener(_ index: Int) throws(SystemCallError) {
        guard !acceptPaused, let fd = listenerFDs[index], let listener = listeners[index] else { return }
        let token = Self.listenerKind | UInt64(index)
        // UDP: a worker takes a few batches per turn.
        try epoll.add(fd, listener.config.mode == .udp ? .readable : listenerInterest, token: token)
    }

    /// Draining keeps a UDP listener's socket (out of epoll: no new
    /// datagrams are read) so that its flows' replies can still go out.
    func closeListeners(keepingDatagramSockets: Bool = false) {
        for (index, fd) in listenerFDs.enumerated() {
            if let fd {
                epoll.remove(fd)
                if keepingDatagramSockets && listeners[index]?.config.mode == .udp { continue }
                closeDescriptor(fd)
                listenerFDs[index] = nil
            }
        }
    }

}

extension Readiness {
    init(_ events: EpollEvents) {
        self = []
        if events.contains(.readable) { insert(.readable) }
        if events.contains(.writable) { insert(.writable) }
        if events.contains(.readHangup) { insert(.readHangup) }
        if events.contains(.hangup) { insert(.hangup) }
        if events.contains(.error) { insert(.error) }
    }
}

extension EpollEvents {
    init(_ readiness: Readiness) {
        self = []
        if readiness.contains(.readable) { insert(.readable) }
        if readiness.contains(.writable) { insert(.writable) }
        if readiness.contains(.readHangup) { insert(.readHangup) }
    }
}
