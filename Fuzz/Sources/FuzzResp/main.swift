// Feeds arbitrary bytes to the RESP reader, as replies and as commands,
// with Redis's bounds and with tight ones: never a trap, never a length
// past the input, a prefix of a whole value is incomplete, and a command
// written back out parses to the same arguments.
import SluiceCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRESP(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    var tight = RESPLimits()
    tight.maxBulk = 64
    tight.maxArray = 8
    tight.maxDepth = 3
    tight.maxLine = 32
    for limits in [RESPLimits(), tight] {
        if case .complete(let length) = bytes.withUnsafeBytes({ RESP.scan($0, limits: limits) }) {
            precondition(length > 0 && length <= size, "scan claimed \(length) of \(size) bytes")
            let prefix = Array(bytes[0..<length - 1])
            precondition(prefix.withUnsafeBytes { RESP.scan($0, limits: limits) } == .incomplete, "a prefix of a value was not incomplete")
        }
        guard case .complete(let command) = bytes.withUnsafeBytes({ RESP.command($0, limits: limits) }) else { continue }
        precondition(command.length <= size && command.arguments.allSatisfy { $0.upperBound <= command.length }, "past the command")
        let arguments = command.arguments.map { Array(bytes[$0]) }
        let written = RESP.array(arguments)
        guard case .complete(let again) = written.withUnsafeBytes({ RESP.command($0) }) else { preconditionFailure("written back, it did not parse") }
        precondition(again.arguments.map { Array(written[$0]) } == arguments && again.length == written.count, "arguments changed")
    }
    return 0
}
