import Atomics
import CSluice
import Glibc
import SluicePosix

/// A u64 field of a record shared with the kernel, by byte offset.
public protocol CounterField: Sendable {
    var offset: Int { get }
    static var stride: Int { get }
    static var capacity: Int { get }
}

/// The fields of `struct sluice_worker` (all u64), at the offsets the C
/// compiler gave them in sluice_abi.h.
public enum WorkerField: CounterField, CaseIterable {
    case active, accepted, heartbeatNanoseconds, busyNanoseconds, flags, bytesIn, bytesOut
    case pending, charged, underflows, flows, flowsUnseen

    public var offset: Int {
        switch self {
        case .active: Self.offsets.active
        case .accepted: Self.offsets.accepted
        case .heartbeatNanoseconds: Self.offsets.heartbeat
        case .busyNanoseconds: Self.offsets.busy
        case .flags: Self.offsets.flags
        case .bytesIn: Self.offsets.bytesIn
        case .bytesOut: Self.offsets.bytesOut
        case .pending: Self.offsets.pending
        case .charged: Self.offsets.charged
        case .underflows: Self.offsets.underflows
        case .flows: Self.offsets.flows
        case .flowsUnseen: Self.offsets.flowsUnseen
        }
    }

    private static let offsets = (
        active: MemoryLayout<sluice_worker>.offset(of: \.active)!,
        accepted: MemoryLayout<sluice_worker>.offset(of: \.accepted)!,
        heartbeat: MemoryLayout<sluice_worker>.offset(of: \.heartbeat_ns)!,
        busy: MemoryLayout<sluice_worker>.offset(of: \.busy_ns)!,
        flags: MemoryLayout<sluice_worker>.offset(of: \.flags)!,
        bytesIn: MemoryLayout<sluice_worker>.offset(of: \.bytes_in)!,
        bytesOut: MemoryLayout<sluice_worker>.offset(of: \.bytes_out)!,
        pending: MemoryLayout<sluice_worker>.offset(of: \.pending)!,
        charged: MemoryLayout<sluice_worker>.offset(of: \.charged)!,
        underflows: MemoryLayout<sluice_worker>.offset(of: \.underflows)!,
        flows: MemoryLayout<sluice_worker>.offset(of: \.flows)!,
        flowsUnseen: MemoryLayout<sluice_worker>.offset(of: \.flows_unseen)!
    )

    public static var stride: Int { MemoryLayout<sluice_worker>.stride }
    public static var capacity: Int { Int(SLUICE_MAX_WORKERS) }
}

/// The fields of `struct sluice_listener` (all u64).
public enum ListenerField: CounterField, CaseIterable {
    case active, accepted, rejected, noBackend

    public var offset: Int {
        switch self {
        case .active: Self.offsets.active
        case .accepted: Self.offsets.accepted
        case .rejected: Self.offsets.rejected
        case .noBackend: Self.offsets.noBackend
        }
    }

    private static let offsets = (
        active: MemoryLayout<sluice_listener>.offset(of: \.active)!,
        accepted: MemoryLayout<sluice_listener>.offset(of: \.accepted)!,
        rejected: MemoryLayout<sluice_listener>.offset(of: \.rejected)!,
        noBackend: MemoryLayout<sluice_listener>.offset(of: \.no_backend)!
    )

    public static var stride: Int { MemoryLayout<sluice_listener>.stride }
    public static var capacity: Int { Int(SLUICE_MAX_LISTENERS) }
}

/// One record of a shared table. Every access is atomic: the kernel's
/// programs and other threads update the same memory concurrently.
public struct CounterRecord<Field: CounterField>: @unchecked Sendable {
    let base: UnsafeMutableRawPointer

    @inline(__always)
    public func atomic(_ field: Field) -> UnsafeAtomic<UInt64> {
        UnsafeAtomic(at: (base + field.offset).assumingMemoryBound(to: UInt64.AtomicRepresentation.self))
    }

    public func load(_ field: Field) -> UInt64 { atomic(field).load(ordering: .relaxed) }
    public func store(_ field: Field, _ value: UInt64) { atomic(field).store(value, ordering: .relaxed) }
    public func add(_ field: Field, _ value: UInt64) { atomic(field).wrappingIncrement(by: value, ordering: .relaxed) }
    public func subtract(_ field: Field, _ value: UInt64) { atomic(field).wrappingDecrement(by: value, ordering: .relaxed) }

    /// Sets or clears bits atomically (the worker and the admin socket both
    /// touch a worker's flags).
    public func setBits(_ field: Field, _ bits: UInt64) { _ = atomic(field).loadThenBitwiseOr(with: bits, ordering: .relaxed) }
    public func clearBits(_ field: Field, _ bits: UInt64) { _ = atomic(field).loadThenBitwiseAnd(with: ~bits, ordering: .relaxed) }

