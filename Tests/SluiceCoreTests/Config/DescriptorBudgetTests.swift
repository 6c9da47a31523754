import Testing
@testable import SluiceCore

@Suite("Descriptor budget")
struct DescriptorBudgetTests {
    func config(maxConnections: [Int], workers: Int = 2) throws -> SluiceConfig {
        let listeners = maxConnections.enumerated().map {
            "  - { name: l\($0.offset), bind: \"0.0.0.0:\(8000 + $0.offset)\", pool: web, max_connections: \($0.element) }"
        }
        return try decodeConfig("""
            workers: \(workers)
            listeners:
            \(listeners.joined(separator: "\n"))
            pools:
              - { name: web, backends: [ { address: "127.0.0.1:9001" } ] }
            """).config
    }

    @Test("two fds per connection plus a margin; a warning with the numbers when the limit is lower")
    func warnsWithTheNumbers() throws {
        let budget = DescriptorBudget(config: try config(maxConnections: [6000, 5000]))
        #expect(budget.connections == 11_000)
        #expect(budget.required == 22_000 + budget.margin)
        #expect(budget.margin >= DescriptorBudget.fixedMargin + 2 * 2)
        let warning = try #require(budget.warning(openFilesLimit: 20_000))
        #expect(warning.contains("add up to 11000"))
        #expect(warning.contains("about \(budget.required) descriptors"))
        #expect(warning.contains("RLIMIT_NOFILE) is 20000"))
        #expect(warning.contains("about \((20_000 - budget.margin) / 2) connections fit"))
    }

    @Test func silentWhenItFits() throws {
        let budget = DescriptorBudget(config: try config(maxConnections: [4000, 5000]))
        #expect(budget.warning(openFilesLimit: 20_000) == nil)
        #expect(budget.warning(openFilesLimit: budget.required) == nil)
        #expect(budget.warning(openFilesLimit: budget.required - 1) != nil)
    }

    @Test("the largest accepted configuration does not overflow the sum")
    func largestConfig() throws {
        let budget = DescriptorBudget(config: try config(maxConnections: Array(repeating: 10_000_000, count: 64), workers: 64))
        #expect(budget.connections == 640_000_000)
        #expect(budget.warning(openFilesLimit: Int.max) == nil)
    }
}
