import Atomics
import CSluice
import Glibc
import Logging
import SluiceBPF
import SluiceCore
import SluicePosix

/// One client's flow through a `mode: udp` listener: a socket connected to
/// the backend it was given, kept while datagrams pass either way.
final class UDPFlow {
    let id: UInt64
    let key: UDPFlowKey
    let listener: RuntimeListener
    let client: SocketAddress
    /// The local address the client sent to (wildcard binds); family 0: none.
    let local: sockaddr_storage
    let backend: Int
    let fd: Int32
    let perPacket: Bool
    let startedNanoseconds = monotonicNanoseconds()
    var lastActive: UInt64
    var timer: TimerID?
    var answered = false
    /// Replies to ask recvmmsg for: doubled while it fills them, back to what came when it does not.
    var window = 1
    var datagramsIn: UInt64 = 0
    var datagramsOut: UInt64 = 0
    var bytesIn: UInt64 = 0
    var bytesOut: UInt64 = 0

    init(id: UInt64, key: UDPFlowKey, listener: RuntimeListener, client: SocketAddress, local: sockaddr_storage,
         backend: Int, fd: Int32, perPacket: Bool, now: UInt64) {
        self.id = id
        self.key = key
        self.listener = listener
        self.client = client
        self.local = local
        self.backend = backend
        self.fd = fd
        self.perPacket = perPacket
        lastActive = now
    }
}

// `mode: udp`: datagrams from the listener's socket go out on their flow's
// connected socket; replies come back on it and go to the client from the
// listener's socket (and from the address the client used). select_flow
// keeps a flow's datagrams on this worker; the worker drops its entry when
// the flow ends.
extension Worker {
    /// Batches taken from a listener per wake-up, so that one busy listener
    /// does not starve the flows' replies.
    static let udpBatchesPerTurn = 4
    static let udpFlowBufferBytes: Int32 = 1 << 20
    /// Draining, a flow lives this long past its last datagram (its replies
    /// in flight get out), not its whole idle timeout.
    static let udpDrainGraceMilliseconds: UInt64 = 500

    /// Draining: no datagram is read any more; each flow closes once quiet
    /// for the grace period.
    func drainFlows() {
        for flow in udpFlowsByID.values {
            if let timer = flow.timer { _ = timers.cancel(timer) }
            flow.timer = timers.schedule(at: flow.lastActive + Self.udpDrainGraceMilliseconds, .udpFlow(id: flow.id))
        }
    }

    /// A flow's consecutive datagrams in a batch go out in one sendmmsg.
    func udpListenerReadable(_ index: Int) {
        guard let fd = listenerFDs[index] else { return }
        guard let listener = listeners[index] else { return }
        let batch = udpBatch
        for _ in 0..<Self.udpBatchesPerTurn {
            let window = udpListenerWindows[index, default: 1]
            guard case .success(let count) = batch.receive(fd, limit: window), count > 0 else { return seenAllFlows() }
            udpListenerWindows[index] = count == window ? min(window * 2, batch.count) : count
            let now = monotonicMilliseconds()
            var run: (flow: UDPFlow, start: Int)?
            for i in 0..<count {
                let flow = clientDatagram(listener, batch, i, now: now)
                if let current = run, current.flow !== flow || flow == nil {
                    forward(current.flow, batch, current.start..<i)
                    run = nil
                }
                if let flow, run == nil { run = (flow, i) }
            }
            if let run { forward(run.flow, batch, run.start..<count) }
            if count < window { return }
        }
    }

    /// The socket was found empty: every datagram select_flow placed here is
    /// read, its flow opened. Placements the kernel dropped (a full socket
    /// buffer) are never opened: forgotten here, at most every 100 ms.
    private func seenAllFlows() {
        let now = monotonicMilliseconds()
        guard now >= udpUnseenResetAt, record.load(.flowsUnseen) != 0 else { return }
        udpUnseenResetAt = now + 100
        record.store(.flowsUnseen, 0)
    }

    /// The flow a client's datagram belongs to (opened if new), its counts
    /// taken; nil when it is dropped.
    private func clientDatagram(_ listener: RuntimeListener, _ batch: DatagramBatch, _ i: Int, now: UInt64) -> UDPFlow? {
        let entry = batch.entries[i]
        if entry.truncated != 0 {
            listener.udp.drop(.truncated)
            return nil
        }
        let config = listener.config.udp ?? UDPListenerConfig()
        let client = batch.peer(i)
        let key = UDPFlowKey(client)
        guard let flow = (config.perPacket ? nil : udpFlows[key]) ?? openFlow(listener, config, key, client, entry.local, now: now)
        else { return nil }
        flow.lastActive = now
        flow.datagramsIn += 1
        flow.bytesIn += UInt64(entry.length)
        listener.udp.datagramsIn.wrappingIncrement(ordering: .relaxed)
        listener.udp.bytesIn.wrappingIncrement(by: UInt64(entry.length), ordering: .relaxed)
        record.add(.bytesIn, UInt64(entry.length))
        return flow
    }

