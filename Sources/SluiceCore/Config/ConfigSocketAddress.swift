#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// An IP literal and port, as written in the configuration
/// ("192.0.2.1:80" or "[2001:db8::1]:80"). Hostnames are not parsed here:
/// a backend written as one is a `NamedBackend`, resolved at run time.
///
/// Equality and hashing use the canonical form of `host`, so
/// "[0:0::1]:80" == "[::1]:80". `parse` always stores the canonical form.
public struct SocketAddressSpec: Sendable, Hashable, CustomStringConvertible {
    public enum Family: Sendable, Hashable {
        case inet, inet6
    }

    /// The IP literal, without brackets.
    public var host: String
    public var port: UInt16
    public var family: Family

    public init(host: String, port: UInt16, family: Family) {
        self.host = host
        self.port = port
        self.family = family
    }

    /// "1.2.3.4:80" or "[::1]:80".
    public var description: String {
        switch family {
        case .inet: "\(host):\(port)"
        case .inet6: "[\(host)]:\(port)"
        }
    }

    /// True for 0.0.0.0 and ::.
    public var isUnspecified: Bool {
        canonicalHost == "0.0.0.0" || canonicalHost == "::"
    }

    public static func == (lhs: SocketAddressSpec, rhs: SocketAddressSpec) -> Bool {
        lhs.family == rhs.family && lhs.port == rhs.port && lhs.canonicalHost == rhs.canonicalHost
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(family)
        hasher.combine(port)
        hasher.combine(canonicalHost)
    }

    var canonicalHost: String {
        Self.canonicalIP(host, family: family) ?? host
    }

    /// Parses "a.b.c.d:port" or "[IPv6]:port". Port 0 ("any free port") is
    /// accepted only when `allowPortZero` is true.
    public static func parse(_ text: String, allowPortZero: Bool = false) -> Result<SocketAddressSpec, AddressParseError> {
        if text.isEmpty { return .failure(.empty) }
        let family: Family
        let canonical: String
        let portText: Substring

        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return .failure(.malformed(text)) }
            let host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            if host.contains("%") { return .failure(.scopedIPv6(text)) }
            if host.isEmpty { return .failure(.missingHost(text)) }
            if canonicalIP(String(host), family: .inet) != nil { return .failure(.bracketedIPv4(text)) }
            guard let ip = canonicalIP(String(host), family: .inet6) else { return .failure(.invalidIPv6(text)) }
            if rest.isEmpty { return .failure(.missingPort(text)) }
            guard rest.first == ":" else { return .failure(.malformed(text)) }
            family = .inet6
            canonical = ip
            portText = rest.dropFirst()
        } else {
            let colons = text.reduce(0) { $1 == ":" ? $0 + 1 : $0 }
            if colons > 1 { return .failure(.unbracketedIPv6(text)) }
            let host: Substring
            if let colon = text.firstIndex(of: ":") {
                host = text[..<colon]
                portText = text[text.index(after: colon)...]
            } else {
                host = text[...]
                portText = ""
            }
            if host.isEmpty { return .failure(.missingHost(text)) }
            if host.contains(where: { !($0.isASCII && ($0.isNumber || $0 == ".")) }) {
                return .failure(.hostname(text))
            }
            guard let ip = canonicalIP(String(host), family: .inet) else { return .failure(.invalidIPv4(text)) }
            if colons == 0 { return .failure(.missingPort(text)) }
            family = .inet
            canonical = ip
        }

        if portText.isEmpty { return .failure(.missingPort(text)) }
        guard portText.allSatisfy({ $0.isASCII && $0.isNumber }) else {
            return .failure(.invalidPort(input: text, port: String(portText)))
        }
        let digits = portText.drop { $0 == "0" }
        guard digits.count <= 5, let port = Int(digits.isEmpty ? "0" : String(digits)), port <= 65535,
              port > 0 || allowPortZero
        else {
            return .failure(.portOutOfRange(input: text, port: String(portText), allowsZero: allowPortZero))
        }
        return .success(SocketAddressSpec(host: canonical, port: UInt16(port), family: family))
    }

    /// The canonical (inet_ntop) text of an IP literal, or nil when `text`
    /// is not a valid literal of `family`.
    static func canonicalIP(_ text: String, family: Family) -> String? {
        guard !text.isEmpty, !text.utf8.contains(0) else { return nil }
        var buffer = [CChar](repeating: 0, count: 64)
        let converted: Bool
        switch family {
        case .inet:
            var addr = in_addr()
            guard inet_pton(AF_INET, text, &addr) == 1 else { return nil }
            converted = inet_ntop(AF_INET, &addr, &buffer, socklen_t(buffer.count)) != nil
        case .inet6:
            var addr = in6_addr()
            guard inet_pton(AF_INET6, text, &addr) == 1 else { return nil }
            converted = inet_ntop(AF_INET6, &addr, &buffer, socklen_t(buffer.count)) != nil
        }
        guard converted else { return nil }
        return buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }
}

