#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Testing
@testable import SluiceCore

private let corpusDirectory = fuzzCorpusDirectory("config")

@Suite("Fuzz corpus replay")
struct FuzzCorpusReplayTests {
    @Test("the seed corpus is there and holds both valid and invalid files")
    func corpusIsThere() {
        let files = corpusFiles(corpusDirectory)
        #expect(files.count >= 15, "\(corpusDirectory)")
        #expect(files.contains { $0.hasPrefix("valid-") })
        #expect(files.contains { !$0.hasPrefix("valid-") })
    }

    @Test("every seed decodes to a config or to errors; valid-* ones without errors", arguments: corpusFiles(corpusDirectory))
    func replay(name: String) throws {
        let bytes = try #require(readCorpusFile(corpusDirectory + "/" + name))
        do {
            let loaded = try ConfigLoader.parse(bytes: bytes, file: name, onlineCPUs: 2)
            #expect(!loaded.config.listeners.isEmpty && !loaded.config.pools.isEmpty)
            #expect(name.hasPrefix("valid-") || name.hasPrefix("crash-"), "\(name) was expected to be refused")
        } catch {
            #expect(!error.errors.isEmpty)
            #expect(error.errors.allSatisfy { $0.file == name && !$0.message.isEmpty })
            #expect(!name.hasPrefix("valid-"), "\(name):\n\(error)")
        }
    }
}
