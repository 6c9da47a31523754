import Atomics
import Glibc
import Logging
import SluiceCore
import SluicePosix

/// A client of a `mode: redis` listener: its session and what is queued for it.
final class RedisClient {
    let id: UInt64
    /// Replaced when a reload changes the listener (with the key placement).
    var listener: RuntimeListener
    let fd: Int32
    let address: SocketAddress
    let startedNanoseconds = monotonicNanoseconds()
    var session: RedisSession
    var output: [UInt8] = []
    var wantsRead = false
    /// An edge said there are bytes to read, and no read has said EAGAIN since.
    var readable = false
    var closing = false
    var bytesIn: UInt64 = 0
    var bytesOut: UInt64 = 0
    /// The session's per-family counts already added to the listener's.
    var countedFamilies = [UInt64](repeating: 0, count: RedisFamily.allCases.count)

    init(id: UInt64, listener: RuntimeListener, fd: Int32, address: SocketAddress, session: RedisSession) {
        self.id = id
        self.listener = listener
        self.fd = fd
        self.address = address
        self.session = session
    }
}

/// Which of a worker's links a command takes: the pool's backend, one of
/// its `connections_per_backend` lanes (by client, so that one client's
/// commands to a server stay on one connection, in order), and the protocol
/// the client asked for (RESP3 clients' commands go over links that said
/// HELLO 3, so their replies come in RESP3).
struct RedisLinkKey: Hashable {
    let pool: ObjectIdentifier
    let backend: Int
    let lane: Int
    let resp3: Bool
}

/// One of a worker's connections to a Redis backend, shared by its clients:
/// commands go out in order, and replies come back in that order, so the
/// FIFO of (client, tag) says whose each reply is.
final class RedisLink {
    let index: Int
    let pool: RuntimePool
    let backend: Int
    var fd: Int32 = -1
    var connecting = false
    var output: [UInt8] = []
    var input: [UInt8] = []
    var waiting: [(client: UInt64, tag: UInt64, sentAt: UInt64)] = []
    var waitingHead = 0
    var added = false
    var connectTimer: TimerID?
    /// Fires when the oldest command waiting has had no reply for `replyTimeout`.
    var replyTimer: TimerID?
    /// From the listener that made the link: its `connect_timeout` and `redis.reply_timeout`.
    let connectTimeout: UInt64
    let replyTimeout: UInt64

    /// Says HELLO 3 first on every connection.
    let resp3: Bool

    init(index: Int, pool: RuntimePool, backend: Int, resp3: Bool, connectTimeout: UInt64, replyTimeout: UInt64) {
        self.index = index
        self.pool = pool
        self.backend = backend
        self.resp3 = resp3
        self.connectTimeout = connectTimeout
        self.replyTimeout = replyTimeout
    }
}

// `mode: redis`: clients' commands through their sessions, out over a few
// shared connections per backend, replies back to whoever is owed them.
extension Worker {
    /// `resuming`: a client a binary upgrade handed over between commands.
    func acceptRedis(_ listener: RuntimeListener, client fd: Int32, address: SocketAddress, resuming: HandedRedis? = nil) {
        var limits = RedisSession.Limits()
        limits.password = listener.config.redis?.password.map { Array($0.utf8) }
        var session = RedisSession(limits: limits, shards: redisShards(listener))
        if let resuming { session.resume(authenticated: resuming.authenticated, protocolVersion: resuming.protocolVersion) }
        let client = RedisClient(id: nextSessionID, listener: listener, fd: fd, address: address, session: session)
        nextSessionID += 1
        redisClients[client.id] = client
        // Edge-triggered and registered once: a command costs no epoll_ctl.
        // Reads go on until EAGAIN (or until the session has enough in flight,
        // and then resume when replies make room, without waiting for an edge).
        do {
            try epoll.add(fd, [.readable, .writable, .readHangup, .edgeTriggered], token: Self.redisClientKind | client.id)
        } catch {
            closeRedis(client)
            return
        }
        client.readable = true
        drive(client) { $0.start(into: &$1) }
    }

