/// The HTTP request head of a client of the metrics endpoint, parsed by hand
/// (one route, GET only): only the request line matters, headers are skipped.
public enum MetricsRequest: Equatable, Sendable {
    case metrics
    /// Any other path: 404.
    case notFound
    /// A method other than GET or HEAD: 405.
    case methodNotAllowed
}

public enum MetricsParseResult: Equatable, Sendable {
    case needMore
    /// The request, and the length of its head (request line and headers).
    case done(MetricsRequest, consumed: Int)
    /// Not HTTP/1.x, or a head over the limit: answered 400 and closed.
    case invalid(String)
}

public enum MetricsRequestParser {
    /// A scraper's head is a few hundred bytes; anything near this is not one.
    public static let maxHeadBytes = 8 * 1024

    public static func parse(_ input: some Collection<UInt8>) -> MetricsParseResult {
        let bytes = Array(input.prefix(maxHeadBytes + 4))
        guard let headLength = endOfHead(bytes) else {
            return bytes.count > maxHeadBytes ? .invalid("request head too large") : .needMore
        }
        guard headLength <= maxHeadBytes else { return .invalid("request head too large") }
        let lineEnd = bytes.firstIndex(of: UInt8(ascii: "\n"))!
        var line = bytes[..<lineEnd]
        if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
        let parts = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty,
              parts[2].elementsEqual("HTTP/1.1".utf8) || parts[2].elementsEqual("HTTP/1.0".utf8)
        else { return .invalid("expected a request line such as GET /metrics HTTP/1.1") }
        let method = parts[0], target = parts[1]
        guard method.elementsEqual("GET".utf8) || method.elementsEqual("HEAD".utf8) else {
            return .done(.methodNotAllowed, consumed: headLength)
        }
        let path = target.prefix { $0 != UInt8(ascii: "?") }
        return .done(path.elementsEqual("/metrics".utf8) ? .metrics : .notFound, consumed: headLength)
    }

    /// Length of the head including the empty line that ends it (CRLF CRLF,
    /// or bare LF LF as lenient clients send), or nil if it has not ended yet.
    static func endOfHead(_ bytes: [UInt8]) -> Int? {
        var index = 0
        while let newline = bytes[index...].firstIndex(of: UInt8(ascii: "\n")) {
            let next = newline + 1
            if next < bytes.count && bytes[next] == UInt8(ascii: "\n") { return next + 1 }
            if next + 1 < bytes.count && bytes[next] == UInt8(ascii: "\r") && bytes[next + 1] == UInt8(ascii: "\n") { return next + 2 }
            index = next
        }
        return nil
    }
}
