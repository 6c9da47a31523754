import SluiceCore
import SluicePosix

/// The configuration file: read here, decoded by `ConfigLoader` (which does no I/O).
public enum ConfigFile {
    /// Reads the file at `path` and decodes it; a file that cannot be read
    /// is one error naming the file.
    public static func load(path: String, onlineCPUs: Int = CurrentProcess.onlineCPUCount) throws(ConfigErrors) -> LoadedConfig {
        let bytes: [UInt8]
        do { bytes = try FileSystem.readFile(path) } catch {
            throw ConfigErrors([ConfigError(
                file: path, path: "", message: "cannot read the configuration file: \(errnoDescription(error.errno))")])
        }
        return try ConfigLoader.parse(bytes: bytes, file: path, onlineCPUs: onlineCPUs)
    }
}
