// Feeds arbitrary bytes to the HTTP/1.1 head parser and the chunked body
// checker. The first byte picks what the rest is: a request head (0), a
// response head (1) or a chunked body (2). Findings:
// - a trap anywhere;
// - an answer that depends on how the bytes were split (whole, byte by byte,
//   or in pieces cut where the input says);
// - a head whose ranges fall outside it, or whose own bytes parse differently;
// - a request head this parser accepts that NIOHTTP1 (llhttp) refuses, or
//   reads with another method, target or version: the reference may be more
//   lenient than this parser, never stricter.
import NIOCore
import NIOEmbedded
import NIOHTTP1
import SluiceCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard size > 0, let data else { return 0 }
    let mode = data[0] % 3
    let bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    // Cut points taken from the input itself, so that a finding replays.
    let cuts = bytes.isEmpty ? [] : stride(from: 0, to: min(bytes.count, 16), by: 1).map { 1 + Int(bytes[$0]) % bytes.count }.sorted()
    switch mode {
    case 0: checkRequest(bytes, cuts: cuts)
    case 1: checkResponse(bytes, cuts: cuts)
    default: checkChunked(bytes, cuts: cuts)
    }
    return 0
}

func inPieces<T: Equatable>(_ bytes: [UInt8], _ cuts: [Int], _ parse: (inout HTTPHeadParser, UnsafeRawBufferPointer) -> HTTPParse<T>) -> HTTPParse<T> {
    var parser = HTTPHeadParser()
    for end in cuts.filter({ $0 < bytes.count }) + [bytes.count] {
        let answer = bytes[0..<end].withUnsafeBytes { parse(&parser, $0) }
        if answer != .incomplete { return answer }
    }
    return .incomplete
}

func checkRequest(_ bytes: [UInt8], cuts: [Int]) {
    let parse = { (p: inout HTTPHeadParser, b: UnsafeRawBufferPointer) in p.parseRequest(b) }
    let whole = inPieces(bytes, [], parse)
    precondition(inPieces(bytes, cuts, parse) == whole, "the answer depends on the pieces")
    precondition(inPieces(bytes, Array(0..<bytes.count), parse) == whole, "the answer depends on the pieces")
    guard case .complete(let head) = whole else { return }
    precondition(head.length <= bytes.count)
    for field in head.fields { precondition(field.name.upperBound <= head.length && field.value.upperBound <= head.length) }
    precondition(inPieces(Array(bytes[0..<head.length]), [], parse) == whole, "the head alone parses differently")
    compareWithNIO(Array(bytes[0..<head.length]), head)
}

func compareWithNIO(_ head: [UInt8], _ ours: SluiceCore.HTTPRequestHead) {
    // llhttp knows a fixed list of methods; other tokens are fine by RFC 9110.
    guard ours.method != SluiceCore.HTTPMethod.other else { return }
    let channel = EmbeddedChannel(handler: ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes)))
    defer { _ = try? channel.finish() }
    var buffer = channel.allocator.buffer(capacity: head.count)
    buffer.writeBytes(head)
    do {
        try channel.writeInbound(buffer)
    } catch {
        preconditionFailure("accepted a head llhttp refuses: \(error)")
    }
    guard case .head(let theirs)? = try? channel.readInbound(as: HTTPServerRequestPart.self) else {
        preconditionFailure("llhttp saw no head in one this parser accepted")
    }
    precondition(theirs.method.rawValue == String(decoding: head[ours.methodRange], as: UTF8.self), "method differs")
    precondition(theirs.uri == String(decoding: head[ours.target], as: UTF8.self), "target differs")
    precondition(theirs.version == (ours.version == SluiceCore.HTTPVersion.http11 ? NIOHTTP1.HTTPVersion.http1_1 : NIOHTTP1.HTTPVersion.http1_0), "version differs")
}

func checkResponse(_ bytes: [UInt8], cuts: [Int]) {
    for method in [SluiceCore.HTTPMethod.get, .head, .connect] {
        let parse = { (p: inout HTTPHeadParser, b: UnsafeRawBufferPointer) in p.parseResponse(b, requestMethod: method) }
        let whole = inPieces(bytes, [], parse)
        precondition(inPieces(bytes, cuts, parse) == whole, "the answer depends on the pieces")
        if case .complete(let head) = whole {
            precondition(head.length <= bytes.count && (100...599).contains(head.status))
            if method == .head { precondition(head.framing == .none || head.framing == .tunnel) }
        }
    }
}

func checkChunked(_ bytes: [UInt8], cuts: [Int]) {
    func run(_ ends: [Int]) -> (Int, HTTPChunkedDecoder.Outcome) {
        var decoder = HTTPChunkedDecoder()
        var offset = 0
        for end in ends.filter({ $0 < bytes.count }) + [bytes.count] where end > offset {
            let (n, outcome) = bytes[offset..<end].withUnsafeBytes { decoder.consume($0) }
            precondition(n <= end - offset)
            offset += n
            if outcome != .more { return (offset, outcome) }
        }
        return (offset, .more)
    }
    let whole = run([])
    let split = run(cuts)
    precondition(whole.0 == split.0 && whole.1 == split.1, "the answer depends on the pieces")
    let byByte = run(Array(0..<bytes.count))
    precondition(whole.0 == byByte.0 && whole.1 == byByte.1, "the answer depends on the pieces")
}
