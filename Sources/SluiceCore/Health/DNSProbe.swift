/// The `kind: dns` health check's datagrams: one standard query (type A,
/// recursion desired) for the check's name, and the verdict on what came
/// back. Not a resolver: a backend passes when it answers the query it was
/// asked, with NOERROR or NXDOMAIN (it is serving); SERVFAIL, REFUSED, a
/// truncated or foreign datagram, or silence fail it.
public enum DNSProbe {
    /// The query for `name` ("." or a dotted name; a trailing dot is fine),
    /// nil for a name DNS cannot carry (an empty label, one over 63 bytes, or
    /// over 255 in all).
    public static func query(name: String, id: UInt16) -> [UInt8]? {
        guard let qname = encode(name) else { return nil }
        var out: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xFF), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
        out += qname
        out += [0, 1, 0, 1] // type A, class IN
        return out
    }

    /// The name in wire form, labels and the root's empty one.
    static func encode(_ name: String) -> [UInt8]? {
        let trimmed = name.hasSuffix(".") ? String(name.dropLast()) : name
        var out: [UInt8] = []
        if !trimmed.isEmpty {
            for label in trimmed.split(separator: ".", omittingEmptySubsequences: false) {
                let bytes = Array(label.utf8)
                guard !bytes.isEmpty, bytes.count <= 63 else { return nil }
                out.append(UInt8(bytes.count))
                out += bytes
            }
        }
        out.append(0)
        return out.count <= 255 ? out : nil
    }

    public enum Verdict: Equatable, Sendable {
        case passed(String)
        case failed(String)
    }

    /// What `response` says of the backend that was sent `query`.
    public static func verdict(_ response: [UInt8], to query: [UInt8]) -> Verdict {
        guard response.count >= 12, query.count >= 12 else { return .failed("an answer too short for DNS") }
        guard response[0] == query[0], response[1] == query[1] else { return .failed("an answer to another query") }
        guard response[2] & 0x80 != 0 else { return .failed("a query, not an answer") }
        if response[2] & 0x02 != 0 { return .failed("a truncated answer") }
        switch response[3] & 0x0F {
        case 0: return .passed("NOERROR")
        case 3: return .passed("NXDOMAIN")
        case 2: return .failed("SERVFAIL")
        case 5: return .failed("REFUSED")
        case let code: return .failed("RCODE \(code)")
        }
    }
}
