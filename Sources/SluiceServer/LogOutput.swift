import Atomics
import Logging
import SluiceCore
import SluicePosix

/// `2026-11-26T23:05:01.123Z info [worker=0] message key=value`
public struct SluiceLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    /// The daemon's level, which a reload may change under every logger.
    public var logLevel: Logger.Level {
        get { level.value }
        set { level.value = newValue }
    }
    private let sink: LogSink
    private let label: String
    private let level: LogLevelSetting

    public init(label: String, sink: LogSink, level: LogLevelSetting) {
        self.label = label
        self.sink = sink
        self.level = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var line = wallClockTimestamp()
        line += " \(event.level)"
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        if let worker = merged.removeValue(forKey: "worker") { line += " [worker=\(worker)]" }
        line += " \(event.message)"
        for key in merged.keys.sorted() {
            line += " \(key)=\(merged[key]!)"
        }
        sink.write(line: line)
    }
}

extension LogLevelName {
    public var swiftLogLevel: Logger.Level {
        switch self {
        case .trace: .trace
        case .debug: .debug
        case .info: .info
        case .notice: .notice
        case .warning: .warning
        case .error: .error
        case .critical: .critical
        }
    }
}

/// The minimum level of every logger of one daemon, shared so that a
/// reload changes it everywhere at once.
public final class LogLevelSetting: Sendable {
    private let raw: ManagedAtomic<Int>

    public init(_ level: Logger.Level) { raw = ManagedAtomic(Self.levels.firstIndex(of: level)!) }

    public var value: Logger.Level {
        get { Self.levels[raw.load(ordering: .relaxed)] }
        set { raw.store(Self.levels.firstIndex(of: newValue)!, ordering: .relaxed) }
    }

    private static let levels = Logger.Level.allCases
}

/// Builds the loggers of one daemon: every logger shares one sink and one level.
public struct LogFactory: Sendable {
    public let sink: LogSink
    public let level: LogLevelSetting

    public init(sink: LogSink, level: Logger.Level) {
        self.sink = sink
        self.level = LogLevelSetting(level)
    }

    public func logger(_ label: String, worker: Int? = nil) -> Logger {
        var logger = Logger(label: label) { [sink, level] label in
            SluiceLogHandler(label: label, sink: sink, level: level)
        }
        if let worker { logger[metadataKey: "worker"] = "\(worker)" }
        return logger
    }
}

/// One line per finished connection.
public struct AccessRecord: Sendable {
    public var worker: Int
    public var listener: String
    public var client: String
    public var backend: String?
    public var bytesFromClient: UInt64
    public var bytesToClient: UInt64
    public var durationMicroseconds: UInt64
    public var dataPath: String
    public var closeReason: String
    /// Set for a tunnel an HTTP listener handed over (`websocket`, `connect`).
    public var tunnel: String?
    /// A `mode: redis` client's commands and error replies.
    public var redis: (commands: UInt64, errors: UInt64)?
    /// A `mode: udp` flow's datagrams each way.
    public var datagrams: (fromClient: UInt64, toClient: UInt64)?

    public func render(_ format: AccessLogFormat) -> String? {
        let ms = Double(durationMicroseconds) / 1000
        let duration = (ms * 1000).rounded() / 1000
        switch format {
        case .off:
            return nil
        case .text:
            return "\(wallClockTimestamp()) access worker=\(worker) listener=\(listener) client=\(client) backend=\(backend ?? "-") "
                + "bytes_in=\(bytesFromClient) bytes_out=\(bytesToClient) duration_ms=\(duration) path=\(dataPath) reason=\(closeReason)"
                + (tunnel.map { " tunnel=\($0)" } ?? "") + (redis.map { " commands=\($0.commands) errors=\($0.errors)" } ?? "")
                + (datagrams.map { " datagrams_in=\($0.fromClient) datagrams_out=\($0.toClient)" } ?? "")
        case .json:
            return "{\"time\":\"\(wallClockTimestamp())\",\"worker\":\(worker),\"listener\":\(jsonString(listener)),"
                + "\"client\":\(jsonString(client)),\"backend\":\(backend.map(jsonString) ?? "null"),"
                + "\"bytes_in\":\(bytesFromClient),\"bytes_out\":\(bytesToClient),\"duration_ms\":\(duration),"
                + "\"path\":\(jsonString(dataPath)),\"reason\":\(jsonString(closeReason))"
                + (tunnel.map { ",\"tunnel\":\(jsonString($0))" } ?? "")
                + (redis.map { ",\"commands\":\($0.commands),\"errors\":\($0.errors)" } ?? "")
                + (datagrams.map { ",\"datagrams_in\":\($0.fromClient),\"datagrams_out\":\($0.toClient)" } ?? "") + "}"
        }
    }
}

func jsonString(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if scalar.value < 0x20 {
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out + "\""
}
