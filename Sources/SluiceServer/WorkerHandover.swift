import Atomics
import Synchronization
import Logging
import SluiceBPF
import SluiceCore
import SluicePosix

/// One connection on its way to another process at a binary upgrade: its
/// state as plain values, and its descriptors (client first, then backend).
struct HandedConnection: Codable, Sendable {
    var listener: String
    var client: String
    var startedNanoseconds: UInt64
    /// A relayed TCP connection (or a tunnel): its pool, backend and session.
    var pool: String?
    var backend: String?
    var tcp: TCPSessionHandover?
    /// A tunnel an HTTP listener handed over: `websocket` or `connect`.
    var tunnel: String?
    var sockmap: HandedPair?
    /// A Redis client between commands: what its session remembers.
    var redis: HandedRedis?
    /// Descriptors it carries (1: an HTTP connection between requests; 2: a relayed one).
    var descriptors: Int
}

/// A pair in the SOCKHASH: the kernel keeps moving its bytes; these are
/// what the worker measures that progress against.
struct HandedPair: Codable, Sendable {
    var clientCookie: UInt64, backendCookie: UInt64
    var clientSentBase: UInt64, backendSentBase: UInt64
    var userspaceToClient: UInt64, userspaceToBackend: UInt64
    var lastRedirected: UInt64
}

struct HandedRedis: Codable, Sendable {
    var authenticated: Bool
    var protocolVersion: Int
}

/// A batch a worker hands to the control thread, which owns its descriptors from then on.
struct ExportedConnections: @unchecked Sendable {
    var connections: [HandedConnection] = []
    var fds: [Int32] = []
}

/// The same, received by the new process: descriptors in the order of `connections`.
struct AdoptedConnections: @unchecked Sendable {
    var connections: [HandedConnection]
    var fds: [Int32]
    /// The listener counters are this process's own (no shared pinned map):
    /// a connection taken in counts in them.
    var countsListeners = false
}

/// Where the old process's workers leave what they hand over, for the
/// thread that sends it. Closed at the end of the hand-over: a worker that
/// comes to it later (it was stalled) exports nothing and keeps serving.
final class HandoverMailbox: @unchecked Sendable {
    struct Delivery {
        var worker: Int
        var batch: ExportedConnections
        /// Connections the worker still holds that may come to rest.
        var remaining: Int
    }

    private let state = Mutex<(open: Bool, deliveries: [Delivery])>((true, []))
    /// The new process's pools: name → backend addresses (nil: no limit).
    private let allowed: [String: Set<String>]?

    /// Whether both processes count in the pinned listener_load; if not,
    /// a connection leaving takes its count with it.
    let sharedCounters: Bool

    init(allowed: [String: Set<String>]? = nil, sharedCounters: Bool = true) {
        self.allowed = allowed
        self.sharedCounters = sharedCounters
    }

    /// Whether the new process has this backend in this pool; a connection
    /// to one it lacks finishes here rather than being closed there.
    func allows(pool: String, backend: String) -> Bool { allowed.map { $0[pool]?.contains(backend) == true } ?? true }

    func deliver(worker: Int, _ export: () -> (ExportedConnections, Int)) {
        state.withLock { state in
            guard state.open else { return }
            let (batch, remaining) = export()
            state.deliveries.append(Delivery(worker: worker, batch: batch, remaining: remaining))
        }
    }

    func take() -> [Delivery] { state.withLock { state in defer { state.deliveries.removeAll() }; return state.deliveries } }

    /// What was delivered and not taken yet comes back with the close.
    func close() -> [Delivery] {
        state.withLock { state in
            state.open = false
            defer { state.deliveries.removeAll() }
            return state.deliveries
        }
    }
}

extension Worker {
    // MARK: - The old process: handing connections out

    /// Binary upgrade: out of epoll (or back in); the sockets stay open, for
    /// the new process serves them and a failed upgrade takes them back.
    func pauseAccepting(_ paused: Bool) {
        guard paused != acceptPaused, !draining else { return }
        if paused {
            for fd in listenerFDs.compactMap({ $0 }) { epoll.remove(fd) }
            acceptPaused = true
        } else {
            acceptPaused = false
            for index in listenerFDs.indices where listenerFDs[index] != nil && !pausedListeners.contains(index) {
                try? armListener(index)
            }
        }
    }

