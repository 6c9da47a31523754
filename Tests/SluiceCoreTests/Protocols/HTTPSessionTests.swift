import SluiceCore
import Testing

/// An HTTP session driven by hand: events in, actions out.
struct HTTPDriver {
    var session: HTTPSession

    init(routes: [HTTPRouter.Route] = [], fallback: Int? = 0, attempts: Int = 3, forwarded: HTTPForwardedFields = .off,
         websocket: Bool = true) {
        var limits = HTTPSessionLimits(headTimeoutMilliseconds: 10_000, responseTimeoutMilliseconds: 5_000,
                                       maxAttempts: attempts, forwarded: forwarded)
        limits.websocket = websocket
        session = HTTPSession(limits: limits, router: HTTPRouter(routes: routes, fallback: fallback), client: "192.0.2.7")
    }

    @discardableResult
    mutating func on(_ event: HTTPSession.Event) -> [HTTPSession.Action] {
        var actions: [HTTPSession.Action] = []
        session.handle(event, into: &actions)
        return actions
    }

    @discardableResult
    mutating func client(_ text: String, now: UInt64 = 1) -> [HTTPSession.Action] { on(.received(.client, Array(text.utf8), now: now)) }

    @discardableResult
    mutating func backend(_ text: String, now: UInt64 = 2) -> [HTTPSession.Action] { on(.received(.backend, Array(text.utf8), now: now)) }

    var closed: CloseReason? {
        if case .closing(let reason) = session.phase { return reason }
        return nil
    }
}

func sent(_ actions: [HTTPSession.Action], to side: Side) -> String {
    actions.compactMap { action -> String? in
        if case .send(let s, let bytes) = action, s == side { return String(decoding: bytes, as: UTF8.self) }
        return nil
    }.joined()
}

func records(_ actions: [HTTPSession.Action]) -> [HTTPExchangeRecord] {
    actions.compactMap { if case .log(let r) = $0 { return r } else { return nil } }
}

@Suite("HTTP session")
struct HTTPSessionTests {
    static let get = "GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n"
    static let ok = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"

    @Test("a keep-alive GET: head routed, sent, answered; the backend goes back to the pool and the client waits for more")
    func keepAliveGet() {
        var d = HTTPDriver()
        #expect(d.on(.accepted(now: 0)) == [.schedule(.head, at: 10_000), .read(.client)])
        #expect(d.client(Self.get) == [.cancel(.head), .acquire(pool: 0, excluding: [])])
        let sending = d.on(.acquired(backend: 3, reused: false, now: 1))
        #expect(sent(sending, to: .backend) == Self.get)
        #expect(sending.contains(.schedule(.response, at: 5_001)) && sending.last == .read(.backend))
        d.on(.sent(.backend, now: 1))
        let answer = d.backend(Self.ok, now: 4)
        #expect(sent(answer, to: .client) == Self.ok)
        #expect(answer.contains(.cancel(.response)) && answer.contains(.release(reusable: true)))
        #expect(answer.suffix(2) == [.schedule(.head, at: 10_004), .read(.client)])
        let record = records(answer).first
        #expect(record?.method == "GET" && record?.host == "example.com" && record?.path == "/a" && record?.status == 200)
        #expect(record?.backend == 3 && record?.upstreamMilliseconds == 3 && record?.totalMilliseconds == 3)
        #expect(d.session.phase == .idle)
    }

    @Test("pipelined requests: the second waits for the first response, and responses go out in order")
    func pipelined() {
        var d = HTTPDriver()
        d.on(.accepted(now: 0))
        #expect(d.client(Self.get + "GET /b HTTP/1.1\r\nHost: example.com\r\n\r\n").last == .acquire(pool: 0, excluding: []))
        #expect(sent(d.on(.acquired(backend: 1, reused: false, now: 1)), to: .backend) == Self.get)
        let first = d.backend(Self.ok)
        #expect(sent(first, to: .client) == Self.ok)
        #expect(first.last == .acquire(pool: 0, excluding: []), "the pipelined request starts at once")
        #expect(sent(d.on(.acquired(backend: 1, reused: true, now: 3)), to: .backend).hasPrefix("GET /b "))
    }

