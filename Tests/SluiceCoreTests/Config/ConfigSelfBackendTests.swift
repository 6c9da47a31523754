import Testing
@testable import SluiceCore

private func selfConfig(listeners: [String], backends: [String]) -> String {
    """
    listeners:
    \(listeners.enumerated().map { "  - { name: l\($0.offset), bind: \"\($0.element)\", pool: web }" }.joined(separator: "\n"))
    pools:
      - name: web
        backends:
    \(backends.map { "      - { address: \"\($0)\" }" }.joined(separator: "\n"))
    """
}

@Suite("Config: a backend that is the proxy itself")
struct ConfigSelfBackendTests {
    @Test("refused when it reaches one of our listeners", arguments: [
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("0.0.0.0:8080", "127.0.0.1:8080"),
        ("0.0.0.0:8080", "127.9.9.9:8080"),
        ("0.0.0.0:8080", "0.0.0.0:8080"),
        ("0.0.0.0:8080", "[::ffff:127.0.0.1]:8080"),
        ("127.0.0.1:8080", "0.0.0.0:8080"),
        ("[::]:8443", "[::1]:8443"),
        ("[::]:8443", "[::]:8443"),
        ("[::1]:8443", "[0:0::1]:8443"),
        ("[::1]:8443", "[::]:8443"),
        ("192.0.2.7:80", "[::ffff:192.0.2.7]:80"),
    ])
    func refused(listener: String, backend: String) throws {
        let yaml = selfConfig(listeners: [listener], backends: ["192.0.2.1:9001", backend])
        let error = try #require(singleConfigError(yaml))
        #expect(error.path == "pools[0].backends[1].address")
        #expect(error.line == 7) // the second backend
        #expect(error.message.contains("this proxy's own listener listeners[0]"), "\(error.message)")
        #expect(error.message.hasSuffix("it would proxy to itself"))
    }

    @Test("accepted when it cannot reach a listener", arguments: [
        ("0.0.0.0:8080", "127.0.0.1:8081"),   // another port
        ("127.0.0.1:8080", "127.0.0.2:8080"), // another loopback address, specific listener
        ("[::]:8080", "127.0.0.1:8080"),      // IPv6 listeners are V6ONLY
        ("0.0.0.0:8080", "[::1]:8080"),
        ("127.0.0.1:0", "127.0.0.1:9001"),    // port 0: the kernel picks one
        ("0.0.0.0:8080", "192.0.2.1:8080"),   // another host (one of ours is not knowable from the file)
    ])
    func accepted(listener: String, backend: String) throws {
        let config = try decodeConfig(selfConfig(listeners: [listener], backends: [backend])).config
        #expect(config.pools[0].backends.count == 1)
    }

    @Test("every offending backend of every pool is reported, naming the listener it reaches")
    func everyOffenderReported() {
        let yaml = """
            listeners:
              - { name: a, bind: "127.0.0.1:7000", pool: p }
              - { name: b, bind: "0.0.0.0:7001", pool: p }
            pools:
              - { name: p, backends: [ { address: "127.0.0.1:7001" } ] }
              - { name: q, backends: [ { address: "192.0.2.1:7000" }, { address: "127.0.0.1:7000" } ] }
            """
        let errors = configErrors(yaml)
        #expect(errors.map(\.path) == ["pools[0].backends[0].address", "pools[1].backends[1].address"])
        #expect(errors.first?.message.contains("listeners[1] (bound to 0.0.0.0:7001)") == true)
        #expect(errors.last?.message.contains("listeners[0];") == true)
    }
}
