// RESP, the Redis wire protocol: what a sharding proxy needs of it (RESP2
// commands; RESP2 and RESP3 replies, measured whole). Pure, and bounded: every length and depth is checked before anything is
// allocated, so hostile bytes get an error, never a trap or a huge buffer.

/// Bounds on what a client or a server may send (Redis's own defaults where it has them).
public struct RESPLimits: Sendable, Equatable {
    /// One bulk string (Redis's proto-max-bulk-len: 512 MB).
    public var maxBulk = 512 << 20
    /// Elements of one array (a command's arguments, an MGET's reply).
    public var maxArray = 1 << 20
    /// Arrays nested in arrays (replies only; a command is one flat array).
    public var maxDepth = 32
    /// An inline command (`PING\r\n`) or a +/-/: line.
    public var maxLine = 64 << 10

    public init() {}
}

/// What reading one RESP value from the front of a buffer gave.
public enum RESPScan: Sendable, Equatable {
    case incomplete
    /// A whole value, `length` bytes long.
    case complete(length: Int)
    case invalid(String)
}

/// A client's command: its arguments as ranges of the buffer it came in,
/// and the bytes it took.
public struct RESPCommand: Sendable, Equatable {
    public var arguments: [Range<Int>]
    public var length: Int
    /// Sent as an inline line (`PING\r\n`) rather than an array of bulk strings.
    public var inline: Bool
}

public enum RESPCommandParse: Sendable, Equatable {
    case incomplete
    case complete(RESPCommand)
    case invalid(String)
}

public enum RESP {
    static let cr: UInt8 = 13, lf: UInt8 = 10

    /// The end of the line that starts at `start`: the index of its CR, if
    /// the CRLF is in; a bare CR or LF is invalid.
    static func lineEnd(_ b: UnsafeRawBufferPointer, from start: Int, limit: Int) -> Result<Int?, RESPError> {
        var i = start
        while i < b.count {
            if b[i] == lf { return .failure(RESPError("LF without CR")) }
            if b[i] == cr {
                guard i + 1 < b.count else { return .success(nil) }
                return b[i + 1] == lf ? .success(i) : .failure(RESPError("CR without LF"))
            }
            i += 1
            if i - start > limit { return .failure(RESPError("line longer than \(limit) bytes")) }
        }
        return .success(nil)
    }

    /// A decimal from `b[range]`: an optional minus, 1 to 18 digits.
    static func integer(_ b: UnsafeRawBufferPointer, _ range: Range<Int>) -> Int64? {
        var i = range.lowerBound
        let negative = i < range.upperBound && b[i] == UInt8(ascii: "-")
        if negative { i += 1 }
        guard i < range.upperBound, range.upperBound - i <= 18 else { return nil }
        var value: Int64 = 0
        while i < range.upperBound {
            let d = b[i]
            guard d >= 48 && d <= 57 else { return nil }
            value = value * 10 + Int64(d - 48)
            i += 1
        }
        return negative ? -value : value
    }

