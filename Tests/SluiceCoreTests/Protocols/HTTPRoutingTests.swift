import SluiceCore
import Testing

/// Parses `head` and runs `body` with it and its bytes.
func withRequest<T>(_ head: String, _ body: (HTTPRequestHead, UnsafeRawBufferPointer) -> T) -> T? {
    let raw = Array(head.utf8)
    guard case .complete(let parsed) = parseRequestInPieces(raw, cuts: []) else { return nil }
    return raw.withUnsafeBytes { body(parsed, $0) }
}

@Suite("HTTP routing")
struct HTTPRouterTests {
    static let router = HTTPRouter(routes: [
        .init(host: "api.example.com", pathPrefix: "/v1/", target: 1),
        .init(host: "API.example.com", pathPrefix: nil, target: 2),
        .init(host: "*.example.com", pathPrefix: "/static", target: 3),
        .init(host: nil, pathPrefix: "/health", target: 4),
    ], fallback: 0)

    func route(_ target: String, host: String?, router: HTTPRouter = Self.router) -> Int?? {
        let hostLine = host.map { "Host: \($0)\r\n" } ?? ""
        return withRequest("GET \(target) HTTP/1.1\r\n\(hostLine)\r\n") { router.route($0, in: $1) }
            ?? withRequest("GET \(target) HTTP/1.0\r\n\(hostLine)\r\n") { router.route($0, in: $1) }
    }

    @Test("routes match host and path prefix in order; the port and case of the host do not matter")
    func inOrder() {
        #expect(route("/v1/users", host: "api.example.com") == 1)
        #expect(route("/v1/users", host: "API.Example.COM:8443") == 1)
        #expect(route("/v2/users", host: "api.example.com") == 2)
        #expect(route("/V1/users", host: "api.example.com") == 2, "paths are case-sensitive")
        #expect(route("/static/a.css", host: "cdn.example.com") == 3)
        #expect(route("/static/a.css", host: "a.b.example.com.") == 3, "a trailing dot names the same host")
        #expect(route("/static/a.css", host: "example.com") == 0, "*.suffix is not the bare suffix")
        #expect(route("/static/a.css", host: "badexample.com") == 0)
        #expect(route("/health", host: "anything") == 4)
        #expect(route("/other", host: "anything") == 0)
    }

    @Test("an absolute-form target's authority wins over Host; userinfo and IPv6 literals are handled")
    func absoluteForm() {
        #expect(route("http://api.example.com/v1/x", host: "other") == 1)
        #expect(route("http://user@api.example.com:80/v1/x", host: "other") == 1)
        #expect(route("https://cdn.example.com/static", host: "x") == 3)
        #expect(route("http://api.example.com", host: "x") == 2)
        let v6 = HTTPRouter(routes: [.init(host: "[::1]", pathPrefix: nil, target: 9)], fallback: nil)
        #expect(route("/", host: "[::1]:8080", router: v6) == 9)
        #expect(route("/", host: "[::2]", router: v6) == .some(nil))
    }

    @Test("no route and no fallback: nil (the listener answers 404); HTTP/1.0 without Host falls through")
    func noMatch() {
        let strict = HTTPRouter(routes: [.init(host: "a", pathPrefix: nil, target: 1)], fallback: nil)
        #expect(route("/", host: "b", router: strict) == .some(nil))
        #expect(route("/", host: nil, router: strict) == .some(nil))
        #expect(route("/", host: nil) == 0)
    }
}

@Suite("HTTP head rewriting")
struct HTTPHeadRewriterTests {
    func rewritten(_ head: String, client: String = "192.0.2.7", forwarded: HTTPForwardedFields = .off) -> String? {
        withRequest(head) { parsed, bytes in
            var out: [UInt8] = []
            HTTPHeadRewriter.request(parsed, in: bytes, client: client, forwarded: forwarded, into: &out)
            return String(decoding: out, as: UTF8.self)
        }
    }

    @Test("hop-by-hop fields go, with every field Connection names; the rest is forwarded byte for byte")
    func hopByHop() {
        let head = "POST /a HTTP/1.1\r\nHost: a\r\nConnection: close, X-Secret\r\nKeep-Alive: 5\r\nX-Secret: s\r\n"
            + "TE: trailers\r\nTrailer: X\r\nProxy-Connection: x\r\nUpgrade: h2c\r\nX-Keep:  v \r\nContent-Length: 2\r\n\r\n"
        #expect(rewritten(head) == "POST /a HTTP/1.1\r\nHost: a\r\nX-Keep: v\r\nContent-Length: 2\r\n\r\n")
    }

    @Test("an upgrade keeps Upgrade and says Connection: upgrade; HTTP/1.0 asks the backend to keep the connection")
    func upgradeAndVersion() {
        #expect(rewritten("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            == "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
        #expect(rewritten("GET / HTTP/1.0\r\n\r\n") == "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    }

    @Test("forwarded: X-Forwarded-For appends the client to what came in; Forwarded quotes IPv6", arguments: HTTPForwardedFields.allCases)
    func forwardedFields(mode: HTTPForwardedFields) {
        let head = "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.1\r\nX-Forwarded-Proto: https\r\nForwarded: for=198.51.100.1\r\n\r\n"
        let out = rewritten(head, client: "2001:db8::7", forwarded: mode) ?? ""
        switch mode {
        case .off:
            #expect(out == head)
        case .xff:
            #expect(out == "GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=198.51.100.1\r\n"
                + "X-Forwarded-For: 198.51.100.1, 2001:db8::7\r\nX-Forwarded-Proto: http\r\n\r\n")
        case .forwarded:
            #expect(out == "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.1\r\nX-Forwarded-Proto: https\r\n"
                + "Forwarded: for=198.51.100.1, for=\"[2001:db8::7]\";proto=http\r\n\r\n")
        case .both:
            #expect(out == "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.1, 2001:db8::7\r\nX-Forwarded-Proto: http\r\n"
                + "Forwarded: for=198.51.100.1, for=\"[2001:db8::7]\";proto=http\r\n\r\n")
        }
        #expect(rewritten("GET / HTTP/1.1\r\nHost: a\r\n\r\n", client: "192.0.2.7", forwarded: .both)
            == "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\nForwarded: for=192.0.2.7;proto=http\r\n\r\n")
    }

    @Test("the rewritten head parses again to the same request")
    func reparses() {
        let head = "PUT /x?y HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        guard let out = rewritten(head, forwarded: .both), case .complete(let again) = parseRequest(out) else { Issue.record(); return }
        #expect(again.framing == .chunked && again.method == .put && again.keepAlive)
    }

    @Test("responses: hop-by-hop fields go; Connection: close when the client connection ends; 101 keeps the upgrade")
    func responses() {
        func out(_ head: String, close: Bool) -> String? {
            let raw = Array(head.utf8)
            guard case .complete(let parsed) = parseResponseInPieces(raw, cuts: []) else { return nil }
            var bytes: [UInt8] = []
            raw.withUnsafeBytes { HTTPHeadRewriter.response(parsed, in: $0, close: close, into: &bytes) }
            return String(decoding: bytes, as: UTF8.self)
        }
        #expect(out("HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", close: false)
            == "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        #expect(out("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", close: true)
            == "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        #expect(out("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", close: false)
            == "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
    }
}
