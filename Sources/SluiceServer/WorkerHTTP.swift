import Atomics
import Glibc
import Logging
import SluiceCore
import SluicePosix

// The worker's half of a `mode: http` connection: it feeds the connection's
// `HTTPSession` what its sockets do and carries out the actions it returns.
// Writes on one socket happen in the order asked (bytes, then a move, then
// bytes...), through the socket's output queue.
extension Worker {
    func acceptHTTP(_ listener: RuntimeListener, _ http: RuntimeHTTP, client: Int32, address: SocketAddress, header: ProxyHeader?) {
        let connection = HTTPConnection(listener: listener, http: http, client: client, clientAddress: address,
                                        namesRequests: accessLogger != nil)
        connection.receivedHeader = header
        httpConnections.insert(connection)
        // The listener defers accepting until the request's first bytes are
        // in (TCP_DEFER_ACCEPT), so read them now: registering the socket
        // waits until a read says EAGAIN, and a client whose one request is
        // answered by a close (`Connection: close`) is never registered.
        let accepted = HTTPSession.Event.accepted(now: monotonicMilliseconds())
        guard carryOut(connection, { $0.handle(accepted, into: &$1) }), settleBetweenRequests(connection) else { return }
        if connection.clientWantsRead { readFor(connection, .client) }
        if !connection.isClosed { arm(connection) }
    }

    func drive(_ connection: HTTPConnection, _ event: HTTPSession.Event) {
        drive(connection) { $0.handle(event, into: &$1) }
    }

    /// Runs one step of the connection's session, carries out the actions it
    /// returns, and arms the sockets for what the connection waits for next.
    func drive(_ connection: HTTPConnection, _ step: (inout HTTPSession, inout [HTTPSession.Action]) -> Void) {
        guard carryOut(connection, step) else { return }
        if connection.becomesTunnel {
            if connection.clientOutput.isEmpty && connection.backendOutput.isEmpty { handOverTunnel(connection) } else { arm(connection) }
            return
        }
        guard settleBetweenRequests(connection) else { return }
        arm(connection)
    }

    /// Runs one step of the connection's session and carries out the actions
    /// it returns, in order; false when the connection closed.
    private func carryOut(_ connection: HTTPConnection, _ step: (inout HTTPSession, inout [HTTPSession.Action]) -> Void) -> Bool {
        // One stack for every nesting level, as for TCP sessions (`drive`).
        let start = pendingHTTPActions.count
        step(&connection.machine, &pendingHTTPActions)
        let end = pendingHTTPActions.count
        defer { while pendingHTTPActions.count > start { pendingHTTPActions.removeLast() } }
        // An answer followed by the close: its bytes wait for the close,
        // which writes them and can send the FIN in the same segment.
        let closes = pendingHTTPActions[start..<end].contains { if case .close = $0 { true } else { false } }
        for next in start..<end {
            guard !connection.isClosed else { return false }
            if closes, case .send(.client, let bytes) = pendingHTTPActions[next] {
                connection.clientOutput.append(.bytes(bytes, written: 0))
                continue
            }
            execute(pendingHTTPActions[next], for: connection)
        }
        return !connection.isClosed
    }

    /// Between requests (none of the next one received): a draining worker
    /// or a removed listener closes the connection; a reloaded listener
    /// routes its next request. False when it closed.
    private func settleBetweenRequests(_ connection: HTTPConnection) -> Bool {
        guard connection.machine.isWaiting else { return true }
        if draining || listeners[connection.listener.index] == nil {
            close(connection, reason: .clientClosed)
            return false
        }
        adoptListener(connection)
        return true
    }

