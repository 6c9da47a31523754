// Backends written as a hostname and port, and how their names are resolved
// (`resolve:`). The configuration only describes them; SluiceServer's
// BackendDiscovery looks them up and `PoolConfig.expanded` turns the answers
// into ordinary IP backends.

/// A pool backend whose address is a hostname: every A and AAAA record of
/// `host` becomes a backend on `port` with `weight`.
public struct NamedBackend: Sendable, Hashable, CustomStringConvertible {
    /// Lower case (DNS names compare without case); a trailing dot, which
    /// turns off the resolver's search domains, is kept as written.
    public var host: String
    public var port: UInt16
    public var weight: Int

    public init(host: String, port: UInt16, weight: Int = ConfigDefaults.weight) {
        self.host = host
        self.port = port
        self.weight = weight
    }

    /// "host:port".
    public var description: String { "\(host):\(port)" }

    /// Parses "name.example:8080": an RFC 1123 hostname (labels of 1 to 63
    /// letters, digits and hyphens, not starting or ending with a hyphen;
    /// at most 253 characters without the trailing dot) and a port 1...65535.
    public static func parse(_ text: String, weight: Int = ConfigDefaults.weight) -> Result<NamedBackend, HostnameParseError> {
        guard let colon = text.lastIndex(of: ":") else { return .failure(.missingPort(text)) }
        let host = text[..<colon]
        let portText = text[text.index(after: colon)...]
        if let problem = hostnameProblem(host) { return .failure(.invalidHostname(input: text, problem: problem)) }
        guard !portText.isEmpty else { return .failure(.missingPort(text)) }
        let digits = portText.drop { $0 == "0" }
        guard portText.allSatisfy({ $0.isASCII && $0.isNumber }), digits.count <= 5,
              let port = Int(digits.isEmpty ? "0" : String(digits)), (1...65535).contains(port)
        else { return .failure(.invalidPort(input: text, port: String(portText))) }
        return .success(NamedBackend(host: host.lowercased(), port: UInt16(port), weight: weight))
    }

    /// Why `host` is not an RFC 1123 hostname, or nil when it is one.
    static func hostnameProblem(_ host: Substring) -> String? {
        let name = host.hasSuffix(".") ? host.dropLast() : host
        if name.isEmpty { return "the hostname is empty" }
        if name.utf8.count > 253 { return "the hostname is longer than 253 characters" }
        for label in name.split(separator: ".", omittingEmptySubsequences: false) {
            if label.isEmpty { return "a label is empty (two dots in a row, or a leading dot)" }
            if label.utf8.count > 63 { return "the label \(configQuoted(String(label))) is longer than 63 characters" }
            if !label.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }) {
                return "the label \(configQuoted(String(label))) has characters other than letters, digits and \"-\""
            }
            if label.hasPrefix("-") || label.hasSuffix("-") {
                return "the label \(configQuoted(String(label))) starts or ends with \"-\""
            }
        }
        return nil
    }
}

/// Why a backend hostname could not be parsed; `description` quotes the input.
public enum HostnameParseError: Error, Sendable, Equatable, CustomStringConvertible {
    case missingPort(String)
    case invalidPort(input: String, port: String)
    case invalidHostname(input: String, problem: String)

    static let example = "a hostname and port like app.default.svc.cluster.local:8080"

    public var description: String {
        switch self {
        case .missingPort(let text):
            "missing port: expected \(Self.example); found \(configQuoted(text))"
        case .invalidPort(let text, let port):
            "invalid port \(configQuoted(port)): expected a number 1...65535; found \(configQuoted(text))"
        case .invalidHostname(let text, let problem):
            "invalid hostname (\(problem)): expected \(Self.example) or an IP address like 127.0.0.1:8080; "
                + "found \(configQuoted(text))"
        }
    }
}

/// `resolve:`: how often the names of `NamedBackend`s are looked up, and where.
public struct ResolveConfig: Sendable, Hashable {
    /// An answer is kept at least this long, whatever its TTL (also the first
    /// retry delay after a failed lookup).
    public var minTTL: Duration
    /// An answer is looked up again after at most this long.
    public var maxTTL: Duration
    /// How long one attempt of a query waits for the nameserver.
    public var timeout: Duration
    /// Empty: the nameservers of /etc/resolv.conf.
    public var nameservers: [SocketAddressSpec]

    public init(
        minTTL: Duration = .seconds(1), maxTTL: Duration = .seconds(300), timeout: Duration = .seconds(2),
        nameservers: [SocketAddressSpec] = []
    ) {
        self.minTTL = minTTL
        self.maxTTL = maxTTL
        self.timeout = timeout
        self.nameservers = nameservers
    }
}

extension SocketAddressSpec {
    /// The DNS port, for a nameserver written without one.
    public static let dnsPort: UInt16 = 53

    /// A nameserver: an IP literal with an optional port ("10.0.0.10",
    /// "127.0.0.1:5353", "::1", "[::1]:53"); port 53 when none is given.
    public static func parseNameserver(_ text: String) -> Result<SocketAddressSpec, AddressParseError> {
        if !text.hasPrefix("["), let ip = canonicalIP(text, family: .inet6) {
            return .success(SocketAddressSpec(host: ip, port: dnsPort, family: .inet6))
        }
        if text.hasPrefix("[") ? text.hasSuffix("]") : !text.contains(":") {
            return parse(text + ":\(dnsPort)")
        }
        return parse(text)
    }
}

extension PoolConfig {
    /// Every backend this pool had and the backends its names resolved to, in
    /// an order that depends only on the answers: the IP backends first, then
    /// for each name in turn its addresses sorted by their text, each with
    /// the name's weight. An address already in the list is not added twice
    /// (its first weight wins); a name without an answer adds nothing.
    public func expanded(resolved: [NamedBackend: [SocketAddressSpec]]) -> PoolConfig {
        var pool = self
        var present = Set(backends.map(\.address))
        for name in named {
            for address in ResolveSchedule.addressSet(resolved[name] ?? []) where present.insert(address).inserted {
                pool.backends.append(BackendConfig(address: address, weight: name.weight))
            }
        }
        pool.named = []
        return pool
    }
}

extension SocketAddressSpec {
    /// The same address with `host` in its canonical (inet_ntop) form.
    public var canonical: SocketAddressSpec {
        SocketAddressSpec(host: canonicalHost, port: port, family: family)
    }
}
