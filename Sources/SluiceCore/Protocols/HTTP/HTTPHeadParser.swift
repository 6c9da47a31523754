/// A strict HTTP/1.1 head parser (RFC 9112, RFC 9110) for requests and
/// responses: pure, over the caller's bytes, with the head's parts returned
/// as ranges into them.
///
/// Bytes arrive in pieces: each call looks only at what arrived since the
/// last (for bare CR or LF, NUL and the limits, so that a bad head is refused
/// as soon as its first bad byte is in), and once the empty line is in, the
/// head is parsed in one pass. Where the RFC lets a recipient either reject
/// or repair, this parser rejects: nothing ambiguous about where a message
/// ends is ever forwarded (the request smuggling classes: conflicting or
/// malformed Content-Length and Transfer-Encoding, obs-fold, whitespace
/// before a colon, bare CR or LF, control characters, Transfer-Encoding in
/// HTTP/1.0, a missing or repeated Host).
public struct HTTPHeadParser: Sendable {
    public let limits: HTTPLimits
    /// How far the buffer was scanned, where the current line began, and how many lines ended.
    private var scanned = 0
    private var lineStart = 0
    private var lines = 0
    /// The fields array of a head the caller is done with (`recycle`), so
    /// that the next head's fields need no allocation.
    private var spareFields: [HTTPField] = []

    public init(limits: HTTPLimits = HTTPLimits()) {
        self.limits = limits
    }

    /// Starts over for the next head, whose first byte is the buffer's first.
    public mutating func reset() {
        scanned = 0
        lineStart = 0
        lines = 0
    }

    /// Hands back a parsed head's fields for the next head to fill; the
    /// caller must hold no other copy by the next parse, or that one
    /// allocates after all (copy on write).
    public mutating func recycle(_ fields: [HTTPField]) {
        spareFields = fields
    }

    private mutating func takeSpareFields() -> [HTTPField] {
        var fields = spareFields
        spareFields = []
        fields.removeAll(keepingCapacity: true)
        return fields
    }

    public mutating func parseRequest(_ buffer: UnsafeRawBufferPointer) -> HTTPParse<HTTPRequestHead> {
        switch findEnd(buffer, request: true) {
        case .failure(let error): return .invalid(error)
        case .success(nil): return .incomplete
        case .success(let end?):
            var reader = HeadReader(bytes: buffer, end: end, limits: limits, fields: takeSpareFields())
            switch reader.request() {
            case .success(let head): return .complete(head)
            case .failure(let error): return .invalid(error)
            }
        }
    }

    /// A response to a request with `method` (HEAD and CONNECT change its framing).
    /// A refused response head says 502: the backend's fault, not the client's.
    public mutating func parseResponse(_ buffer: UnsafeRawBufferPointer, requestMethod: HTTPMethod) -> HTTPParse<HTTPResponseHead> {
        switch findEnd(buffer, request: false) {
        case .failure(let error): return .invalid(HTTPError(502, "bad response head: \(error.reason)"))
        case .success(nil): return .incomplete
        case .success(let end?):
            var reader = HeadReader(bytes: buffer, end: end, limits: limits, fields: takeSpareFields())
            switch reader.response(requestMethod: requestMethod) {
            case .success(let head): return .complete(head)
            case .failure(let error): return .invalid(HTTPError(502, "bad response head: \(error.reason)"))
            }
        }
    }

