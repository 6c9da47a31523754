/// Tells, for one worker, how many of the steering program's pending charges
/// are old enough to expire: a SYN that never completed, a stray ACK.
///
/// Accepts settle charges anonymously, so no single charge can be dated.
/// What can be said is this: if `pending` never fell below `m` at any sample
/// over a whole window (and is at least `m` now), `m` charges have waited a
/// window without an accept to settle them. Under steady traffic after a
/// flood, the flood's leftovers are that floor and expire, whatever the
/// traffic settles in the meantime. Expiring a real handshake's charge early
/// costs nothing lasting: its accept then counts the connection itself.
public struct ChargeWindow: Sendable {
    public let windowMilliseconds: UInt64
    /// (time, pending) in time order; the first one is the newest sample at
    /// least a window old once the history covers a window.
    private var samples: [(at: UInt64, pending: UInt64)] = []

    public init(windowMilliseconds: UInt64) {
        precondition(windowMilliseconds > 0)
        self.windowMilliseconds = windowMilliseconds
    }

    /// Records `pending` as read at `now`, and forgets samples that no later
    /// question can need.
    public mutating func record(pending: UInt64, at now: UInt64) {
        samples.append((now, pending))
        let horizon = now > windowMilliseconds ? now - windowMilliseconds : 0
        // Keep the newest sample at or before the horizon, drop older ones.
        while samples.count > 1 && samples[1].at <= horizon { samples.removeFirst() }
    }

    /// How many of `pending` (read now) have waited at least a window.
    /// Nothing until the samples cover a whole window.
    public func expirable(pending: UInt64, now: UInt64) -> UInt64 {
        let horizon = now > windowMilliseconds ? now - windowMilliseconds : 0
        guard let first = samples.lastIndex(where: { $0.at <= horizon }) else { return 0 }
        return samples[first...].reduce(pending) { min($0, $1.pending) }
    }

    /// Samples held: stays bounded by the window over the sampling interval.
    public var sampleCount: Int { samples.count }
}
