import SluiceCore
import Testing

@Suite("What a connection carries to another process at a binary upgrade")
struct HandoverStateTests {
    @Test("a relaying session at rest hands over; taken back in, it hands over the same state and relays on")
    func relayingRoundTrip() throws {
        var d = Driver(path: .splice)
        d.connect(to: 2, now: 5)
        d.on(.pumped(.upstream, PumpResult(moved: 300), now: 7))
        d.on(.pumped(.downstream, PumpResult(moved: 900), now: 9))
        let state = try #require(d.session.handover)
        #expect(state.path == "splice" && !state.inKernel && state.lastActivity == 9)
        #expect(state.userspaceUpstream == 300 && state.userspaceDownstream == 900)
        let limits = d.session.limits
        var resumed = try #require(TCPSession(resuming: state, backend: 4, limits: limits))
        #expect(resumed.handover == state && resumed.backend == 4 && resumed.connectedBackend == 4)
        // What the first `.arm` arms is the resumed state's, before any event.
        #expect(resumed.interest.client == [.readable, .readHangup] && resumed.interest.backend == [.readable, .readHangup])
        var actions: [TCPSession.Action] = []
        resumed.handle(.adopted, into: &actions)
        #expect(actions.contains(.schedule(.idle, at: 9 + 10_000)), "the idle deadline is kept: \(actions)")
        #expect(actions.contains(.pump(.upstream, read: true)) && actions.contains(.arm))
    }

    @Test("not at rest, nothing to hand over: connecting, bytes pending, an EOF seen")
    func notAtRest() {
        var connecting = Driver()
        connecting.on(.accepted)
        connecting.on(.connecting(backend: 0, now: 0))
        #expect(connecting.session.handover == nil)
        var pending = Driver()
        pending.connect()
        pending.on(.pumped(.upstream, PumpResult(moved: 10, pending: true), now: 1))
        #expect(pending.session.handover == nil)
        var halfClosed = Driver()
        halfClosed.connect()
        halfClosed.on(.pumped(.upstream, PumpResult(moved: 5, endOfFile: true), now: 1))
        #expect(halfClosed.session.handover == nil)
    }

    @Test("a path this build does not know is refused, not guessed")
    func unknownPath() throws {
        var d = Driver()
        d.connect()
        var state = try #require(d.session.handover)
        state.path = "teleport"
        #expect(TCPSession(resuming: state, backend: 0, limits: d.session.limits) == nil)
    }

    @Test("a Redis client between commands hands over its authentication and protocol; mid-command, nothing")
    func redisClient() throws {
        var limits = RedisSession.Limits()
        limits.password = Array("pw".utf8)
        var session = RedisSession(limits: limits, shards: RedisShards(.crc16, servers: [RedisShardServer(name: "a", weight: 1)]))
        var actions: [RedisSession.Action] = []
        let hello = Array("HELLO 3 AUTH default pw\r\n".utf8)
        hello.withUnsafeBytes { session.receive($0, into: &actions) }
        let state = try #require(session.handover)
        #expect(state.authenticated && state.protocolVersion == 3)
        Array("GET k".utf8).withUnsafeBytes { session.receive($0, into: &actions) }
        #expect(session.handover == nil, "half a command received")
        var fresh = RedisSession(limits: limits, shards: RedisShards(.crc16, servers: [RedisShardServer(name: "a", weight: 1)]))
        #expect(fresh.handover?.authenticated == false)
        fresh.resume(authenticated: true, protocolVersion: 3)
        #expect(fresh.handover?.authenticated == true && fresh.protocolVersion == 3)
    }
}
