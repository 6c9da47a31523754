import Testing
@testable import SluiceCore

private func udpListener(_ extra: String = "", mode: String = "udp") -> String {
    """
    listeners:
      - { name: dns, bind: "0.0.0.0:53", pool: dns, mode: \(mode)\(extra) }
    pools:
      - { name: dns, backends: [ { address: "127.0.0.1:5301" }, { address: "127.0.0.1:5302" } ] }
    """
}

@Suite("Config: mode udp")
struct ConfigUDPTests {
    @Test("mode udp gets default udp settings; given ones decode")
    func decodes() throws {
        let plain = try decodeConfig(udpListener()).config.listeners[0]
        #expect(plain.mode == .udp && plain.udp == UDPListenerConfig() && plain.http == nil && plain.redis == nil)
        #expect(plain.udp?.flowIdleTimeout == .seconds(30) && plain.udp?.perPacket == false && plain.udp?.maxFlows == 10_000)
        let set = try decodeConfig(udpListener(", udp: { flow_idle_timeout: 5s, per_packet: true, max_flows: 500 }")).config.listeners[0]
        #expect(set.udp?.flowIdleTimeout == .seconds(5) && set.udp?.perPacket == true && set.udp?.maxFlows == 500)
    }

    @Test("udp settings elsewhere, out of range or unknown, and a PROXY header on udp are refused at their path")
    func refusals() throws {
        let wrongMode = try #require(singleConfigError(udpListener(", udp: { max_flows: 5 }", mode: "tcp")))
        #expect(wrongMode.path == "listeners[0].udp" && wrongMode.message.contains("mode: udp"), "\(wrongMode)")
        let range = try #require(singleConfigError(udpListener(", udp: { max_flows: 0 }")))
        #expect(range.path == "listeners[0].udp.max_flows", "\(range)")
        let timeout = try #require(singleConfigError(udpListener(", udp: { flow_idle_timeout: 1ms }")))
        #expect(timeout.path == "listeners[0].udp.flow_idle_timeout", "\(timeout)")
        let unknown = try #require(singleConfigError(udpListener(", udp: { max_flow: 5 }")))
        #expect(unknown.path == "listeners[0].udp.max_flow" || unknown.path == "listeners[0].udp", "\(unknown)")
        #expect(unknown.message.contains("max_flows"), "did you mean: \(unknown)")
        let proxy = try #require(singleConfigError(udpListener(", proxy_protocol: { accept: v2 }")))
        #expect(proxy.path == "listeners[0].proxy_protocol" && proxy.message.contains("udp"), "\(proxy)")
    }

    @Test("health_check kind dns takes a query name; query elsewhere, or a name DNS cannot carry, is refused")
    func dnsCheck() throws {
        let pool = "{ name: dns, backends: [ { address: \"127.0.0.1:5301\" }, { address: \"127.0.0.1:5302\" } ] }"
        func with(_ check: String) -> String { udpListener().replacing(pool, with: pool.replacing("name: dns,", with: "name: dns, health_check: \(check),")) }
        let config = try decodeConfig(with("{ kind: dns, query: example.test, interval: 1s }")).config
        #expect(config.pools[0].healthCheck?.kind == .dns && config.pools[0].healthCheck?.query == "example.test")
        #expect(try decodeConfig(with("{ kind: dns }")).config.pools[0].healthCheck?.query == ".")
        let elsewhere = try #require(singleConfigError(with("{ kind: tcp, query: example.test }")))
        #expect(elsewhere.path == "pools[0].health_check.query" && elsewhere.message.contains("kind: dns"), "\(elsewhere)")
        let bad = try #require(singleConfigError(with("{ kind: dns, query: \"a..b\" }")))
        #expect(bad.path == "pools[0].health_check.query" && bad.message.contains("DNS name"), "\(bad)")
        let path = try #require(singleConfigError(with("{ kind: dns, path: /x }")))
        #expect(path.message.contains("need kind: http"), "\(path)")
    }

    @Test("the descriptor budget counts one per flow for udp listeners, not their max_connections")
    func budget() throws {
        let config = try decodeConfig("""
            workers: 2
            listeners:
              - { name: web, bind: "0.0.0.0:80", pool: dns, max_connections: 1000 }
              - { name: dns, bind: "0.0.0.0:53", pool: dns, mode: udp, max_connections: 900000, udp: { max_flows: 7000 } }
            pools:
              - { name: dns, backends: [ { address: "127.0.0.1:5301" } ] }
            """).config
        let budget = DescriptorBudget(config: config)
        #expect(budget.connections == 1000 && budget.flows == 7000)
        #expect(budget.required == 2000 + 7000 + budget.margin)
        let warning = try #require(budget.warning(openFilesLimit: 5000))
        #expect(warning.contains("max_flows to 7000"), "\(warning)")
    }
}
