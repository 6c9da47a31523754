// Feeds arbitrary bytes to the admin socket's parsers: the framer over the
// whole input as a connection would see it, each line as a request, and the
// metrics endpoint's HTTP head parser. Any trap is a finding.
import SluiceCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzAdminRequest(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    var rest = bytes[...]
    while true {
        switch AdminRequestParser.parse(rest, endOfInput: true) {
        case .needMore, .invalid:
            _ = MetricsRequestParser.parse(bytes)
            return 0
        case .done(_, let consumed):
            precondition(consumed > 0 && consumed <= rest.count, "the framer consumed \(consumed) of \(rest.count) bytes")
            rest = rest.dropFirst(consumed)
        }
    }
}
