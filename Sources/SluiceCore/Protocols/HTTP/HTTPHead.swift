// The vocabulary of the HTTP/1.1 head parser (RFC 9112, RFC 9110): what a
// parsed head is, how its body is framed, and why a head was refused.
// Every value points into the caller's buffer by range: nothing is copied.

/// Limits that bound what one head may cost.
public struct HTTPLimits: Sendable, Equatable {
    /// The whole head, start line to the empty line (431 beyond it).
    public var maxHead: Int
    /// Header fields (431 beyond it).
    public var maxFields: Int
    /// The request line (414 beyond it).
    public var maxRequestLine: Int

    public init(maxHead: Int = 64 * 1024, maxFields: Int = 100, maxRequestLine: Int = 8 * 1024) {
        self.maxHead = maxHead
        self.maxFields = maxFields
        self.maxRequestLine = maxRequestLine
    }
}

public enum HTTPVersion: Sendable, Equatable {
    case http10
    case http11
}

/// The methods the proxy treats specially; others are carried by range only.
public enum HTTPMethod: Sendable, Equatable {
    case get, head, post, put, delete, options, trace, connect, patch, other

    /// Safe to send again when nothing of the response came back (RFC 9110 9.2.2).
    public var isIdempotent: Bool {
        switch self {
        case .get, .head, .put, .delete, .options, .trace: true
        case .post, .connect, .patch, .other: false
        }
    }
}

/// One header field: its name and its value (without surrounding whitespace).
public struct HTTPField: Sendable, Equatable {
    public var name: Range<Int>
    public var value: Range<Int>
}

/// How the bytes after a head are delimited (RFC 9112 section 6).
public enum HTTPBodyFraming: Sendable, Equatable {
    /// No body: the next byte starts the next head.
    case none
    /// Exactly this many bytes.
    case length(UInt64)
    /// Chunked transfer coding, checked by `HTTPChunkedDecoder`.
    case chunked
    /// Until the sender closes (responses only).
    case untilClose
    /// The connection becomes a tunnel after this head (101, or 2xx to CONNECT).
    case tunnel
}

public struct HTTPRequestHead: Sendable, Equatable {
    public var method: HTTPMethod
    public var methodRange: Range<Int>
    public var target: Range<Int>
    public var version: HTTPVersion
    public var fields: [HTTPField]
    /// The Host field's value.
    public var host: Range<Int>?
    public var framing: HTTPBodyFraming
    /// The client allows another request on this connection after this one.
    public var keepAlive: Bool
    /// `Connection: upgrade` with an `Upgrade` field: the client asks to switch protocols.
    public var upgrade: Bool
    /// Bytes from the first byte of the request line through the empty line.
    public var length: Int
}

public struct HTTPResponseHead: Sendable, Equatable {
    public var status: Int
    public var version: HTTPVersion
    public var fields: [HTTPField]
    public var framing: HTTPBodyFraming
    /// The backend keeps the connection open after this response.
    public var keepAlive: Bool
    public var length: Int
}

/// Why a head was refused, and the status that says so.
public struct HTTPError: Error, Sendable, Equatable, CustomStringConvertible {
    /// 400, 414, 431, 501 or 505.
    public var status: Int
    public var reason: String

    public init(_ status: Int, _ reason: String) {
        self.status = status
        self.reason = reason
    }

    public var description: String { "\(status): \(reason)" }
}

/// What parsing a buffer gave: not a whole head yet, a head, or a refusal.
public enum HTTPParse<Head: Sendable & Equatable>: Sendable, Equatable {
    case incomplete
    case complete(Head)
    case invalid(HTTPError)
}

/// Byte classes of RFC 9110 section 5.6.
enum HTTPBytes {
    static let cr: UInt8 = 13, lf: UInt8 = 10, sp: UInt8 = 32, htab: UInt8 = 9, colon: UInt8 = 58

    /// tchar: the bytes of a token (letters, digits and !#$%&'*+-.^_`|~).
    @inline(__always) static func isToken(_ b: UInt8) -> Bool {
        ByteSet(low: 0x03FF_6CFA_0000_0000, high: 0x57FF_FFFF_C7FF_FFFE).contains(b)
    }

    /// A byte of a field value: HTAB, SP, VCHAR, obs-text. Not NUL, CR, LF, other controls or DEL.
    @inline(__always) static func isFieldByte(_ b: UInt8) -> Bool { b == htab || (b >= sp && b != 0x7F) }

    /// A byte of a request target: what RFC 3986 allows in a URI without its
    /// fragment (unreserved, reserved but `#`, and `%`). Not `"<>\\^`{|}`, which
    /// other parsers read in different ways.
    @inline(__always) static func isTargetByte(_ b: UInt8) -> Bool {
        ByteSet(low: 0xAFFF_FFF2_0000_0000, high: 0x47FF_FFFE_AFFF_FFFF).contains(b)
    }

    /// A byte of uri-host [":" port]: reg-name and IPv4 characters, and an IP literal's brackets.
    @inline(__always) static func isHostByte(_ b: UInt8) -> Bool {
        ByteSet(low: 0x2FFF_7FF2_0000_0000, high: 0x47FF_FFFE_AFFF_FFFE).contains(b)
    }

    @inline(__always) static func lower(_ b: UInt8) -> UInt8 {
        b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z") ? b | 0x20 : b
    }
}

/// A set of ASCII bytes as two 64-bit masks: a membership test is a shift
/// and an AND on constants, where a global lookup table would cost a lazy
/// initialisation check and a bounds check on every byte of every head.
struct ByteSet {
    let low: UInt64
    let high: UInt64

    @inline(__always) func contains(_ b: UInt8) -> Bool {
        let mask = b < 64 ? low : high
        return b < 128 && (mask >> UInt64(b & 63)) & 1 != 0
    }
}
