/// One client connection of a `mode: http` listener, as a state machine: no
/// sockets, no clock. The worker feeds it events and carries out the
/// actions in order; actions on one side are carried out in the order given
/// (a `move` after a `send` waits until the send is written).
///
/// Requests are taken one at a time: a pipelined request waits in the
/// client's bytes until the response before it is complete, so responses go
/// out in order. The session reads what needs judgement (heads, chunk
/// framing) and leaves the rest to the worker as `move`s of a known length,
/// which it may splice in the kernel.
///
/// Phases: `idle` (reading a request head; a keep-alive client waits here),
/// `connecting` (a backend is being acquired), `exchanging` (the request's
/// body and the response under way), `tunnel` (after 101), `closing`.
public struct HTTPSession: Sendable {
    public enum Phase: Sendable, Equatable {
        case idle
        case connecting
        case exchanging
        case tunnel
        case closing(CloseReason)
    }

    /// How much of a body is left, and how it is delimited.
    enum Body: Sendable {
        case done
        /// Bytes still to move (a `move` is under way once the prefix was sent).
        case length(UInt64)
        case chunked(HTTPChunkedDecoder)
        case untilClose
    }

    struct Exchange: Sendable {
        var method: HTTPMethod
        var record: HTTPExchangeRecord
        var clientKeepAlive: Bool
        var pool: Int
        var tried: [Int] = []
        var reused = false
        /// The rewritten head and what was sent with it, for a retry on another backend.
        var head: [UInt8] = []
        var requestFraming: HTTPBodyFraming
        var request: Body = .done
        var responseHeadSeen = false
        var response: Body = .done
        var backendKeepAlive = false
        var closeClient = false
        /// A WebSocket handshake: the `Sec-WebSocket-Accept` a 101 must carry.
        var websocketAccept: [UInt8]?
        var startedAt: UInt64
        var headSentAt: UInt64 = 0
    }

    public private(set) var phase: Phase = .idle
    public private(set) var limits: HTTPSessionLimits
    public private(set) var router: HTTPRouter
    /// The client's address as the forwarded fields give it (empty while
    /// `limits.forwarded` is off).
    public private(set) var client: String
    private var parser: HTTPHeadParser
    /// Bytes received and not yet used, per side.
    private var clientBytes: [UInt8] = []
    private var backendBytes: [UInt8] = []
    private var exchange: Exchange?
    /// The client's FIN has been read: nothing more can come from it.
    public private(set) var clientFinished = false
    /// The client asked for the close (`Connection: close`, or HTTP/1.0
    /// without keep-alive) and its last request, one without a body, was
    /// read whole with no byte after it: a client that says close sends
    /// nothing more (RFC 9112 9.6), so no unread byte can turn the close
    /// into a reset.
    public private(set) var clientSaidLast = false
    /// What the tunnel carries, once there is one: `websocket` or `connect`.
    public private(set) var tunnelKind = ""

    public init(limits: HTTPSessionLimits, router: HTTPRouter, client: String) {
        self.limits = limits
        self.router = router
        self.client = client
        self.parser = HTTPHeadParser(limits: limits.head)
    }

    /// A reload: the next request is routed and limited by the new listener.
    /// Only between requests (`isWaiting`), so one request never sees two.
    public mutating func reconfigure(limits: HTTPSessionLimits, router: HTTPRouter, client: @autoclosure () -> String) {
        precondition(isWaiting, "an HTTP session is reconfigured between requests only")
        if limits.forwarded != .off && self.client.isEmpty { self.client = client() }
        var limits = limits
        limits.namesRequests = self.limits.namesRequests
        self.limits = limits
        self.router = router
        parser = HTTPHeadParser(limits: limits.head)
    }

    /// Between requests, with nothing of the next one received: a draining worker may close it.
    /// Stored, set after every step: the worker asks after every step, and
    /// a computed property read from another module copies the whole session.
    public private(set) var isWaiting = true

    /// The `.received` event for bytes the caller holds in its own buffer:
    /// they are copied once, into the session's, with no array in between.
    public mutating func receive(_ side: Side, _ bytes: UnsafeRawBufferPointer, now: UInt64, into actions: inout [Action]) {
        defer { isWaiting = phase == .idle && clientBytes.isEmpty }
        if case .closing = phase { return }
        if phase == .tunnel { return }
        if side == .client {
            clientBytes.append(contentsOf: bytes)
            if exchange != nil { fromClient(now, &actions) } else { nextRequest(now, &actions) }
        } else {
            backendBytes.append(contentsOf: bytes)
            fromBackend(now, &actions)
        }
    }

