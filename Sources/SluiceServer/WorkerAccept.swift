import Atomics
import CSluice
import Logging
import SluiceBPF
import SluiceCore
import SluicePosix
import Synchronization

// Accepting clients and connecting them to a backend.
extension Worker {
    // MARK: - Accepting

    /// Accepts up to `limit` clients. A wake-up takes one by default: the
    /// listener is level-triggered, so another turn of the loop takes the
    /// next, and no accept4 is spent on learning that the backlog is empty
    /// (an accept4 that fails allocates and frees a socket all the same).
    func acceptConnections(listenerIndex: Int, limit: Int = 1) {
        guard let fd = listenerFDs[listenerIndex] else { return }
        guard let listener = listeners[listenerIndex] else { return }
        var taken = 0
        while taken < limit {
            taken += 1
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
            counters.accepted.wrappingIncrement(ordering: .relaxed) // TCP_NODELAY comes from the listener
            if listener.config.proxyProtocol.accept != .off {
                awaitHeader(listener, client: clientFD, peer: clientAddress)
            } else {
                start(listener, client: clientFD, address: clientAddress, header: nil)
            }
            if pausedListeners.contains(listenerIndex) { return }
        }
    }

    /// An accepted client (its PROXY header read, where one comes first)
    /// becomes an HTTP connection or a TCP session; `address` is the client's
    /// as the header names it, else the socket's peer.
    /// `sockmapSafe`: no partly read packet waits on the client socket (see
    /// `safePath`); without it the session is not promoted either.
    func start(_ listener: RuntimeListener, client: Int32, address: SocketAddress, header: ProxyHeader?, sockmapSafe: Bool = true) {
        if let http = listener.http {
            acceptHTTP(listener, http, client: client, address: address, header: header)
            return
        }
        if listener.config.mode == .redis {
            acceptRedis(listener, client: client, address: address)
            return
        }
        let session = Session(
            listener: listener, client: client, clientAddress: address,
            path: safePath(sockmapSafe), promotion: sockmapPairs == nil || !sockmapSafe ? nil : settings.promotion,
            flushTimeoutMilliseconds: settings.sockmapFlushTimeoutMilliseconds, now: monotonicMilliseconds()
        )
        session.receivedHeader = header
        sessions.insert(session)
        drive(session, .accepted)
    }

    /// The data path for a connection userspace has already read from:
    /// splice(2) instead of the sockmap when a packet may sit half read on
    /// one of its sockets, since the kernel would hand the whole packet, the
    /// bytes already read included, to the verdict program once the socket
    /// joins the SOCKHASH. (A promotion under `auto` happens only when reads
    /// have drained both sockets, so it stays safe.)
    func safePath(_ sockmapSafe: Bool) -> DataPathKind {
        settings.dataPath == .sockmap && !sockmapSafe ? .splice : settings.dataPath
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
        if let fd = listenerFDs[listenerIndex] { epoll.remove(fd) }
        let now = monotonicMilliseconds()
        if now &- lastAcceptErrorLog > 1000 {
            lastAcceptErrorLog = now
            logger.error("out of resources, pausing this listener", metadata: [
                "listener": "\(listeners[listenerIndex]?.name ?? "-")", "error": "\(error)",
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

    /// Connects to the backend the pool's algorithm picks among the eligible
    /// ones not tried yet, and tells the session how that went.
    func connectNextBackend(_ session: Session, excluding tried: [Int]) {
        let pool = session.pool
        let now = monotonicMilliseconds()
        guard let index = pick(pool,
            clientKey: session.clientKey,
            active: { pool.active[$0].load(ordering: .relaxed) },
            eligible: { !tried.contains($0) && pool.isEligible($0, now: now) }
        ) else {
            drive(session, .noEligibleBackend)
            return
        }
        countBackend(session, index)
        let address = pool.addresses[index]
        let fd: Int32
        do {
            fd = try Socket.tcp(family: address.family)
        } catch {
            if isResourceExhaustion(error) {
                pauseAccepting(session.listener.index, because: error)
            } else {
                logger.error("cannot create a backend socket", metadata: ["error": "\(error)"])
            }
            drive(session, .socketFailed(backend: index, errno: error.errno))
            return
        }
        session.backend = fd
        // A client that speaks first has usually sent by the time the connect
        // completes: its bytes then carry the handshake's last ACK.
        Socket.setQuickAck(fd, false)
        drive(session, .connecting(backend: index, now: now))
        do {
            switch try Socket.connect(fd, to: address) {
            case .connected:
                backendConnected(session)
            case .inProgress:
                try arm(session, .backend, .writable)
            }
        } catch {
            drive(session, .connectFailed(errno: error.errno))
        }
    }

    /// A failed attempt: counted against the backend (a timeout or a refusal)
    /// or against this host (a local shortage, never the backend's fault).
    func noteConnectFailure(_ session: Session, backend index: Int, errno code: Int32?, blame: FailureBlame) {
        let pool = session.pool
        guard blame == .backend else {
            if let code { noteLocalFailure(errno: code, backend: pool.addresses[index]) }
            return
        }
        if let code {
            logger.warning("backend connect failed", metadata: [
                "backend": "\(pool.addresses[index])", "error": "\(errnoDescription(code))",
            ])
        } else {
            logger.warning("connect timed out", metadata: ["backend": "\(pool.addresses[index])"])
        }
        pool.connectFailures[index].wrappingIncrement(ordering: .relaxed)
        noteBackendFailure(pool, index)
    }

    /// Drops the current backend socket after a failed attempt.
    func abandonBackendAttempt(_ session: Session) {
        uncountBackend(session)
        if session.backend >= 0 {
            closeDescriptor(session.backend) // also leaves the epoll set
            session.backend = -1
        }
        session.forgetRegistration(.backend)
        session.forgetBackendFin() // a refused connect reports EPOLLRDHUP
    }

    func backendConnected(_ session: Session) {
        Socket.setNoDelay(session.backend)
        // The pool's PROXY header goes first, before any client byte on any data path.
        if let failure = sendProxyHeader(session.pool.config.proxyProtocol, to: session.backend, client: session.client,
                                         address: session.clientAddress, received: session.receivedHeader) {
            drive(session, .connectFailed(errno: failure))
            return
        }
        drive(session, .connected(now: monotonicMilliseconds()))
        // Nothing sent and nothing waiting to be (the backend may speak
        // first): the ACK goes alone, now.
        if !session.isClosed && session.pool.config.proxyProtocol == .off && session.machine.userspaceBytes.upstream == 0
            && Socket.unreadBytes(session.client) == 0 {
            Socket.setQuickAck(session.backend, true)
        }
    }

    /// Counts the session on a backend of its pool, from the pick until the
    /// attempt is abandoned or the session closes.
    func countBackend(_ session: Session, _ index: Int) {
        uncountBackend(session)
        session.pool.active[index].wrappingIncrement(ordering: .relaxed)
        session.countedBackend = index
    }

    func uncountBackend(_ session: Session) {
        guard let index = session.countedBackend else { return }
        session.pool.active[index].wrappingDecrement(ordering: .relaxed)
        session.countedBackend = nil
    }
}
