// Feeds arbitrary bytes to the RESP reader, as replies and as commands,
// with Redis's bounds and with tight ones: never a trap, never a length
// past the input, a prefix of a whole value is incomplete, and a command
// written back out parses to the same arguments. The same bytes then go
// through a Redis session over 3 backends (crc16 or ketama, by the first byte), each forwarded part answered:
// whatever the commands (hostile arities, numkeys, transactions), no trap,
// and every command gets exactly one reply, in order.
import SluiceCore

private let servers = (0..<3).map { RedisShardServer(name: "127.0.0.1:700\($0)", weight: 1) }
private let shards = RedisHash.allCases.map { RedisShards($0, servers: servers) }

private func drive(_ bytes: [UInt8]) {
    var limits = RedisSession.Limits()
    limits.maxInFlight = 64
    var session = RedisSession(limits: limits, shards: shards[Int(bytes.first ?? 0) % shards.count])
    var actions: [RedisSession.Action] = []
    bytes.withUnsafeBytes { session.receive($0, into: &actions) }
    var rounds = 0
    while rounds < 10_000 {
        rounds += 1
        guard let index = actions.firstIndex(where: { if case .forward = $0 { return true } else { return false } }),
              case .forward(_, let tag, _) = actions[index] else { break }
        actions.remove(at: index)
        var more: [RedisSession.Action] = []
        session.handle(.reply(tag: tag, Array("+OK\r\n".utf8)), into: &more)
        actions += more
    }
}

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
        // An empty inline line is a command of no words (skipped, as Redis does): nothing to write back.
        guard case .complete(let command) = bytes.withUnsafeBytes({ RESP.command($0, limits: limits) }), !command.arguments.isEmpty
        else { continue }
        precondition(command.length <= size && command.arguments.allSatisfy { $0.upperBound <= command.length }, "past the command")
        let arguments = command.arguments.map { Array(bytes[$0]) }
        let written = RESP.array(arguments)
        guard case .complete(let again) = written.withUnsafeBytes({ RESP.command($0) }) else { preconditionFailure("written back, it did not parse") }
        precondition(again.arguments.map { Array(written[$0]) } == arguments && again.length == written.count, "arguments changed")
    }
    drive(bytes)
    return 0
}