    func drive(_ client: RedisClient, _ step: (inout RedisSession, inout [RedisSession.Action]) -> Void) {
        var actions: [RedisSession.Action] = []
        step(&client.session, &actions)
        for (k, count) in client.session.byFamily.enumerated() where count != client.countedFamilies[k] {
            client.listener.redisFamilies[k].wrappingIncrement(by: count &- client.countedFamilies[k], ordering: .relaxed)
            client.countedFamilies[k] = count
        }
        for action in actions where !client.closing || !isForward(action) {
            switch action {
            case .read: client.wantsRead = true
            case .reply(let bytes):
                client.output += bytes
                client.bytesOut += UInt64(bytes.count)
            case .forward(let backend, let tag, let command): forward(client, backend, tag, command)
            case .close: client.closing = true
            }
        }
        redisDirtyClients.append(client)
    }

    /// Writes what a batch of events queued, once per socket: the commands of
    /// a pipeline, or of many clients, go out in one write, not one each.
    func flushRedis() {
        while !redisDirtyLinks.isEmpty || !redisDirtyClients.isEmpty {
            let links = redisDirtyLinks, clients = redisDirtyClients
            redisDirtyLinks.removeAll(keepingCapacity: true)
            redisDirtyClients.removeAll(keepingCapacity: true)
            for link in links where link.fd >= 0 && !link.connecting { flush(link) }
            for client in clients where redisClients[client.id] === client {
                pump(client)
                if redisClients[client.id] === client { flush(client) }
            }
        }
    }

    private func isForward(_ action: RedisSession.Action) -> Bool { if case .forward = action { return true } else { return false } }

    func redisClientReady(_ id: UInt64, _ events: EpollEvents) {
        guard let client = redisClients[id] else { return }
        if !events.isDisjoint(with: [.readable, .readHangup, .error, .hangup]) { client.readable = true }
        redisDirtyClients.append(client) // written, and read, at the end of the batch
    }

    /// Reads while there is something to read and the session wants it.
    private func pump(_ client: RedisClient) {
        let buffer = takeBuffer()
        defer { var scratch = Carrier(buffer: buffer); releaseCarrier(&scratch) }
        while client.readable && client.wantsRead && !client.closing && redisClients[client.id] === client {
            switch try? Socket.read(client.fd, into: buffer) {
            case .bytes(let n)?:
                client.wantsRead = false
                // A short read emptied the socket: the next bytes bring a new
                // edge, so no read is spent on the EAGAIN.
                if n < buffer.count { client.readable = false }
                client.bytesIn += UInt64(n)
                let bytes = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
                drive(client) { $0.receive(bytes, into: &$1) }
            case .wouldBlock?:
                client.readable = false
            case .endOfFile?, nil:
                client.readable = false
                client.wantsRead = false
                drive(client) { $0.handle(.endOfFile, into: &$1) }
            }
        }
    }

    /// Writes what is queued (the rest when the next writable edge comes);
    /// closes a closing client once it is all out.
    private func flush(_ client: RedisClient) {
        while !client.output.isEmpty {
            let result = client.output.withUnsafeBytes { raw in Result { () throws(SystemCallError) in try Socket.write(client.fd, from: raw) } }
            switch result {
            case .success(.done(let n)): client.output.removeFirst(n)
            case .success(.wouldBlock): return
            case .failure: return closeRedis(client)
            }
        }
        if client.closing { closeRedis(client) }
    }

    func closeRedis(_ client: RedisClient) {
        guard redisClients.removeValue(forKey: client.id) != nil else { return }
        closeDescriptor(client.fd)
        client.listener.counters.release(.active)
        releaseActive()
        guard let accessLogger else { return }
        let record = AccessRecord(
            worker: id, listener: client.listener.name, client: client.address.description, backend: nil,
            bytesFromClient: client.bytesIn, bytesToClient: client.bytesOut,
            durationMicroseconds: (monotonicNanoseconds() &- client.startedNanoseconds) / 1000, dataPath: "redis",
            closeReason: "client_closed", redis: (client.session.commands, client.session.errors))
        if let line = record.render(settings.accessLog) { accessLogger.write(line: line) }
    }

    // MARK: - Backend links

