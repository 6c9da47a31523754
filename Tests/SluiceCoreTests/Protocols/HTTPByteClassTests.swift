@testable import SluiceCore
import Testing

/// The parser's byte classes are bit masks; these are their definitions in
/// the RFCs' words, checked against every byte value.
@Suite("HTTP byte classes")
struct HTTPByteClassTests {
    /// The classes defined as letters, digits and a list of other bytes.
    enum ListedClass: String, CaseIterable, Sendable {
        /// tchar (RFC 9110 5.6.2)
        case token = "!#$%&'*+-.^_`|~"
        /// A request target: RFC 3986 without the fragment (unreserved, reserved but #, and %)
        case target = "-._~:/?[]@!$&'()*+,;=%"
        /// Host: reg-name, IPv4 and IP-literal characters, and the port's colon
        case host = "-._~!$&'()*+,;=%:[]"

        var members: Set<UInt8> {
            Set(Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789".utf8)).union(rawValue.utf8)
        }

        func contains(_ b: UInt8) -> Bool {
            switch self {
            case .token: HTTPBytes.isToken(b)
            case .target: HTTPBytes.isTargetByte(b)
            case .host: HTTPBytes.isHostByte(b)
            }
        }
    }

    @Test("letters, digits and the listed others: tchar, request target, Host", arguments: ListedClass.allCases)
    func listed(_ byteClass: ListedClass) {
        let members = byteClass.members
        for b in 0...255 { #expect(byteClass.contains(UInt8(b)) == members.contains(UInt8(b)), "byte \(b)") }
    }

    @Test("field value bytes: HTAB, SP, VCHAR and obs-text; no other control, no DEL")
    func fieldValue() {
        for b in 0...255 {
            let expected = b == 9 || (b >= 0x20 && b <= 0x7E) || b >= 0x80
            #expect(HTTPBytes.isFieldByte(UInt8(b)) == expected, "byte \(b)")
        }
    }

    @Test("eight bytes at a time: a byte below the limit, a control or DEL, found wherever it sits among any others")
    func swar() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<20_000 {
            var bytes = (0..<8).map { _ in UInt8.random(in: 0x20...0xFF, using: &generator) }
            // Sometimes one or two special bytes: a limit's neighbours, controls, DEL.
            for _ in 0..<Int.random(in: 0...2, using: &generator) {
                bytes[Int.random(in: 0..<8, using: &generator)] = [0, 9, 10, 13, 14, 0x1F, 0x7F, 0x80, 0xFF].randomElement(using: &generator)!
            }
            let word = bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
            #expect(SWAR.hasByte(below: 14, word) == bytes.contains { $0 < 14 }, "\(bytes)")
            #expect(SWAR.hasControlOrDelete(word) == bytes.contains { $0 < 0x20 || $0 == 0x7F }, "\(bytes)")
            // The first marked byte is the first that matches, however many follow it.
            #expect(SWAR.firstMarked(SWAR.bytes(below: 14, word)) == (bytes.firstIndex { $0 < 14 } ?? 8), "\(bytes)")
            #expect(SWAR.firstMarked(SWAR.controlOrDelete(word)) == (bytes.firstIndex { $0 < 0x20 || $0 == 0x7F } ?? 8), "\(bytes)")
        }
    }
}