    /// Scans the bytes not seen yet: every LF must follow a CR and every CR
    /// precede an LF; no NUL; the limits hold. Returns the head's length
    /// once its empty line is in.
    private mutating func findEnd(_ b: UnsafeRawBufferPointer, request: Bool) -> Result<Int?, HTTPError> {
        var i = scanned
        let count = b.count
        while i < count {
            // Bytes above CR need no look: skip them in a tight loop (up to
            // the request line's limit, where every byte gets the full look).
            let plainUntil = request && lines == 0 ? min(count, limits.maxRequestLine) : count
            while i + 8 <= plainUntil {
                let marked = SWAR.bytes(below: HTTPBytes.cr + 1, UInt64(littleEndian: b.loadUnaligned(fromByteOffset: i, as: UInt64.self)))
                i += SWAR.firstMarked(marked)
                if marked != 0 { break }
            }
            while i < plainUntil && b[i] > HTTPBytes.cr { i += 1 }
            if i == count { break }
            let byte = b[i]
            if byte == HTTPBytes.lf {
                guard i > lineStart, b[i - 1] == HTTPBytes.cr else { return .failure(HTTPError(400, "bare LF")) }
                if i - 1 == lineStart {
                    guard lines > 0 else { return .failure(HTTPError(400, "empty line before the start line")) }
                    return .success(i + 1)
                }
                lines += 1
                if lines - 1 > limits.maxFields { return .failure(HTTPError(431, "more than \(limits.maxFields) header fields")) }
                lineStart = i + 1
            } else if byte == HTTPBytes.cr {
                if i + 1 == b.count { break } // its LF is still to come
                guard b[i + 1] == HTTPBytes.lf else { return .failure(HTTPError(400, "bare CR")) }
            } else if byte == 0 {
                return .failure(HTTPError(400, "NUL in the head"))
            }
            if request && lines == 0 && i + 1 > limits.maxRequestLine {
                return .failure(HTTPError(414, "request line longer than \(limits.maxRequestLine) bytes"))
            }
            i += 1
        }
        scanned = i
        if b.count >= limits.maxHead { return .failure(HTTPError(431, "head larger than \(limits.maxHead) bytes")) }
        return .success(nil)
    }
}

/// One pass over a complete head, `bytes[0..<end]`, whose line endings are
/// known to be CRLF.
struct HeadReader {
    let bytes: UnsafeRawBufferPointer
    let end: Int
    let limits: HTTPLimits
    var i = 0
    /// Empty storage for the fields (with capacity, when recycled).
    var fieldStorage: [HTTPField]

    init(bytes: UnsafeRawBufferPointer, end: Int, limits: HTTPLimits, fields: [HTTPField] = []) {
        self.bytes = bytes
        self.end = end
        self.limits = limits
        self.fieldStorage = fields
    }

    /// What the fields say about framing and the connection.
    struct Facts {
        var fields: [HTTPField] = []
        var contentLength: UInt64?
        var transferCodings: TransferCodings?
        var host: Range<Int>?
        var hostCount = 0
        var close = false
        var keepAlive = false
        var upgradeToken = false
        var upgradeField = false
    }

    struct TransferCodings {
        var count = 0
        var chunkedCount = 0
        var chunkedLast = false
        var unknown = false
    }

    mutating func request() -> Result<HTTPRequestHead, HTTPError> {
        let methodStart = i
        while i < end && HTTPBytes.isToken(bytes[i]) { i += 1 }
        guard i > methodStart, bytes[i] == HTTPBytes.sp else { return .failure(HTTPError(400, "malformed method")) }
        let methodRange = methodStart..<i
        let method = Self.method(bytes, methodRange)
        i += 1
        let targetStart = i
        while i < end && HTTPBytes.isTargetByte(bytes[i]) { i += 1 }
        guard i > targetStart, bytes[i] == HTTPBytes.sp else { return .failure(HTTPError(400, "malformed request target")) }
        let target = targetStart..<i
        i += 1
        let version: HTTPVersion
        switch readVersion() {
        case .success(let v): version = v
        case .failure(let error): return .failure(error)
        }
        guard bytes[i] == HTTPBytes.cr else { return .failure(HTTPError(400, "malformed request line")) }
        i += 2
        if let problem = Self.checkTargetForm(bytes, target, method) { return .failure(problem) }
        let facts: Facts
        switch readFields() {
        case .success(let f): facts = f
        case .failure(let error): return .failure(error)
        }
        if version == .http11 && facts.hostCount == 0 { return .failure(HTTPError(400, "missing Host")) }
        if facts.hostCount > 1 { return .failure(HTTPError(400, "more than one Host")) }
        if let host = facts.host, !Self.isValidHost(bytes, host) { return .failure(HTTPError(400, "malformed Host")) }
        var framing = HTTPBodyFraming.none
        if let codings = facts.transferCodings {
            if version == .http10 { return .failure(HTTPError(400, "Transfer-Encoding in HTTP/1.0")) }
            if facts.contentLength != nil { return .failure(HTTPError(400, "both Content-Length and Transfer-Encoding")) }
            if codings.unknown { return .failure(HTTPError(501, "unknown transfer coding")) }
            guard codings.chunkedCount == 1 && codings.chunkedLast else {
                return .failure(HTTPError(400, "chunked must be the last transfer coding, once"))
            }
            framing = .chunked
        } else if let length = facts.contentLength, length > 0 {
            framing = .length(length)
        }
        return .success(HTTPRequestHead(
            method: method, methodRange: methodRange, target: target, version: version, fields: facts.fields,
            host: facts.host, framing: framing,
            keepAlive: version == .http11 ? !facts.close : facts.keepAlive && !facts.close,
            upgrade: facts.upgradeToken && facts.upgradeField, length: end))
    }

