/// One problem found in a configuration file.
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file name as given to the loader.
    public var file: String
    /// 1-based line of the offending YAML node, when known.
    public var line: Int?
    /// 1-based column of the offending YAML node, when known.
    public var column: Int?
    /// Field path such as `pools[0].backends[1].address`; "" for the whole file.
    public var path: String
    /// What was expected and what was found.
    public var message: String

    public init(file: String, line: Int? = nil, column: Int? = nil, path: String, message: String) {
        self.file = file
        self.line = line
        self.column = column
        self.path = path
        self.message = message
    }

    /// `FILE:LINE:COL: PATH: MESSAGE`, leaving out the parts that are unknown.
    public var description: String {
        var text = file
        if let line {
            text += ":\(line)"
            if let column { text += ":\(column)" }
        }
        text += ": "
        if !path.isEmpty { text += path + ": " }
        return text + message
    }
}

/// Every problem found in a configuration file, in file order.
public struct ConfigErrors: Error, Sendable, CustomStringConvertible {
    public var errors: [ConfigError]

    public init(_ errors: [ConfigError]) {
        self.errors = errors
    }

    public init(errors: [ConfigError]) {
        self.errors = errors
    }

    /// One error per line.
    public var description: String {
        errors.map(\.description).joined(separator: "\n")
    }
}

/// A decoded configuration, with notices about defaults that could not be
/// honoured (e.g. a default feature that is not built yet).
public struct LoadedConfig: Sendable {
    public var config: SluiceConfig
    public var notices: [String]

    public init(config: SluiceConfig, notices: [String]) {
        self.config = config
        self.notices = notices
    }
}
