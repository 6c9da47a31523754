#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import SluiceCore

/// A small valid configuration; tests insert their variations into it.
let minimalConfigYAML = """
    listeners:
      - { name: web, bind: "0.0.0.0:8080", pool: web }
    pools:
      - name: web
        backends:
          - { address: "127.0.0.1:9001" }
    """

/// Decodes `yaml`, recording a test issue (and rethrowing) if it fails.
func decodeConfig(
    _ yaml: String, cpus: Int = 8,
    sourceLocation: SourceLocation = #_sourceLocation
) throws -> LoadedConfig {
    do {
        return try ConfigLoader.parse(yaml: yaml, file: "test.yaml", onlineCPUs: cpus)
    } catch {
        Issue.record("unexpected config errors:\n\(error)", sourceLocation: sourceLocation)
        throw error
    }
}

/// The errors `yaml` produces; records an issue when it decodes fine.
func configErrors(
    _ yaml: String, cpus: Int = 8,
    sourceLocation: SourceLocation = #_sourceLocation
) -> [ConfigError] {
    do {
        let loaded = try ConfigLoader.parse(yaml: yaml, file: "test.yaml", onlineCPUs: cpus)
        Issue.record("expected errors, but the config decoded: \(loaded.config)", sourceLocation: sourceLocation)
        return []
    } catch {
        return error.errors
    }
}

/// The single error `yaml` produces (records an issue if there are more or none).
func singleConfigError(
    _ yaml: String,
    sourceLocation: SourceLocation = #_sourceLocation
) -> ConfigError? {
    let errors = configErrors(yaml, sourceLocation: sourceLocation)
    guard errors.count == 1 else {
        Issue.record(
            "expected exactly one error, got \(errors.count):\n\(ConfigErrors(errors))",
            sourceLocation: sourceLocation
        )
        return nil
    }
    return errors[0]
}

func configAddress(_ text: String, allowPortZero: Bool = false) -> SocketAddressSpec {
    switch SocketAddressSpec.parse(text, allowPortZero: allowPortZero) {
    case .success(let address): return address
    case .failure(let error): fatalError("bad test address \(text): \(error)")
    }
}

extension TCPSession {
    /// What to do about `event`, as a fresh list (the worker passes its own).
    mutating func handle(_ event: Event) -> [Action] {
        var actions: [Action] = []
        handle(event, into: &actions)
        return actions
    }
}

/// Fuzz/Corpus/<name>, found from this file's place in the repository.
func fuzzCorpusDirectory(_ name: String) -> String {
    var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3) // Tests/SluiceCoreTests/Support.swift
    return parts.joined(separator: "/") + "/Fuzz/Corpus/" + name
}

/// The seed files of a corpus directory, sorted.
func corpusFiles(_ directory: String) -> [String] {
    guard let dir = opendir(directory) else { return [] }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if !name.hasPrefix(".") { names.append(name) }
    }
    return names.sorted()
}

/// SluiceCore does no I/O: the tests read the seeds themselves.
func readCorpusFile(_ path: String) -> [UInt8]? {
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
