import Testing
@testable import SluiceCore

private func config(listeners: String, pools: String = "", top: String = "workers: 2") throws -> SluiceConfig {
    try decodeConfig("""
        \(top)
        listeners:
        \(listeners)
        pools:
          - { name: web, backends: [ { address: "127.0.0.1:9001" }, { address: "127.0.0.1:9002" } ] }
          - { name: db, backends: [ { address: "127.0.0.1:9101" } ] }
        \(pools)
        """).config
}

private func plan(_ old: SluiceConfig, _ new: SluiceConfig) throws -> ReloadPlan {
    try ReloadPlan.make(running: old, new: new).get()
}

private func refusals(_ old: SluiceConfig, _ new: SluiceConfig) -> [String] {
    guard case .failure(let errors) = ReloadPlan.make(running: old, new: new) else { return [] }
    return errors.errors.map(\.description)
}

@Suite("Reload plans: what a new configuration keeps, adds and removes, or why it needs a restart")
struct ReloadPlanTests {
    let a = "  - { name: a, bind: \"127.0.0.1:8001\", pool: web }"
    let b = "  - { name: b, bind: \"127.0.0.1:8002\", pool: web }"
    let c = "  - { name: c, bind: \"127.0.0.1:8003\", pool: db }"

    @Test("the same file: every listener kept, nothing changed")
    func unchanged() throws {
        let old = try config(listeners: [a, b].joined(separator: "\n"))
        let made = try plan(old, old)
        #expect(made.kept.map { [$0.new, $0.old] } == [[0, 0], [1, 1]])
        #expect(made.added.isEmpty && made.removed.isEmpty && made.changes.isEmpty)
    }

    @Test("listeners matched by name whatever their order; one added, one removed")
    func addedAndRemoved() throws {
        let old = try config(listeners: [a, b].joined(separator: "\n"))
        let new = try config(listeners: [c, b].joined(separator: "\n"))
        let made = try plan(old, new)
        #expect(made.kept.map { [$0.new, $0.old] } == [[1, 1]])
        #expect(made.added == [0] && made.removed == [0])
        #expect(made.changes.contains("listener c added on 127.0.0.1:8003") && made.changes.contains("listener a removed"))
    }

    @Test("a listener renamed on the same address keeps its sockets; one moved is bound anew")
    func renamedAndMoved() throws {
        let old = try config(listeners: [a, b].joined(separator: "\n"))
        let renamed = a.replacingOccurrences(of: "name: a", with: "name: z")
        let moved = b.replacingOccurrences(of: "8002", with: "8009")
        let made = try plan(old, try config(listeners: [renamed, moved].joined(separator: "\n")))
        #expect(made.kept.map { [$0.new, $0.old] } == [[0, 0]])
        #expect(made.added == [1] && made.removed == [1])
        #expect(made.changes.contains("listener a renamed z"))
        #expect(made.changes.contains("listener b moved from 127.0.0.1:8002 to 127.0.0.1:8009"))
    }

    @Test("a listener's timeouts or pool change: kept, and said so")
    func listenerChanged() throws {
        let old = try config(listeners: a)
        let new = try config(listeners: a.replacingOccurrences(of: "pool: web", with: "pool: db, idle_timeout: 5s"))
        let made = try plan(old, new)
        #expect(made.kept.count == 1 && made.changes == ["listener a changed"])
    }

    @Test("backends added, removed and reweighted are named")
    func poolChanges() throws {
        let old = try config(listeners: a)
        let new = try decodeConfig("""
            workers: 2
            listeners:
            \(a)
            pools:
              - { name: web, backends: [ { address: "127.0.0.1:9002", weight: 3 }, { address: "127.0.0.1:9003" } ] }
              - { name: cache, backends: [ { address: "127.0.0.1:9201" } ] }
            """).config
        let changes = try plan(old, new).changes
        #expect(changes.contains("pool web: backend 127.0.0.1:9003 added"))
        #expect(changes.contains("pool web: backend 127.0.0.1:9001 removed (its connections drain)"))
        #expect(changes.contains("pool web changed"))
        #expect(changes.contains("pool cache added") && changes.contains("pool db removed"))
    }

    @Test("workers, instance, steering, data path, user, admin and the log file need a restart; each is named")
    func restartOnly() throws {
        let old = try config(listeners: a)
        let new = try config(listeners: a, top: """
            workers: 3
            instance: other
            steering: hash
            log: { file: /tmp/sluice-reload-test.log }
            admin: { socket: /run/sluice/other.sock, metrics: off }
            """)
        let problems = refusals(old, new)
        for key in ["workers", "instance", "steering", "log.file", "admin"] {
            #expect(problems.contains { $0.contains("\(key) changed: it needs a restart") }, "\(key): \(problems)")
        }
    }

    @Test("a listener that changes mode on its address, or takes a running listener's address in another mode, needs a restart")
    func modeChange() throws {
        let old = try config(listeners: a)
        let http = a.replacingOccurrences(of: "pool: web", with: "pool: web, mode: http")
        #expect(refusals(old, try config(listeners: http)).contains { $0.contains("in another mode: that needs a restart") })
        let renamedHTTP = http.replacingOccurrences(of: "name: a", with: "name: q")
        #expect(refusals(old, try config(listeners: renamedHTTP)).contains { $0.contains("takes 127.0.0.1:8001 from running listener a") })
    }

    @Test("a UDP listener's max_flows sizes a kernel map: changing it needs a restart")
    func udpMaxFlows() throws {
        let udp = "  - { name: u, bind: \"127.0.0.1:8053\", pool: web, mode: udp, udp: { max_flows: 100 } }"
        let old = try config(listeners: udp)
        #expect(refusals(old, try config(listeners: udp.replacingOccurrences(of: "100", with: "200")))
            .contains { $0.contains("max_flows sizes its flow map") })
        #expect(try plan(old, old).kept.count == 1)
    }
}
