import CLibbpf
import CSluice
import Glibc
import SluicePosix

/// One worker's record as read from `worker_load`.
public struct WorkerLoadSample: Sendable, Equatable {
    public var active: UInt64
    public var accepted: UInt64
    public var heartbeatNanoseconds: UInt64
    public var busyNanoseconds: UInt64
    public var flags: UInt64
    public var bytesIn: UInt64
    public var bytesOut: UInt64
    public var pending: UInt64
    public var charged: UInt64
    public var underflows: UInt64
    public var flows: UInt64

    public var isDraining: Bool { flags & UInt64(SLUICE_WORKER_DRAINING) != 0 }

    init(_ record: sluice_worker) {
        active = record.active
        accepted = record.accepted
        heartbeatNanoseconds = record.heartbeat_ns
        busyNanoseconds = record.busy_ns
        flags = record.flags
        bytesIn = record.bytes_in
        bytesOut = record.bytes_out
        pending = record.pending
        charged = record.charged
        underflows = record.underflows
        flows = record.flows
    }
}

/// One listener's record as read from `listener_load`.
public struct ListenerLoadSample: Sendable, Equatable {
    public var active: UInt64
    public var accepted: UInt64
    public var rejected: UInt64
    public var noBackend: UInt64

    init(_ record: sluice_listener) {
        active = record.active
        accepted = record.accepted
        rejected = record.rejected
        noBackend = record.no_backend
    }
}

/// The pinned maps of an instance, opened from its pin directory without
/// the daemon (cloudflare/tubular's `OpenDispatcher`): what `sluice status`
/// reads. Read-only by default: the fds then cannot change steering state,
/// and they are all a member of the daemon's group may get (the pins are
/// 0640 root:group). The ABI version is checked on open. `close()` (or
/// deinit) releases every fd.
public final class PinnedInstance {
    public let directory: String
    public let isReadOnly: Bool
    let workerLoad: Int32
    let listenerLoad: Int32
    let steerStats: Int32

    /// Why a pin directory could not be opened.
    public enum OpenError: Error, Sendable, CustomStringConvertible {
        /// Nothing pinned under that name: no instance runs.
        case notRunning(directory: String)
        /// The directory or a pin exists but may not be opened.
        case permissionDenied(path: String)
        /// Pinned by a sluice with another ABI version.
        case abiMismatch(directory: String, found: UInt64)
        case failed(path: String, errno: Int32)

        public var description: String {
            switch self {
            case .notRunning(let directory):
                "nothing pinned under \(directory)"
            case .permissionDenied(let path):
                "cannot open \(path): Permission denied (readable by root and the daemon's group)"
            case .abiMismatch(let directory, let found):
                "the pins under \(directory) have ABI version \(found), this sluice reads \(SluiceBPFLayout.abiVersion)"
            case .failed(let path, let code):
                "cannot open \(path): \(errnoDescription(code))"
            }
        }
    }

    /// Opens `<pinRoot>/<instance>/`: its `abi`, `worker_load`,
    /// `listener_load` and `steer_stats` pins.
    public static func open(instance: String, readOnly: Bool = true, pinRoot: String = PinLayout.root)
        throws(OpenError) -> PinnedInstance
    {
        let directory = PinLayout.directory(instance: instance, root: pinRoot)
        guard access(directory, F_OK) == 0 else {
            if errno == EACCES { throw .permissionDenied(path: directory) }
            throw .notRunning(directory: directory)
        }
        var opened: [Int32] = []
        func pin(_ map: BPFMap) throws(OpenError) -> Int32 {
            let path = "\(directory)/\(map.rawValue)"
            var options = bpf_obj_get_opts()
            options.sz = MemoryLayout<bpf_obj_get_opts>.stride
            options.file_flags = readOnly ? UInt32(BPF_F_RDONLY) : 0
            let fd = bpf_obj_get_opts(path, &options)
            guard fd >= 0 else {
                let code = errno
                throw code == EACCES || code == EPERM ? .permissionDenied(path: path) : .failed(path: path, errno: code)
            }
            opened.append(fd)
            return fd
        }
        do throws(OpenError) {
            let abi = try pin(.abi)
            var key: UInt32 = 0
            var version: UInt64 = 0
            guard bpf_map_lookup_elem(abi, &key, &version) == 0, version == SluiceBPFLayout.abiVersion else {
                throw .abiMismatch(directory: directory, found: version)
            }
            let instance = PinnedInstance(
                directory: directory, readOnly: readOnly,
                workerLoad: try pin(.workerLoad), listenerLoad: try pin(.listenerLoad), steerStats: try pin(.steerStats))
            closeDescriptor(abi)
            return instance
        } catch {
            for fd in opened { closeDescriptor(fd) }
            throw error
        }
    }

    private init(directory: String, readOnly: Bool, workerLoad: Int32, listenerLoad: Int32, steerStats: Int32) {
        self.directory = directory
        isReadOnly = readOnly
        self.workerLoad = workerLoad
        self.listenerLoad = listenerLoad
        self.steerStats = steerStats
    }

    deinit { close() }

    private var isOpen = true

    public func close() {
        guard isOpen else { return }
        isOpen = false
        for fd in [workerLoad, listenerLoad, steerStats] { closeDescriptor(fd) }
    }

    // Plain lookups, not mmap: they work on a read-only fd.
    private func lookup<T>(_ fd: Int32, _ index: Int, _ empty: T) -> T {
        precondition(isOpen, "pinned instance used after close")
        var key = UInt32(index)
        var value = empty
        _ = bpf_map_lookup_elem(fd, &key, &value)
        return value
    }

    public static let maxWorkers = Int(SLUICE_MAX_WORKERS)

    /// The first `count` workers' records (at most SLUICE_MAX_WORKERS).
    public func workers(count: Int) -> [WorkerLoadSample] {
        (0..<min(count, Int(SLUICE_MAX_WORKERS))).map { WorkerLoadSample(lookup(workerLoad, $0, sluice_worker())) }
    }

    /// The first `count` listeners' records (at most SLUICE_MAX_LISTENERS).
    public func listeners(count: Int) -> [ListenerLoadSample] {
        (0..<min(count, Int(SLUICE_MAX_LISTENERS))).map { ListenerLoadSample(lookup(listenerLoad, $0, sluice_listener())) }
    }

    /// Steering outcomes, summed over CPUs.
    public var steering: SteeringStats { SteeringStats(readingMap: steerStats) }
}
