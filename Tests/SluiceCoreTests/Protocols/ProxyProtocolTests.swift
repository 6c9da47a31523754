import SluiceCore
import Testing

private func parse(_ bytes: [UInt8], _ accept: ProxyAccept = .any) -> ProxyParse {
    bytes.withUnsafeBytes { ProxyHeaderParser.parse($0, accept: accept) }
}

private func header(_ bytes: [UInt8], _ accept: ProxyAccept = .any) -> ProxyHeader? {
    if case .complete(let h) = parse(bytes, accept) { return h }
    return nil
}

private let inet = (source: ProxyAddress(family: .inet, address: [192, 0, 2, 7], port: 51_234),
                    destination: ProxyAddress(family: .inet, address: [198, 51, 100, 1], port: 443))
private let inet6 = (source: ProxyAddress(family: .inet6, address: [0x20, 0x01, 0x0d, 0xb8] + Array(repeating: 0, count: 11) + [1], port: 7),
                     destination: ProxyAddress(family: .inet6, address: Array(repeating: 0, count: 15) + [1], port: 8080))

@Suite("PROXY protocol headers")
struct ProxyProtocolTests {
    static let v1 = Array("PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\r\n".utf8)
    static let v2 = ProxyHeader.encode(.v2, source: inet.source, destination: inet.destination,
                                       tlvs: [ProxyTLV(type: 0x01, value: Array("h2".utf8)), ProxyTLV(type: ProxyTLV.crc32c, value: [])])