    /// Appends what to do about `event` to `actions`.
    public mutating func handle(_ event: Event, into actions: inout [Action]) {
        defer { isWaiting = phase == .idle && clientBytes.isEmpty }
        if case .closing = phase { return }
        if phase == .tunnel { return } // the relay has it now
        switch event {
        case .accepted(let now):
            actions.append(.schedule(.head, at: now + limits.headTimeoutMilliseconds))
            actions.append(.read(.client))
        case .received(let side, let bytes, let now):
            bytes.withUnsafeBytes { receive(side, $0, now: now, into: &actions) }
        case .endOfFile(.client, _):
            clientFinished = true
            clientEnded(&actions)
        case .endOfFile(.backend, let now):
            backendEnded(now, &actions)
        case .failed(let side, _):
            if exchange != nil { actions.append(.release(reusable: false)) }
            close(side == .client ? .clientReset : .backendReset, &actions)
        case .sent(_, let now):
            // In place: a copy of the exchange costs a retain and a release per buffer in it.
            if phase == .exchanging, exchange?.headSentAt == 0 { exchange?.headSentAt = now }
        case .moved(let flow, let now):
            moved(flow, now, &actions)
        case .acquired(let backend, let reused, let now):
            acquired(backend, reused: reused, now, &actions)
        case .acquireFailed(let backend, _):
            guard var e = exchange, phase == .connecting else { return }
            actions.append(.noteBackendFailure(backend: backend))
            e.tried.append(backend)
            exchange = e
            if e.tried.count < limits.maxAttempts { actions.append(.acquire(pool: e.pool, excluding: e.tried)) } else { fail(502, &actions) }
        case .noBackend:
            if phase == .connecting { fail(exchange?.tried.isEmpty == false ? 502 : 503, &actions) }
        case .timerFired(.head, _):
            guard phase == .idle else { return }
            if clientBytes.isEmpty { close(.idleTimeout, &actions) } else { respondAndClose(408, &actions) }
        case .timerFired(.response, _):
            guard phase == .exchanging, let e = exchange, !e.responseHeadSeen else { return }
            fail(504, &actions)
        }
    }

    // MARK: - Requests

    /// Parses the next request head from the client's bytes and starts its exchange.
    private mutating func nextRequest(_ now: UInt64, _ actions: inout [Action]) {
        guard phase == .idle else { return }
        let parsed = clientBytes.withUnsafeBytes { parser.parseRequest($0) }
        switch parsed {
        case .incomplete:
            if clientFinished { close(.clientClosed, &actions) } else { actions.append(.read(.client)) }
        case .invalid(let error):
            respondAndClose(error.status, &actions)
        case .complete(let head):
            actions.append(.cancel(.head))
            start(head, now, &actions)
        }
    }

    private mutating func start(_ head: HTTPRequestHead, _ now: UInt64, _ actions: inout [Action]) {
        var head = head
        let upgrade = head.upgrade ? clientBytes.withUnsafeBytes { UpgradeRequest.classify(head, in: $0) } : .none
        var accept: [UInt8]?, refusal: (status: Int, extra: String)?
        switch upgrade {
        case .none, .stripped: head.upgrade = false // Upgrade and Connection: upgrade are dropped
        case .websocket(let expected) where limits.websocket: accept = expected
        case .websocket: refusal = (403, "")
        case .refused(let status, _): refusal = (status, status == 426 ? "Sec-WebSocket-Version: 13\r\n" : "")
        }
        let (pool, record, rewritten) = clientBytes.withUnsafeBytes { bytes in
            var out: [UInt8] = []
            HTTPHeadRewriter.request(head, in: bytes, client: client, forwarded: limits.forwarded, into: &out)
            let named = limits.namesRequests
            let record = HTTPExchangeRecord(
                method: named ? String(decoding: bytes[head.methodRange], as: UTF8.self) : "",
                host: named ? HTTPRouter.hostName(head, bytes).map { String(decoding: bytes[$0], as: UTF8.self) } ?? "-" : "",
                path: named ? String(decoding: bytes[HTTPRouter.path(head, bytes)], as: UTF8.self) : "",
                status: 0, route: nil, backend: nil, bytesFromClient: UInt64(head.length), bytesToClient: 0,
                upstreamMilliseconds: nil, totalMilliseconds: 0)
            return (router.route(head, in: bytes), record, out)
        }
        clientBytes.removeFirst(head.length)
        parser.reset()
        parser.recycle(head.fields)
        // Made in place: a local put into `exchange` is copied there (a
        // retain of every buffer it holds), then destroyed.
        exchange = Exchange(method: head.method, record: record, clientKeepAlive: head.keepAlive, pool: pool ?? -1,
                            requestFraming: head.framing, startedAt: now)
        exchange!.head = rewritten
        exchange!.record.route = pool
        exchange!.websocketAccept = accept
        if let refusal {
            respond(refusal.status, close: true, extraFields: refusal.extra, now, &actions)
            return
        }
        guard pool != nil else {
            // No route: answer here; a body would have to be read and thrown away, so close instead.
            respond(404, close: head.framing != .none || !head.keepAlive, now, &actions)
            return
        }
        phase = .connecting
        actions.append(.acquire(pool: pool ?? -1, excluding: []))
    }

