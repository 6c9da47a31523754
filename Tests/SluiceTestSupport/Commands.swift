import CSluice
import Foundation
import Glibc

// Child processes' pipes for tests, read and written with plain syscalls:
// Foundation's `readDataToEndOfFile`, `availableData` and `write(_:)` end the
// whole test process on any error (an EINTR, a child that exited before
// reading its input). A test must fail on its own, not take the suite down.

/// Runs `executable` to its end and returns its exit status and its output
/// (standard error included unless `errors` is false).
public func runCommand(
    _ executable: String, _ arguments: [String], environment: [String: String] = [:],
    input: String? = nil, errors: Bool = true
) throws -> (Int32, String) {
    let output = try ChildPipe()
    let stdin = try input.map { _ in try ChildPipe() }
    let merged = environment.isEmpty ? nil : ProcessInfo.processInfo.environment.merging(environment) { $1 }
    let child: Child
    do {
        child = try Child(executable, arguments, environment: merged, input: stdin?.readEnd,
                          output: output.writeEnd, errors: errors ? output.writeEnd : nil)
    } catch {
        output.close()
        stdin?.close()
        throw error
    }
    output.closeWriteEnd()
    if let stdin, let input {
        stdin.closeReadEnd()
        _ = writeAll(stdin.writeEnd, Data(input.utf8))
        stdin.closeWriteEnd()
    }
    let data = readAll(output.readEnd)
    output.close()
    child.waitUntilExit()
    return (child.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// A pipe for a child's stdin or stdout; both ends close-on-exec (the child
/// gets its end by dup2).
public final class ChildPipe: @unchecked Sendable {
    public private(set) var readEnd: Int32
    public private(set) var writeEnd: Int32

    public init() throws {
        var fds: [Int32] = [-1, -1]
        guard sluice_pipe2(&fds, O_CLOEXEC) == 0 else { throw SpawnError(executable: "pipe2", errno: errno) }
        readEnd = fds[0]
        writeEnd = fds[1]
    }

    public func closeReadEnd() {
        if readEnd >= 0 { Glibc.close(readEnd) }
        readEnd = -1
    }

    public func closeWriteEnd() {
        if writeEnd >= 0 { Glibc.close(writeEnd) }
        writeEnd = -1
    }

    public func close() {
        closeReadEnd()
        closeWriteEnd()
    }

    deinit { close() }
}

/// Everything until EOF (or until a read fails).
public func readAll(_ fd: Int32) -> Data {
    var data = Data()
    while true {
        let chunk = readSome(fd)
        if chunk.isEmpty { return data }
        data += chunk
    }
}

/// What one read returns: empty at EOF or on an error.
public func readSome(_ fd: Int32) -> Data {
    var buffer = [UInt8](repeating: 0, count: 64 * 1024)
    while true {
        let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if n >= 0 { return Data(buffer[0..<n]) }
        if errno != EINTR { return Data() }
    }
}

/// Writes all of `data`; false when the reader is gone (EPIPE, not SIGPIPE).
@discardableResult
public func writeAll(_ fd: Int32, _ data: Data) -> Bool {
    _ = brokenPipesIgnored
    return data.withUnsafeBytes { bytes -> Bool in
        var offset = 0
        while offset < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            offset += n
        }
        return true
    }
}

/// SIGPIPE would end the test process without a word. (Children start with
/// default dispositions: see `Child`.)
private let brokenPipesIgnored: Void = { signal(SIGPIPE, SIG_IGN) }()
