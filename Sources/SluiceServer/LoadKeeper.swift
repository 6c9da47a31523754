import CSluice
import Logging
import SluiceBPF
import SluiceCore
import SluicePosix

/// The control thread's care of the per-worker load counts, every tick:
/// expires the steering program's charges that no accept settled, takes back
/// connections handed to a worker that stalled before adopting them, and
/// rebalances established connections between live workers.
final class LoadKeeper {
    /// A handshake completes within this long of its SYN, or its charge
    /// expires (a flood's SYN, a lost SYN-ACK, a stray ACK). Longer than any
    /// plausible round trip; short enough that counts are true within a second.
    static let settleWindowMilliseconds: UInt64 = 500
    /// How often the control thread looks: bounds how late an expiry comes.
    static let tickMilliseconds: UInt64 = 100

    private let workers: [Worker]
    private let table: WorkerLoadTable
    private let rebalance: RebalanceConfig?
    private let stallThresholdNanoseconds: UInt64
    private var windows: [ChargeWindow]
    private var nextRebalance: UInt64 = 0
    private var logger: Logger
    /// Charges expired so far, per worker (for metrics).
    private(set) var expired: [UInt64]

    init(workers: [Worker], table: WorkerLoadTable, rebalance: RebalanceConfig?,
         stallThresholdNanoseconds: UInt64, logger: Logger) {
        self.workers = workers
        self.table = table
        self.rebalance = rebalance
        self.stallThresholdNanoseconds = stallThresholdNanoseconds
        self.logger = logger
        windows = workers.map { _ in ChargeWindow(windowMilliseconds: Self.settleWindowMilliseconds) }
        expired = workers.map { _ in 0 }
    }

    /// Connections actually moved: counted by the workers that adopted them.
    var moves: UInt64 { workers.reduce(0) { $0 &+ $1.counters.movedIn.load(ordering: .relaxed) } }

    func tick(draining: Bool) {
        let now = monotonicMilliseconds()
        expireCharges(now: now)
        reclaimFromStalledWorkers()
        if !draining, let rebalance, now >= nextRebalance {
            nextRebalance = now &+ rebalance.interval.milliseconds
            rebalanceOnce(rebalance)
        }
    }

    private func expireCharges(now: UInt64) {
        for k in workers.indices {
            let record = table.record(k)
            let window = windows[k]
            expired[k] &+= record.expireCharges { window.recent(charged: $0, now: now) }
            windows[k].record(charged: record.load(.charged), at: now)
        }
    }

    /// Connections queued to a stalled worker go to the live worker with the
    /// fewest, or back to the worker that gave them.
    private func reclaimFromStalledWorkers() {
        let now = monotonicNanoseconds()
        let live = workers.filter { $0.isLive(now: now) }
        for worker in workers where !worker.isLive(now: now) {
            for batch in worker.reclaimPendingAdoptions() {
                let giver = workers[batch.from]
                let target = giver.isLive(now: now) ? giver
                    : live.min { $0.record.load(.active) < $1.record.load(.active) } ?? giver
                logger.warning("worker stalled before adopting connections; handing them to another", metadata: [
                    "stalled": "\(worker.id)", "to": "\(target.id)", "count": "\(batch.sessions.count)",
                ])
                target.send(.adopt(MigratingSessions(sessions: batch.sessions, from: worker.id)))
            }
        }
    }

    private func rebalanceOnce(_ rebalance: RebalanceConfig) {
        let now = monotonicNanoseconds()
        let loads = workers.map { WorkerLoadView(worker: $0.id, active: $0.record.load(.active), isLive: $0.isLive(now: now)) }
        guard let move = RebalancePlan.move(loads: loads, ratio: rebalance.ratio, maxMoves: rebalance.maxMovesPerTick) else { return }
        workers[move.from].send(.give(count: move.count, to: workers[move.to], issuedAtNanoseconds: now))
        // The giver logs what it actually moved; an order may move nothing.
        logger.debug("rebalancing order: loads apart by more than the ratio", metadata: [
            "from": "\(move.from)", "to": "\(move.to)", "count": "\(move.count)",
            "from_active": "\(move.fromActive)", "to_active": "\(move.toActive)",
            "ratio": "\(rebalance.ratio)",
            "live": "\(loads.filter(\.isLive).map(\.worker))",
        ])
    }
}