    private mutating func acquired(_ backend: Int, reused: Bool, _ now: UInt64, _ actions: inout [Action]) {
        // Changed in place, as in `start`.
        guard phase == .connecting, exchange != nil else { return }
        exchange!.record.backend = backend
        exchange!.reused = reused
        phase = .exchanging
        var out = exchange!.head
        let request: Body
        switch exchange!.requestFraming {
        case .length(let n):
            let prefix = Int(min(n, UInt64(clientBytes.count)))
            out += clientBytes[0..<prefix]
            clientBytes.removeFirst(prefix)
            exchange!.record.bytesFromClient += UInt64(prefix)
            request = n > UInt64(prefix) ? .length(n - UInt64(prefix)) : .done
        case .chunked:
            request = .chunked(HTTPChunkedDecoder())
        default:
            request = .done
        }
        exchange!.request = request
        actions.append(.send(.backend, out))
        if case .length(let left) = request { actions.append(.move(.upstream, count: left)) }
        actions.append(.schedule(.response, at: now + limits.responseTimeoutMilliseconds))
        actions.append(.read(.backend))
        if case .chunked = request { fromClient(now, &actions) } // what came with the head
    }

    /// Client bytes during an exchange: chunk framing of the request body, or
    /// the next (pipelined) request, which waits.
    private mutating func fromClient(_ now: UInt64, _ actions: inout [Action]) {
        guard var e = exchange, phase == .exchanging, case .chunked(var decoder) = e.request else { return }
        let outcome = Self.passChunks(&clientBytes, through: &decoder, to: .backend, counting: &e.record.bytesFromClient, &actions)
        switch outcome {
        case .invalid(let error):
            exchange = e
            fail(error.status, &actions)
            return
        case .done:
            e.request = .done
        case .more:
            e.request = .chunked(decoder)
            actions.append(.read(.client))
        }
        exchange = e
        finishIfDone(now, &actions)
    }

    // MARK: - Responses

    private mutating func fromBackend(_ now: UInt64, _ actions: inout [Action]) {
        // The exchange is changed in place (`exchange!`): taken out and put
        // back, it was copied (a retain of every buffer it holds) and destroyed.
        guard phase == .exchanging, exchange != nil else { return }
        if !exchange!.responseHeadSeen {
            let method = exchange!.method
            let parsed = backendBytes.withUnsafeBytes { parser.parseResponse($0, requestMethod: method) }
            switch parsed {
            case .incomplete:
                actions.append(.read(.backend))
                return
            case .invalid(let error):
                fail(error.status, &actions)
                return
            case .complete(let head):
                parser.reset()
                parser.recycle(head.fields)
                if head.status < 200 && head.status != 101 {
                    // Interim (100 Continue, 103): passed on; the final response follows.
                    var out: [UInt8] = []
                    backendBytes.withUnsafeBytes { HTTPHeadRewriter.response(head, in: $0, close: false, into: &out) }
                    backendBytes.removeFirst(head.length)
                    exchange!.record.bytesToClient += UInt64(out.count)
                    actions.append(.send(.client, out))
                    fromBackend(now, &actions)
                    return
                }
                guard head.framing != .tunnel || tunnelAllowed(head) else {
                    fail(502, &actions)
                    return
                }
                responseHead(head, now, &actions)
                if phase == .tunnel { return } // the exchange ended there
            }
        }
        if case .chunked(var decoder) = exchange!.response {
            let outcome = Self.passChunks(&backendBytes, through: &decoder, to: .client, counting: &exchange!.record.bytesToClient, &actions)
            switch outcome {
            case .invalid:
                actions.append(.release(reusable: false))
                close(.backendReset, &actions) // the response is half out: nothing better to tell the client
                return
            case .done: exchange!.response = .done
            case .more:
                exchange!.response = .chunked(decoder)
                actions.append(.read(.backend))
            }
        }
        finishIfDone(now, &actions)
    }

