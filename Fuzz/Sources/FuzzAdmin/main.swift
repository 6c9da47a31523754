// Feeds arbitrary bytes to the admin socket's parsers: the framer over the
// whole input as a connection would see it, each line as a request, and the
// metrics endpoint's HTTP head parser. Any trap is a finding.
//
// SwiftPM links executables with `--defsym main=<Module>_main`, so libFuzzer's
// own main cannot be used (with -parse-as-library the link fails on an
// undefined FuzzAdmin_main). This file's top-level code is that main instead,
// and hands control to libFuzzer's driver, which reads the usual flags.
import Glibc
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

typealias FuzzTarget = @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32

/// libFuzzer's entry for programs that have their own main (LLVM ≥ 13).
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<Int32>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ target: FuzzTarget
) -> Int32

var argc = CommandLine.argc
var argv = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv, fuzzAdminRequest))