    /// Measures one whole value (a reply, say) without copying any of it:
    /// nested arrays are walked with a counter per level.
    public static func scan(_ b: UnsafeRawBufferPointer, limits: RESPLimits = RESPLimits()) -> RESPScan {
        var pending: [Int] = [] // elements still to read, per open array
        var i = 0
        while true {
            guard i < b.count else { return .incomplete }
            let type = b[i]
            let end: Int
            switch lineEnd(b, from: i + 1, limit: limits.maxLine) {
            case .failure(let error): return .invalid(error.reason)
            case .success(nil): return .incomplete
            case .success(let e?): end = e
            }
            switch type {
            case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: ","):
                i = end + 2
            case UInt8(ascii: "_"):
                guard end == i + 1 else { return .invalid("malformed null") }
                i = end + 2
            case UInt8(ascii: "#"):
                guard end == i + 2, b[i + 1] == UInt8(ascii: "t") || b[i + 1] == UInt8(ascii: "f") else { return .invalid("malformed boolean") }
                i = end + 2
            case UInt8(ascii: "("):
                guard end > i + 1, (i + 1..<end).allSatisfy({ b[$0] >= 48 && b[$0] <= 57 || ($0 == i + 1 && b[$0] == UInt8(ascii: "-")) })
                else { return .invalid("malformed big number") }
                i = end + 2
            case UInt8(ascii: ":"):
                guard integer(b, i + 1..<end) != nil else { return .invalid("malformed integer") }
                i = end + 2
            case UInt8(ascii: "$"), UInt8(ascii: "!"), UInt8(ascii: "="):
                // RESP3's blob error and verbatim string are bulk-shaped (and never null).
                guard let n = integer(b, i + 1..<end), n >= (type == UInt8(ascii: "$") ? -1 : 0) else { return .invalid("malformed bulk length") }
                guard n <= limits.maxBulk else { return .invalid("bulk longer than \(limits.maxBulk) bytes") }
                i = end + 2
                if n >= 0 {
                    guard b.count >= i + Int(n) + 2 else { return .incomplete }
                    guard b[i + Int(n)] == cr, b[i + Int(n) + 1] == lf else { return .invalid("bulk not followed by CRLF") }
                    i += Int(n) + 2
                }
            case UInt8(ascii: "*"), UInt8(ascii: "~"), UInt8(ascii: ">"), UInt8(ascii: "%"), UInt8(ascii: "|"):
                // RESP3: a set or a push is an array; a map has two values per
                // entry; an attribute's entries come before the value they describe.
                guard let n = integer(b, i + 1..<end), n >= (type == UInt8(ascii: "*") ? -1 : 0) else { return .invalid("malformed array length") }
                guard n <= limits.maxArray else { return .invalid("array longer than \(limits.maxArray) elements") }
                let elements = type == UInt8(ascii: "%") ? 2 * Int(n) : type == UInt8(ascii: "|") ? 2 * Int(n) + 1 : Int(n)
                i = end + 2
                if elements > 0 {
                    guard pending.count < limits.maxDepth else { return .invalid("arrays nested deeper than \(limits.maxDepth)") }
                    pending.append(elements)
                    continue // its first element is not a finished value yet
                }
            default:
                return .invalid("unknown type byte \(type)")
            }
            // A value ended: it completes the arrays it closes.
            while let last = pending.last {
                if last > 1 { pending[pending.count - 1] = last - 1; break }
                pending.removeLast()
            }
            if pending.isEmpty { return .complete(length: i) }
        }
    }

    /// One command from a client: an array of bulk strings, or an inline
    /// line of words (what `redis-cli` and telnet users send).
    public static func command(_ b: UnsafeRawBufferPointer, limits: RESPLimits = RESPLimits()) -> RESPCommandParse {
        guard !b.isEmpty else { return .incomplete }
        guard b[0] == UInt8(ascii: "*") else { return inlineCommand(b, limits: limits) }
        let header: Int
        switch lineEnd(b, from: 1, limit: limits.maxLine) {
        case .failure(let error): return .invalid(error.reason)
        case .success(nil): return .incomplete
        case .success(let e?): header = e
        }
        guard let count = integer(b, 1..<header), count >= 1 else { return .invalid("a command is a non-empty array") }
        guard count <= limits.maxArray else { return .invalid("more than \(limits.maxArray) arguments") }
        var arguments: [Range<Int>] = []
        arguments.reserveCapacity(Int(min(count, 16)))
        var i = header + 2
        for _ in 0..<count {
            guard i < b.count else { return .incomplete }
            guard b[i] == UInt8(ascii: "$") else { return .invalid("a command's arguments are bulk strings") }
            let end: Int
            switch lineEnd(b, from: i + 1, limit: limits.maxLine) {
            case .failure(let error): return .invalid(error.reason)
            case .success(nil): return .incomplete
            case .success(let e?): end = e
            }
            guard let n = integer(b, i + 1..<end), n >= 0 else { return .invalid("malformed argument length") }
            guard n <= limits.maxBulk else { return .invalid("argument longer than \(limits.maxBulk) bytes") }
            let start = end + 2
            guard b.count >= start + Int(n) + 2 else { return .incomplete }
            guard b[start + Int(n)] == cr, b[start + Int(n) + 1] == lf else { return .invalid("argument not followed by CRLF") }
            arguments.append(start..<start + Int(n))
            i = start + Int(n) + 2
        }
        return .complete(RESPCommand(arguments: arguments, length: i, inline: false))
    }

    private static func inlineCommand(_ b: UnsafeRawBufferPointer, limits: RESPLimits) -> RESPCommandParse {
        var end = -1
        for i in 0..<b.count {
            if b[i] == lf { end = i; break }
            if i >= limits.maxLine { return .invalid("inline command longer than \(limits.maxLine) bytes") }
        }
        guard end >= 0 else { return .incomplete }
        let lineEnd = end > 0 && b[end - 1] == cr ? end - 1 : end // Redis takes a bare LF inline
        var arguments: [Range<Int>] = []
        var k = 0
        while k < lineEnd {
            while k < lineEnd && (b[k] == 32 || b[k] == 9) { k += 1 }
            let start = k
            while k < lineEnd && b[k] != 32 && b[k] != 9 { k += 1 }
            if k > start { arguments.append(start..<k) }
        }
        // An empty line is skipped, as Redis does (redis-cli --pipe sends some).
        return .complete(RESPCommand(arguments: arguments, length: end + 1, inline: true))
    }

    /// The elements of a whole array reply (each any type), as ranges of
    /// `bytes`; nil when `bytes` is not one array.
    public static func elements(_ bytes: [UInt8], limits: RESPLimits = RESPLimits()) -> [Range<Int>]? {
        bytes.withUnsafeBytes { b -> [Range<Int>]? in
            guard b.first == UInt8(ascii: "*"), case .success(let end?) = lineEnd(b, from: 1, limit: limits.maxLine),
                  let count = integer(b, 1..<end), count >= 0 else { return nil }
            var out: [Range<Int>] = []
            var i = end + 2
            for _ in 0..<count {
                guard case .complete(let length) = scan(UnsafeRawBufferPointer(rebasing: b[i...]), limits: limits) else { return nil }
                out.append(i..<i + length)
                i += length
            }
            return i == b.count ? out : nil
        }
    }

    // MARK: - Writing

    public static func simple(_ text: String) -> [UInt8] { Array("+\(text)\r\n".utf8) }
    public static func error(_ text: String) -> [UInt8] { Array("-\(text)\r\n".utf8) }
    /// A simple error, or RESP3's blob error.
    static func isError(_ reply: [UInt8]) -> Bool { reply.first == UInt8(ascii: "-") || reply.first == UInt8(ascii: "!") }
    public static func integer(_ value: Int64) -> [UInt8] { Array(":\(value)\r\n".utf8) }
    public static func bulk(_ bytes: [UInt8]?) -> [UInt8] {
        guard let bytes else { return Array("$-1\r\n".utf8) }
        return Array("$\(bytes.count)\r\n".utf8) + bytes + [cr, lf]
    }
    /// A command (or an array reply) of bulk strings, written in one buffer
    /// (split commands are made per command: no string formatting here).
    public static func array<Item: Collection<UInt8>>(_ items: [Item]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(items.reduce(16) { $0 + $1.count + 16 })
        appendHeader(UInt8(ascii: "*"), items.count, to: &out)
        for item in items {
            appendHeader(UInt8(ascii: "$"), item.count, to: &out)
            out += item
            out.append(cr)
            out.append(lf)
        }
        return out
    }

    /// `*12\r\n`, `$5\r\n`: a type marker, a count, CRLF (the count's
    /// digits fit a small string: no allocation).
    static func appendHeader(_ marker: UInt8, _ count: Int, to out: inout [UInt8]) {
        out.append(marker)
        out += String(count).utf8
        out.append(cr)
        out.append(lf)
    }
}

public struct RESPError: Error, Sendable, Equatable {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
}
