import SluiceCore
import Testing

private let corpusDirectory = fuzzCorpusDirectory("resp")

/// The committed seeds of `make fuzz`'s RESP target, replayed: `valid-*`
/// read whole (as a command, or as a reply), `bad-*` refused as both, and
/// the same answer byte by byte.
@Suite("RESP fuzz corpus replay")
struct RESPFuzzCorpusTests {
    @Test("the seed corpus is there, valid and bad seeds")
    func corpusIsThere() {
        let files = corpusFiles(corpusDirectory)
        #expect(files.count >= 12, "\(corpusDirectory)")
        #expect(files.contains { $0.hasPrefix("valid-") } && files.contains { $0.hasPrefix("bad-") })
    }

    @Test("every seed: accepted or refused as named, and incomplete at every shorter prefix when accepted",
          arguments: corpusFiles(corpusDirectory))
    func replay(name: String) throws {
        let bytes = try #require(readCorpusFile(corpusDirectory + "/" + name))
        let asCommand = bytes.withUnsafeBytes { RESP.command($0) }
        let asReply = bytes.withUnsafeBytes { RESP.scan($0) }
        let commandLength: Int? = { if case .complete(let c) = asCommand { return c.length } else { return nil } }()
        let replyLength: Int? = { if case .complete(let n) = asReply { return n } else { return nil } }()
        if name.hasPrefix("valid-") { #expect(commandLength != nil || replyLength != nil, "\(name) refused") }
        if name.hasPrefix("bad-") {
            #expect({ if case .invalid = asCommand { return true } else { return false } }(), "\(name): \(asCommand)")
        }
        for length in [commandLength, replyLength].compactMap({ $0 }) {
            for n in 0..<length {
                let prefix = Array(bytes[0..<n])
                if length == commandLength { #expect(prefix.withUnsafeBytes { RESP.command($0) } == .incomplete, "\(name) cut at \(n)") }
                if length == replyLength { #expect(prefix.withUnsafeBytes { RESP.scan($0) } == .incomplete, "\(name) cut at \(n)") }
            }
        }
    }
}
