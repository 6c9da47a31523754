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
    /// The longest the control thread sleeps between looks: bounds how late
    /// an expiry or a reclaim comes.
    static let maxTickMilliseconds: UInt64 = 100
    /// A handshake completes well within this long of its SYN on any real
    /// network; a charge still pending after it is a SYN that never
    /// completed (a flood, a lost SYN-ACK) or a stray ACK.
    static let minSettleWindowMilliseconds: UInt64 = 500

    let tickMilliseconds: UInt64
    /// How long a charge may stay pending before it expires: at least the
    /// stall threshold and a tick, so that a worker busy for less than the
    /// threshold (still steered to) keeps the charges of the connections
    /// waiting in its accept queue.
    let settleWindowMilliseconds: UInt64
    private let workers: [Worker]
    private let table: WorkerLoadTable
    /// A reload may change it; the tick stays the one chosen at start.
    var rebalance: RebalanceConfig?
    private var windows: [ChargeWindow]
    private var nextRebalance: UInt64 = 0
    /// Reclaimed connections no worker would take yet (every candidate had
    /// stopped); offered again on the next tick.
    private var unplaced: [MigratingSessions] = []
    private var logger: Logger
    /// Charges expired so far, per worker (for metrics).
    private(set) var expired: [UInt64]

    init(workers: [Worker], table: WorkerLoadTable, rebalance: RebalanceConfig?,
         stallThresholdNanoseconds: UInt64, logger: Logger) {
        self.workers = workers
        self.table = table
        self.rebalance = rebalance
        self.logger = logger
        tickMilliseconds = min(Self.maxTickMilliseconds, max(10, rebalance?.interval.milliseconds ?? Self.maxTickMilliseconds))
        settleWindowMilliseconds = max(Self.minSettleWindowMilliseconds,
                                       (stallThresholdNanoseconds / 1_000_000).saturatingAdd(tickMilliseconds))
        expired = workers.map { _ in 0 }
        windows = workers.map { [settleWindowMilliseconds] _ in ChargeWindow(windowMilliseconds: settleWindowMilliseconds) }
    }

    /// Connections actually moved: counted by the workers that adopted them.
    var moves: UInt64 { workers.reduce(0) { $0 &+ $1.counters.movedIn.load(ordering: .relaxed) } }

    func tick(draining: Bool) {
        let now = monotonicMilliseconds()
        expireCharges(now: now)
        reclaimFromStalledWorkers()
        if !draining, let rebalance, now >= nextRebalance {
            nextRebalance = now.saturatingAdd(rebalance.interval.milliseconds)
            rebalanceOnce(rebalance)
        }
    }

    private func expireCharges(now: UInt64) {
        for k in workers.indices {
            let record = table.record(k)
            let window = windows[k]
            expired[k] &+= record.expireCharges { window.expirable(pending: $0, now: now) }
            windows[k].record(pending: record.load(.pending), at: now)
        }
    }

    /// Connections queued to a stalled worker go back to the worker that gave
    /// them, or to the least loaded one that is not stalled.
    private func reclaimFromStalledWorkers() {
        let now = monotonicNanoseconds()
        var batches = unplaced
        unplaced = []
        for worker in workers where worker.isStalled(now: now) && !worker.hasExited {
            let reclaimed = worker.reclaimPendingAdoptions()
            if !reclaimed.isEmpty {
                logger.warning("worker stalled before adopting connections; handing them to another", metadata: [
                    "stalled": "\(worker.id)", "count": "\(reclaimed.reduce(0) { $0 + $1.sessions.count })",
                ])
            }
            batches += reclaimed
        }
        guard !batches.isEmpty else { return }
        let running = workers.filter { !$0.isStalled(now: now) && !$0.hasExited }
            .sorted { $0.record.load(.active) < $1.record.load(.active) }
        for batch in batches {
            let giver = workers[batch.from]
            let candidates = running.contains { $0 === giver } ? [giver] + running : running
            // `from` stays the giver's: taken back by the giver is not a move.
            if !candidates.contains(where: { $0.send(.adopt(batch)) }) { unplaced.append(batch) }
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
