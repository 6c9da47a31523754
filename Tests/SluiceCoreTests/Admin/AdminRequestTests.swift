import Testing
@testable import SluiceCore

private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

/// Frames every line of `input` fed in chunks ending at `cuts`, as a
/// connection would: parse what is buffered, keep the rest for later.
private func frameLines(_ input: [UInt8], cuts: [Int]) -> (lines: [AdminLine], invalid: String?) {
    var buffered: [UInt8] = []
    var lines: [AdminLine] = []
    var start = 0
    for end in cuts + [input.count] {
        buffered += input[start..<end]
        start = end
        while true {
            switch AdminRequestParser.parse(buffered, endOfInput: end == input.count) {
            case .needMore: break
            case .invalid(let reason): return (lines, reason)
            case .done(let line, let consumed):
                lines.append(line)
                buffered.removeFirst(consumed)
                continue
            }
            break
        }
    }
    return (lines, nil)
}

@Suite("Admin requests")
struct AdminRequestTests {
    @Test(arguments: [
        ("{\"cmd\":\"status\"}", AdminRequest.status),
        (" { \"cmd\" : \"backends\" , \"extra\": [1, {\"x\": null}] } ", .backends),
        ("{\"cmd\":\"drain_backend\",\"pool\":\"web\",\"backend\":\"127.0.0.1:9001\"}",
         .drainBackend(pool: "web", backend: "127.0.0.1:9001", drained: true)),
        ("{\"backend\":\"[::1]:80\",\"pool\":\"w\\u00e9b\",\"cmd\":\"undrain_backend\"}",
         .drainBackend(pool: "wéb", backend: "[::1]:80", drained: false)),
        ("{\"cmd\":\"drain_worker\",\"worker\":3}", .drainWorker(3, drained: true)),
        ("{\"cmd\":\"undrain_worker\",\"worker\":0}", .drainWorker(0, drained: false)),
        ("{\"cmd\":\"status\",\"cmd\":\"backends\"}", .backends), // the last duplicate wins
    ])
    func parsesRequests(line: String, expected: AdminRequest) {
        #expect(AdminRequestParser.request(bytes(line)) == .success(expected))
    }

    @Test(arguments: [
        ("{", "expected one JSON object per line"),
        ("[]", "expected one JSON object per line"),
        ("42", "expected one JSON object per line"),
        ("\"cmd\"", "expected one JSON object per line"),
        ("{\"cmd\":\"status\"} {}", "expected one JSON object per line"),
        ("{\"cmd\":\"status\",}", "expected one JSON object per line"),
        ("{\"cmd\":7}", "missing \"cmd\""),
        ("{\"nocmd\":1}", "missing \"cmd\""),
        ("{\"cmd\":\"reboot\"}", "unknown cmd \"reboot\""),
        ("{\"cmd\":\"drain_worker\"}", "drain_worker needs \"worker\""),
        ("{\"cmd\":\"drain_worker\",\"worker\":1.5}", "drain_worker needs \"worker\""),
        ("{\"cmd\":\"drain_worker\",\"worker\":-1}", "drain_worker needs \"worker\""),
        ("{\"cmd\":\"drain_worker\",\"worker\":99999999999999999999999}", "drain_worker needs \"worker\""),
        ("{\"cmd\":\"drain_worker\",\"worker\":\"1\"}", "drain_worker needs \"worker\""),
        ("{\"cmd\":\"drain_backend\",\"pool\":\"web\"}", "drain_backend needs \"pool\" and \"backend\""),
        ("\u{1}\u{2}\u{7f}ÿ", "expected one JSON object per line"),
    ])
    func rejectsWithAReason(line: String, reasonStart: String) {
        guard case .failure(let error) = AdminRequestParser.request(bytes(line)) else {
            Issue.record("\(line) parsed as a request")
            return
        }
        #expect(error.message.hasPrefix(reasonStart), "\(error.message)")
    }

