/// What the rebalancer knows of one worker at a tick.
public struct WorkerLoadView: Sendable, Equatable {
    public var worker: Int
    /// Open connections plus pending charges (the steering program's view).
    public var active: UInt64
    /// Neither stalled (heartbeat older than the stall threshold) nor
    /// draining: only such a worker can give or take connections.
    public var isLive: Bool

    public init(worker: Int, active: UInt64, isLive: Bool) {
        self.worker = worker
        self.active = active
        self.isLive = isLive
    }
}

/// One move order: `count` established connections from `from` to `to`.
public struct RebalanceMove: Sendable, Equatable {
    public var from: Int
    public var to: Int
    public var count: Int
    /// The loads that made the move necessary, for the log line.
    public var fromActive: UInt64
    public var toActive: UInt64
}

/// The rebalancer's decision, pure: from the fullest to the emptiest live
/// worker, when their counts drift further apart than `ratio`. A stalled or
/// draining worker neither gives (it would not run the order) nor takes (its
/// connections would freeze with it).
public enum RebalancePlan {
    public static func move(loads: [WorkerLoadView], ratio: Double, maxMoves: Int) -> RebalanceMove? {
        let live = loads.filter(\.isLive)
        guard live.count > 1, let most = live.max(by: { $0.active < $1.active }),
              let least = live.min(by: { $0.active < $1.active }) else { return nil }
        // A difference of a couple of connections is noise (a burst being
        // accepted), whatever ratio it makes: leave it.
        let balanced = most.active - least.active <= 2
            || (least.active > 0 && Double(most.active) / Double(least.active) <= ratio)
        guard !balanced else { return nil }
        let total = live.reduce(UInt64(0)) { $0 &+ $1.active }
        let target = total / UInt64(live.count)
        // Bring the fullest down toward the average without pushing the emptiest above it.
        let count = min(most.active - min(target, most.active), max(target, least.active) - least.active)
        let capped = max(1, min(Int(clamping: count), maxMoves))
        return RebalanceMove(from: most.worker, to: least.worker, count: capped,
                             fromActive: most.active, toActive: least.active)
    }
}
