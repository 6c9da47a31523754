import SluiceCore
import Testing

/// A request refused with `status`, whose reason contains `reason`.
struct Refusal: CustomTestStringConvertible, Sendable {
    let head: String
    let status: Int
    let reason: String
    var testDescription: String { "\(status) \(reason): \(head.debugDescription.prefix(60))" }
}

let refusals: [Refusal] = [
    // Framing that two parsers could read two ways: request smuggling.
    Refusal(head: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", status: 400, reason: "more than one Content-Length"),
    Refusal(head: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", status: 400, reason: "malformed Content-Length"),
    Refusal(head: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", status: 400, reason: "malformed Content-Length"),
    Refusal(head: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", status: 400, reason: "malformed Content-Length"),
    Refusal(head: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", status: 400, reason: "malformed Content-Length"),
    Refusal(head: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 0\r\n\r\n", status: 400, reason: "malformed Content-Length"),
    Refusal(head: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9999999999999999999\r\n\r\n", status: 400, reason: "malformed Content-Length"),
    Refusal(head: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", status: 400, reason: "malformed Content-Length"),
    Refusal(head: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", status: 400, reason: "both"),
    Refusal(head: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", status: 400, reason: "both"),
    Refusal(head: "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", status: 400, reason: "HTTP/1.0"),
    Refusal(head: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", status: 400, reason: "once"),
    Refusal(head: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", status: 400, reason: "once"),
    Refusal(head: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", status: 400, reason: "last"),
    Refusal(head: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", status: 400, reason: "last"),
    Refusal(head: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", status: 400, reason: "empty Transfer-Encoding"),
    Refusal(head: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", status: 501, reason: "unknown transfer coding"),
    Refusal(head: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo, chunked\r\n\r\n", status: 501, reason: "unknown transfer coding"),
    Refusal(head: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", status: 501, reason: "unknown transfer coding"),
    // Syntax a lenient parser would repair.
    Refusal(head: "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n", status: 400, reason: "obs-fold"),
    Refusal(head: "GET / HTTP/1.1\r\n Host: a\r\n\r\n", status: 400, reason: "obs-fold"),
    Refusal(head: "GET / HTTP/1.1\r\nHost : a\r\n\r\n", status: 400, reason: "whitespace before the colon"),
    Refusal(head: "GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", status: 400, reason: "whitespace before the colon"),
    Refusal(head: "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", status: 400, reason: "bare CR"),
    Refusal(head: "GET / HTTP/1.1\nHost: a\n\n", status: 400, reason: "bare LF"),
    Refusal(head: "GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", status: 400, reason: "bare LF"),
    Refusal(head: "GET / HTTP/1.1\r\nHost: a\r\nX: a\u{0}b\r\n\r\n", status: 400, reason: "NUL"),
    Refusal(head: "GET / HTTP/1.1\r\nHost: a\r\nX: a\u{1}b\r\n\r\n", status: 400, reason: "control character"),
    Refusal(head: "GET / HTTP/1.1\r\nHost: a\r\nX: a\u{7F}b\r\n\r\n", status: 400, reason: "control character"),
    Refusal(head: "GET / HTTP/1.1\r\nHost: a\r\nX(: b\r\n\r\n", status: 400, reason: "malformed field name"),
    Refusal(head: "GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", status: 400, reason: "malformed field name"),
    Refusal(head: "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", status: 400, reason: "empty line before the start line"),
    // Host.
    Refusal(head: "GET / HTTP/1.1\r\n\r\n", status: 400, reason: "missing Host"),
    Refusal(head: "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", status: 400, reason: "more than one Host"),
    Refusal(head: "GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n", status: 400, reason: "more than one Host"),
    Refusal(head: "GET / HTTP/1.1\r\nHost:\r\n\r\n", status: 400, reason: "malformed Host"),
    Refusal(head: "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", status: 400, reason: "malformed Host"),
    Refusal(head: "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", status: 400, reason: "malformed Host"),
    // The request line.
    Refusal(head: "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", status: 400, reason: "malformed request target"),
    Refusal(head: "G@T / HTTP/1.1\r\nHost: a\r\n\r\n", status: 400, reason: "malformed method"),
    Refusal(head: " GET / HTTP/1.1\r\nHost: a\r\n\r\n", status: 400, reason: "malformed method"),
    Refusal(head: "GET / HTTP/1.1 \r\nHost: a\r\n\r\n", status: 400, reason: "malformed request line"),
    Refusal(head: "GET /\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n", status: 400, reason: "malformed request target"),
    Refusal(head: "GET * HTTP/1.1\r\nHost: a\r\n\r\n", status: 400, reason: "OPTIONS only"),
    Refusal(head: "GET /a{b} HTTP/1.1\r\nHost: a\r\n\r\n", status: 400, reason: "malformed request target"),
    Refusal(head: "GET /a|b HTTP/1.1\r\nHost: a\r\n\r\n", status: 400, reason: "malformed request target"),
    Refusal(head: "GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", status: 400, reason: "malformed request target"),
    Refusal(head: "GET /a\"b HTTP/1.1\r\nHost: a\r\n\r\n", status: 400, reason: "malformed request target"),
    Refusal(head: "GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", status: 400, reason: "malformed request target"),
    Refusal(head: "CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n", status: 400, reason: "CONNECT needs host:port"),
    Refusal(head: "GET / http/1.1\r\nHost: a\r\n\r\n", status: 400, reason: "malformed version"),
    Refusal(head: "GET / HTTP/1\r\nHost: a\r\n\r\n", status: 400, reason: "malformed version"),
    Refusal(head: "GET / HTTP/2.0\r\nHost: a\r\n\r\n", status: 505, reason: "not supported"),
    Refusal(head: "GET / HTTP/1.2\r\nHost: a\r\n\r\n", status: 505, reason: "not supported"),
]

@Suite("HTTP head parser: requests")
struct HTTPRequestParserTests {
    @Test("a GET: method, target, version, Host and fields as ranges; no body; keep-alive")
    func simpleGet() throws {
        let raw = Array("GET /a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\nAccept:  */* \r\nX-Empty:\r\n\r\n".utf8)
        guard case .complete(let head) = parseRequestInPieces(raw, cuts: []) else { Issue.record("not parsed"); return }
        #expect(head.method == .get && text(raw, head.methodRange) == "GET")
        #expect(text(raw, head.target) == "/a/b?c=d")
        #expect(head.version == .http11)
        #expect(text(raw, head.host) == "example.com:8080")
        #expect(head.fields.map { text(raw, $0.name)! } == ["Host", "Accept", "X-Empty"])
        #expect(head.fields.map { text(raw, $0.value)! } == ["example.com:8080", "*/*", ""])
        #expect(head.framing == .none && head.keepAlive && !head.upgrade)
        #expect(head.length == raw.count)
    }

    @Test("a head followed by its body and the next request: the length stops at the empty line")
    func lengthStopsAtTheEmptyLine() {
        let head = "POST /up HTTP/1.1\r\nHost: a\r\ncontent-length: 5\r\n\r\n"
        guard case .complete(let parsed) = parseRequest(head + "helloGET / HTTP/1.1\r\n") else { Issue.record("not parsed"); return }
        #expect(parsed.length == head.utf8.count)
        #expect(parsed.framing == .length(5))
        #expect(parsed.method == .post && !parsed.method.isIdempotent)
    }

    @Test("body framing: Content-Length, chunked (last coding, once), and none")
    func framing() {
        func framing(_ fields: String, version: String = "1.1") -> HTTPBodyFraming? {
            if case .complete(let head) = parseRequest("POST / HTTP/\(version)\r\nHost: a\r\n\(fields)\r\n") { return head.framing }
            return nil
        }
        #expect(framing("Content-Length: 42\r\n") == .length(42))
        #expect(framing("Content-Length: 0\r\n") == HTTPBodyFraming.none)
        #expect(framing("Content-Length: 000012\r\n") == .length(12))
        #expect(framing("Transfer-Encoding: chunked\r\n") == .chunked)
        #expect(framing("Transfer-Encoding: CHUNKED\r\n") == .chunked)
        #expect(framing("Transfer-Encoding: gzip, chunked\r\n") == .chunked)
        #expect(framing("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n") == .chunked)
        #expect(framing("Transfer-Encoding: , chunked ,\r\n") == .chunked)
        #expect(framing("") == HTTPBodyFraming.none)
        #expect(framing("Content-Length: 7\r\n", version: "1.0") == .length(7))
    }

    @Test("keep-alive: HTTP/1.1 unless close; HTTP/1.0 only with keep-alive; upgrade needs both fields")
    func connection() {
        func head(_ version: String, _ fields: String) -> HTTPRequestHead? {
            if case .complete(let h) = parseRequest("GET / HTTP/\(version)\r\nHost: a\r\n\(fields)\r\n") { return h }
            return nil
        }
        #expect(head("1.1", "")?.keepAlive == true)
        #expect(head("1.1", "Connection: close\r\n")?.keepAlive == false)
        #expect(head("1.1", "Connection: Keep-Alive, CLOSE\r\n")?.keepAlive == false)
        #expect(head("1.0", "")?.keepAlive == false)
        #expect(head("1.0", "Connection: keep-alive\r\n")?.keepAlive == true)
        #expect(head("1.1", "Connection: Upgrade\r\nUpgrade: websocket\r\n")?.upgrade == true)
        #expect(head("1.1", "Upgrade: websocket\r\n")?.upgrade == false)
        #expect(head("1.1", "Connection: upgrade\r\n")?.upgrade == false)
    }

    @Test("request targets: origin, absolute, authority for CONNECT, asterisk for OPTIONS; HTTP/1.0 without Host")
    func targets() {
        for line in ["GET http://a/b HTTP/1.1", "GET HTTPS://a HTTP/1.1", "CONNECT a:443 HTTP/1.1", "OPTIONS * HTTP/1.1"] {
            guard case .complete = parseRequest(line + "\r\nHost: a\r\n\r\n") else { Issue.record("\(line) refused"); continue }
        }
        guard case .complete(let head) = parseRequest("GET / HTTP/1.0\r\n\r\n") else { Issue.record("1.0 refused"); return }
        #expect(head.host == nil && head.version == .http10)
        guard case .complete(let other) = parseRequest("PURGE /x HTTP/1.1\r\nHost: a\r\n\r\n") else { Issue.record(); return }
        #expect(other.method == .other)
        guard case .complete(let lower) = parseRequest("get /x HTTP/1.1\r\nHost: a\r\n\r\n") else { Issue.record(); return }
        #expect(lower.method == .other, "methods are case-sensitive")
    }

    @Test("every refusal class gets its status, and nothing of it is forwarded", arguments: refusals)
    func refused(_ refusal: Refusal) {
        let answer = parseRequest(refusal.head)
        guard case .invalid(let error) = answer else { Issue.record("accepted: \(answer)"); return }
        #expect(error.status == refusal.status && error.reason.contains(refusal.reason), "\(error)")
    }

    @Test("the same answer whether bytes come whole, one by one, or in random pieces", arguments: 0..<refusals.count + 6)
    func splitsDoNotMatter(index: Int) {
        let valid = [
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            "PUT /y HTTP/1.0\r\nContent-Length: 10\r\nX: \u{80}\u{ff}\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
            "DELETE /z HTTP/1.1\r\nhost: b\r\naccept: */*\r\n\r\n",
        ]
        let raw = Array((index < refusals.count ? refusals[index].head : valid[index - refusals.count]).utf8)
        let whole = parseRequestInPieces(raw, cuts: [])
        #expect(whole != .incomplete)
        #expect(parseRequestInPieces(raw, cuts: everyByte(raw.count)) == whole)
        for seed in 0..<8 {
            #expect(parseRequestInPieces(raw, cuts: randomCuts(raw.count, count: 1 + seed, seed: UInt64(seed))) == whole)
        }
    }

    @Test("a bad byte is refused as soon as it arrives, not when the head is complete")
    func refusedEarly() {
        var parser = HTTPHeadParser()
        let partial = Array("GET / HTTP/1.1\r\nHost: a\nX".utf8)
        #expect(partial.withUnsafeBytes { parser.parseRequest($0) } == .invalid(HTTPError(400, "bare LF")))
        var second = HTTPHeadParser()
        #expect(Array("GET /\u{0}".utf8).withUnsafeBytes { second.parseRequest($0) } == .invalid(HTTPError(400, "NUL in the head")))
    }

    @Test("limits: a long request line is 414, a large head or too many fields 431, even before the head is complete")
    func limits() {
        let limits = HTTPLimits(maxHead: 1024, maxFields: 4, maxRequestLine: 64)
        let longLine = "GET /" + String(repeating: "a", count: 100)
        guard case .invalid(let e414) = parseRequest(longLine, limits: limits) else { Issue.record(); return }
        #expect(e414.status == 414)
        guard case .complete = parseRequest("GET /\(String(repeating: "a", count: 40)) HTTP/1.1\r\nHost: a\r\n\r\n", limits: limits) else {
            Issue.record("a line within the limit was refused"); return
        }
        let bigHead = "GET / HTTP/1.1\r\nHost: a\r\nX: " + String(repeating: "b", count: 2000)
        guard case .invalid(let e431) = parseRequest(bigHead, limits: limits) else { Issue.record(); return }
        #expect(e431.status == 431)
        let fields = "GET / HTTP/1.1\r\nHost: a\r\n" + (0..<4).map { "X\($0): y\r\n" }.joined()
        guard case .invalid(let many) = parseRequest(fields, limits: limits) else { Issue.record(); return }
        #expect(many.status == 431)
        guard case .complete = parseRequest("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", limits: limits) else {
            Issue.record("four fields refused"); return
        }
    }

    @Test("reset starts over for the next head on a shifted buffer")
    func reset() {
        var parser = HTTPHeadParser()
        let first = Array("GET /1 HTTP/1.1\r\nHo".utf8)
        #expect(first.withUnsafeBytes { parser.parseRequest($0) } == .incomplete)
        parser.reset()
        let second = Array("GET /2 HTTP/1.1\r\nHost: a\r\n\r\n".utf8)
        guard case .complete(let head) = second.withUnsafeBytes({ parser.parseRequest($0) }) else { Issue.record(); return }
        #expect(text(second, head.target) == "/2")
    }

    @Test("recycled fields storage: the next head has exactly its own fields, and a head still held keeps its own")
    func recycledFields() {
        var parser = HTTPHeadParser()
        let big = Array("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nConnection: keep-alive, x\r\n\r\n".utf8)
        let small = Array("GET / HTTP/1.1\r\nHost: b\r\n\r\n".utf8)
        guard case .complete(let first) = big.withUnsafeBytes({ parser.parseRequest($0) }) else { Issue.record(); return }
        parser.reset()
        parser.recycle(first.fields)
        guard case .complete(let second) = small.withUnsafeBytes({ parser.parseRequest($0) }) else { Issue.record(); return }
        #expect(second.fields.map { text(small, $0.value) } == ["b"])
        #expect(first.fields.map { text(big, $0.value) } == ["a", "1", "2", "keep-alive, x"])
        #expect(first.keepAlive)
        parser.reset()
        parser.recycle(second.fields)
        let response = Array("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".utf8)
        guard case .complete(let head) = response.withUnsafeBytes({ parser.parseResponse($0, requestMethod: .get) }) else {
            Issue.record()
            return
        }
        #expect(head.fields.count == 2 && !head.keepAlive)
        #expect(second.fields.map { text(small, $0.value) } == ["b"])
    }
}