    private func link(_ listener: RuntimeListener, _ backend: Int, tag: UInt64, resp3: Bool) -> RedisLink {
        let pool = listener.pool, config = listener.config.redis ?? RedisListenerConfig()
        let count = config.connectionsPerBackend
        let key = RedisLinkKey(pool: ObjectIdentifier(pool), backend: backend, lane: Int(tag % UInt64(count)), resp3: resp3)
        if let index = redisLinkIndex[key] { return redisLinks[index] }
        let link = RedisLink(index: redisLinks.count, pool: pool, backend: backend, resp3: resp3,
                             connectTimeout: listener.config.connectTimeout.milliseconds, replyTimeout: config.replyTimeout.milliseconds)
        redisLinks.append(link)
        redisLinkIndex[key] = link.index
        return link
    }

    private func forward(_ client: RedisClient, _ backend: Int, _ tag: UInt64, _ command: [UInt8]) {
        let link = link(client.listener, backend, tag: UInt64(client.id), resp3: client.session.protocolVersion == 3)
        link.output += command
        let now = monotonicMilliseconds()
        link.waiting.append((client.id, tag, now))
        if link.replyTimer == nil { link.replyTimer = timers.schedule(at: now.saturatingAdd(link.replyTimeout), .redisReply(link: link.index)) }
        link.pool.redisCommands[backend].wrappingIncrement(ordering: .relaxed)
        if link.fd < 0 { connect(link) } else if !link.connecting { redisDirtyLinks.append(link) }
    }

    private func connect(_ link: RedisLink) {
        if link.resp3 {
            // Its reply goes to nobody (client ids start at 1).
            link.output = Array("HELLO 3\r\n".utf8) + link.output
            link.waiting.insert((0, 0, monotonicMilliseconds()), at: link.waitingHead)
        }
        do {
            link.fd = try Socket.tcp(family: link.pool.addresses[link.backend].family)
            Socket.setNoDelay(link.fd)
            link.added = false
            switch try Socket.connect(link.fd, to: link.pool.addresses[link.backend]) {
            case .connected: link.connecting = false; flush(link)
            case .inProgress:
                link.connecting = true
                arm(link)
                let deadline = monotonicMilliseconds().saturatingAdd(link.connectTimeout)
                link.connectTimer = timers.schedule(at: deadline, .redisConnect(link: link.index))
            }
        } catch {
            fail(link, "connect: \(errnoDescription(error.errno))")
        }
    }

    func redisConnectTimedOut(_ index: Int) {
        let link = redisLinks[index]
        defer { flushRedis() }
        link.connectTimer = nil
        if link.connecting { fail(link, "connect timed out") }
    }

    func redisLinkReady(_ index: Int, _ events: EpollEvents) {
        let link = redisLinks[index]
        guard link.fd >= 0 else { return }
        if link.connecting {
            guard events.contains(.writable), events.isDisjoint(with: [.error, .hangup]) else {
                return fail(link, errnoDescription(Socket.pendingError(link.fd)))
            }
            link.connecting = false
            if let timer = link.connectTimer { _ = timers.cancel(timer); link.connectTimer = nil }
        }
        if events.contains(.readable) || !events.isDisjoint(with: [.error, .hangup]) { read(link) }
        if link.fd >= 0 { flush(link) }
    }

    private func read(_ link: RedisLink) {
        let buffer = takeBuffer()
        defer { var scratch = Carrier(buffer: buffer); releaseCarrier(&scratch) }
        while link.fd >= 0 {
            switch try? Socket.read(link.fd, into: buffer) {
            case .bytes(let n)?:
                link.input.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                deliver(link)
                if n < buffer.count { return }
            case .wouldBlock?: return
            case .endOfFile?, nil: return fail(link, "the backend closed the connection")
            }
        }
    }

