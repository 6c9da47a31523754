import SluiceCore

/// Feeds `bytes` to one parser as a stream arriving in pieces ending at
/// `cuts` (and at the end): each call sees everything received so far, as
/// the worker's buffer would hold it. The first answer that is not
/// `incomplete`, or `incomplete`.
func parseRequestInPieces(_ bytes: [UInt8], cuts: [Int], limits: HTTPLimits = HTTPLimits()) -> HTTPParse<HTTPRequestHead> {
    var parser = HTTPHeadParser(limits: limits)
    for end in (cuts.filter { $0 > 0 && $0 < bytes.count } + [bytes.count]) {
        let answer = bytes[0..<end].withUnsafeBytes { parser.parseRequest($0) }
        if answer != .incomplete { return answer }
    }
    return .incomplete
}

func parseResponseInPieces(_ bytes: [UInt8], cuts: [Int], method: HTTPMethod = .get) -> HTTPParse<HTTPResponseHead> {
    var parser = HTTPHeadParser()
    for end in (cuts.filter { $0 > 0 && $0 < bytes.count } + [bytes.count]) {
        let answer = bytes[0..<end].withUnsafeBytes { parser.parseResponse($0, requestMethod: method) }
        if answer != .incomplete { return answer }
    }
    return .incomplete
}

func parseRequest(_ text: String, limits: HTTPLimits = HTTPLimits()) -> HTTPParse<HTTPRequestHead> {
    parseRequestInPieces(Array(text.utf8), cuts: [], limits: limits)
}

func parseResponse(_ text: String, method: HTTPMethod = .get) -> HTTPParse<HTTPResponseHead> {
    parseResponseInPieces(Array(text.utf8), cuts: [], method: method)
}

/// Split points: every byte, or `count` random ones from `seed`.
func everyByte(_ length: Int) -> [Int] { Array(1..<max(1, length)) }

func randomCuts(_ length: Int, count: Int, seed: UInt64) -> [Int] {
    var state = seed
    func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    guard length > 1 else { return [] }
    return (0..<count).map { _ in 1 + Int(next() % UInt64(length - 1)) }.sorted()
}

/// The text a range of `bytes` covers.
func text(_ bytes: [UInt8], _ range: Range<Int>?) -> String? {
    range.map { String(decoding: bytes[$0], as: UTF8.self) }
}

/// Runs a chunked body through a decoder in pieces; (bytes consumed, outcome).
func decodeChunked(_ bytes: [UInt8], cuts: [Int]) -> (consumed: Int, outcome: HTTPChunkedDecoder.Outcome) {
    var decoder = HTTPChunkedDecoder()
    var offset = 0
    for end in (cuts.filter { $0 > 0 && $0 < bytes.count } + [bytes.count]) where end > offset {
        let (n, outcome) = bytes[offset..<end].withUnsafeBytes { decoder.consume($0) }
        offset += n
        if outcome != .more { return (offset, outcome) }
    }
    return (offset, .more)
}
