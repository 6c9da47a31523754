import SluiceCore
import Testing

@Suite("The dns health check's query and verdict")
struct DNSProbeTests {
    @Test("the query, byte by byte: id, RD, one question, the name's labels, type A, class IN")
    func query() throws {
        let q = try #require(DNSProbe.query(name: "example.test", id: 0xBEEF))
        #expect(q == [0xBE, 0xEF, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0,
                      7] + Array("example".utf8) + [4] + Array("test".utf8) + [0, 0, 1, 0, 1])
        #expect(DNSProbe.query(name: "example.test.", id: 0xBEEF) == q, "a trailing dot is the same name")
        #expect(DNSProbe.query(name: ".", id: 1)?.suffix(5) == [0, 0, 1, 0, 1], "the root: one empty label")
    }

    @Test("names DNS cannot carry are refused", arguments: ["a..b", String(repeating: "x", count: 64) + ".test",
                                                           Array(repeating: String(repeating: "y", count: 60), count: 5).joined(separator: "."), ".a"])
    func badNames(name: String) {
        #expect(DNSProbe.query(name: name, id: 1) == nil)
    }

    @Test("NOERROR and NXDOMAIN pass; SERVFAIL, REFUSED, another id, a query, truncation and short datagrams fail")
    func verdicts() throws {
        let q = try #require(DNSProbe.query(name: "example.test", id: 0x1234))
        func answer(_ flags: UInt8, _ rcode: UInt8, id: [UInt8] = [0x12, 0x34]) -> [UInt8] { id + [flags, 0x80 | rcode] + Array(q[4...]) }
        #expect(DNSProbe.verdict(answer(0x81, 0), to: q) == .passed("NOERROR"))
        #expect(DNSProbe.verdict(answer(0x81, 3), to: q) == .passed("NXDOMAIN"))
        #expect(DNSProbe.verdict(answer(0x81, 2), to: q) == .failed("SERVFAIL"))
        #expect(DNSProbe.verdict(answer(0x81, 5), to: q) == .failed("REFUSED"))
        #expect(DNSProbe.verdict(answer(0x81, 0, id: [0x12, 0x35]), to: q) == .failed("an answer to another query"))
        #expect(DNSProbe.verdict(answer(0x01, 0), to: q) == .failed("a query, not an answer"))
        #expect(DNSProbe.verdict(answer(0x83, 0), to: q) == .failed("a truncated answer"))
        #expect(DNSProbe.verdict(Array(answer(0x81, 0).prefix(11)), to: q) == .failed("an answer too short for DNS"))
    }
}
