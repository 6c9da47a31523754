/// What a client of the admin socket can ask for: one JSON object per line.
public enum AdminRequest: Equatable, Sendable {
    case status
    case backends
    case drainBackend(pool: String, backend: String, drained: Bool)
    case drainWorker(Int, drained: Bool)
    /// Read the configuration file again and apply it.
    case reload
    /// Start a binary upgrade (to `binary`, or the running one).
    case upgrade(binary: String?)

    /// The `cmd` names, as the error for an unknown one lists them.
    public static let commands = ["status", "backends", "drain_backend", "undrain_backend", "drain_worker", "undrain_worker", "reload", "upgrade"]
}

/// Why a line is not a request; `message` is what the client is told.
public struct AdminRequestError: Error, Equatable, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
}

/// One line of admin input, once framed.
public enum AdminLine: Equatable, Sendable {
    /// Only whitespace: nothing to answer.
    case blank
    case request(AdminRequest)
    case malformed(AdminRequestError)
}

/// The outcome of looking for the next line in buffered input.
public enum AdminParseResult: Equatable, Sendable {
    /// No complete line yet (and fewer than `maxLineBytes` buffered).
    case needMore
    /// A line, and how many bytes it took including its newline.
    case done(AdminLine, consumed: Int)
    /// The line is over the limit: the connection cannot be resynchronised.
    case invalid(String)
}

/// Pure parser for the admin socket: bytes in, typed requests out. Never
/// traps on any input (it is fuzzed: Fuzz/Sources/FuzzAdmin).
public enum AdminRequestParser {
    /// Requests are a few dozen bytes; 64 KiB bounds what one client can
    /// make the control thread buffer.
    public static let maxLineBytes = 64 * 1024

    private static let commandList = AdminRequest.commands.joined(separator: ", ")

    /// Frames the first line of `input`. At end of input (`endOfInput`), a
    /// last line without its newline still counts.
    public static func parse(_ input: some Collection<UInt8>, endOfInput: Bool = false) -> AdminParseResult {
        let newline = input.firstIndex(of: UInt8(ascii: "\n"))
        let lineEnd = newline ?? input.endIndex
        let lineLength = input.distance(from: input.startIndex, to: lineEnd)
        if lineLength > maxLineBytes { return .invalid("request too large (limit \(maxLineBytes) bytes)") }
        if newline == nil && !endOfInput { return .needMore }
        let consumed = lineLength + (newline == nil ? 0 : 1)
        if consumed == 0 { return .needMore } // end of input and nothing left
        return .done(line(input[input.startIndex..<lineEnd]), consumed: consumed)
    }

    /// One line (without its newline) as a request or the reason it is not one.
    public static func line(_ bytes: some Collection<UInt8>) -> AdminLine {
        if bytes.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { return .blank }
        switch request(bytes) {
        case .success(let request): return .request(request)
        case .failure(let error): return .malformed(error)
        }
    }

    public static func request(_ bytes: some Collection<UInt8>) -> Result<AdminRequest, AdminRequestError> {
        guard case .object(let members)? = try? JSONReader.parse(bytes) else {
            return .failure(AdminRequestError("expected one JSON object per line, such as {\"cmd\":\"status\"}"))
        }
        guard case .string(let command)? = members["cmd"] else {
            return .failure(AdminRequestError("missing \"cmd\" (\(commandList))"))
        }
        switch command {
        case "status": return .success(.status)
        case "backends": return .success(.backends)
        case "reload": return .success(.reload)
        case "upgrade":
            switch members["binary"] {
            case nil, .null?: return .success(.upgrade(binary: nil))
            case .string(let path)? where path.hasPrefix("/"): return .success(.upgrade(binary: path))
            default: return .failure(AdminRequestError("upgrade takes an optional \"binary\": an absolute path"))
            }
        case "drain_backend", "undrain_backend":
            guard case .string(let pool)? = members["pool"], case .string(let backend)? = members["backend"] else {
                return .failure(AdminRequestError("\(command) needs \"pool\" and \"backend\" (an address as in the configuration)"))
            }
            return .success(.drainBackend(pool: pool, backend: backend, drained: command == "drain_backend"))
        case "drain_worker", "undrain_worker":
            guard case .number(let text)? = members["worker"], let worker = Int(text), worker >= 0 else {
                return .failure(AdminRequestError("\(command) needs \"worker\" (a number)"))
            }
            return .success(.drainWorker(worker, drained: command == "drain_worker"))
        default:
            return .failure(AdminRequestError("unknown cmd \(quotedForMessage(command)) (\(commandList))"))
        }
    }

    /// The client's own text back in an error, cut short: a 60 KiB command
    /// name does not deserve a 60 KiB answer.
    static func quotedForMessage(_ text: String) -> String {
        let limit = 64
        let shown = text.unicodeScalars.count > limit ? String(String.UnicodeScalarView(text.unicodeScalars.prefix(limit))) + "…" : text
        return "\"\(shown)\""
    }
}
