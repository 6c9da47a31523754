import COpenSSL

/// What a request head asks for with `Connection: upgrade` and `Upgrade:`,
/// and what the proxy does about it (RFC 6455 section 4, RFC 9110 section 7.8).
public enum UpgradeRequest: Sendable, Equatable {
    /// No upgrade asked (or one that does not count: HTTP/1.0).
    case none
    /// A well-formed WebSocket opening handshake; the backend's 101 must
    /// carry this `Sec-WebSocket-Accept` value.
    case websocket(accept: [UInt8])
    /// Another protocol (`h2c`, anything unknown): the request goes on as
    /// plain HTTP/1.1 with `Upgrade` dropped, which RFC 9110 allows a
    /// server to do; the client then sees an ordinary response.
    case stripped
    /// A WebSocket handshake the proxy answers itself: 400 for a missing or
    /// malformed key or a method other than GET, 426 (with
    /// `Sec-WebSocket-Version: 13`) for another version.
    case refused(status: Int, reason: String)

    /// Classifies `head` (whose bytes are `bytes`).
    public static func classify(_ head: HTTPRequestHead, in bytes: UnsafeRawBufferPointer) -> UpgradeRequest {
        guard head.upgrade, head.version == .http11 else { return .none }
        var websocket = false, key: Range<Int>?, keys = 0, version: Range<Int>?
        for field in head.fields {
            switch field.name.count {
            case 7 where HTTPHeadRewriter.equalsLowercase(field.name, "upgrade", bytes):
                websocket = websocket || listContains(field.value, "websocket", bytes)
            case 17 where HTTPHeadRewriter.equalsLowercase(field.name, "sec-websocket-key", bytes):
                key = field.value
                keys += 1
            case 21 where HTTPHeadRewriter.equalsLowercase(field.name, "sec-websocket-version", bytes):
                version = field.value
            default: break
            }
        }
        guard websocket else { return .stripped }
        guard head.method == .get else { return .refused(status: 400, reason: "a WebSocket handshake must be a GET") }
        guard let version, bytes[version].elementsEqual("13".utf8) else {
            return .refused(status: 426, reason: "WebSocket version 13 only")
        }
        // The key is 16 random bytes in base64: 24 characters, the last two "==".
        guard keys == 1, let key, key.count == 24, bytes[key].allSatisfy(isBase64Byte),
              bytes[key.upperBound - 2] == UInt8(ascii: "="), bytes[key.upperBound - 1] == UInt8(ascii: "=")
        else { return .refused(status: 400, reason: "missing or malformed Sec-WebSocket-Key") }
        return .websocket(accept: acceptValue(key: Array(bytes[key])))
    }

    /// base64(SHA-1(key + the RFC 6455 GUID)): what a server that accepts
    /// the handshake answers in `Sec-WebSocket-Accept`.
    public static func acceptValue(key: [UInt8]) -> [UInt8] {
        let input = key + Array("258EAFA5-E914-47DA-95CA-C5AB0DC85B11".utf8)
        var digest = [UInt8](repeating: 0, count: Int(SHA_DIGEST_LENGTH))
        input.withUnsafeBufferPointer { _ = SHA1($0.baseAddress, $0.count, &digest) }
        var encoded = [UInt8](repeating: 0, count: 29) // 4 * ceil(20 / 3) + NUL
        let length = EVP_EncodeBlock(&encoded, digest, Int32(digest.count))
        return Array(encoded[0..<Int(length)])
    }

    /// Whether a 101 response completes the handshake: `Upgrade: websocket`
    /// and exactly the expected `Sec-WebSocket-Accept`.
    public static func accepts(_ head: HTTPResponseHead, in bytes: UnsafeRawBufferPointer, expected: [UInt8]) -> Bool {
        guard head.status == 101 else { return false }
        var websocket = false, accepted = 0, matches = false
        for field in head.fields {
            if HTTPHeadRewriter.equalsLowercase(field.name, "upgrade", bytes) {
                websocket = websocket || listContains(field.value, "websocket", bytes)
            } else if HTTPHeadRewriter.equalsLowercase(field.name, "sec-websocket-accept", bytes) {
                accepted += 1
                matches = bytes[field.value].elementsEqual(expected)
            }
        }
        return websocket && accepted == 1 && matches
    }

    /// Whether a comma-separated list holds `token` (any case, spaces around items ignored).
    static func listContains(_ value: Range<Int>, _ token: StaticString, _ bytes: UnsafeRawBufferPointer) -> Bool {
        var start = value.lowerBound
        for k in value.lowerBound...value.upperBound where k == value.upperBound || bytes[k] == UInt8(ascii: ",") {
            var a = start, b = k
            while a < b && (bytes[a] == HTTPBytes.sp || bytes[a] == HTTPBytes.htab) { a += 1 }
            while b > a && (bytes[b - 1] == HTTPBytes.sp || bytes[b - 1] == HTTPBytes.htab) { b -= 1 }
            if HTTPHeadRewriter.equalsLowercase(a..<b, token, bytes) { return true }
            start = k + 1
        }
        return false
    }

    static func isBase64Byte(_ b: UInt8) -> Bool {
        (b >= 65 && b <= 90) || (b >= 97 && b <= 122) || (b >= 48 && b <= 57) || b == 43 || b == 47 || b == 61
    }
}
