import SluiceCore
import Testing

@Suite("HTTP head parser: responses")
struct HTTPResponseParserTests {
    func framing(_ head: String, method: HTTPMethod = .get) -> HTTPBodyFraming? {
        if case .complete(let parsed) = parseResponse(head, method: method) { return parsed.framing }
        return nil
    }

    @Test("framing by RFC 9112 6.3: HEAD, 1xx, 204 and 304 carry no body whatever their fields say")
    func noBodyCases() {
        #expect(framing("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n") == .length(3))
        #expect(framing("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", method: .head) == HTTPBodyFraming.none)
        #expect(framing("HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n") == HTTPBodyFraming.none)
        #expect(framing("HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n") == HTTPBodyFraming.none)
        #expect(framing("HTTP/1.1 100 Continue\r\n\r\n") == HTTPBodyFraming.none)
        #expect(framing("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n") == HTTPBodyFraming.none)
        #expect(framing("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n") == HTTPBodyFraming.none)
    }

    @Test("tunnels, chunked, close-delimited")
    func otherFraming() {
        #expect(framing("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n") == .tunnel)
        #expect(framing("HTTP/1.1 200 Connection established\r\n\r\n", method: .connect) == .tunnel)
        #expect(framing("HTTP/1.1 407 Auth\r\nContent-Length: 0\r\n\r\n", method: .connect) == HTTPBodyFraming.none)
        #expect(framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n") == .chunked)
        #expect(framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n") == .untilClose)
        #expect(framing("HTTP/1.1 200 OK\r\n\r\n") == .untilClose)
        #expect(framing("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n") == HTTPBodyFraming.none, "an empty reason phrase")
    }

    @Test("keep-alive: a close-delimited body ends the connection; HTTP/1.0 keeps it only when asked")
    func keepAlive() {
        func alive(_ head: String) -> Bool? {
            if case .complete(let parsed) = parseResponse(head) { return parsed.keepAlive }
            return nil
        }
        #expect(alive("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n") == true)
        #expect(alive("HTTP/1.1 200 OK\r\n\r\n") == false)
        #expect(alive("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n") == false)
        #expect(alive("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n") == false)
        #expect(alive("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n") == true)
    }

    @Test("a malformed response head is the backend's fault: 502", arguments: [
        "HTTP/1.1 20 OK\r\n\r\n", "HTTP/1.1 600 X\r\n\r\n", "HTTP/1.1 200OK\r\n\r\n", "HTTP/1.1  200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", "HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        "HTTP/1.1 200 O\u{1}K\r\n\r\n", "HTTP/2 200 OK\r\n\r\n", "ICY 200 OK\r\n\r\n",
    ])
    func refused(head: String) {
        let raw = Array(head.utf8)
        let whole = parseResponseInPieces(raw, cuts: [])
        guard case .invalid(let error) = whole else { Issue.record("accepted: \(whole)"); return }
        #expect(error.status == 502)
        #expect(parseResponseInPieces(raw, cuts: everyByte(raw.count)) == whole)
    }

    @Test("byte by byte and in random pieces, the same head")
    func splits() {
        let raw = Array("HTTP/1.1 200 OK\r\nServer: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".utf8)
        let whole = parseResponseInPieces(raw, cuts: [])
        guard case .complete(let head) = whole else { Issue.record(); return }
        #expect(head.status == 200 && head.framing == .chunked && head.length == raw.count - 15)
        #expect(parseResponseInPieces(raw, cuts: everyByte(raw.count)) == whole)
        for seed in 0..<16 { #expect(parseResponseInPieces(raw, cuts: randomCuts(raw.count, count: 3, seed: UInt64(seed))) == whole) }
    }
}

@Suite("HTTP chunked bodies")
struct HTTPChunkedDecoderTests {
    static let body = "5\r\nhello\r\n1A;name=\"v\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Sum: 31\r\n\r\n"

