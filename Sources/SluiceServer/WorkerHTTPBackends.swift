import Atomics
import Glibc
import Logging
import SluiceCore
import SluicePosix

// Backend connections of `mode: http` listeners: taken from the worker's
// kept-alive idle ones or connected anew, handed back after a response that
// leaves them reusable; and the end of a client connection.
extension Worker {
    func acquire(_ c: HTTPConnection, poolIndex: Int, excluding: [Int]) {
        let pool = c.http.pools[poolIndex]
        c.backendPoolIndex = poolIndex
        let now = monotonicMilliseconds()
        guard let index = pick(pool,
            clientKey: c.clientKey,
            active: { pool.active[$0].load(ordering: .relaxed) },
            eligible: { !excluding.contains($0) && pool.isEligible($0, now: now) }
        ) else {
            drive(c, .noBackend)
            return
        }
        c.backendIndex = index
        count(c, on: pool, index)
        // One lookup for both steps: this runs for every request.
        let (expired, reusable) = { (idle: inout IdleConnections) in
            (idle.expire(now: now), idle.take(backend: index))
        }(&idleBackends[ObjectIdentifier(pool), default: IdleConnections(
            maxPerBackend: c.http.config.keepAlivePerBackend, idleTimeoutMilliseconds: c.http.config.keepAliveTimeout.milliseconds)])
        for fd in expired { closeDescriptor(fd) }
        if let fd = reusable {
            // Armed for reading while it was idle: armed for the response
            // already. Had its backend closed it, that event reaches this
            // connection as an end before any response, which retries.
            c.backend = fd
            c.backendAdded = true
            c.backendArmed = .readable
            backendOwners[fd] = c.id
            drive(c, .acquired(backend: index, reused: true, now: now))
            return
        }
        connect(c, pool, index, now: now)
    }

    private func connect(_ c: HTTPConnection, _ pool: RuntimePool, _ index: Int, now: UInt64) {
        let fd: Int32
        do { fd = try Socket.tcp(family: pool.addresses[index].family) } catch {
            uncount(c)
            drive(c, .acquireFailed(backend: index, errno: error.errno))
            return
        }
        Socket.setNoDelay(fd)
        // The request's head is written as the connect completes: it carries
        // the handshake's last ACK, which the kernel holds until then.
        Socket.setQuickAck(fd, false)
        c.backend = fd
        backendOwners[fd] = c.id
        c.forgetRegistration(.backend)
        do {
            switch try Socket.connect(fd, to: pool.addresses[index]) {
            case .connected:
                backendConnected(c)
            case .inProgress:
                c.connecting = true
                c.connectTimer = timers.schedule(at: now.saturatingAdd(c.listener.config.connectTimeout.milliseconds), .httpConnect(connection: c.id))
            }
        } catch {
            connectFailed(c, errno: error.errno)
        }
    }

    func backendConnected(_ c: HTTPConnection) {
        c.connecting = false
        if let timer = c.connectTimer { _ = timers.cancel(timer); c.connectTimer = nil }
        guard let index = c.backendIndex else { return }
        if let failure = sendProxyHeader(c.http.pools[c.backendPoolIndex].config.proxyProtocol, to: c.backend, client: c.client,
                                         address: c.clientAddress, received: c.receivedHeader) {
            connectFailed(c, errno: failure)
            return
        }
        drive(c, .acquired(backend: index, reused: false, now: monotonicMilliseconds()))
    }

    /// A connect that failed or timed out (errno nil).
    func connectFailed(_ c: HTTPConnection, errno code: Int32?) {
        if let timer = c.connectTimer { _ = timers.cancel(timer); c.connectTimer = nil }
        if c.backend >= 0 {
            backendOwners[c.backend] = nil
            closeDescriptor(c.backend) // also leaves the epoll set
        }
        c.backend = -1
        uncount(c)
        c.connecting = false
        c.forgetRegistration(.backend)
        if let code {
            logger.warning("backend connect failed", metadata: ["error": "\(errnoDescription(code))"])
        } else {
            logger.warning("connect timed out")
        }
        drive(c, .acquireFailed(backend: c.backendIndex ?? 0, errno: code))
    }

    private func count(_ c: HTTPConnection, on pool: RuntimePool, _ index: Int) {
        uncount(c)
        pool.active[index].wrappingIncrement(ordering: .relaxed)
        c.counted = (pool, index)
    }

    private func uncount(_ c: HTTPConnection) {
        guard let (pool, index) = c.counted else { return }
        pool.active[index].wrappingDecrement(ordering: .relaxed)
        c.counted = nil
    }

    /// Arms an idle backend connection for reading (level-triggered, as
    /// it is while it waits for a response), so that its backend closing it
    /// (or sending what nobody asked for) is seen at once.
    private func armIdle(_ fd: Int32, added: Bool, armed: EpollEvents?) -> Bool {
        if armed == .readable { return true }
        let token = Self.httpBackendKind | UInt64(UInt32(bitPattern: fd))
        do {
            if added { try epoll.modify(fd, .readable, token: token) } else {
                try epoll.add(fd, .readable, token: token)
            }
            return true
        } catch {
            return false
        }
    }

