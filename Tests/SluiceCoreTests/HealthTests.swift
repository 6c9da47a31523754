@testable import SluiceCore
import Testing

@Suite("Backend health accounting")
struct HealthTests {
    @Test("fall failures in a row take a backend down; rise successes bring it back")
    func riseAndFall() {
        var state = HealthCheckState()
        #expect(state.isUp)
        do { let changed = state.record(success: false, rise: 2, fall: 3); #expect(!changed) }
        do { let changed = state.record(success: false, rise: 2, fall: 3); #expect(!changed) }
        do { let changed = state.record(success: true, rise: 2, fall: 3); #expect(!changed, "a success resets the failure run") }
        do { let changed = state.record(success: false, rise: 2, fall: 3); #expect(!changed) }
        do { let changed = state.record(success: false, rise: 2, fall: 3); #expect(!changed) }
        do { let changed = state.record(success: false, rise: 2, fall: 3); #expect(changed) }
        #expect(!state.isUp)
        do { let changed = state.record(success: true, rise: 2, fall: 3); #expect(!changed) }
        do { let changed = state.record(success: true, rise: 2, fall: 3); #expect(changed) }
        #expect(state.isUp)
    }

    @Test("passive ejection after consecutive failures, doubling on repeat, capped, forgiven by a success")
    func passive() {
        var state = PassiveEjectionState()
        do { let ejected = state.failure(now: 0, threshold: 3, ejectionMilliseconds: 10_000, mayEject: true); #expect(ejected == nil) }
        do { let ejected = state.failure(now: 0, threshold: 3, ejectionMilliseconds: 10_000, mayEject: true); #expect(ejected == nil) }
        do { let ejected = state.failure(now: 0, threshold: 3, ejectionMilliseconds: 10_000, mayEject: true); #expect(ejected == 10_000) }
        #expect(state.isEjected(now: 9_999) && !state.isEjected(now: 10_000))
        for _ in 0..<2 { _ = state.failure(now: 10_000, threshold: 3, ejectionMilliseconds: 10_000, mayEject: true) }
        do { let ejected = state.failure(now: 10_000, threshold: 3, ejectionMilliseconds: 10_000, mayEject: true); #expect(ejected == 30_000, "20 s the second time") }
        var capped = state
        for round in 0..<20 {
            let now: UInt64 = 1_000_000 * UInt64(round + 1)
            for _ in 0..<3 { _ = capped.failure(now: now, threshold: 3, ejectionMilliseconds: 10_000, mayEject: true) }
        }
        #expect(capped.ejectedUntilMilliseconds - 20_000_000 == PassiveEjectionState.maxEjectionMilliseconds)
        state.success()
        for _ in 0..<2 { _ = state.failure(now: 100_000, threshold: 3, ejectionMilliseconds: 10_000, mayEject: true) }
        do { let ejected = state.failure(now: 100_000, threshold: 3, ejectionMilliseconds: 10_000, mayEject: true); #expect(ejected == 110_000, "back to 10 s") }
    }

    @Test("the last healthy backend is not ejected when that is not allowed")
    func neverTheLast() {
        var state = PassiveEjectionState()
        for _ in 0..<10 {
            let ejected = state.failure(now: 0, threshold: 3, ejectionMilliseconds: 10_000, mayEject: false)
            #expect(ejected == nil)
        }
        #expect(!state.isEjected(now: 0))
    }

    @Test("HTTP status lines are read byte by byte and in any split")
    func statusLine() {
        let reply = Array("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".utf8)
        for cut in 0..<reply.count {
            let result = httpStatusCode(reply[..<cut])
            if cut <= reply.firstIndex(of: 10)! { #expect(result == nil, "cut \(cut)") } else { #expect(result == .some(503)) }
        }
        #expect(httpStatusCode(Array("HTTP/1.0 200 OK\n".utf8)) == .some(200))
        #expect(httpStatusCode(Array("SSH-2.0-OpenSSH\r\n".utf8)) == .some(nil))
        #expect(httpStatusCode(Array(repeating: UInt8(65), count: 2000)) == .some(nil))
    }
}
