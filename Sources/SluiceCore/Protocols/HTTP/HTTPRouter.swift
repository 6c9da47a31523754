/// Picks a pool for each request of a `mode: http` listener: the first route
/// whose host and path prefix match, else the listener's own pool (nil: 404).
/// Pure and allocation-free per request: the host and path are compared in
/// place, in the request's bytes.
public struct HTTPRouter: Sendable, Equatable {
    public struct Route: Sendable, Equatable {
        /// `api.example.com` (exact), `*.example.com` (any name below it), or nil (any host).
        public var host: String?
        /// Matched against the start of the path; "/" or nil matches every path.
        public var pathPrefix: String?
        /// What the route leads to (a pool index, say).
        public var target: Int

        /// The host in lower case without `*` (".example.com" for a wildcard), and the prefix, as bytes.
        let hostBytes: [UInt8]?
        let wildcard: Bool
        let prefixBytes: [UInt8]?

        public init(host: String?, pathPrefix: String?, target: Int) {
            let lowered = host.map { String(decoding: $0.utf8.map(HTTPBytes.lower), as: UTF8.self) }
            let wildcard = lowered?.hasPrefix("*.") == true
            self.host = lowered
            self.pathPrefix = pathPrefix
            self.target = target
            self.wildcard = wildcard
            hostBytes = lowered.map { Array(wildcard ? $0.utf8.dropFirst() : $0.utf8[...]) }
            prefixBytes = pathPrefix.map { Array($0.utf8) }
        }
    }

    public var routes: [Route]
    public var fallback: Int?

    public init(routes: [Route], fallback: Int?) {
        self.routes = routes
        self.fallback = fallback
    }

    /// The target for a request whose head is in `bytes`; nil: no route and no fallback (404).
    public func route(_ head: HTTPRequestHead, in bytes: UnsafeRawBufferPointer) -> Int? {
        let host = Self.hostName(head, bytes)
        let path = Self.path(head, bytes)
        for route in routes {
            if let wanted = route.hostBytes, !Self.hostMatches(wanted, wildcard: route.wildcard, host, bytes) { continue }
            if let prefix = route.prefixBytes, !Self.hasPrefix(path, prefix, bytes) { continue }
            return route.target
        }
        return fallback
    }

    /// The host without its port: from the Host field, or from an
    /// absolute-form target (which wins, RFC 9112 3.2.2).
    static func hostName(_ head: HTTPRequestHead, _ bytes: UnsafeRawBufferPointer) -> Range<Int>? {
        var authority = head.host
        if let start = schemeEnd(head.target, bytes) {
            var end = start
            while end < head.target.upperBound && bytes[end] != UInt8(ascii: "/") && bytes[end] != UInt8(ascii: "?") { end += 1 }
            authority = start..<end
        }
        guard var range = authority else { return nil }
        if let at = range.lastIndex(where: { bytes[$0] == UInt8(ascii: "@") }) { range = (at + 1)..<range.upperBound }
        if range.first.map({ bytes[$0] == UInt8(ascii: "[") }) == true {
            // An IP literal: up to its closing bracket.
            if let close = range.firstIndex(where: { bytes[$0] == UInt8(ascii: "]") }) { return range.lowerBound..<(close + 1) }
            return range
        }
        if let colon = range.firstIndex(where: { bytes[$0] == HTTPBytes.colon }) { return range.lowerBound..<colon }
        return range
    }

    /// The path of the target: origin-form as is, absolute-form after its authority.
    static func path(_ head: HTTPRequestHead, _ bytes: UnsafeRawBufferPointer) -> Range<Int> {
        guard let start = schemeEnd(head.target, bytes) else { return head.target }
        let slash = head.target[start...].firstIndex { bytes[$0] == UInt8(ascii: "/") } ?? head.target.upperBound
        return slash..<head.target.upperBound
    }

    /// Where the authority of an absolute-form target starts (after `scheme://`).
    private static func schemeEnd(_ target: Range<Int>, _ bytes: UnsafeRawBufferPointer) -> Int? {
        guard bytes[target.lowerBound] != UInt8(ascii: "/") else { return nil }
        for k in target where bytes[k] == HTTPBytes.colon {
            return k + 2 < target.upperBound && bytes[k + 1] == UInt8(ascii: "/") && bytes[k + 2] == UInt8(ascii: "/") ? k + 3 : nil
        }
        return nil
    }

    /// `wanted` is lower case; with `wildcard` it is ".example.com": a name below it, never the bare suffix.
    static func hostMatches(_ wantedBytes: [UInt8], wildcard: Bool, _ host: Range<Int>?, _ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let host else { return false }
        var name = host
        // A fully qualified name's trailing dot names the same host.
        if name.count > 1 && bytes[name.upperBound - 1] == UInt8(ascii: ".") { name = name.lowerBound..<(name.upperBound - 1) }
        if wildcard {
            guard name.count > wantedBytes.count else { return false }
            let start = name.upperBound - wantedBytes.count
            return zip(start..<name.upperBound, wantedBytes).allSatisfy { HTTPBytes.lower(bytes[$0]) == $1 }
        }
        guard name.count == wantedBytes.count else { return false }
        return zip(name, wantedBytes).allSatisfy { HTTPBytes.lower(bytes[$0]) == $1 }
    }

    static func hasPrefix(_ path: Range<Int>, _ p: [UInt8], _ bytes: UnsafeRawBufferPointer) -> Bool {
        if path.isEmpty { return p.isEmpty || p == [UInt8(ascii: "/")] } // `http://host` asks for "/"
        guard path.count >= p.count else { return false }
        return zip(path, p).allSatisfy { bytes[$0] == $1 }
    }
}
