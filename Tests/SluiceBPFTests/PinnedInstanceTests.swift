import CLibbpf
import CSluice
import Foundation
import Glibc
@testable import SluiceBPF
import SluicePosix
import Testing

/// The reader `sluice status` uses: an instance's pins opened without the daemon.
@Suite("Pinned instance reader", .serialized)
struct PinnedInstanceTests {
    /// A pinned instance with two workers and two listeners, as a daemon leaves it.
    func pinnedSteering() throws -> (KernelSteering, String) {
        let instance = "test-reader-\(UUID().uuidString.prefix(8))"
        let steering = try KernelSteering(instance: instance, workers: 2, listeners: 2,
                                          stallThresholdNanoseconds: 1, attachPrograms: false)
        try steering.pin()
        return (steering, instance)
    }

    @Test("nothing pinned under the name: not running")
    func notRunning() {
        #expect {
            _ = try PinnedInstance.open(instance: "test-absent-\(UUID().uuidString.prefix(8))")
        } throws: { error in
            if case PinnedInstance.OpenError.notRunning = error { return true }
            return false
        }
    }

    @Test("every field the daemon writes is read back under its own name (offsets come from the C struct)")
    func readsEveryField() throws {
        guard try requireBPF() else { return }
        let (steering, instance) = try pinnedSteering()
        defer { steering.close() }
        let worker = steering.table.record(1)
        for (index, field) in WorkerField.allCases.enumerated() { worker.store(field, UInt64(100 + index)) }
        let listener = steering.listenerTable.record(1)
        for (index, field) in ListenerField.allCases.enumerated() { listener.store(field, UInt64(200 + index)) }

        let pins = try PinnedInstance.open(instance: instance)
        defer { pins.close() }
        #expect(pins.isReadOnly)
        let workers = pins.workers(count: 2)
        #expect(workers.count == 2)
        #expect(workers[0].active == 0 && workers[0].accepted == 0)
        let w = workers[1]
        #expect([w.active, w.accepted, w.heartbeatNanoseconds, w.busyNanoseconds, w.flags, w.bytesIn, w.bytesOut,
                 w.pending, w.charged, w.underflows] == Array(100...109))
        let l = pins.listeners(count: 2)[1]
        #expect([l.active, l.accepted, l.rejected, l.noBackend] == Array(200...203))
        #expect(pins.steering == SteeringStats())
        #expect(pins.workers(count: 1000).count == PinnedInstance.maxWorkers)
    }

    @Test("each worker's record fills whole cache lines of its own in the mapping, so workers never write one line")
    func workerRecordsOwnTheirCacheLines() throws {
        #expect(WorkerField.stride % 64 == 0)
        #expect(WorkerField.allCases.allSatisfy { $0.offset + 8 <= WorkerField.stride })
        guard try requireBPF() else { return }
        let (steering, _) = try pinnedSteering()
        defer { steering.close() }
        let first = UInt(bitPattern: steering.table.record(0).base)
        let second = UInt(bitPattern: steering.table.record(1).base)
        #expect(first % 64 == 0 && second - first == UInt(WorkerField.stride))
    }

    @Test("a read-only open cannot write: updates and writable mappings are refused")
    func readOnlyCannotWrite() throws {
        guard try requireBPF() else { return }
        let (steering, instance) = try pinnedSteering()
        defer { steering.close() }
        let pins = try PinnedInstance.open(instance: instance, readOnly: true)
        defer { pins.close() }
        var key: UInt32 = 0
        var record = sluice_worker()
        record.active = 42
        for fd in [pins.workerLoad, pins.listenerLoad] {
            #expect(bpf_map_update_elem(fd, &key, &record, 0) != 0)
            #expect(errno == EPERM)
        }
        let mapped = mmap(nil, Int(sysconf(Int32(_SC_PAGESIZE))), PROT_READ | PROT_WRITE, MAP_SHARED, pins.workerLoad, 0)
        #expect(mapped == MAP_FAILED)
        #expect(throws: SystemCallError.self) { _ = try WorkerLoadTable(mapFD: pins.workerLoad, count: 1) }
        #expect(steering.table.record(0).load(.active) == 0)

        // The same pins opened read-write can (root only).
        let writable = try PinnedInstance.open(instance: instance, readOnly: false)
        defer { writable.close() }
        #expect(bpf_map_update_elem(writable.workerLoad, &key, &record, 0) == 0)
        #expect(steering.table.record(0).load(.active) == 42)
    }

    @Test("pins from another ABI version are refused on open")
    func abiMismatchRefused() throws {
        guard try requireBPF() else { return }
        let (steering, instance) = try pinnedSteering()
        defer { steering.close() }
        let abi = bpf_obj_get("\(PinLayout.directory(instance: instance))/\(BPFMap.abi.rawValue)")
        #expect(abi >= 0)
        defer { closeDescriptor(abi) }
        var key: UInt32 = 0
        var version: UInt64 = SluiceBPFLayout.abiVersion + 1
        #expect(bpf_map_update_elem(abi, &key, &version, 0) == 0)
        #expect {
            _ = try PinnedInstance.open(instance: instance)
        } throws: { error in
            guard case PinnedInstance.OpenError.abiMismatch(_, let found) = error else { return false }
            return found == SluiceBPFLayout.abiVersion + 1
        }
    }
}