    /// An idle backend connection turned readable: its backend closed it
    /// or sent bytes nobody asked for. Either way it is done.
    func idleBackendStirred(_ fd: Int32) {
        for slot in idleBackends.slots where idleBackends[slot: slot].remove(fd) {
            closeDescriptor(fd)
            return
        }
    }

    /// Hands the request's backend connection back: to the idle ones when
    /// the session says it is reusable and nothing is left to write on it.
    func releaseBackend(_ c: HTTPConnection, reusable: Bool) {
        uncount(c)
        guard c.backend >= 0 else { return }
        let fd = c.backend
        backendOwners[fd] = nil
        let key = ObjectIdentifier(c.http.pools[c.backendPoolIndex])
        if let timer = c.connectTimer { _ = timers.cancel(timer); c.connectTimer = nil }
        // A connection that began with a PROXY header names this client: no other may reuse it.
        let clean = reusable && !c.connecting && c.backendOutput.isEmpty && c[move: .downstream].pending == 0
            && c.http.pools[c.backendPoolIndex].config.proxyProtocol == .off
        if clean, let index = c.backendIndex, let slot = idleBackends.slot(of: key), armIdle(fd, added: c.backendAdded, armed: c.backendArmed) {
            if let evicted = idleBackends[slot: slot].put(fd, backend: index, now: monotonicMilliseconds()) { closeDescriptor(evicted) }
        } else {
            closeDescriptor(fd) // also leaves the epoll set
        }
        c.backend = -1
        c.connecting = false
        c.forgetRegistration(.backend)
        c.backendWantsRead = false
        c.backendWriteBlocked = false
        c.backendMoveWaits = false
        c.clientMoveWaits = false
        c.backendOutput.removeAll(keepingCapacity: true) // the next request's head goes in it
        dropMove(&c[move: .upstream])
        dropMove(&c[move: .downstream])
        c.clientOutput.removeAll { if case .move = $0 { return true } else { return false } }
    }

    /// Hands a connection that became a tunnel to the TCP relay, with both
    /// sockets, its backend's count and its place in the listener's load:
    /// from here on it is relayed (and spliced, or paired in the sockmap) like
    /// any TCP connection, idle for at most `tunnel_idle_timeout`.
    func handOverTunnel(_ c: HTTPConnection) {
        guard let index = c.backendIndex, c.backend >= 0, let counted = c.counted else {
            close(c, reason: .internalError)
            return
        }
        for timer in [c.headTimer.id, c.responseTimer.id, c.connectTimer] { if let timer { _ = timers.cancel(timer) } }
        c.headTimer = MovingTimer()
        c.responseTimer = MovingTimer()
        c.connectTimer = nil
        // Out of this epoll under the HTTP tokens; the relay adds them under its own.
        if c.clientAdded { epoll.remove(c.client) }
        if c.backendAdded { epoll.remove(c.backend) }
        backendOwners[c.backend] = nil
        dropMove(&c[move: .upstream])
        dropMove(&c[move: .downstream])
        httpConnections.removeValue(forKey: c.id)
        c.isClosed = true
        c.counted = nil // the session counts it from here
        let now = monotonicMilliseconds()
        // A read of ours that filled its buffer may have left a packet half
        // read on that socket, which the SOCKHASH would take whole: no sockmap.
        let sockmapSafe = !c.clientReadFilled && !c.backendReadFilled
        let session = Session(
            listener: c.listener, pool: counted.pool, client: c.client, clientAddress: c.clientAddress,
            path: safePath(sockmapSafe), promotion: sockmapPairs == nil || !sockmapSafe ? nil : settings.promotion,
            flushTimeoutMilliseconds: settings.sockmapFlushTimeoutMilliseconds,
            idleTimeoutMilliseconds: c.http.config.tunnelIdleTimeout.milliseconds, now: now)
        session.backend = c.backend
        session.countedBackend = counted.backend
        session.tunnel = (c.http, c.machine.tunnelKind)
        c.http.openTunnels.wrappingIncrement(ordering: .relaxed)
        sessions.insert(session)
        drive(session, .tunnelled(backend: index, now: now))
    }

    /// Ends a client connection: what is queued for the client is written
    /// first (an answer the session just gave), within a short grace period.
    func close(_ c: HTTPConnection, reason: CloseReason) {
        guard !c.isClosed else { return }
        c.isClosed = true
        for timer in [c.headTimer.id, c.responseTimer.id] { if let timer { _ = timers.cancel(timer) } }
        c.headTimer = MovingTimer()
        c.responseTimer = MovingTimer()
        releaseBackend(c, reusable: false)
        if !c.clientOutput.isEmpty && reason != .clientReset && finishWriting(c) == false {
            c.lingerTimer = timers.schedule(at: monotonicMilliseconds() + 5000, .httpLinger(connection: c.id))
            rearmLinger(c)
            return
        }
        finishClose(c)
    }