    /// Takes out of this worker every connection that can change process
    /// now: relayed sessions at rest (no EOF, nothing held in userspace),
    /// tunnels likewise, HTTP connections between requests. The rest stay
    /// and are asked again; what never comes to rest finishes here.
    func exportConnections(limit: Int, to mailbox: HandoverMailbox) -> (ExportedConnections, Int) {
        let batch = exportAtRest(limit: limit, mailbox: mailbox)
        return (batch, sessions.count + httpConnections.count + redisClients.count)
    }

    private func exportAtRest(limit: Int, mailbox: HandoverMailbox) -> ExportedConnections {
        var batch = ExportedConnections()
        for session in sessions.values where batch.connections.count < limit {
            guard let state = exportable(session), let backend = session.machine.backend,
                  mailbox.allows(pool: session.pool.name, backend: session.pool.addresses[backend].description) else { continue }
            epoll.remove(session.client)
            epoll.remove(session.backend)
            if let timer = session.idleTimer { _ = timers.cancel(timer) }
            session.idleTimer = nil
            sessions.removeValue(forKey: session.id)
            uncountBackend(session)
            if let tunnel = session.tunnel { tunnel.http.openTunnels.wrappingDecrement(ordering: .relaxed) }
            releaseActive()
            if !mailbox.sharedCounters { session.listener.counters.release(.active) }
            let pair = session.sockmapPair.map {
                HandedPair(clientCookie: $0.clientCookie, backendCookie: $0.backendCookie, clientSentBase: $0.clientSentBase,
                           backendSentBase: $0.backendSentBase, userspaceToClient: $0.userspaceToClient,
                           userspaceToBackend: $0.userspaceToBackend, lastRedirected: $0.lastRedirected)
            }
            batch.connections.append(HandedConnection(
                listener: session.listener.name, client: session.clientAddress.description,
                startedNanoseconds: session.startedNanoseconds, pool: session.pool.name,
                backend: session.pool.addresses[backend].description, tcp: state, tunnel: session.tunnel?.kind,
                sockmap: pair, descriptors: 2))
            batch.fds += [session.client, session.backend]
        }
        for c in httpConnections.values where batch.connections.count < limit {
            guard !c.isClosed, c.machine.isWaiting, c.backend < 0, c.clientOutput.isEmpty, c.receivedHeader == nil,
                  c.lingerTimer == nil else { continue }
            for timer in [c.headTimer.id, c.responseTimer.id] { if let timer { _ = timers.cancel(timer) } }
            epoll.remove(c.client)
            httpConnections.removeValue(forKey: c.id)
            releaseActive()
            if !mailbox.sharedCounters { c.listener.counters.release(.active) }
            batch.connections.append(HandedConnection(
                listener: c.listener.name, client: c.clientAddress.description, startedNanoseconds: monotonicNanoseconds(),
                descriptors: 1))
            batch.fds.append(c.client)
        }
        for client in Array(redisClients.values) where batch.connections.count < limit {
            guard !client.closing, client.output.isEmpty, let state = client.session.handover else { continue }
            epoll.remove(client.fd)
            redisClients.removeValue(forKey: client.id)
            releaseActive()
            if !mailbox.sharedCounters { client.listener.counters.release(.active) }
            batch.connections.append(HandedConnection(
                listener: client.listener.name, client: client.address.description, startedNanoseconds: client.startedNanoseconds,
                redis: HandedRedis(authenticated: state.authenticated, protocolVersion: state.protocolVersion), descriptors: 1))
            batch.fds.append(client.fd)
        }
        return batch
    }

    /// A session's state when it is at rest (nothing in userspace carriers).
    private func exportable(_ session: Session) -> TCPSessionHandover? {
        guard !session.isClosed, session.receivedHeader == nil, session.upstream.pending == 0, session.downstream.pending == 0,
              session.backend >= 0 else { return nil }
        return session.machine.handover
    }

    // MARK: - The new process: taking them in

