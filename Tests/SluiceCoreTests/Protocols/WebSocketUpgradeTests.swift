import SluiceCore
import Testing

@Suite("WebSocket handshakes through mode http")
struct WebSocketUpgradeTests {
    // The example of RFC 6455 section 1.3.
    static let key = "dGhlIHNhbXBsZSBub25jZQ=="
    static let accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    static func request(_ extra: String = "", key: String = key, version: String = "13", method: String = "GET",
                        httpVersion: String = "1.1") -> String {
        "\(method) /chat HTTP/\(httpVersion)\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
            + "Sec-WebSocket-Key: \(key)\r\nSec-WebSocket-Version: \(version)\r\n\(extra)\r\n"
    }
    static func switching(accept: String = accept, upgrade: String = "websocket") -> String {
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: \(upgrade)\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: \(accept)\r\n\r\n"
    }

    /// Accepted, routed and sent to backend 0; returns what went to the backend.
    static func started(_ d: inout HTTPDriver, _ request: String) -> String {
        d.on(.accepted(now: 0))
        d.client(request)
        return sent(d.on(.acquired(backend: 0, reused: false, now: 1)), to: .backend)
    }

    @Test("Sec-WebSocket-Accept is base64(SHA-1(key + GUID)), as in RFC 6455's example")
    func acceptValue() {
        #expect(String(decoding: UpgradeRequest.acceptValue(key: Array(Self.key.utf8)), as: UTF8.self) == Self.accept)
    }

    @Test("a handshake the backend completes: 101 and its trailing bytes to the client, early frames to the backend, then a tunnel")
    func completed() {
        var d = HTTPDriver()
        let forwarded = Self.started(&d, Self.request() + "early-frame")
        #expect(forwarded.contains("Upgrade: websocket\r\n") && forwarded.hasSuffix("Connection: upgrade\r\n\r\n"), "\(forwarded)")
        #expect(forwarded.contains("Sec-WebSocket-Key: \(Self.key)\r\n") && !forwarded.contains("keep-alive"))
        #expect(!forwarded.contains("early-frame"), "held until the backend accepts")
        let actions = d.backend(Self.switching() + "server-frame")
        #expect(sent(actions, to: .client).hasSuffix("Connection: upgrade\r\n\r\nserver-frame"))
        #expect(sent(actions, to: .backend) == "early-frame")
        #expect(records(actions).map(\.status) == [101])
        #expect(actions.last == .tunnel && d.session.phase == .tunnel && d.session.tunnelKind == "websocket")
        #expect(d.client("more").isEmpty && d.on(.endOfFile(.backend, now: 9)).isEmpty, "the relay owns the sockets now")
    }

    @Test("a 101 without the right accept value, or without Upgrade: websocket, is the backend's error: 502, no tunnel",
          arguments: [switching(accept: "AAAAAAAAAAAAAAAAAAAAAAAAAAA="), switching(upgrade: "h2c"),
                      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"])
    func wrongAccept(response: String) {
        var d = HTTPDriver()
        _ = Self.started(&d, Self.request())
        let actions = d.backend(response)
        #expect(sent(actions, to: .client).hasPrefix("HTTP/1.1 502 Bad Gateway\r\n"))
        #expect(!actions.contains(.tunnel) && d.closed != nil)
    }

    @Test("declined (426, 200): the answer goes to the client as it is and the connection stays HTTP; early frames close it after")
    func declined() {
        var d = HTTPDriver()
        _ = Self.started(&d, Self.request())
        let refused = d.backend("HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnope")
        #expect(sent(refused, to: .client) == "HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnope")
        #expect(!refused.contains(.tunnel) && d.session.phase == .idle)
        var early = HTTPDriver()
        _ = Self.started(&early, Self.request() + "frame")
        let answer = early.backend("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        #expect(sent(answer, to: .client).contains("Connection: close\r\n") && early.closed != nil)
    }

    @Test("refused by the proxy: no key, a malformed key, two keys, not GET (400); another version (426 naming 13); websocket: false (403)")
    func refused() {
        let cases: [(String, Int, Bool)] = [
            (Self.request().replacingOccurrences(of: "Sec-WebSocket-Key: \(Self.key)\r\n", with: ""), 400, true),
            (Self.request(key: "short=="), 400, true),
            (Self.request("Sec-WebSocket-Key: \(Self.key)\r\n"), 400, true),
            (Self.request(method: "POST"), 400, true),
            (Self.request(version: "8"), 426, true),
            (Self.request(), 403, false),
        ]
        for (request, status, websocket) in cases {
            var d = HTTPDriver(websocket: websocket)
            d.on(.accepted(now: 0))
            let actions = d.client(request)
            let answer = sent(actions, to: .client)
            #expect(answer.hasPrefix("HTTP/1.1 \(status) "), "\(request)")
            #expect(!actions.contains { if case .acquire = $0 { return true } else { return false } }, "no backend asked")
            if status == 426 { #expect(answer.contains("Sec-WebSocket-Version: 13\r\n")) }
            #expect(d.closed != nil)
        }
    }

    @Test("other upgrades (h2c) and Upgrade on HTTP/1.0 go on as plain requests, Upgrade dropped; a 101 to them is a 502")
    func stripped() {
        var d = HTTPDriver()
        let h2c = Self.started(&d, "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
        #expect(!h2c.contains("Upgrade") && !h2c.contains("upgrade") && !h2c.contains("HTTP2-Settings"), "\(h2c)")
        #expect(sent(d.backend("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"), to: .client).hasPrefix("HTTP/1.1 502 "))
        var old = HTTPDriver()
        let http10 = Self.started(&old, Self.request(httpVersion: "1.0"))
        #expect(!http10.contains("Upgrade: websocket"), "\(http10)")
    }
}
