#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Testing
import SluiceCore
import SluicePosix
import SluiceServer

private let configFileYAML = """
    listeners:
      - { name: web, bind: "0.0.0.0:8080", pool: web }
    pools:
      - name: web
        backends:
          - { address: "127.0.0.1:9001" }
    """

@Suite("Loading configuration files")
struct ConfigFileTests {
    /// Writes `contents` to a fresh file in a private temporary directory.
    func withTemporaryFile<T>(_ contents: [UInt8], _ body: (String) throws -> T) throws -> T {
        var template = Array("/tmp/sluice-config-test-XXXXXX".utf8CString)
        let dir = try #require(template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
            .map { String(cString: $0) })
        let path = dir + "/sluice.yaml"
        defer {
            unlink(path)
            rmdir(dir)
        }
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        try #require(fd >= 0)
        let written = contents.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        try #require(written == contents.count)
        return try body(path)
    }

    @Test func loadsAFile() throws {
        let loaded = try withTemporaryFile(Array(configFileYAML.utf8)) { path in
            try ConfigFile.load(path: path)
        }
        #expect(loaded.config.pools.map(\.name) == ["web"])
        #expect(loaded.config.workers == ConfigDefaults.workers(onlineCPUs: CurrentProcess.onlineCPUCount))
    }

    @Test func errorsNameTheFile() throws {
        let errors: [ConfigError] = try withTemporaryFile(Array(("workers: 99\n" + configFileYAML).utf8)) { path in
            do throws(ConfigErrors) {
                _ = try ConfigFile.load(path: path)
                return []
            } catch {
                #expect(error.errors.allSatisfy { $0.file == path })
                #expect(error.description.hasPrefix(path + ":1:10: workers: "))
                return error.errors
            }
        }
        #expect(errors.count == 1)
    }

    @Test func missingFile() {
        do {
            _ = try ConfigFile.load(path: "/nonexistent/sluice-test/sluice.yaml")
            Issue.record("expected an error")
        } catch {
            #expect(error.errors == [ConfigError(
                file: "/nonexistent/sluice-test/sluice.yaml", path: "",
                message: "cannot read the configuration file: No such file or directory"
            )])
        }
    }

    @Test func directoryIsNotAFile() {
        do {
            _ = try ConfigFile.load(path: "/")
            Issue.record("expected an error")
        } catch {
            #expect(error.errors.count == 1)
            #expect(error.errors[0].path == "")
            #expect(error.errors[0].message == "cannot read the configuration file: Is a directory")
        }
    }

    @Test func invalidUTF8() throws {
        try withTemporaryFile([0x77, 0x6F, 0xFF, 0xFE, 0x0A]) { path in
            do throws(ConfigErrors) {
                _ = try ConfigFile.load(path: path)
                Issue.record("expected an error")
            } catch {
                #expect(error.errors.map(\.message) == ["the configuration file is not valid UTF-8"])
            }
        }
    }

    @Test func onlineCPUCountIsPositive() {
        #expect(CurrentProcess.onlineCPUCount >= 1)
    }
}