    private func forward(_ flow: UDPFlow, _ batch: DatagramBatch, _ range: Range<Int>) {
        guard udpFlowsByID[flow.id] === flow else { return } // refused and closed meanwhile
        switch batch.send(flow.fd, range, addressed: false) {
        case .success(let sent):
            if sent < range.count { flow.listener.udp.drop(.backendError, UInt64(range.count - sent)) }
        case .failure(let error):
            flow.listener.udp.drop(.backendError, UInt64(range.count))
            // An ICMP error for an earlier datagram surfaces here: the backend is not listening.
            if error.errno == ECONNREFUSED { backendRefused(flow) }
        }
    }

    private func openFlow(_ listener: RuntimeListener, _ config: UDPListenerConfig, _ key: UDPFlowKey, _ client: SocketAddress,
                          _ local: sockaddr_storage, now: UInt64) -> UDPFlow? {
        let open = listener.counters.atomic(.active).loadThenWrappingIncrement(ordering: .relaxed)
        if open >= UInt64(config.maxFlows) {
            listener.counters.release(.active)
            listener.counters.add(.rejected, 1)
            listener.udp.drop(.maxFlows)
            return nil
        }
        let pool = listener.pool
        guard let backend = pick(pool,
            clientKey: UInt64(truncatingIfNeeded: key.hashValue),
            active: { pool.active[$0].load(ordering: .relaxed) },
            eligible: { pool.isEligible($0, now: now) }
        ) else {
            return refuseFlow(listener, .noBackend)
        }
        let fd: Int32
        do { fd = try Socket.udpConnect(to: pool.addresses[backend], bufferBytes: Self.udpFlowBufferBytes) } catch {
            logger.warning("cannot open a flow socket", metadata: ["backend": "\(pool.addresses[backend])", "error": "\(error)"])
            return refuseFlow(listener, .noBackend)
        }
        let flow = UDPFlow(id: nextSessionID, key: key, listener: listener, client: client, local: local,
                           backend: backend, fd: fd, perPacket: config.perPacket, now: now)
        nextSessionID += 1
        do { try epoll.add(fd, .readable, token: Self.udpFlowKind | flow.id) } catch {
            closeDescriptor(fd)
            return refuseFlow(listener, .noBackend)
        }
        udpFlowsByID[flow.id] = flow
        if !flow.perPacket { udpFlows[key] = flow }
        listener.counters.add(.accepted, 1)
        record.add(.flows, 1)
        record.release(.flowsUnseen)
        pool.active[backend].wrappingIncrement(ordering: .relaxed)
        flow.timer = timers.schedule(at: now + config.flowIdleTimeout.milliseconds, .udpFlow(id: flow.id))
        if !udpSweepScheduled {
            udpSweepScheduled = true
            _ = timers.schedule(at: now + Self.udpSweepMilliseconds, .udpSweep)
        }
        return flow
    }

    private func refuseFlow(_ listener: RuntimeListener, _ reason: UDPCounters.Drop) -> UDPFlow? {
        listener.counters.release(.active)
        listener.counters.add(.noBackend, 1)
        listener.udp.drop(reason)
        return nil
    }

    /// Replies from a flow's backend, received straight into the listener's
    /// reply batch: the replies of many flows go out in one sendmmsg at the
    /// end of the worker's batch of events (or when the batch is full).
    func udpBackendReadable(_ id: UInt64) {
        guard let flow = udpFlowsByID[id] else { return }
        let index = flow.listener.index
        guard listenerFDs[index] != nil else { return closeFlow(flow, reason: "listener_closed") }
        if udpReplyCounts[index, default: 0] == udpBatch.count { flushReplies(index) }
        let batch = udpReplies[index] ?? DatagramBatch(count: udpBatch.count)
        udpReplies[index] = batch
        let start = udpReplyCounts[index, default: 0]
        let count: Int
        switch batch.receive(flow.fd, at: start, limit: flow.window) {
        case .failure(let error):
            if error.errno == ECONNREFUSED { backendRefused(flow) }
            return
        case .success(let n):
            count = n
        }
        guard count > 0 else { return }
        flow.window = count == flow.window ? min(flow.window * 2, udpBatch.count) : max(count, 1)
        var bytes = 0
        for i in start..<start + count {
            batch.entries[i].peer = flow.client.storage
            batch.entries[i].peer_length = flow.client.length
            batch.entries[i].local = flow.local
            bytes += batch.entries[i].length
        }
        udpReplyCounts[index] = start + count
        flow.lastActive = monotonicMilliseconds()
        flow.datagramsOut += UInt64(count)
        flow.bytesOut += UInt64(bytes)
        flow.listener.udp.datagramsOut.wrappingIncrement(by: UInt64(count), ordering: .relaxed)
        flow.listener.udp.bytesOut.wrappingIncrement(by: UInt64(bytes), ordering: .relaxed)
        record.add(.bytesOut, UInt64(bytes))
        if !flow.answered {
            flow.answered = true
            flow.listener.pool.noteSuccess(flow.backend)
        }
        if flow.perPacket { closeFlow(flow, reason: "answered") }
    }

