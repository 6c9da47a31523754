import CSluice
import Logging
import SluiceCore
import SluicePosix

/// The admin unix socket (JSON lines) and the Prometheus endpoint, both
/// served from the control thread's epoll. No client behaviour may take the
/// daemon down or make the control thread spin: a connection is closed in
/// one place only (`handle`, the idle sweep, eviction), after which nothing
/// touches its descriptor; epoll carries tokens that are never reused, so an
/// event already fetched for a closed connection finds nothing and is dropped.
final class AdminEndpoints {
    enum Endpoint: CaseIterable { case admin, metrics }

    /// Per-endpoint limits: metrics clients (reachable over the network) can
    /// never take the slots the admin socket needs.
    struct Limits {
        var maxConnections: Int
        var idleTimeoutMilliseconds: UInt64
    }

    private final class Connection {
        let token: UInt64
        let fd: Int32
        let endpoint: Endpoint
        var input: [UInt8] = []
        var output: [UInt8] = []
        var outputSent = 0
        /// Read returned EOF: answer what is buffered, then close.
        var peerFinishedSending = false
        /// Close once the output is written (metrics answers, oversized requests).
        var closeWhenFlushed = false
        /// The input may hold a whole request not answered yet.
        var inputPending = false
        var lastProgressMilliseconds: UInt64
        var interest: EpollEvents = .readable

        init(token: UInt64, fd: Int32, endpoint: Endpoint, now: UInt64) {
            self.token = token
            self.fd = fd
            self.endpoint = endpoint
            self.lastProgressMilliseconds = now
        }

        var hasUnsentOutput: Bool { outputSent < output.count }
        /// Requests are read only while every answer so far has been taken:
        /// a client that does not read cannot make us queue without bound.
        var wantsInput: Bool { !hasUnsentOutput && !inputPending && !peerFinishedSending && !closeWhenFlushed }
        var canAnswer: Bool { !hasUnsentOutput && inputPending && !closeWhenFlushed }
        var isFinished: Bool {
            !hasUnsentOutput && (closeWhenFlushed || (peerFinishedSending && !inputPending && input.isEmpty))
        }
    }

    private enum Disposition { case keep, close }

    /// One read per readiness event: level-triggered epoll comes back for the rest.
    static let readChunkBytes = 16 * 1024
    /// Answers are generated while less than this is queued for a client.
    static let maxQueuedOutputBytes = 64 * 1024
    /// Requests answered per readiness event: one client's backlog (status
    /// answers cost a few BPF map reads each) cannot hold the control thread;
    /// the rest waits for the next loop turn.
    static let maxAnswersPerEvent = 32
    /// Accepts per readiness event, so a flood of connects cannot hold the loop.
    static let acceptBatch = 32
    /// Out of descriptors or memory: the listener rests this long (as the workers' do).
    static let acceptBackoffMilliseconds: UInt64 = 100
    /// How often idle clients are looked for while any is connected.
    static let sweepIntervalMilliseconds: UInt64 = 250

    let socketPath: String
    private let listenerFDs: [Endpoint: Int32]
    private let limits: [Endpoint: Limits]
    private var connections: [UInt64: Connection] = [:]
    private var pausedUntil: [Endpoint: UInt64] = [:]
    private var nextToken: UInt64
    private let tokenBase: UInt64
    private let answers: AdminAnswers
    private let epoll: Epoll
    private let logger: Logger
    private var lastShedLogMilliseconds: UInt64 = 0
    private var nextSweepMilliseconds: UInt64 = 0

    /// Tokens at and above `tokenBase` belong to these endpoints.
    init(socketPath: String, metrics: SocketAddress?, limits: [Endpoint: Limits], epoll: Epoll, tokenBase: UInt64,
         handler: AdminHandler, logger: Logger) throws(ServerError) {
        self.socketPath = socketPath
        self.limits = limits
        self.epoll = epoll
        self.tokenBase = tokenBase
        self.nextToken = tokenBase + 2
        self.answers = AdminAnswers(handler: handler, logger: logger)
        self.logger = logger
        let adminFD = try Self.listenUnix(socketPath)
        var fds: [Endpoint: Int32] = [.admin: adminFD]
        if let metrics {
            do {
                // SO_REUSEPORT: a binary upgrade's new process binds it while this one still serves.
                fds[.metrics] = try Socket.listen(on: metrics, reusePort: true, backlog: 64)
            } catch {
                closeDescriptor(adminFD)
                FileSystem.removeFile(socketPath)
                throw ServerError("metrics endpoint \(metrics): \(error)")
            }
        }
        listenerFDs = fds
        do {
            for (endpoint, fd) in fds { try epoll.add(fd, .readable, token: listenerToken(endpoint)) }
        } catch {
            close()
            throw ServerError("admin endpoints: \(error)")
        }
    }

    private static func listenUnix(_ socketPath: String) throws(ServerError) -> Int32 {
        // We hold the instance lock: a socket file here was left by a run that died.
        let directory = String(socketPath[..<(socketPath.lastIndex(of: "/") ?? socketPath.startIndex)])
        try? FileSystem.makeDirectories(directory)
        do { return try UnixSocket.listen(path: socketPath, mode: 0o600) } catch {
            throw ServerError("admin socket \(socketPath): \(errnoDescription(error.errno))")
        }
    }