    @Test func anUnknownCommandIsQuotedShort() {
        let long = String(repeating: "x", count: 10_000)
        guard case .failure(let error) = AdminRequestParser.request(bytes("{\"cmd\":\"\(long)\"}")) else {
            Issue.record("parsed")
            return
        }
        #expect(error.message.utf8.count < 300)
    }

    @Test func frameSkipsBlankLinesAndWaitsForTheNewline() {
        #expect(AdminRequestParser.parse(bytes("{\"cmd\":\"status\"}")) == .needMore)
        #expect(AdminRequestParser.parse(bytes("{\"cmd\":\"status\"}"), endOfInput: true)
            == .done(.request(.status), consumed: 16))
        #expect(AdminRequestParser.parse(bytes(" \r\n{}")) == .done(.blank, consumed: 3))
        #expect(AdminRequestParser.parse([UInt8](), endOfInput: true) == .needMore)
    }

    @Test func aLineOverTheLimitIsInvalidBeforeItsNewlineArrives() {
        let huge = [UInt8](repeating: UInt8(ascii: "x"), count: AdminRequestParser.maxLineBytes + 1)
        guard case .invalid(let reason) = AdminRequestParser.parse(huge) else {
            Issue.record("not invalid")
            return
        }
        #expect(reason.contains("too large"))
        let atLimit = [UInt8](repeating: UInt8(ascii: " "), count: AdminRequestParser.maxLineBytes)
        #expect(AdminRequestParser.parse(atLimit) == .needMore)
    }

    static let session = bytes(
        "{\"cmd\":\"status\"}\n\n{\"cmd\":\"drain_worker\",\"worker\":12}\r\n{oops}\n"
            + "{\"cmd\":\"undrain_backend\",\"pool\":\"p\",\"backend\":\"\\ud83d\\ude00\"}\n{\"cmd\":\"backends\"}")
    static let expectedSession: [AdminLine] = [
        .request(.status), .blank, .request(.drainWorker(12, drained: true)),
        .malformed(AdminRequestError("expected one JSON object per line, such as {\"cmd\":\"status\"}")),
        .request(.drainBackend(pool: "p", backend: "😀", drained: false)), .request(.backends),
    ]

    @Test func framesTheSameLinesWholeAndByteByByte() {
        #expect(frameLines(Self.session, cuts: []).lines == Self.expectedSession)
        let everyByte = frameLines(Self.session, cuts: Array(1..<Self.session.count))
        #expect(everyByte.lines == Self.expectedSession)
        #expect(everyByte.invalid == nil)
    }

    @Test func framesTheSameLinesInRandomSplits() {
        var generator = BalancingSplitMix64(seed: 11) // deterministic: a failure names cuts that reproduce it
        for _ in 0..<500 {
            let cutCount = Int(generator.next() % 8)
            let cuts = (0..<cutCount).map { _ in Int(generator.next() % UInt64(Self.session.count)) }.sorted()
            #expect(frameLines(Self.session, cuts: cuts).lines == Self.expectedSession, "cuts \(cuts)")
        }
    }
}

