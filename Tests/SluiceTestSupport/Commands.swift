import Foundation
import Glibc

// Child processes for tests, without Foundation's trapping I/O: its
// `readDataToEndOfFile`, `availableData` and `write(_:)` end the whole test
// process on any error (an EINTR, a child that exited before reading its
// input). A test must fail on its own, not take the suite down with it.

/// Runs `executable` to its end and returns its exit status and its output
/// (standard error included unless `errors` is false).
public func runCommand(
    _ executable: String, _ arguments: [String], environment: [String: String] = [:],
    input: String? = nil, errors: Bool = true
) throws -> (Int32, String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if !environment.isEmpty {
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    }
    let output = Pipe()
    let stdin = input.map { _ in Pipe() }
    process.standardOutput = output
    if errors { process.standardError = output }
    process.standardInput = stdin ?? FileHandle.nullDevice
    try process.run()
    if let stdin, let input {
        _ = writeAll(stdin.fileHandleForWriting, Data(input.utf8))
        try? stdin.fileHandleForWriting.close()
    }
    let data = readAll(output.fileHandleForReading)
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// Everything until EOF (or until a read fails).
public func readAll(_ handle: FileHandle) -> Data {
    var data = Data()
    while true {
        let chunk = readSome(handle)
        if chunk.isEmpty { return data }
        data += chunk
    }
}

/// What one read returns: empty at EOF or on an error.
public func readSome(_ handle: FileHandle) -> Data {
    var buffer = [UInt8](repeating: 0, count: 64 * 1024)
    while true {
        let n = buffer.withUnsafeMutableBytes { Glibc.read(handle.fileDescriptor, $0.baseAddress, $0.count) }
        if n >= 0 { return Data(buffer[0..<n]) }
        if errno != EINTR { return Data() }
    }
}

/// Writes all of `data`; false when the reader is gone (EPIPE, not SIGPIPE).
@discardableResult
public func writeAll(_ handle: FileHandle, _ data: Data) -> Bool {
    _ = brokenPipesIgnored
    return data.withUnsafeBytes { bytes -> Bool in
        var offset = 0
        while offset < bytes.count {
            let n = Glibc.write(handle.fileDescriptor, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            offset += n
        }
        return true
    }
}

/// SIGPIPE would end the test process without a word.
private let brokenPipesIgnored: Void = { signal(SIGPIPE, SIG_IGN) }()
