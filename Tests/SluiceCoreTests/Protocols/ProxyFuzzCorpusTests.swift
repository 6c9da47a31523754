import SluiceCore
import Testing

private let corpusDirectory = fuzzCorpusDirectory("proxy")

/// The committed seeds of `make fuzz`'s PROXY target, replayed: accepted
/// (`valid-*`) or refused (`bad-*`) the same whole and byte by byte, and an
/// accepted header never claims bytes past its end.
@Suite("PROXY fuzz corpus replay")
struct ProxyFuzzCorpusTests {
    @Test("the seed corpus is there, valid and bad seeds of both versions")
    func corpusIsThere() {
        let files = corpusFiles(corpusDirectory)
        #expect(files.count >= 15, "\(corpusDirectory)")
        #expect(files.contains { $0.hasPrefix("valid-v2") } && files.contains { $0.hasPrefix("bad-v1") })
    }

    @Test("every seed: the same answer whole and byte by byte; valid ones accepted, bad ones refused",
          arguments: corpusFiles(corpusDirectory))
    func replay(name: String) throws {
        let bytes = try #require(readCorpusFile(corpusDirectory + "/" + name))
        let whole = bytes.withUnsafeBytes { ProxyHeaderParser.parse($0, accept: .any) }
        var answer = ProxyParse.incomplete
        for n in 1...max(1, bytes.count) {
            answer = Array(bytes.prefix(n)).withUnsafeBytes { ProxyHeaderParser.parse($0, accept: .any) }
            if answer != .incomplete { break }
        }
        if case .complete(let header) = whole {
            #expect(header.length <= bytes.count)
            #expect(answer == whole, "byte by byte, the header completes at its last byte")
        } else {
            #expect(answer == whole || whole == .incomplete)
        }
        if name.hasPrefix("valid-") { #expect({ if case .complete = whole { return true } else { return false } }(), "\(name) refused") }
        if name.hasPrefix("bad-") { #expect({ if case .invalid = whole { return true } else { return false } }(), "\(name) accepted") }
    }
}
