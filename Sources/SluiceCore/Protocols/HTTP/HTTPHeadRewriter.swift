/// What a `mode: http` listener tells backends about the client (`forwarded:`).
public enum HTTPForwardedFields: String, Sendable, CaseIterable {
    case off
    /// `X-Forwarded-For` (the client appended to what came in) and `X-Forwarded-Proto`.
    case xff
    /// RFC 7239 `Forwarded: for=...;proto=...`, appended to what came in.
    case forwarded
    case both
}

/// Writes the heads the proxy sends on: the fields as received, less the
/// hop-by-hop ones (RFC 9110 7.6.1: Connection and every field it names,
/// Keep-Alive, Proxy-Connection, TE, Trailer, and Upgrade unless the
/// connection is being upgraded), plus what the proxy adds. The start line
/// and every kept field go out byte for byte.
public enum HTTPHeadRewriter {
    /// The request head for the backend, appended to `out`.
    /// - client: the client's address as it goes in the fields (`192.0.2.7`, `2001:db8::1`).
    /// - scheme: `http` or `https`, for X-Forwarded-Proto and `proto=`.
    public static func request(_ head: HTTPRequestHead, in bytes: UnsafeRawBufferPointer, client: String,
                               scheme: String = "http", forwarded: HTTPForwardedFields, into out: inout [UInt8]) {
        let firstField = head.fields.first?.name.lowerBound ?? (head.length - 2)
        out.reserveCapacity(out.count + head.length + (forwarded == .off ? 32 : 160))
        // (Rebased: a slice of a raw buffer would be copied byte by byte.)
        out.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[0..<firstField])) // the request line and its CRLF
        let named = connectionTokens(head.fields, bytes)
        let addsXFF = forwarded == .xff || forwarded == .both
        let addsForwarded = forwarded == .forwarded || forwarded == .both
        var priorXFF: [Range<Int>] = [], priorForwarded: [Range<Int>] = []
        var copier = FieldCopier()
        for field in head.fields {
            if isHopByHop(field, bytes, named: named, upgrading: head.upgrade) { copier.skip(bytes, &out); continue }
            if addsXFF && equalsLowercase(field.name, "x-forwarded-for", bytes) { priorXFF.append(field.value); copier.skip(bytes, &out); continue }
            if addsXFF && equalsLowercase(field.name, "x-forwarded-proto", bytes) { copier.skip(bytes, &out); continue }
            if addsForwarded && equalsLowercase(field.name, "forwarded", bytes) { priorForwarded.append(field.value); copier.skip(bytes, &out); continue }
            copier.keep(field, bytes, &out)
        }
        copier.skip(bytes, &out)
        if head.upgrade {
            out.append(contentsOf: "Connection: upgrade\r\n".utf8)
        } else if head.version == .http10 {
            out.append(contentsOf: "Connection: keep-alive\r\n".utf8) // the backend connection is reused
        }
        if addsXFF {
            out.append(contentsOf: "X-Forwarded-For: ".utf8)
            for value in priorXFF where !value.isEmpty {
                out.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[value]))
                out.append(contentsOf: ", ".utf8)
            }
            out.append(contentsOf: "\(client)\r\nX-Forwarded-Proto: \(scheme)\r\n".utf8)
        }
        if addsForwarded {
            out.append(contentsOf: "Forwarded: ".utf8)
            for value in priorForwarded where !value.isEmpty {
                out.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[value]))
                out.append(contentsOf: ", ".utf8)
            }
            // An IPv6 address is quoted in brackets (RFC 7239 section 6).
            let node = client.contains(":") ? "\"[\(client)]\"" : client
            out.append(contentsOf: "for=\(node);proto=\(scheme)\r\n".utf8)
        }
        out.append(contentsOf: "\r\n".utf8)
    }

    /// The response head for the client, appended to `out`; `close` adds
    /// `Connection: close` (the proxy closes the client after it).
    public static func response(_ head: HTTPResponseHead, in bytes: UnsafeRawBufferPointer, close: Bool, into out: inout [UInt8]) {
        let firstField = head.fields.first?.name.lowerBound ?? (head.length - 2)
        out.reserveCapacity(out.count + head.length + 32)
        out.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[0..<firstField]))
        let upgrading = head.status == 101
        let named = connectionTokens(head.fields, bytes)
        var copier = FieldCopier()
        for field in head.fields {
            if isHopByHop(field, bytes, named: named, upgrading: upgrading) { copier.skip(bytes, &out) } else { copier.keep(field, bytes, &out) }
        }
        copier.skip(bytes, &out)
        if upgrading {
            out.append(contentsOf: "Connection: upgrade\r\n".utf8)
        } else if close {
            out.append(contentsOf: "Connection: close\r\n".utf8)
        } else if head.version == .http10 {
            out.append(contentsOf: "Connection: keep-alive\r\n".utf8)
        }
        out.append(contentsOf: "\r\n".utf8)
    }

    /// The field names the Connection fields list, but `keep-alive`
    /// (empty, and no allocation, when there is nothing else).
    static func connectionTokens(_ fields: [HTTPField], _ bytes: UnsafeRawBufferPointer) -> [Range<Int>] {
        var named: [Range<Int>] = []
        for field in fields where equalsLowercase(field.name, "connection", bytes) {
            var start = field.value.lowerBound
            for k in field.value.lowerBound...field.value.upperBound where k == field.value.upperBound || bytes[k] == UInt8(ascii: ",") {
                var a = start, b = k
                while a < b && (bytes[a] == HTTPBytes.sp || bytes[a] == HTTPBytes.htab) { a += 1 }
                while b > a && (bytes[b - 1] == HTTPBytes.sp || bytes[b - 1] == HTTPBytes.htab) { b -= 1 }
                // `keep-alive` names a field that is dropped anyway: the usual
                // `Connection: keep-alive` costs no allocation.
                if a < b && !equalsLowercase(a..<b, "keep-alive", bytes) { named.append(a..<b) }
                start = k + 1
            }
        }
        return named
    }

    /// Whether the field concerns this hop only; `named` is what
    /// `connectionTokens` found. Dispatches on the name's length first: most
    /// fields are compared with nothing.
    static func isHopByHop(_ field: HTTPField, _ bytes: UnsafeRawBufferPointer, named: [Range<Int>], upgrading: Bool) -> Bool {
        let name = field.name
        switch name.count {
        case 2 where equalsLowercase(name, "te", bytes): return true
        case 7 where equalsLowercase(name, "trailer", bytes): return true
        case 7 where equalsLowercase(name, "upgrade", bytes): return !upgrading
        case 10 where equalsLowercase(name, "connection", bytes) || equalsLowercase(name, "keep-alive", bytes): return true
        case 16 where equalsLowercase(name, "proxy-connection", bytes): return true
        default: break
        }
        return named.contains { token in
            token.count == name.count && zip(token, name).allSatisfy { HTTPBytes.lower(bytes[$0]) == HTTPBytes.lower(bytes[$1]) }
                && !(upgrading && equalsLowercase(token, "upgrade", bytes))
        }
    }

    /// For each field, whether it is dropped (`isHopByHop` over the head).
    static func hopByHop(_ fields: [HTTPField], _ bytes: UnsafeRawBufferPointer, upgrading: Bool) -> [Bool] {
        let named = connectionTokens(fields, bytes)
        return fields.map { isHopByHop($0, bytes, named: named, upgrading: upgrading) }
    }

    /// Writes kept fields as `name: value` CRLF. A line already in that
    /// form (the usual case) is copied as it came, and adjacent ones in one
    /// copy: a head of plain fields costs a few memcpys, not four appends a field.
    struct FieldCopier {
        private var run = 0..<0

        mutating func keep(_ field: HTTPField, _ bytes: UnsafeRawBufferPointer, _ out: inout [UInt8]) {
            let name = field.name, value = field.value
            let plain = value.lowerBound == name.upperBound + 2 && bytes[name.upperBound + 1] == HTTPBytes.sp
                && bytes[value.upperBound] == HTTPBytes.cr
            guard plain else {
                skip(bytes, &out)
                out.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[name]))
                out.append(HTTPBytes.colon)
                out.append(HTTPBytes.sp)
                out.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[value]))
                out.append(HTTPBytes.cr)
                out.append(HTTPBytes.lf)
                return
            }
            let line = name.lowerBound..<(value.upperBound + 2)
            if !run.isEmpty && run.upperBound == line.lowerBound {
                run = run.lowerBound..<line.upperBound
            } else {
                skip(bytes, &out)
                run = line
            }
        }

        /// Ends the run of copied lines (a field is dropped, or the head ends).
        mutating func skip(_ bytes: UnsafeRawBufferPointer, _ out: inout [UInt8]) {
            guard !run.isEmpty else { return }
            out.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[run]))
            run = 0..<0
        }
    }

    static func equalsLowercase(_ range: Range<Int>, _ word: StaticString, _ bytes: UnsafeRawBufferPointer) -> Bool {
        guard range.count == word.utf8CodeUnitCount else { return false }
        let w = word.utf8Start
        for k in 0..<range.count where HTTPBytes.lower(bytes[range.lowerBound + k]) != w[k] { return false }
        return true
    }
}
