import CLibbpf
import CSluice
import Glibc
import SluicePosix

/// Steering counters (sums over CPUs of `steer_stats`).
public struct SteeringStats: Sendable, Equatable {
    public var selected: UInt64 = 0
    public var fallback: UInt64 = 0
    public var allStalled: UInt64 = 0
    public var stallSkips: UInt64 = 0
    /// Neither a SYN nor a pure ACK: left to the kernel's hash, uncharged.
    public var passed: UInt64 = 0
    /// Pure ACKs that reached the listener (syncookie completions and strays).
    public var acks: UInt64 = 0
    /// ... of which placed on the worker their SYN was charged to.
    public var acksFollowed: UInt64 = 0
    /// UDP: new flows placed on the live worker with the fewest, and
    /// datagrams of known flows sent to their worker.
    public var flowsPlaced: UInt64 = 0
    public var flowsFollowed: UInt64 = 0

    public init() {}

    /// Sums the per-CPU `steer_stats` map behind `fd` (a read-only fd will do).
    public init(readingMap fd: Int32) {
        var values = [UInt64](repeating: 0, count: max(1, Int(libbpf_num_possible_cpus())))
        func sum(_ stat: sluice_steer_stat) -> UInt64 {
            var key = stat.rawValue
            guard bpf_map_lookup_elem(fd, &key, &values) == 0 else { return 0 }
            return values.reduce(0, &+)
        }
        selected = sum(SLUICE_STEER_SELECTED)
        fallback = sum(SLUICE_STEER_FALLBACK)
        allStalled = sum(SLUICE_STEER_ALL_STALLED)
        stallSkips = sum(SLUICE_STEER_STALL_SKIP)
        passed = sum(SLUICE_STEER_PASSED)
        acks = sum(SLUICE_STEER_ACK)
        acksFollowed = sum(SLUICE_STEER_ACK_FOLLOWED)
        flowsPlaced = sum(SLUICE_STEER_FLOW_PLACED)
        flowsFollowed = sum(SLUICE_STEER_FLOW_FOLLOWED)
    }
}

/// All the BPF state of one running instance: one copy of the object per
/// listener (each with its own `worker_socks` array and program), sharing
/// `worker_load`, `steer_stats` and `abi` with the first copy; those three
/// are pinned under the instance's directory. `close()` releases everything
/// and removes the pins.
public final class KernelSteering {
    public let table: WorkerLoadTable
    public let listenerTable: ListenerLoadTable
    public let pinDirectory: String
    /// One object per listener slot; slot 0's also holds the shared maps
    /// (pinned, and reused by every other copy), so it is never replaced.
    var objects: [BPFObject?] = []
    /// The flow map size each slot's object was loaded with (nil: a stream listener's).
    private var flowCapacities: [UInt32?] = []
    private let attachPrograms: Bool
    private let workers: Int
    private let stallThresholdNanoseconds: UInt64
    private var pinned = false

    /// Loads one object per listener. With `attachPrograms` false only the
    /// maps matter (counters for status in `hash` and `shared_accept` modes).
    /// `flowCapacity[i]`: the size of UDP listener i's flow map (absent for
    /// stream listeners, whose map stays at one entry).
    public init(instance: String, workers: Int, listeners: Int, stallThresholdNanoseconds: UInt64,
                attachPrograms: Bool, flowCapacity: [Int: UInt32] = [:], pinRoot: String = PinLayout.root,
                adoptingPins: Bool = false, adoptedMaps: [Int: [Int32]] = [:]) throws(BPFError) {
        precondition(workers >= 1 && workers <= Int(SLUICE_MAX_WORKERS))
        self.attachPrograms = attachPrograms
        self.workers = workers
        self.stallThresholdNanoseconds = stallThresholdNanoseconds
        pinDirectory = PinLayout.directory(instance: instance, root: pinRoot)
        do throws(BPFError) {
            for index in 0..<max(1, listeners) {
                objects.append(try Self.loadObject(shared: objects.first ?? nil, flowCapacity: flowCapacity[index],
                                                   workers: workers, stallThresholdNanoseconds: stallThresholdNanoseconds,
                                                   pins: adoptingPins && index == 0 ? pinDirectory : nil,
                                                   listenerMaps: adoptedMaps[index]))
                flowCapacities.append(flowCapacity[index])
            }
            // Taken over from the process being upgraded: not ours to remove
            // until the hand-over completes (`claimPins`).
            pinned = false
            do {
                table = try WorkerLoadTable(mapFD: try objects[0]!.mapFD(.workerLoad), count: workers)
                // Every slot: listeners added by a reload take unused ones.
                listenerTable = try ListenerLoadTable(mapFD: try objects[0]!.mapFD(.listenerLoad), count: ListenerField.capacity)
            } catch {
                throw BPFError("cannot map the counter tables: \(error)")
            }
        } catch {
            for object in objects { object?.close() }
            objects.removeAll()
            throw error
        }
    }

