/// Dates the steering program's charges for one worker, so that the control
/// thread can tell the recent ones (a handshake may still complete) from the
/// old ones (a SYN that never completed, a stray ACK), which it expires.
///
/// The program only keeps a running total (`charged`); sampling that total
/// now and then is enough: the charges taken since the newest sample that is
/// at least `window` old are the recent ones. Until the samples cover a whole
/// window, every charge counts as recent (nothing expires too early).
public struct ChargeWindow: Sendable {
    public let windowMilliseconds: UInt64
    /// (time, charged total) in time order; the first one is the newest
    /// sample at least a window old once the history covers a window.
    private var samples: [(at: UInt64, charged: UInt64)] = []

    public init(windowMilliseconds: UInt64) {
        precondition(windowMilliseconds > 0)
        self.windowMilliseconds = windowMilliseconds
    }

    /// Records the total seen at `now` and forgets samples that no later
    /// question can need.
    public mutating func record(charged: UInt64, at now: UInt64) {
        samples.append((now, charged))
        let horizon = now > windowMilliseconds ? now - windowMilliseconds : 0
        // Keep the newest sample at or before the horizon, drop older ones.
        while samples.count > 1 && samples[1].at <= horizon { samples.removeFirst() }
    }

    /// How many of `charged` (the total read now) were taken within the
    /// window before `now`.
    public func recent(charged: UInt64, now: UInt64) -> UInt64 {
        let horizon = now > windowMilliseconds ? now - windowMilliseconds : 0
        guard let baseline = samples.last(where: { $0.at <= horizon }) else { return charged }
        return charged >= baseline.charged ? charged - baseline.charged : charged
    }

    /// Samples held: stays bounded by the window over the sampling interval.
    public var sampleCount: Int { samples.count }
}
