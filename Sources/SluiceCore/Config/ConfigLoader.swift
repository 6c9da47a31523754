import Yams

/// Decodes and validates a Sluice YAML configuration. It does no I/O: the
/// caller reads the file (SluiceServer's `ConfigFile`) and counts the CPUs.
public enum ConfigLoader {
    /// Decodes `yaml`; `file` is used only in error messages; `onlineCPUs`
    /// sizes `workers: auto`. Throws every problem found, sorted by position.
    public static func parse(
        yaml: String, file: String, onlineCPUs: Int
    ) throws(ConfigErrors) -> LoadedConfig {
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch {
            throw ConfigErrors([syntaxError(error, yaml: yaml, file: file)])
        }
        // "", comments only, "---" and "~" are all an empty configuration.
        var isEmpty = root == nil
        if case .scalar(let scalar)? = root, ConfigDecoder.isNull(scalar) { isEmpty = true }
        guard let root, !isEmpty else {
            throw ConfigErrors([ConfigError(
                file: file, path: "",
                message: "the configuration is empty; expected a mapping with at least \"listeners\" and \"pools\""
            )])
        }
        var decoder = ConfigDecoder(file: file, onlineCPUs: onlineCPUs)
        let config = decoder.decodeDocument(root)
        guard let config, decoder.errors.isEmpty else {
            throw ConfigErrors(sortedByPosition(decoder.errors))
        }
        return LoadedConfig(config: config, notices: decoder.notices)
    }

    /// Decodes the bytes of a configuration file: everything `sluice check`
    /// does after reading it, and what the fuzzer drives.
    public static func parse(
        bytes: [UInt8], file: String, onlineCPUs: Int
    ) throws(ConfigErrors) -> LoadedConfig {
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ConfigErrors([ConfigError(file: file, path: "", message: "the configuration file is not valid UTF-8")])
        }
        return try parse(yaml: text, file: file, onlineCPUs: onlineCPUs)
    }

    // MARK: - Helpers

    static func sortedByPosition(_ errors: [ConfigError]) -> [ConfigError] {
        errors.enumerated().sorted { a, b in
            let ka = (a.element.line ?? 0, a.element.column ?? 0, a.offset)
            let kb = (b.element.line ?? 0, b.element.column ?? 0, b.offset)
            return ka < kb
        }.map(\.element)
    }

    static func syntaxError(_ error: any Error, yaml: String, file: String) -> ConfigError {
        func located(_ problem: String, _ context: YamlError.Context?, _ mark: Mark) -> ConfigError {
            var message = "invalid YAML: \(problem)"
            if let context {
                message += " (\(context.text) at line \(context.mark.line), column \(context.mark.column))"
            }
            return ConfigError(file: file, line: mark.line, column: mark.column, path: "", message: message)
        }
        guard let yamlError = error as? YamlError else {
            return ConfigError(file: file, path: "", message: "invalid YAML: \(error)")
        }
        switch yamlError {
        case .scanner(let context, let problem, let mark, _),
             .parser(let context, let problem, let mark, _),
             .composer(let context, let problem, let mark, _):
            return located(problem, context, mark)
        case .duplicatedKeysInMapping(let duplicates, let context):
            let keys = duplicates.map(configQuoted).joined(separator: ", ")
            return ConfigError(
                file: file, line: context.mark.line, column: context.mark.column, path: "",
                message: "invalid YAML: duplicate key \(keys) in a mapping"
            )
        case .reader(let problem, let offset, _, _):
            var line: Int? = nil
            if let offset {
                line = 1 + yaml.prefix(offset).reduce(0) { $1 == "\n" ? $0 + 1 : $0 }
            }
            return ConfigError(file: file, line: line, path: "", message: "invalid YAML: \(problem)")
        default:
            return ConfigError(file: file, path: "", message: "invalid YAML: \(yamlError)")
        }
    }
}