/// Why an address could not be parsed; `description` is a message for humans
/// that quotes the input.
public enum AddressParseError: Error, Sendable, Equatable, CustomStringConvertible {
    case empty
    case missingPort(String)
    case missingHost(String)
    case hostname(String)
    case invalidIPv4(String)
    case invalidIPv6(String)
    case unbracketedIPv6(String)
    case bracketedIPv4(String)
    case scopedIPv6(String)
    case malformed(String)
    case invalidPort(input: String, port: String)
    case portOutOfRange(input: String, port: String, allowsZero: Bool)

    static let example = "an address like 127.0.0.1:8080 or [::1]:8080"

    public var description: String {
        switch self {
        case .empty:
            return "expected \(Self.example); found an empty string"
        case .missingPort(let text):
            return "missing port: expected \(Self.example); found \(configQuoted(text))"
        case .missingHost(let text):
            return "missing IP address: expected \(Self.example); found \(configQuoted(text))"
        case .hostname(let text):
            return "hostnames are not supported, only IP addresses: expected \(Self.example); found \(configQuoted(text))"
        case .invalidIPv4(let text):
            return "invalid IPv4 address: expected four numbers 0-255 like 192.0.2.1:8080; found \(configQuoted(text))"
        case .invalidIPv6(let text):
            return "invalid IPv6 address: expected an address like [2001:db8::1]:8080; found \(configQuoted(text))"
        case .unbracketedIPv6(let text):
            return "IPv6 addresses must be in brackets: expected an address like [::1]:8080; found \(configQuoted(text))"
        case .bracketedIPv4(let text):
            let bare = text.filter { $0 != "[" && $0 != "]" }
            return "IPv4 addresses must not be in brackets: expected an address like \(bare); found \(configQuoted(text))"
        case .scopedIPv6(let text):
            return "IPv6 zone indexes (%...) are not supported: expected \(Self.example); found \(configQuoted(text))"
        case .malformed(let text):
            return "malformed address: expected \(Self.example); found \(configQuoted(text))"
        case .invalidPort(let text, let port):
            return "invalid port \(configQuoted(port)): expected a number 1...65535; found \(configQuoted(text))"
        case .portOutOfRange(let text, let port, let allowsZero):
            return "port \(port) is out of range: expected \(allowsZero ? 0 : 1)...65535; found \(configQuoted(text))"
        }
    }
}

/// `"text"` with quotes and control characters escaped, for messages.
func configQuoted(_ text: String) -> String {
    String(reflecting: text)
}

// MARK: - A backend that is the proxy itself

extension SocketAddressSpec {
    /// Whether connecting to this address reaches a socket listening on
    /// `listener` on this host, so that a pool holding it would proxy to the
    /// proxy itself until descriptors run out. Decided without looking at
    /// the host's interfaces (the file may be checked on another machine):
    /// the same address; for a wildcard listener, a loopback or wildcard
    /// address on its port; an IPv4-mapped IPv6 address as its IPv4 address;
    /// and a wildcard backend as loopback (where Linux sends such a connect).
    /// IPv6 listeners are bound IPV6_V6ONLY, so families never cross.
    public func reachesListener(boundTo listener: SocketAddressSpec) -> Bool {
        guard listener.port != 0, port == listener.port else { return false }
        let target = unmappedIPv4
        guard target.family == listener.family else { return false }
        if target == listener { return true }
        if listener.isUnspecified { return target.isLoopback || target.isUnspecified }
        if target.isUnspecified { return listener.canonicalHost == (listener.family == .inet ? "127.0.0.1" : "::1") }
        return false
    }

    /// 127.0.0.0/8 or ::1.
    public var isLoopback: Bool {
        switch family {
        case .inet: canonicalHost.hasPrefix("127.")
        case .inet6: canonicalHost == "::1"
        }
    }

    /// `[::ffff:a.b.c.d]:p` as `a.b.c.d:p`; any other address unchanged.
    var unmappedIPv4: SocketAddressSpec {
        let prefix = "::ffff:"
        guard family == .inet6, canonicalHost.hasPrefix(prefix) else { return self }
        let embedded = String(canonicalHost.dropFirst(prefix.count))
        guard let ip = Self.canonicalIP(embedded, family: .inet) else { return self }
        return SocketAddressSpec(host: ip, port: port, family: .inet)
    }
}
