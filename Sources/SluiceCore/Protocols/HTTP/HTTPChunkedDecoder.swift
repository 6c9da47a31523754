/// Checks a chunked body (RFC 9112 section 7.1) as it streams through: the
/// proxy forwards exactly the bytes consumed, verbatim, and stops at the
/// body's last byte, so that what follows is parsed as the next head. Strict
/// like the head parser: a chunk size is 1*HEXDIG with no sign, prefix or
/// whitespace; every line ends in CRLF; trailer fields are well formed; the
/// size line and the trailer section are bounded.
public struct HTTPChunkedDecoder: Sendable, Equatable {
    public enum State: Sendable, Equatable {
        /// In the hex digits of a chunk size.
        case size
        /// In a chunk extension (after `;`), up to the CR.
        case ext
        /// The CR of the size line was seen.
        case sizeLF
        /// Inside a chunk's data.
        case data(remaining: UInt64)
        case dataCR
        case dataLF
        /// At the start of a trailer line, or of the final empty line.
        case trailerStart
        case trailerName
        case trailerValue
        case trailerLF
        /// The CR of the final empty line was seen.
        case finalLF
        case done
    }

    public enum Outcome: Sendable, Equatable {
        case more
        /// The body ended after the consumed bytes.
        case done
        case invalid(HTTPError)
    }

    public private(set) var state: State = .size
    private var digits = 0
    private var size: UInt64 = 0
    private var lineBytes = 0
    private var trailerBytes = 0
    /// A size line with its extensions, and the whole trailer section.
    public static let maxLine = 4096
    public static let maxTrailer = 16 * 1024

    public init() {}

    /// The data bytes left in the current chunk: the caller may move them
    /// without looking (splice(2)) and say so with `skipData`.
    public var dataRemaining: UInt64 {
        if case .data(let remaining) = state { return remaining }
        return 0
    }

    /// `count` data bytes (at most `dataRemaining`) went by without `consume`.
    public mutating func skipData(_ count: UInt64) {
        guard case .data(let remaining) = state, count <= remaining else { return }
        state = remaining == count ? .dataCR : .data(remaining: remaining - count)
    }

    /// Consumes bytes up to the end of the body (all of them, unless it ends
    /// inside); what was consumed is forwarded as is.
    public mutating func consume(_ bytes: UnsafeRawBufferPointer) -> (consumed: Int, outcome: Outcome) {
        var i = 0
        while i < bytes.count {
            if case .data(let remaining) = state {
                let take = Int(min(remaining, UInt64(bytes.count - i)))
                i += take
                state = remaining == UInt64(take) ? .dataCR : .data(remaining: remaining - UInt64(take))
                continue
            }
            if let error = step(bytes[i]) { return (i, .invalid(error)) }
            i += 1
            if state == .done { return (i, .done) }
        }
        return (i, .more)
    }

    private mutating func step(_ b: UInt8) -> HTTPError? {
        switch state {
        case .size:
            lineBytes += 1
            if let value = hexValue(b) {
                guard digits < 16, size >> 60 == 0 else { return HTTPError(400, "chunk size too large") }
                size = size << 4 | UInt64(value)
                digits += 1
                return nil
            }
            guard digits > 0 else { return HTTPError(400, "malformed chunk size") }
            if b == UInt8(ascii: ";") { state = .ext; return nil }
            if b == HTTPBytes.cr { state = .sizeLF; return nil }
            return HTTPError(400, "malformed chunk size")
        case .ext:
            lineBytes += 1
            guard lineBytes <= Self.maxLine else { return HTTPError(400, "chunk size line too long") }
            if b == HTTPBytes.cr { state = .sizeLF; return nil }
            return HTTPBytes.isFieldByte(b) ? nil : HTTPError(400, "control character in a chunk extension")
        case .sizeLF:
            guard b == HTTPBytes.lf else { return HTTPError(400, "chunk size line without CRLF") }
            state = size == 0 ? .trailerStart : .data(remaining: size)
            digits = 0
            size = 0
            lineBytes = 0
            return nil
        case .dataCR:
            guard b == HTTPBytes.cr else { return HTTPError(400, "chunk data not followed by CRLF") }
            state = .dataLF
            return nil
        case .dataLF:
            guard b == HTTPBytes.lf else { return HTTPError(400, "chunk data not followed by CRLF") }
            state = .size
            return nil
        default:
            return trailerStep(b)
        }
    }

    private mutating func trailerStep(_ b: UInt8) -> HTTPError? {
        trailerBytes += 1
        guard trailerBytes <= Self.maxTrailer else { return HTTPError(400, "trailer section too large") }
        switch state {
        case .trailerStart:
            if b == HTTPBytes.cr { state = .finalLF; return nil }
            guard HTTPBytes.isToken(b) else { return HTTPError(400, "malformed trailer field") }
            state = .trailerName
        case .trailerName:
            if b == HTTPBytes.colon { state = .trailerValue; return nil }
            guard HTTPBytes.isToken(b) else { return HTTPError(400, "malformed trailer field") }
        case .trailerValue:
            if b == HTTPBytes.cr { state = .trailerLF; return nil }
            guard HTTPBytes.isFieldByte(b) else { return HTTPError(400, "control character in a trailer field") }
        case .trailerLF:
            guard b == HTTPBytes.lf else { return HTTPError(400, "trailer line without CRLF") }
            state = .trailerStart
        case .finalLF:
            guard b == HTTPBytes.lf else { return HTTPError(400, "chunked body without its final CRLF") }
            state = .done
        default:
            return nil
        }
        return nil
    }

    private func hexValue(_ b: UInt8) -> UInt8? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): b - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): b - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): b - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