    /// Makes sure listener slot `index` has an object loaded with a flow map
    /// of `flowCapacity` entries (nil: a stream listener's one entry). A
    /// slot taken again by a listener of another kind gets a fresh object.
    public func prepare(listener index: Int, flowCapacity: UInt32?) throws(BPFError) {
        precondition(index < ListenerField.capacity)
        while objects.count <= index { objects.append(nil); flowCapacities.append(nil) }
        if let object = objects[index] {
            guard flowCapacities[index] != flowCapacity else { return }
            guard index > 0 else { throw BPFError("listener slot 0 holds the shared maps and cannot change kind without a restart") }
            object.close()
            objects[index] = nil
        }
        objects[index] = try Self.loadObject(shared: index > 0 ? objects[0] : nil, flowCapacity: flowCapacity,
                                             workers: workers, stallThresholdNanoseconds: stallThresholdNanoseconds)
        flowCapacities[index] = flowCapacity
    }

    /// A loaded copy of the object; `shared`: the copy whose pinned maps it reuses.
    private static func loadObject(shared: BPFObject?, flowCapacity: UInt32?, workers: Int,
                                   stallThresholdNanoseconds: UInt64, pins: String? = nil,
                                   listenerMaps: [Int32]? = nil) throws(BPFError) -> BPFObject {
        let object = try BPFObject(bytes: embeddedSluiceObject)
        do throws(BPFError) {
            try object.setReadOnly("nr_workers", UInt32(workers))
            try object.setReadOnly("stall_threshold_ns", stallThresholdNanoseconds)
            if let shared {
                for name in PinLayout.pinnedMaps { try object.reuseMap(name, fd: try shared.mapFD(name)) }
            } else if let pins {
                for name in PinLayout.pinnedMaps { try object.reusePinnedMap(name, path: "\(pins)/\(name.rawValue)") }
            }
            if let flowCapacity { try object.setMaxEntries(.udpFlows, flowCapacity) }
            if let listenerMaps {
                for (name, fd) in zip(KernelSteering.listenerMaps, listenerMaps) { try object.reuseMap(name, fd: fd) }
            }
            try object.load()
        } catch {
            object.close()
            throw error
        }
        return object
    }

    deinit { close() }

    public var programIDs: [UInt32] {
        attachPrograms ? objects.compactMap { try? $0?.programID(.selectWorker) } : []
    }

    /// worker_load's fd, for other objects that add to the same records.
    public var workerLoadFD: Int32? { try? objects.first??.mapFD(.workerLoad) }

    /// Puts listener `index`'s per-worker sockets in its `worker_socks` array
    /// (slot k = worker k) and attaches its program to the reuseport group:
    /// select_flow for datagram sockets, select_worker for stream ones.
    /// `socketsInMap`: the sockets are in the (handed over) map already.
    public func attach(listener index: Int, workerSockets: [Int32], datagrams: Bool = false, socketsInMap: Bool = false) throws(BPFError) {
        guard attachPrograms else { return }
        guard index < objects.count, let object = objects[index] else { throw BPFError("listener slot \(index) has no object") }
        let socks = try object.mapFD(.workerSocks)
        for (worker, fd) in workerSockets.enumerated() where !socketsInMap {
            var key = UInt32(worker)
            var value = UInt64(fd)
            if bpf_map_update_elem(socks, &key, &value, UInt64(BPF_ANY)) != 0 {
                throw BPFError("adding worker \(worker)'s socket to worker_socks failed: \(errnoDescription(errno))")
            }
        }
        let program: BPFProgram = datagrams ? .selectFlow : .selectWorker
        let prog = try object.programFD(program)
        // Attaching through any member socket attaches to the whole group.
        do { try Socket.setOption(workerSockets[0], SOL_SOCKET, 52, prog, "SO_ATTACH_REUSEPORT_EBPF") } catch {
            throw BPFError("attaching \(program.rawValue) to the reuseport group failed: \(errnoDescription(error.errno))")
        }
    }

    /// A listener's own maps, which a binary upgrade hands over with its
    /// sockets: a socket can be in one `worker_socks` only, and the flows
    /// in `udp_flows` keep their workers.
    public static let listenerMaps: [BPFMap] = [.workerSocks, .udpFlows]

    public func listenerMapFDs(listener index: Int) -> [Int32]? {
        guard attachPrograms, index < objects.count, let object = objects[index] else { return nil }
        return try? Self.listenerMaps.map { name throws(BPFError) in try object.mapFD(name) }
    }

    /// UDP listener `index`'s flow map (to forget a flow's entry when it expires).
    public func flowMapFD(listener index: Int) -> Int32? {
        guard attachPrograms, index < objects.count else { return nil }
        return try? objects[index]?.mapFD(.udpFlows)
    }

    public var stats: SteeringStats {
        guard let fd = try? objects.first??.mapFD(.steerStats) else { return SteeringStats() }
        return SteeringStats(readingMap: fd)
    }

