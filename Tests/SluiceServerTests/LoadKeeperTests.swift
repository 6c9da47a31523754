import Foundation
import Logging
import SluiceBPF
import SluiceCore
@testable import SluicePosix
@testable import SluiceServer
import Testing

@Suite("The control thread's care of worker loads")
struct LoadKeeperTests {
    private func workers(_ count: Int, table: WorkerLoadTable) throws -> [Worker] {
        try (0..<count).map { k in
            try Worker(
                id: k, listeners: [], listenerFDs: [], settings: WorkerSettings(dataPath: .copy, accessLog: .off),
                record: table.record(k), sockmapPairs: nil, logger: Logger(label: "test"), accessLog: nil, seed: 0,
                onExit: {})
        }
    }

    @Test("connections handed to a worker that stalled before adopting them go back to their giver")
    func reclaimsFromAStalledWorker() throws {
        let table = WorkerLoadTable(anonymousCount: 2)
        let pair = try workers(2, table: table)
        let now = monotonicNanoseconds()
        table.record(0).store(.heartbeatNanoseconds, now)
        table.record(1).store(.heartbeatNanoseconds, now &- 5_000_000_000) // stalled 5 s ago
        pair[1].send(.adopt(MigratingSessions(sessions: [], from: 0)))
        let keeper = LoadKeeper(workers: pair, table: table, rebalance: nil,
                                stallThresholdNanoseconds: 200_000_000, logger: Logger(label: "test"))
        keeper.tick(draining: false)
        #expect(pair[1].reclaimPendingAdoptions().isEmpty, "nothing left to freeze on the stalled worker")
        #expect(pair[0].reclaimPendingAdoptions().count == 1, "back to the giver, which is live")
    }

    @Test("a live receiver keeps what it was handed")
    func liveReceiverKeeps() throws {
        let table = WorkerLoadTable(anonymousCount: 2)
        let pair = try workers(2, table: table)
        let now = monotonicNanoseconds()
        for k in 0..<2 { table.record(k).store(.heartbeatNanoseconds, now) }
        pair[1].send(.adopt(MigratingSessions(sessions: [], from: 0)))
        let keeper = LoadKeeper(workers: pair, table: table, rebalance: nil,
                                stallThresholdNanoseconds: 5_000_000_000, logger: Logger(label: "test"))
        keeper.tick(draining: false)
        #expect(pair[1].reclaimPendingAdoptions().count == 1)
    }

    @Test("pending charges that wait a whole settle window expire; fresh ones stay; the window covers the stall threshold")
    func expiresOldCharges() throws {
        let table = WorkerLoadTable(anonymousCount: 1)
        let record = table.record(0)
        let keeper = LoadKeeper(workers: try workers(1, table: table), table: table, rebalance: nil,
                                stallThresholdNanoseconds: 200_000_000, logger: Logger(label: "test"))
        #expect(keeper.settleWindowMilliseconds == 500)
        let slow = LoadKeeper(workers: try workers(1, table: table), table: table, rebalance: nil,
                              stallThresholdNanoseconds: 2_000_000_000, logger: Logger(label: "test"))
        #expect(slow.settleWindowMilliseconds == 2_100, "a worker busy for less than the threshold keeps its charges")
        // As the program would on 10 SYNs.
        record.add(.active, 10); record.add(.charged, 10); record.add(.pending, 10)
        keeper.tick(draining: false)
        #expect(record.load(.active) == 10, "too recent to expire")
        usleep(UInt32(keeper.settleWindowMilliseconds + 50) * 1000)
        record.add(.active, 2); record.add(.charged, 2); record.add(.pending, 2)
        keeper.tick(draining: false)
        #expect(record.load(.active) == 2, "the 10 old charges expired, the 2 new ones stay")
        #expect(keeper.expired == [10])
        #expect(record.load(.underflows) == 0)
    }

    @Test("a worker that has stopped refuses new commands; what it was handed late is closed by it, not lost")
    func stoppedWorkerRefusesCommands() throws {
        let table = WorkerLoadTable(anonymousCount: 1)
        let worker = try workers(1, table: table)[0]
        #expect(worker.send(.adopt(MigratingSessions(sessions: [], from: 0))))
        worker.closeLeftoverAdoptions()
        #expect(worker.reclaimPendingAdoptions().isEmpty, "the leftover was taken at exit")
        #expect(!worker.send(.adopt(MigratingSessions(sessions: [], from: 0))), "nothing queues behind a stopped loop")
    }
}
