import Foundation
import Testing
@testable import SluiceCore

/// Replays the admin fuzzer's committed seeds (Fuzz/Corpus/admin) through
/// the parsers, so `make test` runs every input the fuzzer starts from.
@Suite("Admin fuzz corpus replay")
struct AdminCorpusReplayTests {
    static let corpus = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz/Corpus/admin")

    static func seeds() throws -> [(name: String, bytes: [UInt8])] {
        let names = try FileManager.default.contentsOfDirectory(atPath: corpus.path).sorted()
        return try names.map { ($0, Array(try Data(contentsOf: corpus.appendingPathComponent($0)))) }
    }

    /// Every line the framer finds in `bytes`, as a connection that ended would see them.
    static func lines(_ bytes: [UInt8]) -> [AdminLine] {
        var rest = bytes[...]
        var lines: [AdminLine] = []
        while case .done(let line, let consumed) = AdminRequestParser.parse(rest, endOfInput: true) {
            lines.append(line)
            rest = rest.dropFirst(consumed)
        }
        return lines
    }

    @Test func everySeedFramesIntoLinesOrAnError() throws {
        let seeds = try Self.seeds()
        #expect(seeds.count >= 12, "the corpus at \(Self.corpus.path)")
        for seed in seeds {
            _ = MetricsRequestParser.parse(seed.bytes)
            let lines = Self.lines(seed.bytes)
            let requests = lines.filter { if case .request = $0 { true } else { false } }
            if seed.name.hasPrefix("valid-") {
                #expect(!requests.isEmpty && lines.allSatisfy { $0 != .blank ? requests.contains($0) : true },
                        "\(seed.name): \(lines)")
            } else if seed.name.hasPrefix("near-") {
                #expect(requests.isEmpty && !lines.isEmpty, "\(seed.name) should be refused: \(lines)")
            }
        }
    }

    @Test func theValidSeedsMeanWhatTheirNamesSay() throws {
        let seeds = Dictionary(uniqueKeysWithValues: try Self.seeds().map { ($0.name, $0.bytes) })
        #expect(Self.lines(seeds["valid-drain-backend"] ?? []) == [
            .request(.drainBackend(pool: "web", backend: "127.0.0.1:9001", drained: true)),
        ])
        #expect(Self.lines(seeds["valid-pipelined-last-unterminated"] ?? []) == [
            .request(.status), .blank, .request(.backends), .request(.drainWorker(2, drained: true)),
        ])
        #expect(Self.lines(seeds["valid-reload"] ?? []) == [.request(.reload)])
        #expect(Self.lines(seeds["valid-upgrade"] ?? []) == [
            .request(.upgrade(binary: "/usr/local/bin/sluice")), .request(.upgrade(binary: nil)), .request(.upgrade(binary: nil)),
        ])
        let scrape = seeds["http-metrics-get"] ?? []
        #expect(MetricsRequestParser.parse(scrape) == .done(.metrics, consumed: scrape.count))
    }
}
