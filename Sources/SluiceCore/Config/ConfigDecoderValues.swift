import Yams

// The node-level helpers of ConfigDecoder: shapes (mapping, list, scalar)
// and values (choices, integers, durations, addresses, names), each
// reporting its own error with the field path.

extension ConfigDecoder {
    // MARK: - Node shapes

    static func isNull(_ scalar: Node.Scalar) -> Bool {
        scalar.style == .plain && ["", "~", "null", "Null", "NULL"].contains(scalar.string)
    }

    /// "a mapping", "a list", `"text"` or "null", for "found ..." messages.
    static func describe(_ node: Node) -> String {
        switch node {
        case .scalar(let scalar): isNull(scalar) ? "null" : configQuoted(scalar.string)
        case .mapping: "a mapping"
        case .sequence: "a list"
        case .alias: "an alias"
        }
    }

    static func isAbsolutePath(_ text: String) -> Bool {
        text.hasPrefix("/") && !text.utf8.contains(0)
    }

    /// A mapping's recognised entries; reports unknown keys and a wrong node type.
    mutating func mapping(_ node: Node, _ path: ConfigFieldPath, keys: [String], renamed: [String: String] = [:],
                          expected: String = "a mapping") -> ConfigMapping? {
        guard case .mapping(let map) = node else {
            fail(path, at: node, "expected \(expected); found \(Self.describe(node))")
            return nil
        }
        var result = ConfigMapping(node: node, path: path)
        var reportedUnknown = Set<String>()
        for (key, value) in flattenMerges(map, path) {
            guard case .scalar(let scalar) = key, !Self.isNull(scalar) else {
                fail(path, at: key, "expected a key name; found \(Self.describe(key))")
                continue
            }
            let name = scalar.string
            if result.entries[name] != nil || reportedUnknown.contains(name) { continue }
            if let newName = renamed[name] {
                reportedUnknown.insert(name)
                fail(path.key(name), at: key,
                     "\(configQuoted(name)) was renamed to \(configQuoted(newName)) (same values); write \(newName): instead")
                continue
            }
            guard keys.contains(name) else {
                reportedUnknown.insert(name)
                fail(path.key(name), at: key,
                     "unknown key \(configQuoted(name)) (expected one of \(keys.joined(separator: ", ")))"
                        + configDidYouMean(name, keys))
                continue
            }
            result.entries[name] = ConfigMapping.Entry(key: key, value: value)
        }
        return result
    }

    /// The pairs of `map` with YAML merge keys (`<<: *anchor`) expanded;
    /// explicit keys come first so they win over merged ones.
    mutating func flattenMerges(_ map: Node.Mapping, _ path: ConfigFieldPath) -> [(key: Node, value: Node)] {
        var explicit: [(key: Node, value: Node)] = []
        var merged: [(key: Node, value: Node)] = []
        for (key, value) in map {
            guard case .scalar(let scalar) = key, scalar.style == .plain, scalar.string == "<<" else {
                explicit.append((key, value))
                continue
            }
            let sources: [Node]
            if case .sequence(let list) = value { sources = Array(list) } else { sources = [value] }
            for source in sources {
                if case .mapping(let inner) = source {
                    merged += flattenMerges(inner, path)
                } else {
                    fail(path.key("<<"), at: source,
                         "expected a mapping or a list of mappings to merge; found \(Self.describe(source))")
                }
            }
        }
        return explicit + merged
    }

    mutating func sequence(_ node: Node, _ path: ConfigFieldPath, expected: String) -> [Node]? {
        guard case .sequence(let list) = node else {
            fail(path, at: node, "expected \(expected); found \(Self.describe(node))")
            return nil
        }
        return Array(list)
    }

    /// The text of a non-null scalar.
    mutating func scalarText(_ node: Node, _ path: ConfigFieldPath, expected: String) -> String? {
        guard case .scalar(let scalar) = node, !Self.isNull(scalar) else {
            fail(path, at: node, "expected \(expected); found \(Self.describe(node))")
            return nil
        }
        return scalar.string
    }

    // MARK: - Values

    /// `true` or `false`, nothing else (YAML 1.1's yes/no/on/off are refused
    /// as ambiguous).
    mutating func boolean(_ node: Node, _ path: ConfigFieldPath) -> Bool? {
        guard let text = scalarText(node, path, expected: "true or false") else { return nil }
        switch text {
        case "true": return true
        case "false": return false
        default:
            fail(path, at: node, "expected true or false; found \(configQuoted(text))")
            return nil
        }
    }

    mutating func choice<E: RawRepresentable & CaseIterable>(
        _ node: Node, _ path: ConfigFieldPath, _ type: E.Type
    ) -> E? where E.RawValue == String {
        let names = E.allCases.map(\.rawValue)
        let expected = "one of " + names.joined(separator: ", ")
        guard let text = scalarText(node, path, expected: expected) else { return nil }
        guard let value = E(rawValue: text) else {
            fail(path, at: node, "expected \(expected); found \(configQuoted(text))" + configDidYouMean(text, names))
            return nil
        }
        return value
    }

    mutating func integer(_ node: Node, _ path: ConfigFieldPath, in range: ClosedRange<Int>) -> Int? {
        let expected = "an integer in \(range.lowerBound)...\(range.upperBound)"
        guard let text = scalarText(node, path, expected: expected) else { return nil }
        guard let value = Self.parseInteger(text) else {
            fail(path, at: node, "expected \(expected); found \(configQuoted(text))")
            return nil
        }
        guard range.contains(value) else {
            fail(path, at: node, "expected \(expected); found \(text)")
            return nil
        }
        return value
    }