    @Test("a chunked body is consumed to its last byte, whatever the pieces; the next message is left alone")
    func validBody() {
        let raw = Array((Self.body + "GET / HTTP/1.1\r\n").utf8)
        let expected = Self.body.utf8.count
        #expect(decodeChunked(raw, cuts: []).consumed == expected)
        #expect(decodeChunked(raw, cuts: []).outcome == .done)
        let byByte = decodeChunked(raw, cuts: everyByte(raw.count))
        #expect(byByte.consumed == expected && byByte.outcome == .done)
        for seed in 0..<32 {
            let split = decodeChunked(raw, cuts: randomCuts(raw.count, count: 4, seed: UInt64(seed)))
            #expect(split.consumed == expected && split.outcome == .done)
        }
        #expect(decodeChunked(Array("0\r\n\r\n".utf8), cuts: []).outcome == .done)
        #expect(decodeChunked(Array("00000\r\n\r\n".utf8), cuts: []).outcome == .done)
        #expect(decodeChunked(Array("A\r\n0123456789\r\n0\r\n\r\n".utf8), cuts: [4]).outcome == .done)
    }

    @Test("a body cut short is not done")
    func incomplete() {
        for end in [0, 2, 5, 9, 40, Self.body.utf8.count - 1] {
            #expect(decodeChunked(Array(Self.body.utf8.prefix(end)), cuts: []).outcome == .more, "\(end)")
        }
    }

    @Test("malformed framing is refused with 400", arguments: [
        "5\r\nhello\n0\r\n\r\n", "5\nhello\r\n0\r\n\r\n", "5\r\nhelloX\r\n0\r\n\r\n", "x\r\n", " 5\r\nhello\r\n",
        "5 \r\nhello\r\n", "-5\r\n", "0x5\r\n", "+5\r\n", ";ext\r\n", "\r\n", "11111111111111111\r\n",
        "5;a\u{1}\r\nhello\r\n", "0\r\n\r\r\n", "0\r\nX: a\r\n b\r\n\r\n", "0\r\nX : a\r\n\r\n", "0\r\nX: a\u{0}\r\n\r\n",
        "0\r\nX: a\nY: b\r\n\r\n", "0\r\n\rX",
    ])
    func refused(body: String) {
        let raw = Array(body.utf8)
        let whole = decodeChunked(raw, cuts: [])
        guard case .invalid(let error) = whole.outcome else { Issue.record("accepted: \(whole)"); return }
        #expect(error.status == 400)
        let byByte = decodeChunked(raw, cuts: everyByte(raw.count))
        #expect(byByte.outcome == whole.outcome && byByte.consumed == whole.consumed)
    }

    @Test("bounded: a size line of extensions and a trailer section cannot grow without end")
    func bounded() {
        let longExtension = "5;" + String(repeating: "a", count: HTTPChunkedDecoder.maxLine) + "\r\n"
        guard case .invalid = decodeChunked(Array(longExtension.utf8), cuts: []).outcome else { Issue.record(); return }
        let longTrailer = "0\r\n" + String(repeating: "X: y\r\n", count: HTTPChunkedDecoder.maxTrailer / 6 + 1) + "\r\n"
        guard case .invalid = decodeChunked(Array(longTrailer.utf8), cuts: []).outcome else { Issue.record(); return }
    }

    @Test("data can be moved without looking (splice(2)): skipData keeps the framing in step")
    func skipData() {
        var decoder = HTTPChunkedDecoder()
        let head = Array("10\r\n".utf8)
        #expect(head.withUnsafeBytes { decoder.consume($0) } == (4, .more))
        #expect(decoder.dataRemaining == 16)
        decoder.skipData(10)
        #expect(decoder.dataRemaining == 6)
        decoder.skipData(7) // more than is left: ignored
        #expect(decoder.dataRemaining == 6)
        decoder.skipData(6)
        #expect(decoder.dataRemaining == 0)
        let rest = Array("\r\n0\r\n\r\n".utf8)
        #expect(rest.withUnsafeBytes { decoder.consume($0) } == (rest.count, .done))
    }
}