    /// Writes what is left for the client; true when all of it went. When
    /// the close will find nothing unread (`clientDone`), the last bytes
    /// wait for its FIN and leave in one segment with it.
    func finishWriting(_ c: HTTPConnection) -> Bool {
        while case .bytes? = c.clientOutput.first {
            switch writeQueuedBytes(c, .client, last: c.clientDone && c.clientOutput.count == 1) {
            case .success(.wouldBlock): return false
            case .success(.done): continue
            case .failure: c.clientOutput.removeAll() // the client is gone: nothing more to write
            }
        }
        c.clientOutput.removeAll()
        return true
    }

    private func rearmLinger(_ c: HTTPConnection) {
        let token = Self.httpKind | (c.id << 1)
        if c.clientAdded { try? epoll.modify(c.client, [.writable, .oneShot], token: token) } else {
            try? epoll.add(c.client, [.writable, .oneShot], token: token)
            c.clientAdded = true
        }
    }

    /// A closing connection's client turned writable (or its grace period ended: `force`).
    func lingerWritable(_ c: HTTPConnection, force: Bool) {
        if !force && !finishWriting(c) { rearmLinger(c); return }
        if let timer = c.lingerTimer { _ = timers.cancel(timer); c.lingerTimer = nil }
        finishClose(c)
    }

    private func finishClose(_ c: HTTPConnection) {
        httpConnections.removeValue(forKey: c.id)
        // Bytes the client sent that nobody will read would turn the close
        // into a reset, which can destroy the answer before the client reads
        // it: read away what has arrived (nothing can after its FIN, nor
        // after its last request, read to the end, said close). The close
        // then sends the FIN; a shutdown(2) before it would add nothing.
        if !c.clientDone {
            var scratch = Carrier(buffer: takeBuffer())
            for _ in 0..<4 {
                guard case .bytes? = try? Socket.read(c.client, into: scratch.buffer!) else { break }
            }
            releaseCarrier(&scratch)
        }
        closeDescriptor(c.client)
        dropMove(&c[move: .upstream])
        dropMove(&c[move: .downstream])
        c.listener.counters.release(.active)
        releaseActive()
    }

    func logExchange(_ c: HTTPConnection, _ record: HTTPExchangeRecord) {
        c.http.count(pool: record.route, status: record.status, worker: id)
        guard let accessLogger else { return }
        let pool = record.route.map { c.http.pools[$0] }
        let backend: String? = record.backend.flatMap { index in
            guard let pool, index < pool.addresses.count else { return nil }
            return pool.addresses[index].description
        }
        let line = HTTPAccessRecord(worker: id, listener: c.listener.name, client: c.clientAddress.description,
                                    exchange: record, pool: pool?.name, backend: backend).render(settings.accessLog)
        if let line { accessLogger.write(line: line) }
    }

    /// Idle kept-alive backend connections, closed when the worker stops.
    func closeIdleBackends() {
        for slot in idleBackends.slots {
            for fd in idleBackends[slot: slot].expire(now: UInt64.max) { closeDescriptor(fd) }
        }
    }
}

/// One line per HTTP request.
struct HTTPAccessRecord {
    var worker: Int
    var listener: String
    var client: String
    var exchange: HTTPExchangeRecord
    var pool: String?
    var backend: String?

    func render(_ format: AccessLogFormat) -> String? {
        let e = exchange
        let upstream = e.upstreamMilliseconds.map { "\($0)" } ?? "-"
        switch format {
        case .off:
            return nil
        case .text:
            return "\(wallClockTimestamp()) access worker=\(worker) listener=\(listener) client=\(client) method=\(e.method) "
                + "host=\(e.host) path=\(e.path) status=\(e.status) pool=\(pool ?? "-") backend=\(backend ?? "-") "
                + "bytes_in=\(e.bytesFromClient) bytes_out=\(e.bytesToClient) upstream_ms=\(upstream) duration_ms=\(e.totalMilliseconds)"
        case .json:
            return "{\"time\":\"\(wallClockTimestamp())\",\"worker\":\(worker),\"listener\":\(jsonString(listener)),"
                + "\"client\":\(jsonString(client)),\"method\":\(jsonString(e.method)),\"host\":\(jsonString(e.host)),"
                + "\"path\":\(jsonString(e.path)),\"status\":\(e.status),\"pool\":\(pool.map(jsonString) ?? "null"),"
                + "\"backend\":\(backend.map(jsonString) ?? "null"),\"bytes_in\":\(e.bytesFromClient),"
                + "\"bytes_out\":\(e.bytesToClient),\"upstream_ms\":\(e.upstreamMilliseconds.map { "\($0)" } ?? "null"),"
                + "\"duration_ms\":\(e.totalMilliseconds)}"
        }
    }
}
