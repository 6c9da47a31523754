import SluiceCore
import Testing

@Suite("Idle backend connections")
struct IdleConnectionsTests {
    /// Takes every kept connection of `backend`, most recent first.
    func drain(_ pool: inout IdleConnections, backend: Int) -> [Int32] {
        var out: [Int32] = []
        while let handle = pool.take(backend: backend) { out.append(handle) }
        return out
    }

    @Test("per backend, the most recently kept comes out first")
    func lastInFirstOut() {
        var pool = IdleConnections(maxPerBackend: 4, idleTimeoutMilliseconds: 1000)
        let evicted = [pool.put(10, backend: 0, now: 1), pool.put(11, backend: 0, now: 2), pool.put(20, backend: 1, now: 3)]
        #expect(evicted == [nil, nil, nil] && pool.count == 3)
        let first = drain(&pool, backend: 0), second = drain(&pool, backend: 1)
        #expect(first == [11, 10] && second == [20] && pool.count == 0)
    }

    @Test("a backend keeps at most its fill: the oldest goes; with a fill of zero nothing is kept")
    func bounded() {
        var pool = IdleConnections(maxPerBackend: 2, idleTimeoutMilliseconds: 1000)
        let evicted = [pool.put(1, backend: 0, now: 1), pool.put(2, backend: 0, now: 2), pool.put(3, backend: 0, now: 3)]
        #expect(evicted == [nil, nil, 1] && pool.count == 2)
        let kept = drain(&pool, backend: 0)
        #expect(kept == [3, 2])
        var none = IdleConnections(maxPerBackend: 0, idleTimeoutMilliseconds: 1000)
        let refused = none.put(7, backend: 0, now: 1)
        #expect(refused == 7 && none.count == 0)
    }

    @Test("connections idle for the timeout are taken out to be closed; younger ones stay")
    func expiry() {
        var pool = IdleConnections(maxPerBackend: 8, idleTimeoutMilliseconds: 100)
        _ = pool.put(1, backend: 0, now: 0)
        _ = pool.put(2, backend: 0, now: 50)
        _ = pool.put(3, backend: 1, now: 10)
        let early = pool.expire(now: 99), late = pool.expire(now: 110)
        #expect(early.isEmpty && Set(late) == [1, 3])
        let left = drain(&pool, backend: 0) + drain(&pool, backend: 1)
        #expect(left == [2] && pool.count == 0)
    }

    @Test("a connection its backend closed while idle is forgotten")
    func removal() {
        var pool = IdleConnections(maxPerBackend: 8, idleTimeoutMilliseconds: 100)
        _ = pool.put(1, backend: 0, now: 0)
        _ = pool.put(2, backend: 0, now: 1)
        let removed = pool.remove(1), again = pool.remove(1)
        #expect(removed && !again && pool.count == 1)
        let left = drain(&pool, backend: 0)
        #expect(left == [2])
    }
}
