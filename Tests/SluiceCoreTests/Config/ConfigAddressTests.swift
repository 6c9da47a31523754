import Testing
@testable import SluiceCore

@Suite("Socket addresses")
struct ConfigAddressTests {
    @Test func parsesIPv4() throws {
        let a = try SocketAddressSpec.parse("192.0.2.10:8080").get()
        #expect(a.host == "192.0.2.10")
        #expect(a.port == 8080)
        #expect(a.family == .inet)
        #expect(a.description == "192.0.2.10:8080")
    }

    @Test func parsesIPv6AndNormalizes() throws {
        let a = try SocketAddressSpec.parse("[0:0::1]:80").get()
        #expect(a.host == "::1")
        #expect(a.family == .inet6)
        #expect(a.description == "[::1]:80")
        #expect(a == (try SocketAddressSpec.parse("[::1]:80").get()))
        let b = try SocketAddressSpec.parse("[2001:DB8:0:0:0:0:0:1]:443").get()
        #expect(b.description == "[2001:db8::1]:443")
    }

    @Test func equalityAndHashingUseTheCanonicalForm() {
        let written = SocketAddressSpec(host: "0:0:0:0:0:0:0:1", port: 80, family: .inet6)
        let canonical = SocketAddressSpec(host: "::1", port: 80, family: .inet6)
        #expect(written == canonical)
        #expect(Set([written, canonical]).count == 1)
        #expect(written != SocketAddressSpec(host: "::1", port: 81, family: .inet6))
        #expect(SocketAddressSpec(host: "::ffff:1.2.3.4", port: 1, family: .inet6)
            != SocketAddressSpec(host: "1.2.3.4", port: 1, family: .inet))
    }

    @Test func portZeroOnlyWhenAllowed() throws {
        #expect(SocketAddressSpec.parse("127.0.0.1:0")
            == .failure(.portOutOfRange(input: "127.0.0.1:0", port: "0", allowsZero: false)))
        let a = try SocketAddressSpec.parse("127.0.0.1:0", allowPortZero: true).get()
        #expect(a.port == 0)
        #expect(try SocketAddressSpec.parse("[::]:0", allowPortZero: true).get().isUnspecified)
    }

    @Test func portBounds() throws {
        #expect(try SocketAddressSpec.parse("1.2.3.4:65535").get().port == 65535)
        #expect(try SocketAddressSpec.parse("1.2.3.4:1").get().port == 1)
        #expect(try SocketAddressSpec.parse("1.2.3.4:00080").get().port == 80)
    }

    @Test(arguments: [
        ("", AddressParseError.empty),
        ("localhost:80", .hostname("localhost:80")),
        ("example.com:443", .hostname("example.com:443")),
        ("localhost", .hostname("localhost")),
        ("127.0.0.1", .missingPort("127.0.0.1")),
        ("127.0.0.1:", .missingPort("127.0.0.1:")),
        ("[::1]", .missingPort("[::1]")),
        (":80", .missingHost(":80")),
        ("[]:80", .missingHost("[]:80")),
        ("1.2.3.4:70000", .portOutOfRange(input: "1.2.3.4:70000", port: "70000", allowsZero: false)),
        ("1.2.3.4:99999999999999999999", .portOutOfRange(input: "1.2.3.4:99999999999999999999",
                                                         port: "99999999999999999999", allowsZero: false)),
        ("1.2.3.4:http", .invalidPort(input: "1.2.3.4:http", port: "http")),
        ("1.2.3.4:-1", .invalidPort(input: "1.2.3.4:-1", port: "-1")),
        ("256.1.1.1:80", .invalidIPv4("256.1.1.1:80")),
        ("1.2.3:80", .invalidIPv4("1.2.3:80")),
        ("01.2.3.4:80", .invalidIPv4("01.2.3.4:80")),
        ("[::gg]:80", .invalidIPv6("[::gg]:80")),
        ("[1::2::3]:80", .invalidIPv6("[1::2::3]:80")),
        ("[1.2.3.4]:80", .bracketedIPv4("[1.2.3.4]:80")),
        ("::1:80", .unbracketedIPv6("::1:80")),
        ("[fe80::1%eth0]:80", .scopedIPv6("[fe80::1%eth0]:80")),
        ("[::1:80", .malformed("[::1:80")),
        ("[::1]80", .malformed("[::1]80")),
    ])
    func rejects(text: String, expected: AddressParseError) {
        #expect(SocketAddressSpec.parse(text) == .failure(expected))
    }

    @Test func errorMessagesExplain() {
        #expect(AddressParseError.hostname("localhost:80").description
            == "hostnames are not supported, only IP addresses: expected an address like 127.0.0.1:8080 or [::1]:8080; found \"localhost:80\"")
        #expect(AddressParseError.portOutOfRange(input: "1.2.3.4:70000", port: "70000", allowsZero: false).description
            == "port 70000 is out of range: expected 1...65535; found \"1.2.3.4:70000\"")
        #expect(AddressParseError.bracketedIPv4("[1.2.3.4]:80").description.contains("like 1.2.3.4:80"))
        #expect(AddressParseError.missingPort("127.0.0.1").description.hasPrefix("missing port"))
    }
}
