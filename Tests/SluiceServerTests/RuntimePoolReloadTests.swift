import SluiceCore
import SluicePosix
import Testing
@testable import SluiceServer

private func pool(_ addresses: [String], weight: Int = 1) -> PoolConfig {
    PoolConfig(name: "web", backends: addresses.map {
        BackendConfig(address: try! SocketAddressSpec.parse($0).get(), weight: weight)
    })
}

@Suite("A pool rebuilt by a reload carries the state of the backends it keeps")
struct RuntimePoolReloadTests {
    @Test("a kept backend shares its counts, verdicts and drain with the pool before; a new one starts fresh")
    func carriesState() {
        let before = RuntimePool(pool(["127.0.0.1:1", "127.0.0.1:2"]))
        before.active[1].store(7, ordering: .relaxed)
        before.checkedUp[1].store(false, ordering: .relaxed)
        before.drained[0].store(true, ordering: .relaxed)
        let after = RuntimePool(pool(["127.0.0.1:2", "127.0.0.1:3"], weight: 5), carryingOver: before)
        #expect(after.active[0].load(ordering: .relaxed) == 7)
        #expect(after.checkedUp[0].load(ordering: .relaxed) == false)
        #expect(after.state(0, now: 0) == "down")
        #expect(after.active[1].load(ordering: .relaxed) == 0 && after.state(1, now: 0) == "up")
        // A connection opened before the reload and closed after it is counted once.
        after.active[0].wrappingIncrement(ordering: .relaxed)
        before.active[1].wrappingDecrement(ordering: .relaxed)
        #expect(after.active[0].load(ordering: .relaxed) == 7)
        #expect(after.has(SocketAddress(ip: "127.0.0.1", port: 3)!) && !after.has(SocketAddress(ip: "127.0.0.1", port: 1)!))
    }

    @Test("passive ejection state moves with the backend")
    func carriesEjection() {
        var config = pool(["127.0.0.1:1", "127.0.0.1:2"])
        config.passive = PassiveConfig()
        config.minHealthy = 0
        let before = RuntimePool(config)
        var until: UInt64?
        for _ in 0..<10 where until == nil { until = before.noteFailure(0, now: 1000) }
        #expect(until != nil)
        let after = RuntimePool(config, carryingOver: before)
        #expect(after.state(0, now: 1001) == "ejected" && after.ejections[0].load(ordering: .relaxed) == 1)
    }
}