    mutating func response(requestMethod: HTTPMethod) -> Result<HTTPResponseHead, HTTPError> {
        let version: HTTPVersion
        switch readVersion() {
        case .success(let v): version = v
        case .failure(let error): return .failure(error)
        }
        guard i + 5 <= end, bytes[i] == HTTPBytes.sp,
              (UInt8(ascii: "1")...UInt8(ascii: "5")).contains(bytes[i + 1]),
              (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[i + 2]),
              (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[i + 3]),
              bytes[i + 4] == HTTPBytes.sp
        else { return .failure(HTTPError(400, "malformed status line")) }
        let status = Int(bytes[i + 1] - 48) * 100 + Int(bytes[i + 2] - 48) * 10 + Int(bytes[i + 3] - 48)
        i += 5
        while bytes[i] != HTTPBytes.cr {
            guard HTTPBytes.isFieldByte(bytes[i]) else { return .failure(HTTPError(400, "control character in reason phrase")) }
            i += 1
        }
        i += 2
        let facts: Facts
        switch readFields() {
        case .success(let f): facts = f
        case .failure(let error): return .failure(error)
        }
        if facts.transferCodings != nil && version == .http10 { return .failure(HTTPError(400, "Transfer-Encoding in HTTP/1.0")) }
        if facts.transferCodings != nil && facts.contentLength != nil {
            return .failure(HTTPError(400, "both Content-Length and Transfer-Encoding"))
        }
        if let codings = facts.transferCodings, codings.chunkedCount > 1 { return .failure(HTTPError(400, "chunked applied twice")) }
        let framing: HTTPBodyFraming
        if status == 101 {
            framing = .tunnel
        } else if status < 200 || status == 204 || status == 304 || requestMethod == .head {
            framing = .none
        } else if requestMethod == .connect && status < 300 {
            framing = .tunnel
        } else if let codings = facts.transferCodings {
            framing = codings.chunkedLast ? .chunked : .untilClose
        } else if let length = facts.contentLength {
            framing = length > 0 ? .length(length) : .none
        } else {
            framing = .untilClose
        }
        let persistent = version == .http11 ? !facts.close : facts.keepAlive && !facts.close
        return .success(HTTPResponseHead(
            status: status, version: version, fields: facts.fields, framing: framing,
            keepAlive: persistent && framing != .untilClose && framing != .tunnel, length: end))
    }

    /// `HTTP/1.1` or `HTTP/1.0`; another `HTTP/d.d` is 505.
    private mutating func readVersion() -> Result<HTTPVersion, HTTPError> {
        let prefix = Self.versionPrefix
        guard i + 8 <= end else { return .failure(HTTPError(400, "malformed version")) }
        for k in 0..<5 where bytes[i + k] != prefix[k] { return .failure(HTTPError(400, "malformed version")) }
        let major = bytes[i + 5], dot = bytes[i + 6], minor = bytes[i + 7]
        let digits = UInt8(ascii: "0")...UInt8(ascii: "9")
        guard digits.contains(major), dot == UInt8(ascii: "."), digits.contains(minor) else {
            return .failure(HTTPError(400, "malformed version"))
        }
        i += 8
        if major == UInt8(ascii: "1") && minor == UInt8(ascii: "1") { return .success(.http11) }
        if major == UInt8(ascii: "1") && minor == UInt8(ascii: "0") { return .success(.http10) }
        return .failure(HTTPError(505, "HTTP version not supported"))
    }

    static let versionPrefix: [UInt8] = Array("HTTP/".utf8)
    // Methods are case-sensitive (RFC 9110 9.1).
    static let knownMethods: [([UInt8], HTTPMethod)] = ([
        ("GET", .get), ("HEAD", .head), ("POST", .post), ("PUT", .put), ("DELETE", .delete),
        ("OPTIONS", .options), ("TRACE", .trace), ("CONNECT", .connect), ("PATCH", .patch),
    ] as [(String, HTTPMethod)]).map { (Array($0.0.utf8), $0.1) }

