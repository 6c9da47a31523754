import Atomics
import SluicePosix
import Synchronization

/// Where log lines go. Nobody on the data path writes to the output: a line
/// goes into a bounded queue that one writer thread drains, so a consumer that
/// stops reading (a full stdout pipe) costs log lines, never a stalled worker.
/// A line that finds the queue full is dropped and counted, and the writer
/// says how many were lost as soon as the output takes bytes again.
public final class LogSink: Sendable {
    public let fd: Int32
    private let ownsDescriptor: Bool
    private let queue: LogLineQueue
    private let writer = Mutex<OSThread?>(nil)

    /// Bytes of lines held while the output is slow (about 5,000 access lines).
    public static let defaultCapacityBytes = 1 << 20

    public init(path: String, capacityBytes: Int = LogSink.defaultCapacityBytes) throws(SystemCallError) {
        switch path {
        case "stderr": fd = Descriptor.standardError; ownsDescriptor = false
        case "stdout": fd = Descriptor.standardOutput; ownsDescriptor = false
        default:
            fd = try FileSystem.openForAppend(path, mode: 0o640)
            ownsDescriptor = true
        }
        do {
            queue = try LogLineQueue(capacityBytes: max(1, capacityBytes))
            let output = LogOutputWriter(fd: fd, queue: queue)
            let thread = try OSThread.start(name: "sluice-log") { output.run() }
            writer.withLock { $0 = thread }
        } catch {
            if ownsDescriptor { closeDescriptor(fd) }
            throw error
        }
    }

    deinit {
        stop()
        if ownsDescriptor { closeDescriptor(fd) }
    }

    /// Queues one line (without its newline); never blocks on the output.
    public func write(line: String) { queue.push(line) }

    /// Lines lost so far: found the queue full, or still queued when `stop`
    /// gave up on an output that did not take them.
    public var droppedLines: UInt64 { queue.droppedTotal.load(ordering: .relaxed) }

    /// Waits until every line queued before the call is written (or known
    /// lost), for at most `timeoutMilliseconds`. Returns whether it got there.
    @discardableResult
    public func flush(timeoutMilliseconds: UInt64 = 2000) -> Bool {
        let target = queue.accepted.load(ordering: .acquiring)
        let deadline = monotonicMilliseconds() + timeoutMilliseconds
        while queue.settled.load(ordering: .acquiring) < target {
            if monotonicMilliseconds() >= deadline { return false }
            sleepMilliseconds(1)
        }
        return true
    }

    /// Writes what is queued, then ends the writer thread. An output that
    /// takes nothing for `timeoutMilliseconds` does not hold the exit: what
    /// it did not take is counted as dropped. Later lines are dropped too.
    public func stop(timeoutMilliseconds: UInt64 = 2000) {
        guard let thread = writer.withLock({ current -> OSThread? in
            defer { current = nil }
            return current
        }) else { return }
        queue.requestStop(deadlineMilliseconds: monotonicMilliseconds() + timeoutMilliseconds)
        thread.join()
        queue.discardRemaining() // queued after the writer gave up on the output
    }
}

/// The lines waiting for the writer. Producers (any thread) take the lock
/// for one append; the writer swaps the whole array out at once, so the lock
/// is held for moments and never across a write(2).
final class LogLineQueue: Sendable {
    private struct State {
        var lines: [String] = []
        var bytes = 0
        /// Dropped since the writer last took the queue: its next notice.
        var droppedSinceNotice: UInt64 = 0
        /// The writer found nothing and sleeps on `wakeup`: the next push wakes it.
        var writerIdle = false
        var stopDeadline: UInt64?
    }

    let capacityBytes: Int
    private let state: Mutex<State>
    let wakeup: EventFD
    let droppedTotal = ManagedAtomic<UInt64>(0)
    /// Lines queued, and lines written or known lost, in queue order (flush).
    let accepted = ManagedAtomic<UInt64>(0)
    let settled = ManagedAtomic<UInt64>(0)

    init(capacityBytes: Int) throws(SystemCallError) {
        self.capacityBytes = capacityBytes
        state = Mutex(State())
        wakeup = try EventFD()
    }

    func push(_ line: String) {
        enum Outcome { case queued, queuedWakeWriter, dropped }
        let size = line.utf8.count + 1
        let outcome = state.withLock { s -> Outcome in
            guard s.stopDeadline == nil, s.bytes + size <= capacityBytes else {
                s.droppedSinceNotice += 1
                return .dropped
            }
            s.lines.append(line)
            s.bytes += size
            accepted.wrappingIncrement(ordering: .releasing)
            guard s.writerIdle else { return .queued }
            s.writerIdle = false
            return .queuedWakeWriter
        }
        switch outcome {
        case .queued: break
        case .queuedWakeWriter: wakeup.signal()
        case .dropped: droppedTotal.wrappingIncrement(ordering: .relaxed)
        }
    }

    /// Hands the writer everything queued (swapped with its empty `batch`)
    /// and the drops to report after it. With nothing to hand over, marks
    /// the writer idle so that the next push wakes it.
    func take(into batch: inout [String]) -> (dropped: UInt64, stopDeadline: UInt64?) {
        state.withLock { s in
            swap(&s.lines, &batch)
            s.bytes = 0
            let dropped = s.droppedSinceNotice
            s.droppedSinceNotice = 0
            if batch.isEmpty && dropped == 0 { s.writerIdle = true }
            return (dropped, s.stopDeadline)
        }
    }

