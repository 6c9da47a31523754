/// One worker's kept-alive backend connections, idle and ready for the next
/// request: per backend, the most recently used first (it is the warmest, and
/// the others age out), at most `maxPerBackend` each, and none older than
/// the idle timeout. Pure bookkeeping: the caller closes what comes out of
/// `put` and `expire`, and removes a connection whose backend closed it.
/// Not generic: the worker calls it twice per request, and an unspecialized
/// generic from another module looks its metadata up on every call.
public struct IdleConnections: Sendable {
    /// A connection's descriptor.
    public typealias Handle = Int32

    private struct Entry: Sendable {
        var handle: Handle
        var since: UInt64
    }

    public let maxPerBackend: Int
    public let idleTimeoutMilliseconds: UInt64
    /// Per backend index, oldest first. Nested arrays mutated in place: a
    /// dictionary of arrays copied out and back cost an allocation per call.
    private var lists: [[Entry]] = []
    public private(set) var count = 0

    public init(maxPerBackend: Int, idleTimeoutMilliseconds: UInt64) {
        self.maxPerBackend = max(0, maxPerBackend)
        self.idleTimeoutMilliseconds = idleTimeoutMilliseconds
    }

    /// Keeps `handle` for reuse; returns the connection to close instead when
    /// the backend already has its fill (the oldest, or `handle` itself when none are kept).
    public mutating func put(_ handle: Handle, backend: Int, now: UInt64) -> Handle? {
        guard maxPerBackend > 0, backend >= 0 else { return handle }
        if backend >= lists.count { lists += Array(repeating: [], count: backend + 1 - lists.count) }
        lists[backend].append(Entry(handle: handle, since: now))
        guard lists[backend].count > maxPerBackend else {
            count += 1
            return nil
        }
        return lists[backend].removeFirst().handle
    }

    /// The most recently kept connection to `backend`, if any.
    public mutating func take(backend: Int) -> Handle? {
        guard backend >= 0, backend < lists.count, let entry = lists[backend].popLast() else { return nil }
        count -= 1
        return entry.handle
    }

    /// Connections idle for the timeout or longer, taken out (to close).
    /// Allocates nothing when none are due.
    public mutating func expire(now: UInt64) -> [Handle] {
        var expired: [Handle] = []
        guard count > 0 else { return expired }
        for backend in lists.indices {
            let due = lists[backend].prefix { now &- $0.since >= idleTimeoutMilliseconds }.count
            guard due > 0 else { continue }
            expired += lists[backend][..<due].map(\.handle)
            lists[backend].removeFirst(due)
        }
        count -= expired.count
        return expired
    }

    /// Forgets a connection that closed while idle; false if it was not kept.
    public mutating func remove(_ handle: Handle) -> Bool {
        for backend in lists.indices {
            guard let at = lists[backend].firstIndex(where: { $0.handle == handle }) else { continue }
            lists[backend].remove(at: at)
            count -= 1
            return true
        }
        return false
    }
}
