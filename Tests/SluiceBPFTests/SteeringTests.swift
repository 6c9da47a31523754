import CLibbpf
import CSluice
import Foundation
import Glibc
@testable import SluiceBPF
import SluicePosix
import Testing

/// A reuseport group of `workers` listening sockets on one loopback port,
/// with select_worker attached: the kernel half of steering, without a server.
final class SteeredGroup {
    private(set) var sockets: [Int32]
    let port: UInt16
    let steering: KernelSteering

    init(workers: Int, stallThreshold: UInt64 = 5_000_000_000) throws {
        var sockets: [Int32] = []
        var address = SocketAddress(ip: "127.0.0.1", port: 0)!
        for _ in 0..<workers {
            let fd = try Socket.listen(on: address, reusePort: true, backlog: 1024)
            if address.port == 0 { address = try Socket.localAddress(fd) }
            sockets.append(fd)
        }
        self.sockets = sockets
        port = address.port
        steering = try KernelSteering(
            instance: "test-\(UUID().uuidString.prefix(8))", workers: workers, listeners: 1,
            stallThresholdNanoseconds: stallThreshold, attachPrograms: true)
        try steering.attach(listener: 0, workerSockets: sockets)
        refreshHeartbeats()
    }

    deinit {
        for fd in sockets where fd >= 0 { closeDescriptor(fd) }
        steering.close()
    }

    /// Closes one worker's listening socket, as a worker that exits would.
    func closeWorkerSocket(_ k: Int) {
        // shutdown(2) first: a child another test is spawning holds a copy of
        // this process's descriptors until it execs, and a bare close would
        // leave the socket listening (and steered to) until then.
        shutdown(sockets[k], Int32(SHUT_RDWR))
        closeDescriptor(sockets[k])
        sockets[k] = -1
    }

    func refreshHeartbeats() {
        let now = monotonicNanoseconds()
        for k in 0..<sockets.count { steering.table.record(k).store(.heartbeatNanoseconds, now) }
    }

    var active: [UInt64] { (0..<sockets.count).map { steering.table.record($0).load(.active) } }
    var pending: [UInt64] { (0..<sockets.count).map { steering.table.record($0).load(.pending) } }

    /// Opens `count` connections as one burst (non-blocking connects first,
    /// then waits for every handshake); returns the client fds.
    func burst(_ count: Int) throws -> [Int32] {
        let target = SocketAddress(ip: "127.0.0.1", port: port)!
        var clients: [Int32] = []
        for _ in 0..<count {
            let fd = try Socket.tcp(family: AF_INET)
            _ = try Socket.connect(fd, to: target)
            clients.append(fd)
        }
        for fd in clients {
            var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            guard poll(&pfd, 1, 5000) == 1, Socket.pendingError(fd) == 0 else {
                throw SystemCallError(call: "connect in burst", errno: Socket.pendingError(fd))
            }
        }
        return clients
    }

    /// Accepts everything queued on each worker's socket; returns the counts.
    func drainQueues() throws -> [Int] {
        try sockets.map { listener in
            guard listener >= 0 else { return 0 }
            var n = 0
            while case .done(let (fd, _)) = try Socket.accept(listener) {
                closeDescriptor(fd)
                n += 1
            }
            return n
        }
    }
}

@Suite("select_worker steering in the kernel")
struct SteeringTests {
    @Test("200 connections in one burst land evenly: per-worker counts equal ±1, and the queues agree")
    func burstIsEven() throws {
        guard try requireBPF() else { return }
        try inOwnNetworkNamespace {
            let group = try SteeredGroup(workers: 4)
            let clients = try group.burst(200)
            defer { closeAll(clients) }
            let active = group.active
            #expect(active.reduce(0, +) == 200)
            #expect(active.max()! - active.min()! <= 1, "\(active)")
            let queued = try group.drainQueues()
            #expect(queued.map(UInt64.init) == active, "where connections were queued vs. the counters")
            #expect(group.steering.table.record(0).load(.charged) == active[0])
            #expect(group.pending == active, "every count is a pending charge until a worker accepts")
            #expect(group.steering.stats.selected == 200)
        }
    }

    @Test("a worker preloaded with 1,000 connections gets none of the next 50")
    func preloadedWorkerIsAvoided() throws {
        guard try requireBPF() else { return }
        try inOwnNetworkNamespace {
            let group = try SteeredGroup(workers: 4)
            group.steering.table.record(2).store(.active, 1000)
            let clients = try group.burst(50)
            defer { closeAll(clients) }
            let queued = try group.drainQueues()
            #expect(queued[2] == 0, "\(queued)")
            #expect(queued.reduce(0, +) == 50)
        }
    }