@Suite("JSON reader")
struct JSONReaderTests {
    @Test func readsEveryKindOfValue() throws {
        let value = try JSONReader.parse(bytes("{\"a\":[true,false,null,-0.5e+3,\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"],\"b\":{}}"))
        #expect(value == .object([
            "a": .array([.bool(true), .bool(false), .null, .number("-0.5e+3"), .string("\"\\/\u{8}\u{C}\n\r\t")]),
            "b": .object([:]),
        ]))
    }

    @Test(arguments: [
        "", " ", "{", "{\"a\"}", "{\"a\":}", "[1,]", "01", "1.", "-", "1e", "\"\\x\"", "\"\\u12\"", "\"\\ud800\"",
        "\"\\udc00\"", "\"a\u{1}\"", "tru", "nul", "{\"a\":1 \"b\":2}", "[1 2]", "\"unterminated",
    ])
    func rejectsMalformedJSON(text: String) {
        #expect(throws: JSONSyntaxError.self) { try JSONReader.parse(bytes(text)) }
    }

    @Test func rejectsInvalidUTF8InStrings() {
        #expect(throws: JSONSyntaxError.self) { try JSONReader.parse([0x22, 0xFF, 0x22]) }
        #expect(throws: JSONSyntaxError.self) { try JSONReader.parse([0x22, 0xC3, 0x22]) }
        #expect((try? JSONReader.parse([0x22, 0xC3, 0xA9, 0x22])) == .string("é"))
    }

    @Test func refusesNestingBeyondTheLimitWithoutRecursingFurther() {
        let deep = bytes(String(repeating: "[", count: 100_000))
        #expect(throws: JSONSyntaxError.self) { try JSONReader.parse(deep) }
        let atLimit = String(repeating: "[", count: JSONReader.maxDepth) + String(repeating: "]", count: JSONReader.maxDepth)
        #expect((try? JSONReader.parse(bytes(atLimit))) != nil)
        let overLimit = "[" + atLimit + "]"
        #expect((try? JSONReader.parse(bytes(overLimit))) == nil)
    }
}

@Suite("Metrics request heads")
struct MetricsRequestTests {
    @Test(arguments: [
        ("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", MetricsRequest.metrics),
        ("GET /metrics?name[]=up HTTP/1.0\r\n\r\n", .metrics),
        ("HEAD /metrics HTTP/1.1\n\n", .metrics),
        ("GET / HTTP/1.1\r\n\r\n", .notFound),
        ("GET /metricsx HTTP/1.1\r\n\r\n", .notFound),
        ("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", .methodNotAllowed),
    ])
    func parsesTheRequestLine(head: String, expected: MetricsRequest) {
        #expect(MetricsRequestParser.parse(bytes(head)) == .done(expected, consumed: head.utf8.count))
    }

    @Test func theSameHeadByteByByteNeedsMoreUntilItsEnd() {
        let head = bytes("GET /metrics HTTP/1.1\r\nAccept: */*\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n")
        let firstLength = 38
        for end in 0..<firstLength {
            #expect(MetricsRequestParser.parse(head[..<end]) == .needMore, "at \(end)")
        }
        #expect(MetricsRequestParser.parse(head) == .done(.metrics, consumed: firstLength))
    }

    @Test(arguments: ["GET /metrics\r\n\r\n", "GET  /metrics HTTP/1.1\r\n\r\n", "\r\n\r\n", "GET /metrics SPDY/3\r\n\r\n"])
    func rejectsWhatIsNotHTTP1(head: String) {
        guard case .invalid = MetricsRequestParser.parse(bytes(head)) else {
            Issue.record("\(head) accepted")
            return
        }
    }

    @Test func aHeadOverTheLimitIsInvalidWithoutItsEnd() {
        let endless = bytes("GET /metrics HTTP/1.1\r\n" + String(repeating: "X-Pad: y\r\n", count: 1000))
        #expect(MetricsRequestParser.parse(endless) == .invalid("request head too large"))
    }
}

@Suite("admin.idle_timeout")
struct AdminIdleTimeoutConfigTests {
    @Test func decodesAndDefaultsToNil() throws {
        let set = try decodeConfig("admin: { idle_timeout: 1500ms }\n" + minimalConfigYAML)
        #expect(set.config.admin?.idleTimeout == .milliseconds(1500))
        let unset = try decodeConfig("admin: { metrics: off }\n" + minimalConfigYAML)
        #expect(unset.config.admin?.idleTimeout == nil)
    }

    @Test func rejectsANonPositiveTimeoutWithItsPath() {
        let error = singleConfigError("admin: { idle_timeout: 0s }\n" + minimalConfigYAML)
        #expect(error?.path == "admin.idle_timeout")
    }
}
