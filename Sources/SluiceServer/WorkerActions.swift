import Glibc
import Atomics
import Logging
import SluiceBPF
import SluiceCore
import SluicePosix

// The worker's half of a session: it feeds the session's state machine
// (`TCPSession`) the events it sees and executes the actions it returns.
// Nothing here decides what a connection does next.
extension Worker {
    /// Feeds `event` to the session and executes what it asks, in order;
    /// an action may feed a further event (its outcome) before the next runs.
    /// Once the session is closed the rest is skipped.
    func drive(_ session: Session, _ event: TCPSession.Event) {
        // One stack for every nesting level: this call's actions sit above
        // its callers', and a nested call takes its own off before returning.
        let start = pendingActions.count
        session.machine.handle(event, into: &pendingActions)
        let end = pendingActions.count
        var next = start
        while next < end && !session.isClosed {
            execute(pendingActions[next], for: session)
            next += 1
        }
        while pendingActions.count > start { pendingActions.removeLast() }
    }

    private func execute(_ action: TCPSession.Action, for session: Session) {
        switch action {
        case .connectNext(let excluding):
            connectNextBackend(session, excluding: excluding)
        case .checkConnect:
            let error = Socket.pendingError(session.backend)
            if error == 0 { backendConnected(session) } else { drive(session, .connectFailed(errno: error)) }
        case .confirmConnect:
            backendConnected(session)
        case .abandonAttempt:
            abandonBackendAttempt(session)
        case .noteConnectFailure(let backend, let errno, let blame):
            noteConnectFailure(session, backend: backend, errno: errno, blame: blame)
        case .noteNoBackend(let tried):
            session.listener.counters.add(.noBackend, 1)
            logger.warning("no backend reachable; closing the client", metadata: [
                "listener": "\(session.listener.name)", "client": "\(session.clientAddress)",
                "tried": "\(tried.map { session.pool.addresses[$0].description })",
            ])
        case .pump(let flow, let read):
            let result = pump(session, flow, read: read)
            drive(session, .pumped(flow, result, now: wakeMilliseconds))
        case .shutdownWrite(let side):
            Socket.shutdownWrite(session.fd(side))
        case .handToKernel:
            let pairing = enterSockmap(session)
            if case .paired = pairing, session.machine.path != .sockmap {
                counters.promotions.wrappingIncrement(ordering: .relaxed)
            }
            drive(session, .kernelPairing(pairing))
        case .checkFlush(let side):
            let (taken, expected) = flushProgress(session, from: side)
            drive(session, .flushMeasured(side, taken: taken, expected: expected, now: monotonicMilliseconds()))
        case .nudgeWriteSpace(let side):
            // Setting the send buffer calls the socket's write_space, which
            // reschedules a redirect backlog that waits for room.
            try? Socket.setOption(session.fd(side), SOL_SOCKET, SO_SNDBUFFORCE, SockmapPairs.sendBuffer, "SO_SNDBUFFORCE")
        case .flushAbandoned(_, let missing):
            logger.warning("bytes redirected in the kernel stopped reaching the peer; passing EOF anyway", metadata: ["missing": "\(missing)"])
        case .arm:
            arm(session, client: session.machine.interest.client.map(EpollEvents.init),
                backend: session.machine.interest.backend.map(EpollEvents.init))
        case .schedule(let timer, let at):
            schedule(timer, at: at, for: session)
        case .cancel(.connect):
            if let timer = session.connectTimer { _ = timers.cancel(timer) }
            session.connectTimer = nil
        case .cancel(.idle):
            if let timer = session.idleTimer { _ = timers.cancel(timer) }
            session.idleTimer = nil
        case .cancel(.flush):
            break // a flush timer for a session that moved on finds nothing to do
        case .close(let reason, let resetPeer, let connectedTo):
            close(session, reason: reason, resetPeer: resetPeer, connectedTo: connectedTo)
        }
    }