    /// Header fields up to the empty line, and what they say.
    private mutating func readFields() -> Result<Facts, HTTPError> {
        var facts = Facts(fields: fieldStorage)
        fieldStorage = []
        facts.fields.reserveCapacity(16) // one allocation for a usual head, not one per doubling
        // A local index: the stored one would be written back on every byte.
        var i = self.i
        defer { self.i = i }
        while i < end - 2 {
            let nameStart = i
            if bytes[i] == HTTPBytes.sp || bytes[i] == HTTPBytes.htab { return .failure(HTTPError(400, "obs-fold or whitespace before a field")) }
            while HTTPBytes.isToken(bytes[i]) { i &+= 1 }
            if bytes[i] == HTTPBytes.sp || bytes[i] == HTTPBytes.htab { return .failure(HTTPError(400, "whitespace before the colon")) }
            guard i > nameStart, bytes[i] == HTTPBytes.colon else { return .failure(HTTPError(400, "malformed field name")) }
            let name = nameStart..<i
            i += 1
            while bytes[i] == HTTPBytes.sp || bytes[i] == HTTPBytes.htab { i += 1 }
            let valueStart = i
            // Eight bytes at a time while none is a control or DEL; the CR
            // that ends the value, an HTAB or a bad byte take the byte loop.
            while i + 8 <= end {
                let marked = SWAR.controlOrDelete(UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self)))
                i += SWAR.firstMarked(marked)
                if marked != 0 { break }
            }
            while bytes[i] != HTTPBytes.cr {
                guard HTTPBytes.isFieldByte(bytes[i]) else { return .failure(HTTPError(400, "control character in a field value")) }
                i += 1
            }
            var valueEnd = i
            while valueEnd > valueStart && (bytes[valueEnd - 1] == HTTPBytes.sp || bytes[valueEnd - 1] == HTTPBytes.htab) { valueEnd -= 1 }
            i += 2
            guard facts.fields.count < limits.maxFields else { return .failure(HTTPError(431, "more than \(limits.maxFields) header fields")) }
            let field = HTTPField(name: name, value: valueStart..<valueEnd)
            facts.fields.append(field)
            if let problem = note(field, in: &facts) { return .failure(problem) }
        }
        return .success(facts)
    }

    /// Records what a field means for framing and the connection.
    private func note(_ field: HTTPField, in facts: inout Facts) -> HTTPError? {
        switch field.name.count {
        case 4 where equalsLowercase(field.name, "host"):
            facts.hostCount += 1
            facts.host = field.value
        case 7 where equalsLowercase(field.name, "upgrade"):
            facts.upgradeField = true
        case 10 where equalsLowercase(field.name, "connection"):
            forEachListElement(field.value) { token in
                if equalsLowercase(token, "close") { facts.close = true }
                else if equalsLowercase(token, "keep-alive") { facts.keepAlive = true }
                else if equalsLowercase(token, "upgrade") { facts.upgradeToken = true }
            }
        case 14 where equalsLowercase(field.name, "content-length"):
            guard facts.contentLength == nil else { return HTTPError(400, "more than one Content-Length") }
            guard let length = decimal(field.value) else { return HTTPError(400, "malformed Content-Length") }
            facts.contentLength = length
        case 17 where equalsLowercase(field.name, "transfer-encoding"):
            var codings = facts.transferCodings ?? TransferCodings()
            var elements = 0
            forEachListElement(field.value) { coding in
                elements += 1
                codings.count += 1
                if equalsLowercase(coding, "chunked") {
                    codings.chunkedCount += 1
                    codings.chunkedLast = true
                } else {
                    codings.chunkedLast = false
                    if !Self.knownCodings.contains(where: { equalsLowercase(coding, $0) }) { codings.unknown = true }
                }
            }
            if elements == 0 { return HTTPError(400, "empty Transfer-Encoding") }
            facts.transferCodings = codings
        default:
            break
        }
        return nil
    }

    static let knownCodings: [[UInt8]] = ["gzip", "x-gzip", "deflate", "compress", "x-compress"].map { Array($0.utf8) }

    /// Calls `body` on each non-empty element of a comma-separated list,
    /// without its whitespace. A visitor, not an array: every response's
    /// Connection field would otherwise cost an allocation.
    private func forEachListElement(_ range: Range<Int>, _ body: (Range<Int>) -> Void) {
        var start = range.lowerBound
        for k in range.lowerBound...range.upperBound where k == range.upperBound || bytes[k] == UInt8(ascii: ",") {
            var a = start, b = k
            while a < b && (bytes[a] == HTTPBytes.sp || bytes[a] == HTTPBytes.htab) { a += 1 }
            while b > a && (bytes[b - 1] == HTTPBytes.sp || bytes[b - 1] == HTTPBytes.htab) { b -= 1 }
            if a < b { body(a..<b) }
            start = k + 1
        }
    }

    private func equalsLowercase(_ range: Range<Int>, _ word: StaticString) -> Bool {
        guard range.count == word.utf8CodeUnitCount else { return false }
        let w = word.utf8Start
        for k in 0..<range.count where HTTPBytes.lower(bytes[range.lowerBound + k]) != w[k] { return false }
        return true
    }

    private func equalsLowercase(_ range: Range<Int>, _ word: [UInt8]) -> Bool {
        guard range.count == word.count else { return false }
        for k in 0..<word.count where HTTPBytes.lower(bytes[range.lowerBound + k]) != word[k] { return false }
        return true
    }

    /// 1*DIGIT that fits in 63 bits; nothing else (no sign, no list, no space).
    private func decimal(_ range: Range<Int>) -> UInt64? {
        guard !range.isEmpty, range.count <= 18 else { return nil }
        var value: UInt64 = 0
        for k in range {
            let b = bytes[k]
            guard b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + UInt64(b - 48)
        }
        return value
    }

    static func method(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> HTTPMethod {
        for (name, method) in knownMethods where name.count == range.count
            && name.indices.allSatisfy({ bytes[range.lowerBound + $0] == name[$0] }) {
            return method
        }
        return .other
    }

    /// origin-form (`/path`), absolute-form (`http://...`), authority-form
    /// for CONNECT only, asterisk-form for OPTIONS only (RFC 9112 3.2).
    static func checkTargetForm(_ bytes: UnsafeRawBufferPointer, _ target: Range<Int>, _ method: HTTPMethod) -> HTTPError? {
        let first = bytes[target.lowerBound]
        if method == .connect {
            let hasColon = target.contains { bytes[$0] == HTTPBytes.colon }
            return first != UInt8(ascii: "/") && hasColon ? nil : HTTPError(400, "CONNECT needs host:port")
        }
        if first == UInt8(ascii: "/") { return nil }
        if target.count == 1 && first == UInt8(ascii: "*") {
            return method == .options ? nil : HTTPError(400, "* is for OPTIONS only")
        }
        for scheme in ["http://", "https://"] where target.count > scheme.utf8.count
            && scheme.utf8.enumerated().allSatisfy({ HTTPBytes.lower(bytes[target.lowerBound + $0.offset]) == $0.element }) {
            return nil
        }
        return HTTPError(400, "malformed request target")
    }

    /// uri-host [":" port]: reg-name, IPv4 or an IP literal in brackets; not empty.
    static func isValidHost(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Bool {
        guard !range.isEmpty else { return false }
        return range.allSatisfy { HTTPBytes.isHostByte(bytes[$0]) }
    }
}

/// Tests on eight bytes at once (SIMD within a register), exact for "is
/// there such a byte" though not for where: callers find it byte by byte.
enum SWAR {
    static let ones: UInt64 = 0x0101_0101_0101_0101
    static let highBits: UInt64 = 0x8080_8080_8080_8080

    /// The high bit of each byte of `word` below `limit` (at most 128) is
    /// set; bits above the first such byte may be set wrongly (a borrow),
    /// the lowest set bit is always right.
    @inline(__always) static func bytes(below limit: UInt8, _ word: UInt64) -> UInt64 {
        (word &- ones &* UInt64(limit)) & ~word & highBits
    }

    /// Whether a byte of `word` is below `limit` (at most 128).
    @inline(__always) static func hasByte(below limit: UInt8, _ word: UInt64) -> Bool {
        bytes(below: limit, word) != 0
    }

    /// As `bytes(below:)`, for control characters (HTAB included) and DEL.
    @inline(__always) static func controlOrDelete(_ word: UInt64) -> UInt64 {
        bytes(below: 0x20, word) | bytes(below: 1, word ^ (ones &* 0x7F))
    }

    /// Whether a byte of `word` is a control character (HTAB included) or DEL.
    @inline(__always) static func hasControlOrDelete(_ word: UInt64) -> Bool {
        controlOrDelete(word) != 0
    }

    /// The index, in memory order (little-endian), of the first byte a mask
    /// from `bytes(below:)` or `controlOrDelete` marks; 8 when none.
    @inline(__always) static func firstMarked(_ mask: UInt64) -> Int {
        mask.trailingZeroBitCount >> 3
    }
}