    @Test("a worker whose heartbeat froze gets nothing after stall_threshold, and work again once it beats")
    func stalledWorkerIsSkipped() throws {
        guard try requireBPF() else { return }
        try inOwnNetworkNamespace {
            let group = try SteeredGroup(workers: 3, stallThreshold: 200_000_000)
            group.steering.table.record(1).store(.heartbeatNanoseconds, monotonicNanoseconds() - 1_000_000_000)
            let before = group.steering.stats.stallSkips
            let clients = try group.burst(30)
            let queued = try group.drainQueues()
            #expect(queued[1] == 0, "\(queued)")
            #expect(group.steering.stats.stallSkips - before >= 30)
            group.refreshHeartbeats()
            let more = try group.burst(30)
            defer { closeAll(clients + more) }
            #expect(try group.drainQueues()[1] > 0)
        }
    }

    @Test("a heartbeat written just after the program read the clock counts as fresh")
    func futureHeartbeatIsFresh() throws {
        guard try requireBPF() else { return }
        try inOwnNetworkNamespace {
            let group = try SteeredGroup(workers: 2, stallThreshold: 200_000_000)
            group.steering.table.record(0).store(.heartbeatNanoseconds, monotonicNanoseconds() + 50_000_000)
            group.steering.table.record(1).store(.active, 100)
            let clients = try group.burst(10)
            defer { closeAll(clients) }
            #expect(try group.drainQueues() == [10, 0])
        }
    }

    @Test("draining workers get nothing; when every worker is stalled the kernel hash serves everyone")
    func drainingAndAllStalled() throws {
        guard try requireBPF() else { return }
        try inOwnNetworkNamespace {
            let group = try SteeredGroup(workers: 2, stallThreshold: 200_000_000)
            group.steering.table.record(0).store(.flags, UInt64(SLUICE_WORKER_DRAINING))
            let first = try group.burst(10)
            #expect(try group.drainQueues() == [0, 10])
            let old = monotonicNanoseconds() - 1_000_000_000
            for k in 0..<2 { group.steering.table.record(k).store(.heartbeatNanoseconds, old) }
            let before = group.steering.stats.allStalled
            let second = try group.burst(20)
            defer { closeAll(first + second) }
            #expect(try group.drainQueues().reduce(0, +) == 20, "nobody refused")
            #expect(group.steering.stats.allStalled - before == 20)
        }
    }

    @Test("an emptied slot falls back to the kernel hash without refusing anyone, and counts it")
    func emptiedSlotFallsBack() throws {
        guard try requireBPF() else { return }
        try inOwnNetworkNamespace {
            let group = try SteeredGroup(workers: 3)
            // Worker 2 looks least loaded, but its socket is gone: closing a
            // listener removes its slot from the sockarray by itself.
            group.steering.table.record(0).store(.active, 100)
            group.steering.table.record(1).store(.active, 100)
            group.closeWorkerSocket(2)
            let before = group.steering.stats.fallback
            let clients = try group.burst(20)
            defer { closeAll(clients) }
            var served = 0
            for listener in group.sockets.prefix(2) {
                while case .done(let (fd, _)) = try Socket.accept(listener) { closeDescriptor(fd); served += 1 }
            }
            #expect(served == 20)
            #expect(group.steering.stats.fallback - before == 20)
        }
    }

