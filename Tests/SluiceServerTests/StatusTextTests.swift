@testable import SluiceServer
import Testing

@Suite("sluice status text")
struct StatusTextTests {
    static let snapshot = StatusSnapshot(
        instance: "edge", daemon: "running", pid: 4242, uptimeSeconds: 11_530,
        workers: [
            .init(id: 0, state: "ok", active: 310, pending: 0, underflows: 0, accepted: 12_345, connectionsPerSecond: 14,
                  bytesIn: 1_288_490_188, bytesOut: 3_650_722_201, heartbeatAgeMilliseconds: 3, busyPercent: 12.4),
            .init(id: 1, state: "ok", active: 298, pending: 2, underflows: 0, accepted: 12_001, connectionsPerSecond: 13.5,
                  bytesIn: 1_100_000_000, bytesOut: 3_500_000_000, heartbeatAgeMilliseconds: 1, busyPercent: 11.6),
            .init(id: 2, state: "stalled", active: 301, pending: 0, underflows: 0, accepted: 11_800, connectionsPerSecond: 0,
                  bytesIn: 900_000, bytesOut: 52_000, heartbeatAgeMilliseconds: 2_300, busyPercent: 0),
            .init(id: 3, state: "draining", active: 25, pending: 0, underflows: 0, accepted: 9_999_999, connectionsPerSecond: 1_234.5,
                  bytesIn: 512, bytesOut: 0, heartbeatAgeMilliseconds: 75_000, busyPercent: 100),
        ],
        listeners: [.init(name: "web", address: "0.0.0.0:8080", pool: "web", active: 934, accepted: 10_012_345,
                          rejected: 3, noBackend: 1)],
        backends: [.init(pool: "web", address: "127.0.0.1:9001", state: "up", active: 467, weight: 1, failures: 0, lastCheck: nil),
                   .init(pool: "web", address: "[::1]:9002", state: "drained", active: 467, weight: 2, failures: 12, lastCheck: nil)],
        steering: .init(mode: "least_loaded", selected: 10_012_340, fallback: 5, allStalled: 0, stallSkips: 77, passed: 9, acks: 0, acksFollowed: 0, moves: 128),
        dataPath: "sockmap", notes: ["every worker's heartbeat is older than the stall threshold"])

    static let expected = """
        sluice edge  running  pid 4242  up 3h12m
        steering least_loaded  data path sockmap  open 934  new/s 1,262

         W state      active share         accepted  conn/s      in     out   beat  busy
         0 ok            310 ███▍            12,345    14.0    1.2G    3.4G    3ms   12%
         1 ok            298 ███▎            12,001    13.5    1.0G    3.3G    1ms   12%
         2 stalled       301 ███▎            11,800     0.0    879K   50.8K     2s    0%
         3 draining       25 ▎            9,999,999   1,235    512B      0B  1m15s  100%

        listener   address                pool          open    accepted  refused
        web        0.0.0.0:8080           web            934  10,012,345        4

        steered 10,012,340  fallbacks 5  all stalled 0  stalled skipped 77  moved 128

        backend                pool       state       open weight failures checked
        127.0.0.1:9001         web        up           467      1        0 -
        [::1]:9002             web        drained      467      2       12 -
        note: every worker's heartbeat is older than the stall threshold

        """

    @Test("the table is what an operator expects, and fits 80 columns")
    func rendersAtEightyColumns() {
        let text = StatusText.render(Self.snapshot)
        #expect(text == Self.expected)
        for line in text.split(separator: "\n") { #expect(line.count <= 80, "\(line.count): \(line)") }
    }

    @Test("closed connections per data path and promotions get a line when the daemon answered")
    func dataPathLine() {
        var snapshot = Self.snapshot
        snapshot.dataPaths = DataPathCounts(copy: 12_345, splice: 67, sockmap: 8_900, promotions: 8_899)
        let text = StatusText.render(snapshot)
        #expect(text.contains("\nclosed by path: copy 12,345  splice 67  sockmap 8,900  promoted 8,899\n"), "\(text)")
        #expect(!StatusText.render(Self.snapshot).contains("closed by path"))
    }

    @Test("share bars are proportional: a full share is ten blocks")
    func bars() {
        #expect(StatusText.bar(1) == "██████████")
        #expect(StatusText.bar(0) == "")
        #expect(StatusText.bar(0.25) == "██▌")
    }
}

@Suite("sluice status text: hostname backends")
struct StatusTextNamesTests {
    @Test("the addresses of a hostname backend follow its name, wrapped within 80 columns")
    func namedBackends() {
        var snapshot = StatusTextTests.snapshot
        snapshot.notes = []
        snapshot.backends = (1...12).map { k in
            .init(pool: "app", address: "10.244.\(k).123:8080", state: "up", active: k, weight: 1, failures: 0, lastCheck: nil,
                  name: "app.default.svc.cluster.local:8080")
        }
        let lines = StatusText.render(snapshot).split(separator: "\n", omittingEmptySubsequences: false)
        let header = lines.firstIndex { $0 == "dns app.default.svc.cluster.local:8080 (pool app): 12 addresses" }
        #expect(header != nil, "\(lines)")
        guard let header else { return }
        let wrapped = lines[(header + 1)...].prefix { $0.hasPrefix("  ") }
        #expect(wrapped.count == 3 && wrapped.allSatisfy { $0.count <= 80 }, "\(wrapped)")
        #expect(wrapped.joined().split(separator: " ").count == 12)
    }
}