    private func execute(_ action: HTTPSession.Action, for c: HTTPConnection) {
        switch action {
        case .read(let side):
            c.setWantsRead(side, true)
        case .send(let side, let bytes):
            c[output: side].append(.bytes(bytes, written: 0))
            flush(c, side)
        case .move(let flow, let count):
            c[output: flow.destination].append(.move(flow, remaining: count))
            flush(c, flow.destination)
        case .acquire(let pool, let excluding):
            acquire(c, poolIndex: pool, excluding: excluding)
        case .release(let reusable):
            releaseBackend(c, reusable: reusable)
        case .noteBackendFailure(let index):
            let pool = c.http.pools[c.backendPoolIndex]
            pool.connectFailures[index].wrappingIncrement(ordering: .relaxed)
            noteBackendFailure(pool, index)
        case .schedule(let kind, let at):
            var timer = c[timer: kind]
            timer.deadline = at
            // A timer already in the wheel that fires first finds the new deadline then.
            if timer.id == nil || at < timer.firesAt {
                if let id = timer.id { _ = timers.cancel(id) }
                timer.id = timers.schedule(at: at, .http(connection: c.id, kind))
                timer.firesAt = at
            }
            c[timer: kind] = timer
        case .cancel(let kind):
            c[timer: kind].deadline = nil
        case .log(let record):
            logExchange(c, record)
        case .tunnel:
            // Nothing more is read here: the relay reads what comes next.
            c.becomesTunnel = true
            c.setWantsRead(.client, false)
            c.setWantsRead(.backend, false)
        case .close(let reason):
            close(c, reason: reason)
        }
    }

    // MARK: - Readiness

    /// An event on one side. The connection sees oneshot semantics: a side
    /// that fired and is not armed again (`arm(_:)`) is disarmed here, but
    /// for one case: a read just emptied it and it was armed for reading
    /// only. It cannot fire again before new bytes come, and it is likely
    /// to be wanted for reading again by then (a client's next request,
    /// once this one is answered; a backend going back to the idle ones,
    /// armed for reading there too), so its registration stays; if it
    /// fires before it is wanted, it is disarmed then.
    func dispatch(_ c: HTTPConnection, _ side: Side, _ events: EpollEvents) {
        c.noteFired(side)
        let emptied = handle(c, side, events)
        guard !c.isClosed && c.fired(side) else { return }
        let armed = side == .client ? c.clientArmed : c.backendArmed
        if emptied && armed == .readable {
            if side == .client { c.clientFired = false } else { c.backendFired = false }
            return
        }
        epoll.remove(c.fd(side))
        c.forgetRegistration(side)
    }

    /// True when it read bytes from `side` and the read emptied the socket.
    private func handle(_ c: HTTPConnection, _ side: Side, _ events: EpollEvents) -> Bool {
        let trouble = !events.isDisjoint(with: [.error, .hangup])
        if side == .backend && c.connecting {
            if events.contains(.writable) && !trouble { backendConnected(c) } else if trouble || events.contains(.writable) {
                let error = Socket.pendingError(c.backend)
                if error == 0 { backendConnected(c) } else { connectFailed(c, errno: error) }
            }
            if !c.isClosed { arm(c) }
            return false
        }
        if events.contains(.writable) || trouble {
            c.setWriteBlocked(side, false)
            flush(c, side)
        }
        if c.isClosed { return false }
        if (events.contains(.readable) || trouble) && c.moveWaits(side) {
            c.setMoveWaits(side, false)
            flush(c, side.peer)
        }
        if c.isClosed { return false }
        var emptied = false
        if (events.contains(.readable) || trouble) && c.wantsRead(side) { emptied = readFor(c, side) }
        if !c.isClosed { arm(c) }
        return emptied && !trouble && !events.contains(.readHangup)
    }