    /// Decimal integer with an optional sign and `_` digit separators.
    static func parseInteger(_ text: String) -> Int? {
        var body = Substring(text)
        var negative = false
        if let first = body.first, first == "-" || first == "+" {
            negative = first == "-"
            body = body.dropFirst()
        }
        guard let first = body.first, first.isASCII, first.isNumber,
              body.allSatisfy({ $0 == "_" || ($0.isASCII && $0.isNumber) })
        else { return nil }
        guard let magnitude = Int(body.filter { $0 != "_" }) else { return nil }
        return negative ? -magnitude : magnitude
    }

    static let durationExample = "a duration like 300ms, 2s, 5m"

    /// A duration within `range` (whose lower bound is above zero).
    mutating func duration(_ node: Node, _ path: ConfigFieldPath, in range: ClosedRange<Duration>) -> Duration? {
        guard let text = scalarText(node, path, expected: Self.durationExample) else { return nil }
        if let value = parseDuration(text) {
            guard value > .zero else {
                fail(path, at: node, "expected a duration greater than zero; found \(configQuoted(text))")
                return nil
            }
            guard range.contains(value) else {
                fail(path, at: node, "expected a duration in \(ConfigBounds.describe(range)); found \(configQuoted(text))")
                return nil
            }
            return value
        }
        let message: String
        if Self.isWellFormedDuration(text) {
            // Only too large (beyond Duration) or too fine (below an attosecond) gets here.
            message = "expected a duration in \(ConfigBounds.describe(range)); found \(configQuoted(text))"
        } else if text.hasPrefix("-") {
            message = "expected a positive duration like 300ms, 2s, 5m; found \(configQuoted(text))"
        } else if !text.isEmpty, text.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }) {
            message = "expected \(Self.durationExample); found \(text) without a unit (e.g. \"\(text)s\")"
        } else {
            message = "expected \(Self.durationExample) (units: ns, us, ms, s, m, h); found \(configQuoted(text))"
        }
        fail(path, at: node, message)
        return nil
    }

    /// Digits, an optional fraction and a known unit: what `parseDuration`
    /// reads, whatever the magnitude.
    static func isWellFormedDuration(_ text: String) -> Bool {
        guard let unitStart = text.firstIndex(where: { !($0.isASCII && ($0.isNumber || $0 == ".")) }) else { return false }
        let number = text[..<unitStart]
        let parts = number.split(separator: ".", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), parts.allSatisfy({ !$0.isEmpty }) else { return false }
        return ["ns", "us", "ms", "s", "m", "h"].contains(String(text[unitStart...]))
    }

    mutating func address(_ node: Node, _ path: ConfigFieldPath, allowPortZero: Bool,
                          orOff: Bool = false) -> SocketAddressSpec? {
        let expected = AddressParseError.example + (orOff ? " (or off)" : "")
        if case .sequence = node {
            fail(path, at: node,
                 "expected \(expected); found a list (IPv6 addresses need quotes: \"[::1]:8080\")")
            return nil
        }
        guard let text = scalarText(node, path, expected: expected) else { return nil }
        switch SocketAddressSpec.parse(text, allowPortZero: allowPortZero) {
        case .success(let address):
            return address
        case .failure(let error):
            fail(path, at: node, error.description)
            return nil
        }
    }

    mutating func instanceName(_ node: Node, _ path: ConfigFieldPath) -> String? {
        let rule = "1 to 64 characters from A-Z, a-z, 0-9, \"_\" and \"-\""
        guard let text = scalarText(node, path, expected: "an instance name of \(rule)") else { return nil }
        let valid = (1...64).contains(text.count)
            && text.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }
        guard valid else {
            fail(path, at: node, "expected an instance name of \(rule); found \(configQuoted(text))")
            return nil
        }
        return text
    }

    /// Listener and pool names: [A-Za-z0-9_.-]+.
    mutating func validateName(_ text: String, _ node: Node, _ path: ConfigFieldPath) -> Bool {
        let valid = !text.isEmpty
            && text.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "." || $0 == "-") }
        if !valid {
            fail(path, at: node,
                 "expected a name made of A-Z, a-z, 0-9, \"_\", \".\" and \"-\"; found \(configQuoted(text))")
        }
        return valid
    }
}

// MARK: - Did you mean

/// `; did you mean "x"?` when one candidate is a close spelling of `text`, else "".
func configDidYouMean(_ text: String, _ candidates: [String]) -> String {
    let typed = Array(text.lowercased())
    var best: (candidate: String, distance: Int)? = nil
    for candidate in candidates {
        let distance = configEditDistance(typed, Array(candidate.lowercased()))
        let limit = candidate.count >= 5 ? 2 : (candidate.count >= 3 ? 1 : 0)
        if distance <= limit, distance < (best?.distance ?? Int.max) {
            best = (candidate, distance)
        }
    }
    guard let best, best.candidate != text else { return "" }
    return "; did you mean \"\(best.candidate)\"?"
}

/// Optimal-string-alignment distance (Levenshtein plus adjacent transpositions).
func configEditDistance(_ a: [Character], _ b: [Character]) -> Int {
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var previous2 = [Int](repeating: 0, count: b.count + 1)
    var previous = Array(0...b.count)
    var current = [Int](repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        current[0] = i
        for j in 1...b.count {
            let cost = a[i - 1] == b[j - 1] ? 0 : 1
            var value = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1, j > 1, a[i - 1] == b[j - 2], a[i - 2] == b[j - 1] {
                value = min(value, previous2[j - 2] + 1)
            }
            current[j] = value
        }
        (previous2, previous, current) = (previous, current, previous2)
    }
    return previous[b.count]
}
