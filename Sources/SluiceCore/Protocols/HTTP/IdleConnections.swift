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
    /// Per backend index, oldest first.
    private var idle: [Int: [Entry]] = [:]
    public private(set) var count = 0

    public init(maxPerBackend: Int, idleTimeoutMilliseconds: UInt64) {
        self.maxPerBackend = max(0, maxPerBackend)
        self.idleTimeoutMilliseconds = idleTimeoutMilliseconds
    }

    /// Keeps `handle` for reuse; returns the connection to close instead when
    /// the backend already has its fill (the oldest, or `handle` itself when none are kept).
    public mutating func put(_ handle: Handle, backend: Int, now: UInt64) -> Handle? {
        guard maxPerBackend > 0 else { return handle }
        var list = idle[backend, default: []]
        list.append(Entry(handle: handle, since: now))
        var evicted: Handle?
        if list.count > maxPerBackend {
            evicted = list.removeFirst().handle
        } else {
            count += 1
        }
        idle[backend] = list
        return evicted
    }

    /// The most recently kept connection to `backend`, if any.
    public mutating func take(backend: Int) -> Handle? {
        guard var list = idle[backend], let entry = list.popLast() else { return nil }
        idle[backend] = list.isEmpty ? nil : list
        count -= 1
        return entry.handle
    }

    /// Connections idle for the timeout or longer, taken out (to close).
    public mutating func expire(now: UInt64) -> [Handle] {
        var expired: [Handle] = []
        for (backend, list) in idle {
            let keep = list.filter { now &- $0.since < idleTimeoutMilliseconds }
            guard keep.count != list.count else { continue }
            expired += list.filter { now &- $0.since >= idleTimeoutMilliseconds }.map(\.handle)
            idle[backend] = keep.isEmpty ? nil : keep
        }
        count -= expired.count
        return expired
    }

    /// Forgets a connection that closed while idle; false if it was not kept.
    public mutating func remove(_ handle: Handle) -> Bool {
        for (backend, list) in idle {
            guard let at = list.firstIndex(where: { $0.handle == handle }) else { continue }
            var list = list
            list.remove(at: at)
            idle[backend] = list.isEmpty ? nil : list
            count -= 1
            return true
        }
        return false
    }
}