    /// A tunnel only where one was asked for: a WebSocket handshake the
    /// backend completed (its 101 carries the right accept value), or a
    /// CONNECT it accepted. Any other 101 is the backend's error.
    private func tunnelAllowed(_ head: HTTPResponseHead) -> Bool {
        guard let expected = exchange!.websocketAccept else { return exchange!.method == .connect && head.status != 101 }
        return backendBytes.withUnsafeBytes { UpgradeRequest.accepts(head, in: $0, expected: expected) }
    }

    /// Sends on the part of `bytes` the decoder accepts (framing and data, verbatim).
    private static func passChunks(_ bytes: inout [UInt8], through decoder: inout HTTPChunkedDecoder, to side: Side,
                                   counting total: inout UInt64, _ actions: inout [Action]) -> HTTPChunkedDecoder.Outcome {
        let (consumed, outcome) = bytes.withUnsafeBytes { decoder.consume($0) }
        if consumed > 0 {
            actions.append(.send(side, Array(bytes[0..<consumed])))
            bytes.removeFirst(consumed)
            total += UInt64(consumed)
        }
        return outcome
    }

    private mutating func responseHead(_ head: HTTPResponseHead, _ now: UInt64, _ actions: inout [Action]) {
        actions.append(.cancel(.response))
        exchange!.responseHeadSeen = true
        exchange!.record.status = head.status
        exchange!.record.upstreamMilliseconds = now &- (exchange!.headSentAt == 0 ? now : exchange!.headSentAt)
        exchange!.backendKeepAlive = head.keepAlive
        var requestDone = true
        if case .done = exchange!.request {} else { requestDone = false }
        // The client's stream can go on only if its request was read to the end
        // and this response's end is marked.
        exchange!.closeClient = !exchange!.clientKeepAlive || head.framing == .untilClose || !requestDone || clientFinished
        if head.framing != .tunnel && exchange!.websocketAccept != nil && !clientBytes.isEmpty {
            // Declined, but the client already sent frames: nothing after them can be read as HTTP.
            exchange!.closeClient = true
        }
        var out: [UInt8] = []
        // Room for the head and what came with it of the body: one allocation.
        out.reserveCapacity(backendBytes.count + 32)
        let closeClient = exchange!.closeClient
        backendBytes.withUnsafeBytes { HTTPHeadRewriter.response(head, in: $0, close: closeClient, into: &out) }
        backendBytes.removeFirst(head.length)
        switch head.framing {
        case .none:
            exchange!.response = .done
        case .length(let n):
            let prefix = Int(min(n, UInt64(backendBytes.count)))
            out += backendBytes[0..<prefix]
            backendBytes.removeFirst(prefix)
            exchange!.response = n > UInt64(prefix) ? .length(n - UInt64(prefix)) : .done
        case .chunked:
            exchange!.response = .chunked(HTTPChunkedDecoder())
        case .untilClose:
            out += backendBytes
            backendBytes.removeAll()
            exchange!.response = .untilClose
        case .tunnel:
            out += backendBytes
            backendBytes.removeAll()
            exchange!.record.bytesToClient += UInt64(out.count)
            actions.append(.send(.client, out))
            if !clientBytes.isEmpty { actions.append(.send(.backend, clientBytes)) }
            clientBytes.removeAll()
            actions.append(.log(exchange!.record))
            phase = .tunnel
            tunnelKind = exchange!.websocketAccept == nil ? "connect" : "websocket"
            exchange = nil
            actions.append(.tunnel)
            return
        }
        exchange!.record.bytesToClient += UInt64(out.count)
        actions.append(.send(.client, out))
        switch exchange!.response {
        case .length(let left): actions.append(.move(.downstream, count: left))
        case .untilClose: actions.append(.move(.downstream, count: nil))
        default: break
        }
    }

    private mutating func moved(_ flow: Flow, _ now: UInt64, _ actions: inout [Action]) {
        guard phase == .exchanging, var e = exchange.take() else { return } // put back below
        if flow == .upstream, case .length(let left) = e.request {
            e.record.bytesFromClient += left
            e.request = .done
        } else if flow == .downstream {
            switch e.response {
            case .length(let left):
                e.record.bytesToClient += left
                e.response = .done
            case .untilClose:
                e.response = .done
                e.backendKeepAlive = false
            default:
                break
            }
        }
        exchange = e
        finishIfDone(now, &actions)
    }

