#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Testing
@testable import SluiceCore

/// Fuzz/Corpus/config, found from this file's place in the repository.
private let corpusDirectory: String = {
    var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(4) // Tests/SluiceCoreTests/Config/<file>
    return parts.joined(separator: "/") + "/Fuzz/Corpus/config"
}()

private func corpusFiles() -> [String] {
    guard let dir = opendir(corpusDirectory) else { return [] }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if !name.hasPrefix(".") { names.append(name) }
    }
    return names.sorted()
}

/// SluiceCore does no I/O: the test reads the seed itself.
private func readCorpusFile(_ path: String) -> [UInt8]? {
    guard let file = fopen(path, "rb") else { return nil }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&chunk, 1, chunk.count, file)
        if n == 0 { return ferror(file) == 0 ? bytes : nil }
        bytes.append(contentsOf: chunk[..<n])
    }
}

@Suite("Fuzz corpus replay")
struct FuzzCorpusReplayTests {
    @Test("the seed corpus is there and holds both valid and invalid files")
    func corpusIsThere() {
        let files = corpusFiles()
        #expect(files.count >= 15, "\(corpusDirectory)")
        #expect(files.contains { $0.hasPrefix("valid-") })
        #expect(files.contains { !$0.hasPrefix("valid-") })
    }

    @Test("every seed decodes to a config or to errors; valid-* ones without errors", arguments: corpusFiles())
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