    var stopDeadline: UInt64? { state.withLock { $0.stopDeadline } }

    func requestStop(deadlineMilliseconds: UInt64) {
        state.withLock { $0.stopDeadline = deadlineMilliseconds }
        wakeup.signal()
    }

    /// Counts whatever is still queued as lost.
    func discardRemaining() {
        let left = state.withLock { s -> Int in
            defer { s.lines.removeAll(); s.bytes = 0 }
            return s.lines.count
        }
        noteLost(left, reportLater: false)
    }

    /// Lines the writer took but could not write.
    func noteLost(_ count: Int, reportLater: Bool) {
        guard count > 0 else { return }
        droppedTotal.wrappingIncrement(by: UInt64(count), ordering: .relaxed)
        settled.wrappingIncrement(by: UInt64(count), ordering: .releasing)
        if reportLater { state.withLock { $0.droppedSinceNotice += UInt64(count) } }
    }

    func noteWritten(_ count: Int) {
        settled.wrappingIncrement(by: UInt64(count), ordering: .releasing)
    }
}

/// The writer thread's side: drains the queue into the fd, whole lines per
/// write(2) so that lines never interleave with another writer's.
final class LogOutputWriter: Sendable {
    private let fd: Int32
    private let queue: LogLineQueue
    /// A pipe or socket blocks a write(2) while full; after poll says it has
    /// room, a write of at most PIPE_BUF bytes goes through without blocking,
    /// so the writer can still notice a stop request in time. Files do not block.
    private let chunkLimit: Int
    private let waitsForRoom: Bool

    init(fd: Int32, queue: LogLineQueue) {
        self.fd = fd
        self.queue = queue
        let regularFile = Descriptor.isRegularFile(fd)
        waitsForRoom = !regularFile
        chunkLimit = regularFile ? 64 * 1024 : Descriptor.atomicPipeWriteBytes
    }

    private enum Outcome { case written, failed, abandoned }

    func run() {
        var batch: [String] = []
        while true {
            let (dropped, stopDeadline) = queue.take(into: &batch)
            if batch.isEmpty && dropped == 0 {
                if stopDeadline != nil { return }
                waitForWakeup()
                continue
            }
            let (outcome, written) = write(batch)
            queue.noteWritten(written)
            queue.noteLost(batch.count - written, reportLater: outcome == .failed)
            batch.removeAll(keepingCapacity: true)
            if outcome == .abandoned { return }
            if dropped > 0 {
                let notice = "\(wallClockTimestamp()) warning \(dropped) log lines dropped (the log output was not being read)"
                if case .abandoned = write([notice]).0 { return }
            }
        }
    }

    private func waitForWakeup() {
        _ = try? Poll.wait([(queue.wakeup.fd, .readable)], timeoutMilliseconds: -1)
        queue.wakeup.drain()
    }

    /// Writes the lines in chunks of whole lines; returns how many went out.
    private func write(_ lines: [String]) -> (Outcome, Int) {
        var chunk: [UInt8] = []
        chunk.reserveCapacity(chunkLimit)
        var linesInChunk = 0, written = 0
        for index in lines.indices {
            let size = lines[index].utf8.count + 1
            if !chunk.isEmpty && chunk.count + size > chunkLimit {
                let outcome = writeAll(chunk)
                guard outcome == .written else { return (outcome, written) }
                written += linesInChunk
                chunk.removeAll(keepingCapacity: true)
                linesInChunk = 0
            }
            chunk.append(contentsOf: lines[index].utf8)
            chunk.append(0x0A)
            linesInChunk += 1
        }
        if !chunk.isEmpty {
            let outcome = writeAll(chunk)
            guard outcome == .written else { return (outcome, written) }
            written += linesInChunk
        }
        return (.written, written)
    }

    private func writeAll(_ bytes: [UInt8]) -> Outcome {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                if waitsForRoom, let outcome = waitForRoom() { return outcome }
                let part = UnsafeRawBufferPointer(rebasing: raw[offset..<min(raw.count, offset + chunkLimit)])
                switch try? Descriptor.write(fd, from: part) {
                case .done(let n) where n > 0: offset += n
                case .wouldBlock: continue // an O_NONBLOCK output said "full" after all: poll again
                default: return .failed // EPIPE (nobody will ever read) and the like
                }
            }
            return .written
        }
    }

    /// Sleeps until the output has room (nil), or until stop's deadline passes.
    private func waitForRoom() -> Outcome? {
        while true {
            var timeout: Int32 = -1
            if let deadline = queue.stopDeadline {
                let now = monotonicMilliseconds()
                guard now < deadline else { return .abandoned }
                timeout = Int32(min(deadline - now, 1000))
            }
            guard let ready = try? Poll.wait([(fd, .writable), (queue.wakeup.fd, .readable)], timeoutMilliseconds: timeout)
            else { return .failed }
            if ready[1] { queue.wakeup.drain() }
            // POLLERR/POLLHUP too: the write says what is wrong.
            if ready[0] { return nil }
        }
    }
}