    /// Set when a new process took over the socket's name (binary upgrade).
    var leavesPath = false

    func close() {
        for connection in connections.values { closeDescriptor(connection.fd) }
        connections.removeAll()
        for fd in listenerFDs.values { closeDescriptor(fd) }
        if !leavesPath { FileSystem.removeFile(socketPath) }
    }

    func owns(_ token: UInt64) -> Bool { token >= tokenBase }

    private func listenerToken(_ endpoint: Endpoint) -> UInt64 { endpoint == .admin ? tokenBase : tokenBase + 1 }

    // MARK: - Events

    func handle(token: UInt64, events: EpollEvents) {
        let now = monotonicMilliseconds()
        for endpoint in Endpoint.allCases where token == listenerToken(endpoint) {
            acceptClients(endpoint, now: now)
            return
        }
        // Closed earlier (possibly in this same batch of events): nothing to do.
        guard let connection = connections[token] else { return }
        if service(connection, events, now: now) == .close {
            close(connection)
        } else {
            updateInterest(connection)
        }
    }

    /// Everything one readiness event means for one connection. Never
    /// closes: it says whether to, and `handle` does.
    private func service(_ connection: Connection, _ events: EpollEvents, now: UInt64) -> Disposition {
        // A reset: nothing more can be delivered either way.
        if events.contains(.error) { return .close }
        if events.contains(.writable), flush(connection, now: now) == .close { return .close }
        if !events.isDisjoint(with: [.readable, .hangup]), connection.wantsInput {
            if read(connection, now: now) == .close { return .close }
        }
        if connection.canAnswer {
            answerBuffered(connection)
            if flush(connection, now: now) == .close { return .close }
        }
        // Hang-up: the peer is gone both ways, so queued answers cannot reach it.
        if connection.isFinished || events.contains(.hangup) { return .close }
        return .keep
    }

    private func read(_ connection: Connection, now: UInt64) -> Disposition {
        var chunk = [UInt8](repeating: 0, count: Self.readChunkBytes)
        let outcome = chunk.withUnsafeMutableBytes { try? Socket.read(connection.fd, into: $0) }
        switch outcome {
        case .bytes(let n)?:
            connection.input.append(contentsOf: chunk[0..<n])
            connection.inputPending = true
            connection.lastProgressMilliseconds = now
        case .endOfFile?:
            connection.peerFinishedSending = true
            connection.inputPending = true // a last line without its newline counts
        case .wouldBlock?:
            break
        case nil:
            return .close // ECONNRESET and friends
        }
        return .keep
    }

    /// Parses buffered requests into queued answers while the queue has room,
    /// a batch at a time; `inputPending` stays set while whole requests remain.
    private func answerBuffered(_ connection: Connection) {
        switch connection.endpoint {
        case .admin: return answerAdminLines(connection)
        case .metrics: return answerMetricsRequest(connection)
        }
    }

    private func answerAdminLines(_ connection: Connection) {
        var consumedTotal = 0
        defer { connection.input.removeFirst(consumedTotal) }
        var answered = 0
        while connection.output.count < Self.maxQueuedOutputBytes && answered < Self.maxAnswersPerEvent {
            let pending = connection.input[consumedTotal...]
            switch AdminRequestParser.parse(pending, endOfInput: connection.peerFinishedSending) {
            case .needMore:
                connection.inputPending = false
                if connection.peerFinishedSending { consumedTotal += pending.count }
                return
            case .invalid(let reason):
                // The rest of an oversized line cannot be told from a new request.
                connection.output += AdminAnswers.errorLine(reason)
                connection.closeWhenFlushed = true
                consumedTotal += pending.count
                return
            case .done(let line, let consumed):
                consumedTotal += consumed
                if let answer = answers.answer(line) {
                    connection.output += answer
                    answered += 1
                }
            }
        }
    }

    private func answerMetricsRequest(_ connection: Connection) {
        let response: [UInt8]
        switch MetricsRequestParser.parse(connection.input) {
        case .needMore:
            connection.inputPending = false
            if connection.peerFinishedSending { connection.input.removeAll() } // it will never complete
            return
        case .invalid(let reason):
            response = AdminAnswers.badRequest(reason)
        case .done(let request, _):
            response = answers.metricsResponse(request, headOnly: connection.input.starts(with: "HEAD ".utf8))
        }
        // One request per connection (Connection: close): anything pipelined after it is dropped.
        connection.input.removeAll()
        connection.output += response
        connection.closeWhenFlushed = true
    }

    private func flush(_ connection: Connection, now: UInt64) -> Disposition {
        while connection.hasUnsentOutput {
            let result = connection.output.withUnsafeBytes { raw in
                try? Socket.write(connection.fd, from: UnsafeRawBufferPointer(rebasing: raw[connection.outputSent...]))
            }
            switch result {
            case .done(let n)?:
                connection.outputSent += n
                connection.lastProgressMilliseconds = now
            case .wouldBlock?:
                return .keep
            case nil:
                return .close // EPIPE, ECONNRESET: the client is gone
            }
        }
        connection.output.removeAll(keepingCapacity: connection.output.count <= Self.readChunkBytes)
        connection.outputSent = 0
        return .keep
    }

