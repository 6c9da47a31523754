import Atomics
import CSluice
import Glibc
import Logging
import SluiceBPF
import SluiceCore
import SluicePosix
import Synchronization

// Accepting clients and connecting them to a backend.
extension Worker {
    // MARK: - Accepting

    func acceptConnections(listenerIndex: Int) {
        guard let fd = listenerFDs[listenerIndex] else { return }
        let listener = listeners[listenerIndex]
        while true {
            let result: IOResult<(Int32, SocketAddress)>
            do {
                result = try Socket.accept(fd)
            } catch {
                if isResourceExhaustion(error) {
                    pauseAccepting(listenerIndex, because: error)
                    return
                }
                continue // ECONNABORTED and friends concern one connection only.
            }
            guard case .done(let (clientFD, clientAddress)) = result else { break }
            listener.counters.add(.accepted, 1)
            record.chargeAccepted()
            let open = listener.counters.atomic(.active).loadThenWrappingIncrement(ordering: .relaxed)
            if open >= UInt64(listener.config.maxConnections) {
                listener.counters.release(.active)
                listener.counters.add(.rejected, 1)
                Socket.closeWithReset(clientFD)
                releaseActive()
                continue
            }
            counters.accepted.wrappingIncrement(ordering: .relaxed)
            Socket.setNoDelay(clientFD)
            let session = Session(
                id: nextSessionID, listener: listener, client: clientFD,
                clientAddress: clientAddress, now: monotonicMilliseconds()
            )
            nextSessionID += 1
            session.path = settings.dataPath
            sessions[session.id] = session
            connectNextBackend(session)
            if pausedListeners.contains(listenerIndex) { return }
        }
        if !settings.sharedAccept { try? armListener(listenerIndex) }
    }

    /// One accepted connection is gone: take it off this worker's load.
    func releaseActive() { record.releaseActive() }

    func isResourceExhaustion(_ error: SystemCallError) -> Bool {
        [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(error.errno)
    }

    /// Out of fds or memory: stop accepting on this listener for a moment
    /// instead of spinning on a socket that stays readable, or accepting
    /// connections only to drop them. Logged at most once a second.
    func pauseAccepting(_ listenerIndex: Int, because error: SystemCallError) {
        counters.acceptBackoffs.wrappingIncrement(ordering: .relaxed)
        guard pausedListeners.insert(listenerIndex).inserted else { return }
        if settings.sharedAccept, let fd = listenerFDs[listenerIndex] { epoll.remove(fd) }
        let now = monotonicMilliseconds()
        if now &- lastAcceptErrorLog > 1000 {
            lastAcceptErrorLog = now
            logger.error("out of resources, pausing this listener", metadata: [
                "listener": "\(listeners[listenerIndex].name)", "error": "\(error)",
                "pause_ms": "\(settings.acceptBackoffMilliseconds)",
            ])
        }
        _ = timers.schedule(at: now + settings.acceptBackoffMilliseconds, .rearmListener(listenerIndex))
    }

    /// Passive health: a failure may eject the backend for a while.
    func noteBackendFailure(_ pool: RuntimePool, _ index: Int) {
        let now = monotonicMilliseconds()
        if let until = pool.noteFailure(index, now: now) {
            logger.warning("backend ejected after consecutive failures", metadata: [
                "pool": "\(pool.name)", "backend": "\(pool.addresses[index])", "for_ms": "\(until - now)",
            ])
        }
    }

    // MARK: - Connecting

    func token(_ session: Session, _ side: Side) -> UInt64 {
        Self.sessionKind | (session.id << 1) | side.rawValue
    }

    /// Tries the next backend the pool's algorithm picks, up to 1 + retries
    /// attempts; closes the client when none is left.
    func connectNextBackend(_ session: Session) {
        let pool = session.listener.pool
        let maxAttempts = 1 + pool.config.retries
        while session.triedBackends.count < maxAttempts {
            let tried = session.triedBackends
            let now = monotonicMilliseconds()
            guard let index = balancers[pool.name]!.pick(
                clientKey: session.clientKey,
                active: { pool.active[$0].load(ordering: .relaxed) },
                eligible: { !tried.contains($0) && pool.isEligible($0, now: now) }
            ) else { break }
            session.triedBackends.append(index)
            session.backendIndex = index
            let address = pool.addresses[index]
            let fd: Int32
            do {
                fd = try Socket.tcp(family: address.family)
            } catch {
                close(session, reason: .resourceExhausted)
                noteLocalFailure(errno: error.errno, backend: address)
                if isResourceExhaustion(error) {
                    pauseAccepting(session.listener.index, because: error)
                } else {
                    logger.error("cannot create a backend socket", metadata: ["error": "\(error)"])
                }
                return
            }
            session.backend = fd
            do {
                switch try Socket.connect(fd, to: address) {
                case .connected:
                    backendConnected(session)
                    return
                case .inProgress:
                    try epoll.add(fd, [.writable, .oneShot], token: token(session, .backend))
                    session.backendAdded = true
                    session.backendArmed = [.writable]
                    session.connectTimer = timers.schedule(
                        at: deadline(after: session.listener.config.connectTimeout, from: monotonicMilliseconds()),
                        .connect(session: session.id, attempt: session.triedBackends.count)
                    )
                    return
                }
            } catch {
                if closeOnLocalFailure(session, errno: error.errno) { return }
                logger.warning("backend connect failed", metadata: ["backend": "\(address)", "error": "\(error)"])
                abandonBackendAttempt(session)
            }
        }
        let reason: CloseReason = session.triedBackends.isEmpty ? .noBackend : .connectFailed
        session.listener.counters.add(.noBackend, 1)
        logger.warning("no backend reachable; closing the client", metadata: [
            "listener": "\(session.listener.name)", "client": "\(session.clientAddress)",
            "tried": "\(session.triedBackends.map { pool.addresses[$0].description })",
        ])
        close(session, reason: reason)
    }

    /// Drops the current backend socket after a failed attempt.
    func abandonBackendAttempt(_ session: Session, blamingBackend: Bool = true) {
        if blamingBackend, let index = session.backendIndex {
            let pool = session.listener.pool
            pool.connectFailures[index].wrappingIncrement(ordering: .relaxed)
            noteBackendFailure(pool, index)
        }
        if let timer = session.connectTimer {
            _ = timers.cancel(timer)
            session.connectTimer = nil
        }
        if session.backend >= 0 {
            closeDescriptor(session.backend) // also leaves the epoll set
            session.backend = -1
        }
        session.backendArmed = nil
        session.backendAdded = false
        session.backendIndex = nil
    }

    func backendConnected(_ session: Session) {
        if let timer = session.connectTimer {
            _ = timers.cancel(timer)
            session.connectTimer = nil
        }
        session.phase = .proxying
        Socket.setNoDelay(session.backend)
        session.listener.pool.active[session.backendIndex!].wrappingIncrement(ordering: .relaxed)
        let now = monotonicMilliseconds()
        session.lastActivityMilliseconds = now
        session.idleTimer = timers.schedule(
            at: deadline(after: session.listener.config.idleTimeout, from: now), .idle(session: session.id)
        )
        if session.path == .sockmap {
            if enterSockmap(session) { return }
            // Not spliced in the kernel: carry on in userspace with read/write.
            // (splice(2) here lost a backend's first bytes in about 2% of
            // half-closed connections on this kernel: splice returned 0 with
            // bytes still queued, FIONREAD > 0; read(2) never did.)
            session.path = .copy
        }
        // Bytes the client sent while we connected are already waiting.
        pumpAndRearm(session, upstream: true, downstream: false)
    }
}
