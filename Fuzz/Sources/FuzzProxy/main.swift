// Feeds arbitrary bytes to the PROXY header parser under each accept mode:
// it must never trap, never claim more bytes than it was given, give the
// same answer whole and in two pieces, and a header it accepts must encode
// back to one that parses to the same endpoints.
import SluiceCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzProxyHeader(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    for accept in [ProxyAccept.v1, .v2, .any] {
        let whole = bytes.withUnsafeBytes { ProxyHeaderParser.parse($0, accept: accept) }
        guard case .complete(let header) = whole else { continue }
        precondition(header.length > 0 && header.length <= bytes.count, "claimed \(header.length) of \(bytes.count) bytes")
        let exact = Array(bytes[0..<header.length])
        precondition(exact.withUnsafeBytes { ProxyHeaderParser.parse($0, accept: accept) } == whole, "the bytes after it changed it")
        let cut = size / 2
        if cut < header.length {
            precondition(Array(bytes[0..<cut]).withUnsafeBytes { ProxyHeaderParser.parse($0, accept: accept) } == .incomplete,
                         "a prefix of a header was not incomplete")
        }
        guard header.isProxied, let source = header.source, source.family != .unix else { continue }
        for version in [ProxySend.v1, .v2] {
            let again = ProxyHeader.encode(version, source: source, destination: header.destination)
            guard case .complete(let reparsed) = again.withUnsafeBytes({ ProxyHeaderParser.parse($0, accept: .any) }) else {
                preconditionFailure("an encoded header did not parse")
            }
            precondition(reparsed.source == source && reparsed.destination == header.destination, "endpoints changed on the way")
        }
    }
    return 0
}