    /// Both bodies done: log, hand the backend back, and wait for the next request.
    private mutating func finishIfDone(_ now: UInt64, _ actions: inout [Action]) {
        guard phase == .exchanging, exchange?.responseHeadSeen == true, case .done? = exchange?.response,
              var e = exchange.take() else { return }
        if case .done = e.request {} else {
            // Answered before the request's body was all in: neither stream can be followed further.
            e.closeClient = true
        }
        finish(e, now, &actions)
    }

    private mutating func finish(_ e: Exchange, _ now: UInt64, _ actions: inout [Action]) {
        var record = e.record
        record.totalMilliseconds = now &- e.startedAt
        actions.append(.log(record))
        var requestDone = true
        if case .done = e.request {} else { requestDone = false }
        actions.append(.release(reusable: e.backendKeepAlive && requestDone && backendBytes.isEmpty))
        // A small buffer is kept for the next response; a big one is not held while idle.
        backendBytes.removeAll(keepingCapacity: backendBytes.capacity <= 4096)
        exchange = nil
        if e.closeClient || clientFinished {
            // Without a body: a body's last bytes may have been moved by the
            // worker, and what a client sent after them was never looked at.
            clientSaidLast = !e.clientKeepAlive && requestDone && clientBytes.isEmpty && e.requestFraming == .none
            close(.clientClosed, &actions)
            return
        }
        phase = .idle
        actions.append(.schedule(.head, at: now + limits.headTimeoutMilliseconds))
        nextRequest(now, &actions)
    }

    // MARK: - Ends and failures

    private mutating func clientEnded(_ actions: inout [Action]) {
        switch phase {
        case .idle:
            close(.clientClosed, &actions)
        case .connecting, .exchanging:
            guard let e = exchange else { return }
            if case .done = e.request { return } // the response still goes out, then the connection closes
            actions.append(.release(reusable: false))
            close(.clientClosed, &actions)
        default:
            break
        }
    }

    private mutating func backendEnded(_ now: UInt64, _ actions: inout [Action]) {
        guard var e = exchange, phase == .exchanging else { return }
        if !e.responseHeadSeen {
            actions.append(.release(reusable: false))
            // A kept-alive connection the backend had just closed, or a backend that
            // gave up: safe to send again when nothing depends on it having been seen.
            if e.method.isIdempotent && e.requestFraming == .none && e.tried.count + 1 < limits.maxAttempts {
                if !e.reused, let backend = e.record.backend { e.tried.append(backend) }
                e.record.backend = nil
                phase = .connecting
                backendBytes.removeAll()
                exchange = e
                actions.append(.cancel(.response))
                actions.append(.acquire(pool: e.pool, excluding: e.tried))
                return
            }
            fail(502, &actions)
            return
        }
        // Cut short inside a body (an until-close body ends through `moved`).
        actions.append(.release(reusable: false))
        close(.backendClosed, &actions)
    }

    /// The exchange cannot go on: an error response if none was started, then close.
    private mutating func fail(_ status: Int, _ actions: inout [Action]) {
        if exchange != nil && phase != .connecting { actions.append(.release(reusable: false)) }
        respondAndClose(status, &actions)
    }

    private mutating func respondAndClose(_ status: Int, _ actions: inout [Action]) {
        if exchange?.responseHeadSeen == true {
            close(.backendReset, &actions)
            return
        }
        actions.append(.send(.client, HTTPErrorResponse.bytes(status: status)))
        if var e = exchange {
            e.record.status = status
            actions.append(.log(e.record))
            exchange = e
        }
        close(status == 408 ? .idleTimeout : .clientClosed, &actions)
    }

    /// A response of the proxy's own on a request that was otherwise fine (404).
    private mutating func respond(_ status: Int, close closing: Bool, extraFields: String = "", _ now: UInt64,
                                  _ actions: inout [Action]) {
        guard var e = exchange else { return }
        var bytes = HTTPErrorResponse.bytes(status: status, extraFields: extraFields)
        if !closing {
            let keep = Array("Connection: close\r\n".utf8)
            if let at = bytes.firstRange(of: keep) { bytes.removeSubrange(at) }
        }
        actions.append(.send(.client, bytes))
        e.record.status = status
        e.record.bytesToClient = UInt64(bytes.count)
        e.record.totalMilliseconds = now &- e.startedAt
        actions.append(.log(e.record))
        exchange = nil
        if closing {
            close(.clientClosed, &actions)
        } else {
            actions.append(.schedule(.head, at: now + limits.headTimeoutMilliseconds))
            nextRequest(now, &actions)
        }
    }

    private mutating func close(_ reason: CloseReason, _ actions: inout [Action]) {
        phase = .closing(reason)
        actions.append(.close(reason))
    }
}