    private func schedule(_ timer: SessionTimer, at deadline: UInt64, for session: Session) {
        switch timer {
        case .connect(let attempt):
            if let old = session.connectTimer { _ = timers.cancel(old) }
            session.connectTimer = timers.schedule(at: deadline, .connect(session: session.id, attempt: attempt))
        case .idle:
            if let old = session.idleTimer { _ = timers.cancel(old) }
            session.idleTimer = timers.schedule(at: deadline, .idle(session: session.id))
        case .flush(let side):
            _ = timers.schedule(at: deadline, .sockmapFlush(session: session.id, side: side))
        }
    }

    /// Arms each socket of a session for `interest` (nil: leave it as it
    /// is); a socket not yet in this epoll is added (see `Registration`).
    /// A failure closes the session.
    func arm(_ session: Session, client: EpollEvents?, backend: EpollEvents?) {
        do {
            if let client { try arm(session, .client, client) }
            if let backend { try arm(session, .backend, backend) }
        } catch {
            logger.error("epoll registration failed", metadata: ["error": "\(error)"])
            close(session, reason: .internalError, resetPeer: false, connectedTo: session.machine.connectedBackend)
        }
    }

    func arm(_ session: Session, _ side: Side, _ interest: EpollEvents) throws(SystemCallError) {
        var registration = session[registration: side]
        // Armed already for the same: readiness only shrinks between events
        // (a read empties, a write fills), so nothing can have become due.
        if registration.interest == interest { return }
        if !registration.added {
            try epoll.add(session.fd(side), Registration.events, token: token(session, side))
            registration.added = true
        }
        registration.interest = interest
        if !registration.queued && !registration.due.isEmpty {
            registration.queued = true
            dueSides.append((session.id, side))
        }
        session[registration: side] = registration
    }

    // MARK: - Closing

    /// Tears a session down: kernel pairings, timers, carriers, both
    /// sockets; settles the backend's and this worker's counts and writes
    /// the access log line.
    func close(_ session: Session, reason: CloseReason, resetPeer: Bool, connectedTo: Int?) {
        guard sessions.removeValue(forKey: session.id) != nil else { return }
        session.isClosed = true
        let redirected = finishSplicing(session)
        if let timer = session.connectTimer { _ = timers.cancel(timer) }
        if let timer = session.idleTimer { _ = timers.cancel(timer) }
        discardCarrier(&session.upstream)
        discardCarrier(&session.downstream)
        if session.backend >= 0 {
            if resetPeer && reason == .clientReset { Socket.closeWithReset(session.backend) } else { closeDescriptor(session.backend) }
        }
        if resetPeer && reason == .backendReset { Socket.closeWithReset(session.client) } else { closeDescriptor(session.client) }
        let bytesFromClient = session.machine.userspaceBytes.upstream &+ redirected.upstream
        let bytesToClient = session.machine.userspaceBytes.downstream &+ redirected.downstream
        uncountBackend(session)
        if let index = connectedTo {
            let pool = session.pool
            switch TCPSession.backendVerdict(reason: reason, bytesToClient: bytesToClient) {
            case false?: noteBackendFailure(pool, index) // reset before its first byte
            case true?: pool.noteSuccess(index)
            case nil: break
            }
        }
        session.listener.counters.release(.active)
        releaseActive()
        session.tunnel?.http.openTunnels.wrappingDecrement(ordering: .relaxed)
        let paths = session.machine.pathsUsed
        for kind in DataPathKind.allCases where paths.contains(DataPathsUsed(kind)) {
            counters.closedByPath[kind]?.wrappingIncrement(ordering: .relaxed)
        }

        if let accessLogger {
            let record = AccessRecord(
                worker: id, listener: session.listener.name, client: session.clientAddress.description,
                backend: session.backendDescription, bytesFromClient: bytesFromClient,
                bytesToClient: bytesToClient,
                durationMicroseconds: (monotonicNanoseconds() &- session.startedNanoseconds) / 1000,
                dataPath: paths.isEmpty ? session.machine.path.rawValue : paths.description, closeReason: reason.rawValue,
                tunnel: session.tunnel?.kind
            )
            if let line = record.render(settings.accessLog) { accessLogger.write(line: line) }
        }
    }
}
