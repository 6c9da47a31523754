import SluiceCore
import Testing

private let corpusDirectory = fuzzCorpusDirectory("http")

/// The committed seeds of `make fuzz`'s HTTP target, replayed with its
/// checks (all but the comparison with llhttp, which lives in the fuzz
/// package): the same answer whole and byte by byte; `valid-*` accepted,
/// `bad-*` refused.
@Suite("HTTP fuzz corpus replay")
struct HTTPFuzzCorpusTests {
    @Test("the seed corpus is there, valid and bad seeds of each kind")
    func corpusIsThere() {
        let files = corpusFiles(corpusDirectory)
        #expect(files.count >= 20, "\(corpusDirectory)")
        #expect(files.contains { $0.hasPrefix("valid-") } && files.contains { $0.hasPrefix("bad-") })
    }

    @Test("every seed: the same answer whole and byte by byte; valid ones accepted, bad ones refused",
          arguments: corpusFiles(corpusDirectory))
    func replay(name: String) throws {
        let input = try #require(readCorpusFile(corpusDirectory + "/" + name))
        guard let mode = input.first else { return }
        let bytes = Array(input.dropFirst())
        let accepted: Bool
        switch mode % 3 {
        case 0:
            let whole = parseRequestInPieces(bytes, cuts: [])
            #expect(parseRequestInPieces(bytes, cuts: everyByte(bytes.count)) == whole)
            if case .complete = whole { accepted = true } else { accepted = false }
        case 1:
            let whole = parseResponseInPieces(bytes, cuts: [])
            #expect(parseResponseInPieces(bytes, cuts: everyByte(bytes.count)) == whole)
            if case .complete = whole { accepted = true } else { accepted = false }
        default:
            let whole = decodeChunked(bytes, cuts: [])
            let byByte = decodeChunked(bytes, cuts: everyByte(bytes.count))
            #expect(whole.consumed == byByte.consumed && whole.outcome == byByte.outcome)
            accepted = whole.outcome == .done
        }
        if name.hasPrefix("valid-") { #expect(accepted, "\(name) refused") }
        if name.hasPrefix("bad-") { #expect(!accepted, "\(name) accepted") }
    }
}