    private func updateInterest(_ connection: Connection) {
        var wanted: EpollEvents = []
        if connection.wantsInput { wanted.insert(.readable) }
        // Whole requests still buffered: a writable socket brings the loop back
        // next turn to answer the next batch.
        if connection.hasUnsentOutput || connection.canAnswer { wanted.insert(.writable) }
        guard wanted != connection.interest else { return }
        do {
            try epoll.modify(connection.fd, wanted, token: connection.token)
            connection.interest = wanted
        } catch {
            close(connection)
        }
    }

    /// The one place a connection's descriptor is closed; it leaves the table
    /// first, so no later event or sweep can reach it.
    private func close(_ connection: Connection) {
        guard connections.removeValue(forKey: connection.token) != nil else { return }
        closeDescriptor(connection.fd) // also leaves the epoll set
    }

    // MARK: - Accepting

    private func acceptClients(_ endpoint: Endpoint, now: UInt64) {
        guard let listener = listenerFDs[endpoint], pausedUntil[endpoint] == nil else { return }
        for _ in 0..<Self.acceptBatch {
            let result: IOResult<(Int32, SocketAddress)>
            do {
                result = try Socket.accept(listener)
            } catch {
                if [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(error.errno) {
                    pauseAccepting(endpoint, because: error, now: now)
                    return
                }
                continue // ECONNABORTED and friends concern one connection only
            }
            guard case .done(let (fd, _)) = result else { return }
            admit(fd, endpoint, now: now)
        }
    }

    private func admit(_ fd: Int32, _ endpoint: Endpoint, now: UInt64) {
        let open = connections.values.filter { $0.endpoint == endpoint }
        if open.count >= limits[endpoint]!.maxConnections {
            switch endpoint {
            case .metrics:
                // Shed at once: a scraper retries, and the slots stay bounded.
                noteShed(endpoint, now: now)
                Socket.closeWithReset(fd)
                return
            case .admin:
                // The socket is root's (mode 0600): the newest request is the
                // one an operator is waiting for, the quietest client the one
                // least likely to be.
                if let quietest = open.min(by: { $0.lastProgressMilliseconds < $1.lastProgressMilliseconds }) {
                    noteShed(endpoint, now: now)
                    close(quietest)
                }
            }
        }
        let token = nextToken
        nextToken += 1
        let connection = Connection(token: token, fd: fd, endpoint: endpoint, now: now)
        connections[token] = connection
        do { try epoll.add(fd, .readable, token: token) } catch { close(connection) }
    }

    private func noteShed(_ endpoint: Endpoint, now: UInt64) {
        guard now &- lastShedLogMilliseconds > 1000 else { return }
        lastShedLogMilliseconds = now
        logger.warning("too many clients: \(endpoint == .admin ? "closing the quietest admin client" : "refusing metrics clients")", metadata: [
            "endpoint": "\(endpoint)", "limit": "\(limits[endpoint]!.maxConnections)",
        ])
    }

    /// Out of descriptors or memory: a listener that stays readable would
    /// make the loop spin, so it leaves the epoll set for a moment.
    private func pauseAccepting(_ endpoint: Endpoint, because error: SystemCallError, now: UInt64) {
        guard let listener = listenerFDs[endpoint] else { return }
        try? epoll.modify(listener, [], token: listenerToken(endpoint))
        pausedUntil[endpoint] = now + Self.acceptBackoffMilliseconds
        if now &- lastShedLogMilliseconds > 1000 {
            lastShedLogMilliseconds = now
            logger.error("out of resources, pausing the \(endpoint) listener", metadata: [
                "error": "\(error)", "pause_ms": "\(Self.acceptBackoffMilliseconds)",
            ])
        }
    }

    // MARK: - Time

    /// When the control loop should call `tick` next (nil: nothing pending).
    func nextDeadline(now: UInt64) -> UInt64? {
        var deadline = pausedUntil.values.min()
        if !connections.isEmpty { deadline = min(deadline ?? .max, max(now, nextSweepMilliseconds)) }
        return deadline
    }

    /// Resumes paused listeners and closes clients idle past their endpoint's timeout.
    func tick(now: UInt64) {
        for (endpoint, until) in pausedUntil where now >= until {
            pausedUntil[endpoint] = nil
            if let listener = listenerFDs[endpoint] {
                try? epoll.modify(listener, .readable, token: listenerToken(endpoint))
            }
        }
        guard now >= nextSweepMilliseconds else { return }
        nextSweepMilliseconds = now + Self.sweepIntervalMilliseconds
        let idle = connections.values.filter {
            now &- $0.lastProgressMilliseconds >= limits[$0.endpoint]!.idleTimeoutMilliseconds
        }
        for connection in idle { close(connection) }
    }
}