    func flushReplies() {
        for index in Array(udpReplyCounts.keys) { flushReplies(index) }
    }

    private func flushReplies(_ index: Int) {
        guard let count = udpReplyCounts.removeValue(forKey: index), count > 0, let batch = udpReplies[index] else { return }
        guard let fd = listenerFDs[index] else { return }
        var done = 0
        while done < count {
            switch batch.send(fd, done..<count, addressed: true) {
            case .success(let sent) where sent > 0:
                done += sent
            default:
                // A client's buffer full (or gone): that reply is dropped, the others still go.
                listeners[index]?.udp.drop(.clientError)
                done += 1
            }
        }
    }

    static let udpSweepMilliseconds: UInt64 = 1000

    /// A flow stays on its backend for its life, but not past the backend's
    /// health: one checked down or ejected (a host that went silent sends no
    /// ICMP error) loses its flows, and their next datagrams find a healthy one.
    func sweepFlows() {
        let now = monotonicMilliseconds()
        for flow in Array(udpFlowsByID.values) where !flow.listener.pool.isHealthy(flow.backend, now: now) {
            closeFlow(flow, reason: "backend_down")
        }
        udpSweepScheduled = !udpFlowsByID.isEmpty
        if udpSweepScheduled { _ = timers.schedule(at: now + Self.udpSweepMilliseconds, .udpSweep) }
    }

    /// ICMP port unreachable: a passive failure, and the flow ends so that
    /// its next datagram finds a backend that is there.
    private func backendRefused(_ flow: UDPFlow) {
        noteBackendFailure(flow.listener.pool, flow.backend)
        closeFlow(flow, reason: "backend_refused")
    }

    func udpFlowTimerFired(_ id: UInt64) {
        guard let flow = udpFlowsByID[id] else { return }
        flow.timer = nil
        let idle = draining ? Self.udpDrainGraceMilliseconds : (flow.listener.config.udp ?? UDPListenerConfig()).flowIdleTimeout.milliseconds
        let deadline = flow.lastActive + idle
        if monotonicMilliseconds() >= deadline {
            closeFlow(flow, reason: draining ? "drained" : (flow.perPacket ? "unanswered" : "idle"))
        } else {
            flow.timer = timers.schedule(at: deadline, .udpFlow(id: id))
        }
    }

    func closeFlow(_ flow: UDPFlow, reason: String) {
        guard udpFlowsByID.removeValue(forKey: flow.id) != nil else { return }
        if !flow.perPacket, udpFlows[flow.key] === flow { udpFlows.removeValue(forKey: flow.key) }
        if let timer = flow.timer { _ = timers.cancel(timer) }
        epoll.remove(flow.fd)
        closeDescriptor(flow.fd)
        // The next datagram from this client is placed anew (least flows).
        if let map = settings.flowMaps.indices.contains(flow.listener.index) ? settings.flowMaps[flow.listener.index] : nil {
            flow.key.forget(inMap: map)
        }
        record.subtract(.flows, 1)
        flow.listener.pool.active[flow.backend].wrappingDecrement(ordering: .relaxed)
        flow.listener.counters.release(.active)
        guard let accessLogger else { return }
        var line = AccessRecord(
            worker: id, listener: flow.listener.name, client: flow.client.description,
            backend: flow.listener.pool.addresses[flow.backend].description,
            bytesFromClient: flow.bytesIn, bytesToClient: flow.bytesOut,
            durationMicroseconds: (monotonicNanoseconds() &- flow.startedNanoseconds) / 1000, dataPath: "udp", closeReason: reason)
        line.datagrams = (flow.datagramsIn, flow.datagramsOut)
        if let text = line.render(settings.accessLog) { accessLogger.write(line: text) }
    }
}