    /// True when it read bytes, fewer than fill the buffer (the socket is
    /// then almost certainly empty).
    @discardableResult
    private func readFor(_ c: HTTPConnection, _ side: Side) -> Bool {
        let buffer = takeBuffer()
        defer { var scratch = Carrier(buffer: buffer); releaseCarrier(&scratch) }
        let outcome: Socket.ReadOutcome
        do {
            outcome = try Socket.read(c.fd(side), into: buffer)
        } catch {
            c.setWantsRead(side, false)
            drive(c, .failed(side, errno: error.errno))
            return false
        }
        switch outcome {
        case .wouldBlock:
            return true
        case .endOfFile:
            c.setWantsRead(side, false)
            drive(c, .endOfFile(side, now: monotonicMilliseconds()))
            return false
        case .bytes(let n):
            c.setWantsRead(side, false)
            if side == .client { c.clientReadFilled = n == buffer.count } else { c.backendReadFilled = n == buffer.count }
            record.add(side == .client ? .bytesIn : .bytesOut, UInt64(n))
            let bytes = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
            drive(c) { $0.receive(side, bytes, now: wakeMilliseconds, into: &$1) }
            return n < buffer.count
        }
    }

    /// Arms both sockets for what the connection waits for. A non-empty
    /// interest is registered level-triggered: arming a side again for what
    /// it is registered for costs no epoll_ctl (a request answered, the
    /// next awaited on the same sockets). An empty one leaves the side as
    /// it is; `dispatch` disarms a side that fired and was not armed again.
    func arm(_ c: HTTPConnection) {
        func apply(_ side: Side) throws(SystemCallError) {
            let fd = c.fd(side)
            guard fd >= 0 else { return }
            let interest = c.interest(side)
            guard !interest.isEmpty else { return }
            let armed = side == .client ? c.clientArmed : c.backendArmed
            if side == .client { c.clientFired = false } else { c.backendFired = false }
            guard armed != interest else { return }
            let token = side == .client ? Self.httpKind | (c.id << 1) : Self.httpBackendKind | UInt64(UInt32(bitPattern: fd))
            let added = side == .client ? c.clientAdded : c.backendAdded
            if added { try epoll.modify(fd, interest, token: token) } else {
                try epoll.add(fd, interest, token: token)
                if side == .client { c.clientAdded = true } else { c.backendAdded = true }
            }
            if side == .client { c.clientArmed = interest } else { c.backendArmed = interest }
        }
        do {
            try apply(.client)
            try apply(.backend)
        } catch {
            logger.error("epoll re-arm failed", metadata: ["error": "\(error)"])
            close(c, reason: .internalError)
        }
    }

    // MARK: - Writing in order

    /// Works through the side's output queue until it is empty or a socket
    /// says EAGAIN; tells the session when bytes are all written or a move is done.
    private func flush(_ c: HTTPConnection, _ side: Side) {
        guard !c.flushing(side) else { return } // the loop below picks it up
        c.setFlushing(side, true)
        defer { c.setFlushing(side, false) }
        var wroteBytes = false
        while !c.isClosed, let first = c[output: side].first {
            switch first {
            case .bytes:
                switch writeQueuedBytes(c, side) {
                case .failure(let error):
                    drive(c, .failed(side, errno: error.errno))
                    return
                case .success(.wouldBlock):
                    c.setWriteBlocked(side, true)
                    return
                case .success(.done):
                    wroteBytes = true
                }
            case .move(let flow, let remaining):
                guard moveStep(c, flow, remaining: remaining) else { return }
            }
        }
        if wroteBytes && !c.isClosed && c[output: side].isEmpty { drive(c, .sent(side, now: wakeMilliseconds)) }
    }

    /// Writes the bytes at the head of the side's queue, once; `done` when
    /// something was written (the item is gone when all of it was).
    func writeQueuedBytes(_ c: HTTPConnection, _ side: Side, last: Bool = false) -> Result<IOResult<Int>, SystemCallError> {
        guard case .bytes(let bytes, let written)? = c[output: side].first else { return .success(.done(0)) }
        let result = bytes.withUnsafeBytes { raw in
            Result { () throws(SystemCallError) in
                try Socket.write(c.fd(side), from: UnsafeRawBufferPointer(rebasing: raw[written...]), last: last)
            }
        }
        if case .success(.done(let n)) = result {
            if written + n < bytes.count { c[output: side][0] = .bytes(bytes, written: written + n) } else { c[output: side].removeFirst() }
        }
        return result
    }