    /// Hands every whole reply in the link's input to the client it belongs to.
    private func deliver(_ link: RedisLink) {
        var offset = 0
        while link.waitingHead < link.waiting.count {
            let scan = link.input.withUnsafeBytes { RESP.scan(UnsafeRawBufferPointer(rebasing: $0[offset...])) }
            guard case .complete(let length) = scan else {
                if case .invalid(let reason) = scan { link.input.removeFirst(offset); return fail(link, "bad reply: \(reason)") }
                break
            }
            let reply = Array(link.input[offset..<offset + length])
            offset += length
            let (owner, tag, _) = link.waiting[link.waitingHead]
            link.waitingHead += 1
            if let client = redisClients[owner] { drive(client) { $0.handle(.reply(tag: tag, reply), into: &$1) } }
        }
        link.input.removeFirst(offset)
        if link.waitingHead > 1024 || link.waitingHead == link.waiting.count {
            link.waiting.removeFirst(link.waitingHead)
            link.waitingHead = 0
        }
        if let timer = link.replyTimer { _ = timers.cancel(timer); link.replyTimer = nil }
        if link.waitingHead < link.waiting.count {
            let oldest = link.waiting[link.waitingHead].sentAt
            link.replyTimer = timers.schedule(at: oldest.saturatingAdd(link.replyTimeout), .redisReply(link: link.index))
        }
    }

    func redisReplyTimedOut(_ index: Int) {
        let link = redisLinks[index]
        link.replyTimer = nil
        guard link.waitingHead < link.waiting.count else { return }
        let oldest = link.waiting[link.waitingHead].sentAt
        if monotonicMilliseconds() &- oldest >= link.replyTimeout {
            fail(link, "no reply within \(link.replyTimeout) ms")
        } else {
            link.replyTimer = timers.schedule(at: oldest.saturatingAdd(link.replyTimeout), .redisReply(link: link.index))
        }
    }

    private func flush(_ link: RedisLink) {
        while !link.output.isEmpty && link.fd >= 0 {
            let result = link.output.withUnsafeBytes { raw in Result { () throws(SystemCallError) in try Socket.write(link.fd, from: raw) } }
            switch result {
            case .success(.done(let n)): link.output.removeFirst(n)
            case .success(.wouldBlock): return arm(link)
            case .failure(let error): return fail(link, errnoDescription(error.errno))
            }
        }
        arm(link)
    }

    /// Edge-triggered and registered once per connection, as client sockets
    /// are: a read or a write costs no epoll_ctl (reads go on to a short read,
    /// writes until EAGAIN, and the next edge says when to go on).
    private func arm(_ link: RedisLink) {
        guard link.fd >= 0, !link.added else { return }
        do {
            try epoll.add(link.fd, [.readable, .writable, .readHangup, .edgeTriggered], token: Self.redisLinkKind | UInt64(link.index))
            link.added = true
        } catch {
            fail(link, "epoll: \(error)")
        }
    }

    /// The link is gone: every command waiting on it gets an error reply now
    /// (no client hangs on a dead backend); the next command reconnects.
    func fail(_ link: RedisLink, _ reason: String) {
        if link.fd >= 0 { closeDescriptor(link.fd) }
        link.fd = -1
        link.connecting = false
        if let timer = link.connectTimer { _ = timers.cancel(timer); link.connectTimer = nil }
        if let timer = link.replyTimer { _ = timers.cancel(timer); link.replyTimer = nil }
        link.output.removeAll()
        link.input.removeAll()
        let owed = link.waiting[link.waitingHead...]
        link.waiting.removeAll()
        link.waitingHead = 0
        // A backend closing an idle connection (Redis's own `timeout`) owes
        // nothing and did nothing wrong: the next command reconnects.
        guard !owed.isEmpty else {
            logger.debug("redis backend closed an idle connection", metadata: ["backend": "\(link.pool.addresses[link.backend])"])
            return
        }
        if link.pool.noteFailure(link.backend, now: monotonicMilliseconds()) != nil {
            logger.warning("redis backend ejected after consecutive failures", metadata: ["backend": "\(link.pool.addresses[link.backend])"])
        }
        logger.warning("redis backend connection failed", metadata: [
            "backend": "\(link.pool.addresses[link.backend])", "reason": "\(reason)", "commands_failed": "\(owed.count)",
        ])
        for (owner, tag, _) in owed {
            if let client = redisClients[owner] { drive(client) { $0.handle(.failed(tag: tag, reason: reason), into: &$1) } }
        }
    }
}
