import Atomics
import CSluice
import Glibc
import SluicePosix

/// The fields of `struct sluice_worker`, as byte offsets (all u64).
public enum WorkerField: Int, CaseIterable, Sendable {
    case active = 0, accepted = 8, heartbeatNanoseconds = 16, busyNanoseconds = 24, flags = 32, bytesIn = 40, bytesOut = 48

    /// The name bpftool and `sluice status --json` show.
    public var name: String {
        switch self {
        case .active: "active"
        case .accepted: "accepted"
        case .heartbeatNanoseconds: "heartbeat_ns"
        case .busyNanoseconds: "busy_ns"
        case .flags: "flags"
        case .bytesIn: "bytes_in"
        case .bytesOut: "bytes_out"
        }
    }
}

/// One worker's record in the shared table. Every access is atomic: the
/// kernel's `select_worker` updates `active` and `accepted` concurrently.
public struct WorkerLoadRecord: @unchecked Sendable {
    let base: UnsafeMutableRawPointer

    @inline(__always)
    public func atomic(_ field: WorkerField) -> UnsafeAtomic<UInt64> {
        UnsafeAtomic(at: (base + field.rawValue).assumingMemoryBound(to: UInt64.AtomicRepresentation.self))
    }

    public func load(_ field: WorkerField) -> UInt64 { atomic(field).load(ordering: .relaxed) }
    public func store(_ field: WorkerField, _ value: UInt64) { atomic(field).store(value, ordering: .relaxed) }
    public func add(_ field: WorkerField, _ value: UInt64) { atomic(field).wrappingIncrement(by: value, ordering: .relaxed) }
    public func subtract(_ field: WorkerField, _ value: UInt64) { atomic(field).wrappingDecrement(by: value, ordering: .relaxed) }
}

/// The per-worker records: the mmap of the BPF array `worker_load` when BPF
/// is available (the steering program reads it with no syscall on either
/// side), else plain shared memory with the same layout.
public final class WorkerLoadTable: @unchecked Sendable {
    public let count: Int
    public let isKernelMap: Bool
    private let base: UnsafeMutableRawPointer
    private let mappedSize: Int
    static let stride = MemoryLayout<sluice_worker>.stride

    /// Maps the BPF array map `fd` (created with BPF_F_MMAPABLE).
    public init(mapFD fd: Int32, count: Int) throws(SystemCallError) {
        precondition(count <= Int(SLUICE_MAX_WORKERS))
        self.count = count
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let bytes = Int(SLUICE_MAX_WORKERS) * Self.stride
        mappedSize = (bytes + page - 1) / page * page
        let pointer = mmap(nil, mappedSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let pointer, pointer != MAP_FAILED else { throw SystemCallError(call: "mmap worker_load", errno: errno) }
        base = pointer
        isKernelMap = true
    }

    /// Process memory with the same layout, for when BPF is unavailable.
    public init(anonymousCount count: Int) {
        self.count = count
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        mappedSize = (Int(SLUICE_MAX_WORKERS) * Self.stride + page - 1) / page * page
        let pointer = mmap(nil, mappedSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        precondition(pointer != MAP_FAILED, "anonymous mmap failed")
        base = pointer!
        isKernelMap = false
    }

    private var isMapped = true

    deinit { unmap() }

    /// Drops the mapping (and with it this process's hold on the map). Every
    /// record handed out must be out of use by then.
    public func unmap() {
        guard isMapped else { return }
        munmap(base, mappedSize)
        isMapped = false
    }

    public func record(_ worker: Int) -> WorkerLoadRecord {
        precondition(isMapped, "worker_load used after unmap")
        precondition(worker >= 0 && worker < count)
        return WorkerLoadRecord(base: base + worker * Self.stride)
    }
}