    @Test("stray ACKs are placed like a syncookie completion: charged as pending, and the charge expires")
    func strayACKsChargeAndExpire() throws {
        guard try requireBPF() else { return }
        try inOwnNetworkNamespace {
            let group = try SteeredGroup(workers: 2)
            let before = group.steering.stats
            for _ in 0..<6 { try sendBareACK(toPort: group.port) }
            try waitUntilTrue(2) { group.steering.stats.acks - before.acks >= 6 }
            #expect(group.active == [3, 3], "spread least-loaded like SYNs")
            #expect(group.pending == group.active)
            #expect(try group.drainQueues() == [0, 0], "no connection came of them")
            // All of them old: every pending charge expires, and nothing more.
            for k in 0..<2 { #expect(group.steering.table.record(k).expireCharges { $0 + 10 } == 3) }
            #expect(group.active == [0, 0])
            #expect(group.pending == [0, 0])
            #expect(group.steering.table.record(0).load(.underflows) == 0)
        }
    }

    @Test("an accept settles its pending charge; charges within the window stay; a close never goes below zero")
    func acceptSettlesAndExpiryKeepsRecent() throws {
        guard try requireBPF() else { return }
        try inOwnNetworkNamespace {
            let group = try SteeredGroup(workers: 1)
            let clients = try group.burst(5)
            defer { closeAll(clients) }
            let record = group.steering.table.record(0)
            #expect(record.load(.pending) == 5)
            for _ in 0..<3 { record.chargeAccepted() }
            #expect(record.load(.active) == 5, "accepting a charged connection does not count it twice")
            #expect(record.load(.pending) == 2)
            // None old enough: nothing expires; then one.
            #expect(record.expireCharges { _ in 0 } == 0)
            #expect(record.expireCharges { _ in 1 } == 1)
            #expect(record.load(.active) == 4)
            // An accept with nothing pending (its charge expired) counts itself.
            record.chargeAccepted()
            record.chargeAccepted()
            #expect(record.load(.active) == 5)
            #expect(record.load(.pending) == 0)
            for _ in 0..<7 { record.releaseActive() }
            #expect(record.load(.active) == 0)
            #expect(record.load(.underflows) == 2, "two decrements too many are counted, not wrapped")
        }
    }

    @Test("each case's network namespace is its own: its listener is not on the host's loopback, and the thread comes back")
    func casesRunInTheirOwnNetworkNamespace() throws {
        guard try requireBPF() else { return }
        func namespace() -> String { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/thread-self/ns/net")) ?? "?" }
        let host = namespace()
        var group: SteeredGroup?
        try inOwnNetworkNamespace {
            #expect(namespace() != host)
            group = try SteeredGroup(workers: 1)
            closeAll(try group!.burst(1))
        }
        #expect(namespace() == host)
        // Back on the host's loopback, the case's listener (still open) is not there.
        let port = try #require(group?.port)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { closeDescriptor(fd) }
        let connected = SocketAddress(ip: "127.0.0.1", port: port)!.withSockaddr { Glibc.connect(fd, $0, $1) }
        #expect(connected != 0 && errno == ECONNREFUSED)
        group = nil
    }

    @Test("pins: the shared maps appear under the instance directory, bpftool reads named fields, close removes all")
    func pinsAndRelease() throws {
        guard try requireBPF() else { return }
        let instance = "test-pin-\(UUID().uuidString.prefix(8))"
        let steering = try KernelSteering(instance: instance, workers: 2, listeners: 2,
                                          stallThresholdNanoseconds: 200_000_000, attachPrograms: true)
        let replaced = try steering.pin()
        #expect(!replaced)
        let dir = PinLayout.directory(instance: instance)
        for name in PinLayout.pinnedMaps {
            var info = stat()
            #expect(stat("\(dir)/\(name.rawValue)", &info) == 0, "\(name) pinned")
            #expect(info.st_mode & 0o777 == 0o640 && info.st_uid == 0, "\(name): writable by root alone")
        }
        steering.table.record(1).store(.active, 7)
        steering.table.record(1).store(.bytesOut, 12345)
        let json = try bpftoolJSON(["map", "dump", "pinned", "\(dir)/worker_load"])
        let entries = try #require(json as? [[String: Any]])
        // With BTF, bpftool's JSON carries a "formatted" object with named fields.
        let formatted = entries.compactMap { $0["formatted"] as? [String: Any] }
        let second = try #require(formatted.first { ($0["key"] as? Int) == 1 }?["value"] as? [String: Any])
        #expect(second["active"] as? Int == 7)
        #expect(second["bytes_out"] as? Int == 12345)
        let programIDs = steering.programIDs
        let mapID = try #require(steering.mapID(.workerLoad))
        #expect(programIDs.count == 2)
        steering.close()
        #expect(access(dir, F_OK) != 0, "pin directory removed")
        // Programs go once their last reference does: a bpftool run by a test in
        // parallel holds one for a moment, and the free itself is deferred.
        try waitUntilTrue(5) { programIDs.allSatisfy { !bpfProgramExists(id: $0) } }
        // Maps are released after an RCU grace period once the programs are gone.
        try waitUntilTrue(5) { !bpfMapExists(id: mapID) }
    }

    @Test("stale pins from a run that died are replaced")
    func stalePinsReplaced() throws {
        guard try requireBPF() else { return }
        let instance = "test-stale-\(UUID().uuidString.prefix(8))"
        let dir = PinLayout.directory(instance: instance)
        // A crashed run: pins left behind, and the objects closed without unpinning.
        let crashed = try KernelSteering(instance: instance, workers: 1, listeners: 1,
                                         stallThresholdNanoseconds: 1, attachPrograms: false)
        try crashed.pin()
        let staleID = try #require(crashed.mapID(.workerLoad))
        let lock = try InstanceLock(instance: instance, directory: NSTemporaryDirectory())
        let fresh = try KernelSteering(instance: instance, workers: 1, listeners: 1,
                                       stallThresholdNanoseconds: 1, attachPrograms: false)
        #expect(try fresh.pin())
        let pinnedFD = bpf_obj_get("\(dir)/worker_load")
        var info = bpf_map_info()
        var len = UInt32(MemoryLayout<bpf_map_info>.size)
        #expect(bpf_obj_get_info_by_fd(pinnedFD, &info, &len) == 0)
        #expect(info.id == fresh.mapID(.workerLoad))
        #expect(info.id != staleID)
        closeDescriptor(pinnedFD)
        fresh.close()
        crashed.close()
        _ = lock
        #expect(throws: BPFError.self) { _ = try InstanceLock(instance: "x", directory: "/proc/nonexistent") }
    }

    @Test("an instance lock is exclusive")
    func instanceLockIsExclusive() throws {
        let name = "lock-\(UUID().uuidString.prefix(8))"
        let first = try InstanceLock(instance: name, directory: NSTemporaryDirectory())
        #expect(throws: BPFError.self) { _ = try InstanceLock(instance: name, directory: NSTemporaryDirectory()) }
        _ = first
    }
}