    func adoptHanded(_ adopted: AdoptedConnections) {
        var next = 0
        let now = monotonicMilliseconds()
        let pools = currentPools
        for handed in adopted.connections {
            let fds = Array(adopted.fds[next..<min(adopted.fds.count, next + handed.descriptors)])
            next += handed.descriptors
            guard fds.count == handed.descriptors, let listener = listeners.first(where: { $0?.name == handed.listener }) ?? nil,
                  let address = socketAddress(handed.client) else {
                logger.warning("a handed-over connection names what this process does not have; closed",
                               metadata: ["listener": "\(handed.listener)", "client": "\(handed.client)"])
                for fd in fds { closeDescriptor(fd) }
                continue
            }
            record.add(.active, 1)
            if adopted.countsListeners { listener.counters.add(.active, 1) }
            var taken = true
            if let state = handed.tcp {
                taken = adoptSession(handed, state, listener, address, fds, pools: pools, now: now)
            } else if let redis = handed.redis, listener.config.mode == .redis {
                acceptRedis(listener, client: fds[0], address: address, resuming: redis)
            } else if let http = listener.http {
                let connection = HTTPConnection(listener: listener, http: http, client: fds[0],
                                                clientAddress: address, namesRequests: accessLogger != nil)
                httpConnections.insert(connection)
                drive(connection, .accepted(now: now))
            } else {
                taken = false
            }
            if !taken {
                // Closed unserved: its counts (here, or the old process's in the shared table) go with it.
                releaseActive()
                listener.counters.release(.active)
                for fd in fds { closeDescriptor(fd) }
            }
        }
    }

    /// False when this process cannot carry the session on (its backend is
    /// not in the pool here); the caller closes it.
    private func adoptSession(_ handed: HandedConnection, _ state: TCPSessionHandover, _ listener: RuntimeListener,
                              _ address: SocketAddress, _ fds: [Int32], pools: [String: RuntimePool], now: UInt64) -> Bool {
        let pool = (handed.pool.flatMap { name in pools[name] }) ?? listener.pool
        let http = handed.tunnel != nil ? listener.http : nil
        let idle = http?.config.tunnelIdleTimeout.milliseconds
        guard let backend = pool.addresses.firstIndex(where: { $0.description == handed.backend }),
              let machine = TCPSession(resuming: state, backend: backend, limits: Session.limits(
                listener: listener, pool: pool, promotion: settings.promotion,
                flushTimeoutMilliseconds: settings.sockmapFlushTimeoutMilliseconds, idleTimeoutMilliseconds: idle))
        else {
            logger.warning("a handed-over connection's backend is not in its pool here; closed", metadata: ["backend": "\(handed.backend ?? "-")"])
            return false
        }
        let session = Session(listener: listener, pool: pool, client: fds[0], clientAddress: address,
                              path: machine.path, promotion: settings.promotion,
                              flushTimeoutMilliseconds: settings.sockmapFlushTimeoutMilliseconds, idleTimeoutMilliseconds: idle,
                              now: now, startedNanoseconds: handed.startedNanoseconds)
        session.machine = machine
        session.backend = fds[1]
        countBackend(session, backend)
        if let kind = handed.tunnel, let http {
            session.tunnel = (http, kind)
            http.openTunnels.wrappingIncrement(ordering: .relaxed)
        }
        if let pair = handed.sockmap {
            let kept = SockmapPair(clientCookie: pair.clientCookie, backendCookie: pair.backendCookie,
                                   clientSentBase: pair.clientSentBase, backendSentBase: pair.backendSentBase)
            kept.userspaceToClient = pair.userspaceToClient
            kept.userspaceToBackend = pair.userspaceToBackend
            kept.lastRedirected = pair.lastRedirected
            session.sockmapPair = kept
            sockmapPairs?.moveOwner(cookie: pair.clientCookie, worker: id)
            sockmapPairs?.moveOwner(cookie: pair.backendCookie, worker: id)
        }
        sessions.insert(session)
        drive(session, .adopted)
        return true
    }
}

/// "1.2.3.4:5" or "[::1]:5" as a socket address.
func socketAddress(_ text: String) -> SocketAddress? {
    guard case .success(let spec) = SocketAddressSpec.parse(text) else { return nil }
    return SocketAddress(ip: spec.host, port: spec.port)
}