    /// One step of a move at the head of its destination's queue; false when
    /// it must wait (for bytes or for room) or the connection closed.
    private func moveStep(_ c: HTTPConnection, _ flow: Flow, remaining: UInt64?) -> Bool {
        let destination = flow.destination
        var state = c[move: flow]
        if state.pending > 0 {
            let written: Result<IOResult<Int>, SystemCallError>
            if let pipe = state.pipe {
                written = Result { () throws(SystemCallError) in try Socket.splice(from: pipe.readEnd, to: c.fd(destination), maxBytes: state.pending) }
            } else {
                let chunk = UnsafeRawBufferPointer(rebasing: state.buffer![state.bufferStart..<(state.bufferStart + state.pending)])
                written = Result { () throws(SystemCallError) in try Socket.write(c.fd(destination), from: chunk) }
            }
            switch written {
            case .failure(let error):
                drive(c, .failed(destination, errno: error.errno))
                return false
            case .success(.wouldBlock):
                c.setWriteBlocked(destination, true)
                return false
            case .success(.done(let n)):
                state.bufferStart += n
                state.pending -= n
                c[move: flow] = state
                record.add(flow == .upstream ? .bytesIn : .bytesOut, UInt64(n))
                return true
            }
        }
        if remaining == 0 {
            c[output: destination].removeFirst()
            dropMove(&c[move: flow])
            drive(c, .moved(flow, now: wakeMilliseconds))
            return true
        }
        if state.pipe == nil && state.buffer == nil {
            // Bulk goes through a pipe: splice(2) moves it without copying it
            // here; `data_path: copy` means read/write only.
            if settings.dataPath != .copy, remaining.map({ $0 >= settings.httpSpliceBytes }) ?? true, let pipe = try? takePipe() {
                state.pipe = pipe
            } else {
                state.buffer = takeBuffer()
            }
            c[move: flow] = state
        }
        let limit = Int(min(remaining ?? UInt64.max, UInt64(state.pipe != nil ? 1 << 20 : state.buffer!.count)))
        let read: Result<IOResult<Int>, SystemCallError>
        if let pipe = state.pipe {
            read = Result { () throws(SystemCallError) in try Socket.splice(from: c.fd(flow.source), to: pipe.writeEnd, maxBytes: limit) }
        } else {
            let buffer = UnsafeMutableRawBufferPointer(rebasing: state.buffer![0..<limit])
            read = Result { () throws(SystemCallError) in
                switch try Socket.read(c.fd(flow.source), into: buffer) {
                case .wouldBlock: return .wouldBlock
                case .endOfFile: return .done(0)
                case .bytes(let n): return .done(n)
                }
            }
        }
        switch read {
        case .failure(let error):
            drive(c, .failed(flow.source, errno: error.errno))
            return false
        case .success(.wouldBlock):
            c.setMoveWaits(flow.source, true)
            return false
        case .success(.done(0)):
            if remaining == nil {
                c[output: destination].removeFirst()
                dropMove(&c[move: flow])
                Socket.shutdownWrite(c.fd(destination))
                drive(c, .moved(flow, now: wakeMilliseconds))
                return true
            }
            drive(c, .endOfFile(flow.source, now: monotonicMilliseconds())) // cut short
            return false
        case .success(.done(let n)):
            state.bufferStart = 0
            state.pending = n
            c[move: flow] = state
            if let left = remaining { c[output: destination][0] = .move(flow, remaining: left - UInt64(n)) }
            return true
        }
    }

    /// Gives a move's pipe or buffer back to the worker's pools; a pipe
    /// still holding bytes is closed (they will never be delivered).
    func dropMove(_ carrier: inout Carrier) {
        if carrier.pending == 0 { releaseCarrier(&carrier) } else { discardCarrier(&carrier) }
        carrier = Carrier()
    }
}