    @Test("a body of known length: what came with the head is sent with it, the rest is moved by the worker")
    func lengthBody() {
        let head = "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n"
        var d = HTTPDriver()
        d.on(.accepted(now: 0))
        d.client(head + "0123456789")
        let actions = d.on(.acquired(backend: 0, reused: false, now: 1))
        #expect(sent(actions, to: .backend) == head + "0123456789")
        #expect(actions.contains(.move(.upstream, count: 90)))
        #expect(d.on(.moved(.upstream, now: 5)).isEmpty, "the response is still to come")
        let done = d.backend("HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        #expect(done.contains(.release(reusable: true)) && d.session.phase == .idle)
        #expect(records(done).first?.bytesFromClient == UInt64(head.utf8.count + 100))

        // A backend that answers before the body is all in: the answer goes
        // out with Connection: close, and neither connection is kept.
        var early = HTTPDriver()
        early.on(.accepted(now: 0))
        early.client(head + "01234")
        early.on(.acquired(backend: 0, reused: false, now: 1))
        let refused = early.backend("HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        #expect(sent(refused, to: .client).contains("Connection: close"))
        #expect(refused.contains(.release(reusable: false)) && refused.last == .close(.clientClosed))
    }

    @Test("a response larger than what arrived with its head: the rest is moved, then the exchange ends")
    func largeResponse() {
        var d = HTTPDriver()
        d.on(.accepted(now: 0))
        d.client(Self.get)
        d.on(.acquired(backend: 0, reused: false, now: 1))
        let head = d.backend("HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\nabc")
        #expect(head.last == .move(.downstream, count: 1_048_573))
        let done = d.on(.moved(.downstream, now: 9))
        let head44 = "HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n".utf8.count
        #expect(done.contains(.release(reusable: true)) && records(done).first?.bytesToClient == UInt64(1_048_576 + head44))
    }

    @Test("chunked bodies are checked piece by piece and forwarded as they are; bad framing is a 400 and a close")
    func chunked() {
        var d = HTTPDriver()
        d.on(.accepted(now: 0))
        d.client("POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        let first = d.on(.acquired(backend: 0, reused: false, now: 1))
        #expect(sent(first, to: .backend).hasSuffix("\r\n\r\n5\r\nhel"))
        #expect(sent(d.client("lo\r\n0\r\n\r\n"), to: .backend) == "lo\r\n0\r\n\r\n")
        let answer = d.backend("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        #expect(sent(answer, to: .client).hasSuffix("3\r\nabc\r\n") && answer.last == .read(.backend))
        #expect(d.backend("0\r\n\r\n").contains(.release(reusable: true)))

        var bad = HTTPDriver()
        bad.on(.accepted(now: 0))
        bad.client("POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        bad.on(.acquired(backend: 0, reused: false, now: 1))
        let refused = bad.client("zz\r\n")
        #expect(sent(refused, to: .client).hasPrefix("HTTP/1.1 400 Bad Request\r\n"))
        #expect(refused.contains(.release(reusable: false)) && bad.closed != nil)
    }

    @Test("a close-delimited response is moved to its end and closes the client; so does Connection: close")
    func closeDelimited() {
        var d = HTTPDriver()
        d.on(.accepted(now: 0))
        d.client(Self.get)
        d.on(.acquired(backend: 0, reused: false, now: 1))
        let head = d.backend("HTTP/1.0 200 OK\r\n\r\nsome")
        #expect(sent(head, to: .client) == "HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nsome")
        #expect(head.last == .move(.downstream, count: nil))
        let end = d.on(.moved(.downstream, now: 3))
        #expect(end.contains(.release(reusable: false)) && end.last == .close(.clientClosed))

        var c = HTTPDriver()
        c.on(.accepted(now: 0))
        c.client("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        c.on(.acquired(backend: 0, reused: false, now: 1))
        let answer = c.backend(Self.ok)
        #expect(sent(answer, to: .client).contains("Connection: close\r\n"))
        #expect(answer.contains(.release(reusable: true)) && answer.last == .close(.clientClosed))
    }

    @Test("a client that said close and sent nothing after its request is known to have said its last; others are not")
    func clientSaidLast() {
        func closing(_ request: String, response: String = Self.ok) -> HTTPDriver {
            var d = HTTPDriver()
            d.on(.accepted(now: 0))
            d.client(request)
            d.on(.acquired(backend: 0, reused: false, now: 1))
            d.backend(response)
            return d
        }
        let close = "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        let said = closing(close)
        #expect(said.closed == .clientClosed && said.session.clientSaidLast)
        #expect(closing("GET / HTTP/1.0\r\n\r\n").session.clientSaidLast, "HTTP/1.0 without keep-alive")
        // Bytes after the request: a pipelining client may send more, so the worker reads them away.
        let more = closing(close + "GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(more.closed == .clientClosed && !more.session.clientSaidLast)
        // The proxy closes a keep-alive client (a close-delimited response): the client did not say close.
        let delimited = closing(Self.get, response: "HTTP/1.0 200 OK\r\n\r\nsome")
        var ended = delimited
        ended.on(.moved(.downstream, now: 3))
        #expect(ended.closed == .clientClosed && !ended.session.clientSaidLast)
        // A body: its end may have been moved by the worker, which never looks past it.
        let posted = closing("POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi")
        #expect(posted.closed == .clientClosed && !posted.session.clientSaidLast)
        // A 400 answers a request that was not read to its end.
        var bad = HTTPDriver()
        bad.on(.accepted(now: 0))
        bad.client("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nBad Field: x\r\n\r\n")
        #expect(bad.closed != nil && !bad.session.clientSaidLast)
    }

    @Test("the proxy's own answers: 400 for a bad head, 404 without a route, 408 for a late head, 504 for a late response")
    func ownAnswers() {
        var bad = HTTPDriver()
        bad.on(.accepted(now: 0))
        #expect(sent(bad.client("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), to: .client).hasPrefix("HTTP/1.1 400 "))
        #expect(bad.closed != nil)

        var lost = HTTPDriver(routes: [.init(host: "a", pathPrefix: nil, target: 1)], fallback: nil)
        lost.on(.accepted(now: 0))
        let notFound = lost.client("GET / HTTP/1.1\r\nHost: b\r\n\r\n")
        #expect(sent(notFound, to: .client).hasPrefix("HTTP/1.1 404 Not Found\r\n"))
        #expect(!sent(notFound, to: .client).contains("Connection: close"), "no body to skip: the client may go on")
        #expect(lost.session.phase == .idle)
        #expect(lost.client("GET / HTTP/1.1\r\nHost: a\r\n\r\n").last == .acquire(pool: 1, excluding: []))

        var slow = HTTPDriver()
        slow.on(.accepted(now: 0))
        slow.client("GET / HTT")
        #expect(sent(slow.on(.timerFired(.head, now: 10_000)), to: .client).hasPrefix("HTTP/1.1 408 "))
        var quiet = HTTPDriver()
        quiet.on(.accepted(now: 0))
        #expect(quiet.on(.timerFired(.head, now: 10_000)) == [.close(.idleTimeout)])

        var late = HTTPDriver()
        late.on(.accepted(now: 0))
        late.client(Self.get)
        late.on(.acquired(backend: 0, reused: false, now: 1))
        let timeout = late.on(.timerFired(.response, now: 5_001))
        #expect(sent(timeout, to: .client).hasPrefix("HTTP/1.1 504 ") && timeout.contains(.release(reusable: false)))
    }

    @Test("backends: a failed connect tries the next, then 502; none eligible is 503")
    func backendFailures() {
        var d = HTTPDriver(attempts: 2)
        d.on(.accepted(now: 0))
        d.client(Self.get)
        #expect(d.on(.acquireFailed(backend: 1, errno: 111)) == [.noteBackendFailure(backend: 1), .acquire(pool: 0, excluding: [1])])
        let given = d.on(.acquireFailed(backend: 2, errno: 111))
        #expect(sent(given, to: .client).hasPrefix("HTTP/1.1 502 "))
        var none = HTTPDriver()
        none.on(.accepted(now: 0))
        none.client(Self.get)
        #expect(sent(none.on(.noBackend), to: .client).hasPrefix("HTTP/1.1 503 "))
    }

    @Test("a kept-alive connection the backend closed before answering: an idempotent request is sent again, a POST is not")
    func retry() {
        var d = HTTPDriver()
        d.on(.accepted(now: 0))
        d.client(Self.get)
        d.on(.acquired(backend: 4, reused: true, now: 1))
        let retried = d.on(.endOfFile(.backend, now: 2))
        #expect(retried.contains(.release(reusable: false)) && retried.last == .acquire(pool: 0, excluding: []))
        #expect(sent(d.on(.acquired(backend: 4, reused: false, now: 3)), to: .backend) == Self.get)

        var post = HTTPDriver()
        post.on(.accepted(now: 0))
        post.client("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx")
        post.on(.acquired(backend: 4, reused: true, now: 1))
        #expect(sent(post.on(.endOfFile(.backend, now: 2)), to: .client).hasPrefix("HTTP/1.1 502 "))
    }

    @Test("interim responses are passed on; HEAD, 204 and 304 answers carry no body")
    func noBodyAnswers() {
        var d = HTTPDriver()
        d.on(.accepted(now: 0))
        d.client("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
        d.on(.acquired(backend: 0, reused: false, now: 1))
        let answer = d.backend("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
        #expect(sent(answer, to: .client) == "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
        #expect(answer.contains(.release(reusable: true)) && d.session.phase == .idle)
    }

    @Test("whatever happens, a session closes at most once and asks for nothing after")
    func closesOnce() {
        let events: [HTTPSession.Event] = [
            .accepted(now: 0), .received(.client, Array(Self.get.utf8), now: 1),
            .received(.client, Array("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n".utf8), now: 1),
            .received(.backend, Array(Self.ok.utf8), now: 2), .received(.backend, Array("HTTP/1.1 200 OK\r\n\r\n".utf8), now: 2),
            .endOfFile(.client, now: 3), .endOfFile(.backend, now: 3), .failed(.backend, errno: 104), .sent(.backend, now: 2),
            .moved(.upstream, now: 4), .moved(.downstream, now: 4), .acquired(backend: 1, reused: true, now: 1),
            .acquireFailed(backend: 1, errno: 111), .noBackend, .timerFired(.head, now: 20_000), .timerFired(.response, now: 20_000),
        ]
        var state: UInt64 = 7
        for _ in 0..<3000 {
            var d = HTTPDriver(attempts: 2)
            var closes = 0
            for _ in 0..<10 {
                state = state &* 6364136223846793005 &+ 1442695040888963407
                let wasClosed = d.closed != nil
                let actions = d.on(events[Int(state >> 33) % events.count])
                if wasClosed { #expect(actions.isEmpty) }
                let here = actions.filter { if case .close = $0 { return true } else { return false } }.count
                closes += here
                if here > 0 { #expect({ if case .close = actions.last! { return true } else { return false } }()) }
            }
            #expect(closes <= 1 && (closes == 1) == (d.closed != nil))
        }
    }
}