    /// Pins the shared maps under the instance directory, atomically: into a
    /// staging directory first, renamed into place. A directory left by a run
    /// that died is replaced; the caller must hold the instance lock so that
    /// it cannot belong to a live daemon. Directories that are symlinks, that
    /// others may write to, or that belong to someone other than root or
    /// `daemonUser` (the `user:` a previous run handed its pins to) are
    /// refused. The pins are root's, mode 0640: `daemonUser` and its group
    /// read them, nobody but root opens them for writing.
    /// Returns whether stale pins were replaced.
    @discardableResult
    public func pin(daemonUser: uid_t? = nil) throws(BPFError) -> Bool {
        let parent = String(pinDirectory[..<pinDirectory.lastIndex(of: "/")!])
        do { try makeDirectory(parent) } catch {
            throw BPFError("cannot create \(parent): \(errnoDescription(error.errno)) (is bpffs mounted at /sys/fs/bpf?)")
        }
        // 1770 root:group after a run with `user:` (see handOverRuntimeFiles).
        try checkPinDirectory(parent, allowStickyGroupWrite: true)
        guard isBPFFileSystem(parent) else {
            throw BPFError("\(parent) is not on a bpffs (mount -t bpf bpf /sys/fs/bpf)")
        }
        // bpffs refuses dots in names, so staging lives in a sibling directory.
        let stagingParent = parent + "-staging"
        do { try makeDirectory(stagingParent) } catch {
            throw BPFError("cannot create \(stagingParent): \(errnoDescription(error.errno))")
        }
        try checkPinDirectory(stagingParent)
        let staging = "\(stagingParent)/\(pinDirectory.split(separator: "/").last!)-\(CurrentProcess.id)"
        if pathExists(staging) {
            try checkPinDirectory(staging)
            removePinDirectory(staging)
        }
        do { try FileSystem.makeDirectory(staging, mode: 0o750) } catch {
            throw BPFError("cannot create \(staging): \(errnoDescription(error.errno))")
        }
        do throws(BPFError) {
            try pinMaps(into: staging)
            let replaced = pathExists(pinDirectory)
            if replaced {
                try checkPinDirectory(pinDirectory, trustedOwners: daemonUser.map { [$0] } ?? [])
                guard removePinDirectory(pinDirectory) else {
                    throw BPFError("cannot remove the stale pins in \(pinDirectory): \(errnoDescription(errno))")
                }
            }
            do { try FileSystem.rename(staging, to: pinDirectory) } catch {
                throw BPFError("cannot move pins into \(pinDirectory): \(errnoDescription(error.errno))")
            }
            pinned = true
            return replaced
        } catch {
            removePinDirectory(staging)
            throw error
        }
    }

    private func pinMaps(into directory: String) throws(BPFError) {
        for name in PinLayout.pinnedMaps {
            let path = "\(directory)/\(name.rawValue)"
            if bpf_obj_pin(try objects[0]!.mapFD(name), path) != 0 {
                throw BPFError("pinning \(name.rawValue) failed: \(errnoDescription(errno))")
            }
            // Steering state: readable by root's group (status), writable by root alone.
            try? FileSystem.changeMode(path, 0o640)
        }
    }

    /// Unpins, unmaps and closes every object: no program or map outlives this.
    /// A binary upgrade handed the pins to the new process: they stay at stop.
    public func leavePins() { pinned = false }

    /// The pins are this process's to remove at stop (a binary upgrade completed).
    public func claimPins() { pinned = true }

    public func close() {
        table.unmap()
        listenerTable.unmap()
        if pinned {
            removePinDirectory(pinDirectory)
            pinned = false
        }
        for object in objects { object?.close() }
        objects.removeAll()
    }
}

/// An exclusive lock on an instance name (flock on /run/sluice/<instance>.lock),
/// held for the daemon's lifetime: proof that pins under the same name that
/// exist without the lock were left by a run that died.
public final class InstanceLock {
    public static let defaultDirectory = "/run/sluice"
    public var path: String { file.path }
    public var fd: Int32 { file.fd }
    private let file: FileLock

    /// The lock of a process being upgraded, passed over with its descriptor.
    public init(adopting fd: Int32, instance: String, directory: String = InstanceLock.defaultDirectory) {
        file = FileLock(adopting: fd, path: "\(directory)/\(instance).lock")
    }

    /// The new process holds it now: the file stays at this one's exit.
    public func leaveFile() { file.leavesFile = true }
    public func claimFile() { file.leavesFile = false }

    public init(instance: String, directory: String = InstanceLock.defaultDirectory) throws(BPFError) {
        let path = "\(directory)/\(instance).lock"
        try? makeDirectory(directory)
        // O_NOFOLLOW: a symlink planted under the lock's name (the directory
        // is the daemon group's to write in, see handOverRuntimeFiles) must
        // not make root lock, and later hand over, whatever it points at.
        do { file = try FileLock(path: path, mode: 0o644) } catch {
            switch error {
            case .held: throw BPFError("instance \"\(instance)\" is already running (\(path) is locked)", alreadyRunning: true)
            case .cannotOpen(let failure): throw BPFError("cannot open \(path): \(errnoDescription(failure.errno))")
            }
        }
    }

    /// Gives the lock file to the daemon's user, which removes it at stop.
    /// Through the descriptor: the name may have been swapped since.
    public func handOver(to uid: UInt32, group gid: UInt32) { file.handOver(to: uid, group: gid) }
}