    /// Decrements without going below zero (a counter the kernel may not
    /// have charged, such as a connection placed by a fallback).
    public func release(_ field: Field) {
        let slot = atomic(field)
        var current = slot.load(ordering: .relaxed)
        while current > 0 {
            let (exchanged, original) = slot.weakCompareExchange(expected: current, desired: current - 1, ordering: .relaxed)
            if exchanged { return }
            current = original
        }
    }
}

public typealias WorkerLoadRecord = CounterRecord<WorkerField>

/// The load accounting of one worker. `active` = open connections + pending
/// charges; the steering program adds a charge per connection it places
/// (before any worker runs, so bursts spread), the worker settles one per
/// accept, and the control thread expires the ones that no accept settled
/// (a SYN whose handshake never completes) once they are older than the
/// settle window.
extension CounterRecord where Field == WorkerField {
    /// An accepted connection: settles a pending charge when there is one,
    /// else counts the connection itself (placed by the kernel's hash, or
    /// after its charge expired).
    public func chargeAccepted() {
        add(.accepted, 1)
        if takePending(upTo: 1) == 1 { return }
        add(.active, 1)
    }

    /// One of this worker's connections is gone (closed, or handed to
    /// another worker). A decrement below zero would be a bookkeeping bug:
    /// it is refused and counted in `underflows`, never wrapped.
    public func releaseActive(_ count: UInt64 = 1) {
        let slot = atomic(.active)
        var current = slot.load(ordering: .relaxed)
        while true {
            let taken = min(current, count)
            let (exchanged, original) = slot.weakCompareExchange(expected: current, desired: current - taken, ordering: .relaxed)
            if exchanged {
                if taken < count { add(.underflows, count - taken) }
                return
            }
            current = original
        }
    }

    /// Expires pending charges that no accept followed (SYNs that never
    /// completed, stray ACKs): `expirable` maps the pending count read now
    /// to how many of them have waited long enough. Returns how many expired.
    @discardableResult
    public func expireCharges(_ expirable: (_ pending: UInt64) -> UInt64) -> UInt64 {
        let count = expirable(load(.pending))
        guard count > 0 else { return 0 }
        let expired = takePending(upTo: count)
        if expired > 0 { releaseActive(expired) }
        return expired
    }

    /// Removes up to `count` pending charges; returns how many it removed.
    private func takePending(upTo count: UInt64) -> UInt64 {
        let slot = atomic(.pending)
        var current = slot.load(ordering: .relaxed)
        while current > 0 {
            let taken = min(current, count)
            let (exchanged, original) = slot.weakCompareExchange(expected: current, desired: current - taken, ordering: .relaxed)
            if exchanged { return taken }
            current = original
        }
        return 0
    }
}
public typealias ListenerLoadRecord = CounterRecord<ListenerField>

/// A table of records: the mmap of a BPF array map (BPF_F_MMAPABLE) when BPF
/// is available, so programs and `sluice status` see the same memory with no
/// syscall on either side; else plain shared memory with the same layout.
public final class CounterTable<Field: CounterField>: @unchecked Sendable {
    public let count: Int
    private let base: UnsafeMutableRawPointer
    private let mappedSize: Int
    private var isMapped = true

    static var bytes: Int {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        return (Field.capacity * Field.stride + page - 1) / page * page
    }

    /// Maps the BPF array map `fd`.
    public init(mapFD fd: Int32, count: Int) throws(SystemCallError) {
        precondition(count <= Field.capacity)
        self.count = count
        mappedSize = Self.bytes
        let pointer = mmap(nil, mappedSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let pointer, pointer != MAP_FAILED else { throw SystemCallError(call: "mmap", errno: errno) }
        base = pointer
    }

    /// Process memory with the same layout, for when BPF is unavailable.
    public init(anonymousCount count: Int) {
        self.count = count
        mappedSize = Self.bytes
        let pointer = mmap(nil, mappedSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        precondition(pointer != MAP_FAILED, "anonymous mmap failed")
        base = pointer!
    }

    deinit { unmap() }

    /// Drops the mapping (and with it this process's hold on the map). Every
    /// record handed out must be out of use by then.
    public func unmap() {
        guard isMapped else { return }
        munmap(base, mappedSize)
        isMapped = false
    }

    public func record(_ index: Int) -> CounterRecord<Field> {
        precondition(isMapped, "counter table used after unmap")
        precondition(index >= 0 && index < count)
        return CounterRecord(base: base + index * Field.stride)
    }
}

public typealias WorkerLoadTable = CounterTable<WorkerField>
public typealias ListenerLoadTable = CounterTable<ListenerField>