    @Test("CRC-32C of \"123456789\" is the standard check value")
    func crc() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
    }

    @Test("v1 TCP4, TCP6 and UNKNOWN; the length is the line's, and bytes after it are not touched")
    func version1() throws {
        let h = try #require(header(Self.v1 + Array("GET / HTTP/1.1\r\n".utf8)))
        #expect(h.version == .v1 && h.isProxied && h.length == Self.v1.count)
        #expect(h.source == inet.source && h.destination == inet.destination)
        let six = try #require(header(Array("PROXY TCP6 2001:db8::1 ::1 7 8080\r\n".utf8)))
        #expect(six.source == inet6.source && six.destination == inet6.destination)
        let unknown = try #require(header(Array("PROXY UNKNOWN ffff::1 whatever\r\nrest".utf8)))
        #expect(!unknown.isProxied && unknown.length == 32)
    }

    @Test("v2 PROXY over IPv4 and IPv6, LOCAL, TLVs kept, the CRC32c checked")
    func version2() throws {
        let h = try #require(header(Self.v2 + [1, 2, 3], .v2))
        #expect(h.version == .v2 && h.isProxied && h.length == Self.v2.count)
        #expect(h.source == inet.source && h.destination == inet.destination)
        #expect(h.tlvs.map(\.type) == [0x01, ProxyTLV.crc32c] && h.tlvs[0].value == Array("h2".utf8))
        var corrupted = Self.v2
        corrupted[20] ^= 1
        #expect(parse(corrupted) == .invalid("v2: CRC32c mismatch"))
        let six = try #require(header(ProxyHeader.encode(.v2, source: inet6.source, destination: inet6.destination)))
        #expect(six.source == inet6.source && six.destination == inet6.destination && six.length == 16 + 36)
        let local = try #require(header(ProxyHeader.local(.v2)))
        #expect(!local.isProxied && local.length == 16)
        #expect(ProxyHeader.local(.v1) == Array("PROXY UNKNOWN\r\n".utf8))
        // A unix-socket client is named, with no port.
        var unix = ProxyHeaderParser.signature + [0x21, 0x31, 0x00, 216]
        unix += Array("/run/lb.sock".utf8) + Array(repeating: 0, count: 96) + Array("/run/app.sock".utf8) + Array(repeating: 0, count: 95)
        let u = try #require(header(unix))
        #expect(u.source?.family == .unix && u.source?.address == Array("/run/lb.sock".utf8))
    }

    @Test("encoding and parsing agree: v1 and v2 of the same endpoints name them alike")
    func roundTrip() throws {
        for version in [ProxySend.v1, .v2] {
            for pair in [inet, inet6] {
                let h = try #require(header(ProxyHeader.encode(version, source: pair.source, destination: pair.destination)))
                #expect(h.source == pair.source && h.destination == pair.destination)
            }
        }
    }

    @Test("byte by byte and in random splits: incomplete until the last byte, then the same header")
    func splits() throws {
        for whole in [Self.v1, Self.v2, ProxyHeader.encode(.v2, source: inet6.source, destination: inet6.destination)] {
            let expected = try #require(header(whole))
            for n in 0..<whole.count { #expect(parse(Array(whole[0..<n])) == .incomplete, "\(n) of \(whole.count)") }
            var rng = SystemRandomNumberGenerator()
            for _ in 0..<50 {
                let cut = Int.random(in: 0...whole.count, using: &rng)
                let prefix = Array(whole[0..<cut])
                #expect(cut == whole.count ? header(prefix) == expected : parse(prefix) == .incomplete)
            }
        }
    }

    @Test("refused: bad signature, the other version, wrong length, truncated TLV, a v1 line over 107 bytes, garbage after PROXY",
          arguments: [
              (Array("GET / HTTP/1.1\r\n".utf8), ProxyAccept.any, "signature"),
              (Array("PROXY TCP4 192.0.2.7 198.51.100.1 1 2\r\n".utf8), ProxyAccept.v2, "signature"),
              (ProxyHeader.local(.v2), ProxyAccept.v1, "signature"),
              (ProxyHeaderParser.signature + [0x31, 0x11, 0, 12] + Array(repeating: 0, count: 12), ProxyAccept.any, "version"),
              (ProxyHeaderParser.signature + [0x22, 0x11, 0, 12] + Array(repeating: 0, count: 12), ProxyAccept.any, "command"),
              (ProxyHeaderParser.signature + [0x21, 0x11, 0, 8] + Array(repeating: 0, count: 8), ProxyAccept.any, "too few"),
              (ProxyHeaderParser.signature + [0x21, 0x11, 0, 14] + Array(repeating: 0, count: 12) + [1, 0], ProxyAccept.any, "truncated TLV"),
              (ProxyHeaderParser.signature + [0x21, 0x11, 0, 16] + Array(repeating: 0, count: 12) + [1, 0, 9, 0], ProxyAccept.any, "runs past"),
              (Array(("PROXY TCP6 " + String(repeating: "f", count: 100)).utf8), ProxyAccept.any, "107"),
              (Array("PROXY garbage\r\n".utf8), ProxyAccept.any, "unknown protocol"),
              (Array("PROXY TCP4 192.0.2.7 198.51.100.1 51234\r\n".utf8), ProxyAccept.any, "4 fields"),
              (Array("PROXY TCP4 192.0.2.07 198.51.100.1 1 2\r\n".utf8), ProxyAccept.any, "address"),
              (Array("PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n".utf8), ProxyAccept.any, "address"),
              (Array("PROXY TCP4 192.0.2.7 198.51.100.1 01 2\r\n".utf8), ProxyAccept.any, "port"),
              (Array("PROXY TCP4 192.0.2.7 198.51.100.1 65536 2\r\n".utf8), ProxyAccept.any, "port"),
              (Array("PROXY TCP4  192.0.2.7 198.51.100.1 1 2\r\n".utf8), ProxyAccept.any, "fields"),
              (Array("PROXY TCP4 192.0.2.7 198.51.100.1 1 2\n".utf8), ProxyAccept.any, "LF without CR"),
          ])
    func refused(bytes: [UInt8], accept: ProxyAccept, reason: String) {
        guard case .invalid(let why) = parse(bytes, accept) else {
            Issue.record("accepted: \(String(decoding: bytes, as: UTF8.self))")
            return
        }
        #expect(why.contains(reason), "\(why)")
    }
}
