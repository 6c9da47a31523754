#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

// The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2): the
// header a load balancer in front writes before the client's first byte,
// naming the client and the address it connected to. Pure: bytes in, a
// header (and its exact length: nothing past it is touched) out.

/// Which versions a listener takes (`proxy_protocol.accept`).
public enum ProxyAccept: String, Sendable, CaseIterable {
    case off, v1, v2, any
}

/// Which version a pool writes to its backends (`proxy_protocol`).
public enum ProxySend: String, Sendable, CaseIterable {
    case off, v1, v2
}

public struct ProxyAddress: Sendable, Equatable {
    public enum Family: Sendable, Equatable { case inet, inet6, unix }
    public var family: Family
    /// 4 bytes (inet) or 16 (inet6), network order; a unix path's bytes, up to its first NUL.
    public var address: [UInt8]
    public var port: UInt16

    public init(family: Family, address: [UInt8], port: UInt16) {
        self.family = family
        self.address = address
        self.port = port
    }

    /// The IP address as text (`192.0.2.7`, `2001:db8::1`); nil for a unix path.
    public var text: String? {
        guard family != .unix, address.count == (family == .inet ? 4 : 16) else { return nil }
        var buffer = [CChar](repeating: 0, count: 64)
        address.withUnsafeBytes { raw in
            _ = inet_ntop(family == .inet ? AF_INET : AF_INET6, raw.baseAddress, &buffer, socklen_t(buffer.count))
        }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// A v2 type-length-value extension (ALPN, authority, unique id, SSL...).
public struct ProxyTLV: Sendable, Equatable {
    public var type: UInt8
    public var value: [UInt8]

    public init(type: UInt8, value: [UInt8]) {
        self.type = type
        self.value = value
    }

    public static let crc32c: UInt8 = 0x03
    public static let noop: UInt8 = 0x04
}

public struct ProxyHeader: Sendable, Equatable {
    public var version: ProxyVersion
    /// False for a v2 LOCAL or a v1 UNKNOWN (or a v2 with no address
    /// family): the connection's own endpoints stand.
    public var isProxied: Bool
    public var source: ProxyAddress?
    public var destination: ProxyAddress?
    public var tlvs: [ProxyTLV]
    /// Bytes the header takes: what the reader consumes, and no more.
    public var length: Int
}

public enum ProxyVersion: String, Sendable, Equatable { case v1, v2 }

public enum ProxyParse: Sendable, Equatable {
    case incomplete
    case complete(ProxyHeader)
    /// Not a header this listener takes, with why.
    case invalid(String)
}

public enum ProxyHeaderParser {
    /// The v2 signature: "\r\n\r\n\0\r\nQUIT\n".
    public static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    /// A v1 line, CRLF included, is at most this long.
    public static let maxV1 = 107
    static let v1Prefix = Array("PROXY ".utf8)

    /// The header at the start of `bytes`, if the listener takes its version.
    public static func parse(_ bytes: UnsafeRawBufferPointer, accept: ProxyAccept) -> ProxyParse {
        guard accept != .off else { return .invalid("PROXY protocol is off") }
        guard !bytes.isEmpty else { return .incomplete }
        let v1 = accept == .v1 || accept == .any, v2 = accept == .v2 || accept == .any
        if v2 && startsLike(bytes, signature) {
            return bytes.count < signature.count ? .incomplete : parseV2(bytes)
        }
        if v1 && startsLike(bytes, v1Prefix) {
            return bytes.count < v1Prefix.count ? .incomplete : parseV1(bytes)
        }
        return .invalid("no PROXY \(accept == .any ? "v1 or v2" : accept.rawValue) signature")
    }

    /// `bytes` is `prefix` or the start of it.
    static func startsLike(_ bytes: UnsafeRawBufferPointer, _ prefix: [UInt8]) -> Bool {
        let n = min(bytes.count, prefix.count)
        return n > 0 && (0..<n).allSatisfy { bytes[$0] == prefix[$0] }
    }

    // MARK: - Version 1

    static func parseV1(_ bytes: UnsafeRawBufferPointer) -> ProxyParse {
        var end = -1
        for i in 0..<min(bytes.count, maxV1) {
            if bytes[i] == 0x0A { return .invalid("v1: LF without CR") }
            if bytes[i] == 0x0D {
                guard i + 1 < bytes.count else { return .incomplete }
                guard bytes[i + 1] == 0x0A else { return .invalid("v1: CR without LF") }
                end = i
                break
            }
        }
        guard end >= 0 else { return bytes.count >= maxV1 ? .invalid("v1: line longer than 107 bytes") : .incomplete }
        let words = Array(UnsafeRawBufferPointer(rebasing: bytes[0..<end])).split(separator: 0x20, omittingEmptySubsequences: false)
        let length = end + 2
        guard words.count >= 2 else { return .invalid("v1: no protocol") }
        switch String(decoding: words[1], as: UTF8.self) {
        case "UNKNOWN":
            return .complete(ProxyHeader(version: .v1, isProxied: false, source: nil, destination: nil, tlvs: [], length: length))
        case "TCP4", "TCP6":
            let inet6 = words[1].last == UInt8(ascii: "6")
            guard words.count == 6 else { return .invalid("v1: expected 4 fields after the protocol, found \(words.count - 2)") }
            guard let source = ipAddress(words[2], inet6: inet6), let destination = ipAddress(words[3], inet6: inet6) else {
                return .invalid("v1: malformed \(inet6 ? "IPv6" : "IPv4") address")
            }
            guard let sourcePort = port(words[4]), let destinationPort = port(words[5]) else { return .invalid("v1: malformed port") }
            let family: ProxyAddress.Family = inet6 ? .inet6 : .inet
            return .complete(ProxyHeader(
                version: .v1, isProxied: true,
                source: ProxyAddress(family: family, address: source, port: sourcePort),
                destination: ProxyAddress(family: family, address: destination, port: destinationPort), tlvs: [], length: length))
        default:
            return .invalid("v1: unknown protocol (TCP4, TCP6 or UNKNOWN)")
        }
    }

    /// Decimal, 0...65535, no sign and no leading zero.
    static func port(_ digits: ArraySlice<UInt8>) -> UInt16? {
        guard (1...5).contains(digits.count), digits.allSatisfy({ $0 >= 48 && $0 <= 57 }),
              digits.count == 1 || digits.first != 48 else { return nil }
        let value = digits.reduce(0) { $0 * 10 + Int($1 - 48) }
        return value <= 65535 ? UInt16(value) : nil
    }

    /// An address in the text inet_pton takes (which refuses leading zeros in IPv4).
    static func ipAddress(_ text: ArraySlice<UInt8>, inet6: Bool) -> [UInt8]? {
        guard !text.isEmpty, text.count <= 45 else { return nil }
        var out = [UInt8](repeating: 0, count: inet6 ? 16 : 4)
        let ok = (Array(text) + [0]).withUnsafeBufferPointer { source in
            source.baseAddress!.withMemoryRebound(to: CChar.self, capacity: source.count) {
                inet_pton(inet6 ? AF_INET6 : AF_INET, $0, &out)
            }
        }
        return ok == 1 ? out : nil
    }

    // MARK: - Version 2

    static func parseV2(_ bytes: UnsafeRawBufferPointer) -> ProxyParse {
        guard bytes.count >= 16 else { return .incomplete }
        guard bytes[12] >> 4 == 2 else { return .invalid("v2: version \(bytes[12] >> 4), not 2") }
        let command = bytes[12] & 0x0F, family = bytes[13] >> 4, transport = bytes[13] & 0x0F
        guard command <= 1 else { return .invalid("v2: unknown command \(command)") }
        guard family <= 3, transport <= 2 else { return .invalid("v2: unknown address family or transport") }
        let length = 16 + (Int(bytes[14]) << 8 | Int(bytes[15]))
        guard bytes.count >= length else { return .incomplete }
        var header = ProxyHeader(version: .v2, isProxied: command == 1 && family != 0, source: nil, destination: nil,
                                 tlvs: [], length: length)
        let addressBytes = [0, 12, 36, 216][Int(family)]
        guard length - 16 >= addressBytes else { return .invalid("v2: \(length - 16) bytes are too few for the address family") }
        if header.isProxied {
            let a = 16
            switch family {
            case 1:
                header.source = ProxyAddress(family: .inet, address: Array(bytes[a..<a + 4]), port: u16(bytes, a + 8))
                header.destination = ProxyAddress(family: .inet, address: Array(bytes[a + 4..<a + 8]), port: u16(bytes, a + 10))
            case 2:
                header.source = ProxyAddress(family: .inet6, address: Array(bytes[a..<a + 16]), port: u16(bytes, a + 32))
                header.destination = ProxyAddress(family: .inet6, address: Array(bytes[a + 16..<a + 32]), port: u16(bytes, a + 34))
            default:
                let path = { (start: Int) in Array(bytes[start..<start + 108].prefix { $0 != 0 }) }
                header.source = ProxyAddress(family: .unix, address: path(a), port: 0)
                header.destination = ProxyAddress(family: .unix, address: path(a + 108), port: 0)
            }
        }
        var i = 16 + addressBytes
        var crc: (at: Int, value: UInt32)?
        while i < length {
            guard i + 3 <= length else { return .invalid("v2: truncated TLV") }
            let type = bytes[i], size = Int(u16(bytes, i + 1))
            guard i + 3 + size <= length else { return .invalid("v2: a TLV runs past the header") }
            if type == ProxyTLV.crc32c {
                guard size == 4, crc == nil else { return .invalid("v2: malformed CRC32c TLV") }
                crc = (i + 3, UInt32(u16(bytes, i + 3)) << 16 | UInt32(u16(bytes, i + 5)))
            }
            header.tlvs.append(ProxyTLV(type: type, value: Array(bytes[i + 3..<i + 3 + size])))
            i += 3 + size
        }
        if let crc {
            var copy = Array(bytes[0..<length])
            for k in crc.at..<crc.at + 4 { copy[k] = 0 }
            guard CRC32C.checksum(copy) == crc.value else { return .invalid("v2: CRC32c mismatch") }
        }
        return .complete(header)
    }

    static func u16(_ bytes: UnsafeRawBufferPointer, _ at: Int) -> UInt16 { UInt16(bytes[at]) << 8 | UInt16(bytes[at + 1]) }
}

extension ProxyHeader {
    /// The header that names `source` and `destination` (both inet or both
    /// inet6; anything else is sent as v1 UNKNOWN or v2 LOCAL), with `tlvs`
    /// (v2 only; a CRC32c one is recomputed, not copied).
    public static func encode(_ version: ProxySend, source: ProxyAddress?, destination: ProxyAddress?, tlvs: [ProxyTLV] = []) -> [UInt8] {
        let pair: (ProxyAddress, ProxyAddress)? = {
            guard let source, let destination, source.family == destination.family, source.family != .unix else { return nil }
            return (source, destination)
        }()
        switch version {
        case .off:
            return []
        case .v1:
            guard let (s, d) = pair else { return Array("PROXY UNKNOWN\r\n".utf8) }
            let proto = s.family == .inet ? "TCP4" : "TCP6"
            return Array("PROXY \(proto) \(text(s)) \(text(d)) \(s.port) \(d.port)\r\n".utf8)
        case .v2:
            var out = ProxyHeaderParser.signature
            var body: [UInt8] = []
            if let (s, d) = pair {
                out += [0x21, s.family == .inet ? 0x11 : 0x21]
                body = s.address + d.address + [UInt8(s.port >> 8), UInt8(s.port & 0xFF), UInt8(d.port >> 8), UInt8(d.port & 0xFF)]
            } else {
                out += [0x20, 0x00] // LOCAL
            }
            let kept = tlvs.filter { $0.type != ProxyTLV.crc32c }
            for tlv in kept where tlv.value.count <= 0xFFFF {
                body += [tlv.type, UInt8(tlv.value.count >> 8), UInt8(tlv.value.count & 0xFF)] + tlv.value
            }
            let withCRC = kept.count != tlvs.count
            if withCRC { body += [ProxyTLV.crc32c, 0, 4, 0, 0, 0, 0] }
            out += [UInt8(body.count >> 8), UInt8(body.count & 0xFF)] + body
            if withCRC {
                let value = CRC32C.checksum(out)
                for k in 0..<4 { out[out.count - 4 + k] = UInt8(truncatingIfNeeded: value >> (24 - 8 * k)) }
            }
            return out
        }
    }

    /// What a health check sends first to a backend that expects a header: v2 LOCAL, or v1 UNKNOWN.
    public static func local(_ version: ProxySend) -> [UInt8] { encode(version, source: nil, destination: nil) }

    static func text(_ address: ProxyAddress) -> String { address.text ?? "" }
}

/// CRC-32C (Castagnoli), as PROXY v2's checksum TLV uses it.
public enum CRC32C {
    static let table: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0x82F6_3B78 ^ (c >> 1) : c >> 1 }
        return c
    }

    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for b in bytes { crc = table[Int((crc ^ UInt32(b)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }
}
