import Glibc
import Logging
import SluiceCore
import SluicePosix

// Moving bytes: the executor of the session's `pump` action.
//
// The session decides when a flow is pumped and what its outcome means (EOF
// passed on, reset passed on, interest); the byte loop itself stays here,
// with the worker: it holds pooled buffers and pipes (per-worker resources
// shared by every session), switches between read/write and splice(2) on
// the size of each read, and spends a fairness budget per wake-up. Feeding
// the session one event per read or write would cost a round trip per
// 64 KiB and give it nothing to decide.
extension Worker {
    /// How much longer than the fairness budget a stream's pump may run
    /// while its promotion waits for the client's socket to empty.
    static let promotionBudgetFactor = 8

    func pump(_ session: Session, _ flow: Flow, read: Bool) -> PumpResult {
        let kernel = session.sockmapPair != nil
        switch flow {
        case .upstream:
            return kernel ? pumpLeftovers(&session.upstream, flow, read: read, session: session)
                : pump(&session.upstream, flow, read: read, session: session)
        case .downstream:
            return kernel ? pumpLeftovers(&session.downstream, flow, read: read, session: session)
                : pump(&session.downstream, flow, read: read, session: session)
        }
    }

    /// Moves bytes one way until the source has none (or said EOF), the
    /// destination is full, or this flow's fairness budget is spent.
    private func pump(_ carrier: inout Carrier, _ flow: Flow, read: Bool, session: Session) -> PumpResult {
        let source = session.fd(flow.source)
        let destination = session.fd(flow.destination)
        var result = PumpResult()
        var budget = settings.fairnessBudget
        if session.machine.awaitsEmptySource(flow) { budget *= Self.promotionBudgetFactor }
        var mayRead = read
        // A read shorter than a full buffer almost always emptied the socket:
        // skip the read that would only say EAGAIN. Oneshot re-arming brings
        // us back if more arrived meanwhile (level-triggered). Not when epoll
        // said the FIN is in: reading on finds the EOF without another wake-up.
        let finArrived = session.finArrived(flow.source)
        var sourceLikelyDrained = false
        loop: while budget > 0 {
            if carrier.pending > 0 {
                let written: IOResult<Int>
                do {
                    written = try writeOut(&carrier, to: destination, last: result.endOfFile)
                } catch {
                    result.failure = (flow.destination, error.errno)
                    break loop
                }
                guard case .done(let n) = written else {
                    session.noteFull(flow.destination)
                    break loop
                }
                if carrier.pipe != nil { result.spliced = true }
                carrier.pending -= n
                result.moved += n
                budget -= n
                continue
            }
            releaseCarrier(&carrier)
            if !mayRead || sourceLikelyDrained { break }
            let outcome: Socket.ReadOutcome
            do {
                outcome = try readIn(&carrier, from: source, path: session.machine.path)
            } catch {
                releaseCarrier(&carrier)
                result.failure = (flow.source, error.errno)
                break loop
            }
            switch outcome {
            case .wouldBlock:
                releaseCarrier(&carrier)
                session.noteEmptied(flow.source)
                result.emptied = true
                break loop
            case .endOfFile:
                result.endOfFile = true
                mayRead = false
            case .bytes(let n):
                carrier.pending = n
                // A read(2) shorter than its buffer walked the whole receive
                // queue, so it ended on a packet boundary; a splice(2) may
                // have stopped at the pipe's slots, mid-packet.
                result.emptied = carrier.pipe == nil && n < (carrier.buffer?.count ?? 0)
                sourceLikelyDrained = n < settings.shortReadBytes && !finArrived
                // A short read(2) took all there was; a short splice(2) may
                // have stopped at the pipe's slots, so only EAGAIN says empty.
                if sourceLikelyDrained && carrier.pipe == nil { session.noteEmptied(flow.source) }
                if finArrived && result.emptied == true && takeEndOfFile(&carrier, from: source) {
                    result.endOfFile = true
                    mayRead = false
                }
            }
        }
        return finish(result, carrier, flow)
    }

    private func finish(_ result: PumpResult, _ carrier: Carrier, _ flow: Flow) -> PumpResult {
        var result = result
        result.pending = carrier.pending > 0
        if result.moved > 0 { record.add(flow == .upstream ? .bytesIn : .bytesOut, UInt64(result.moved)) }
        if let failure = result.failure, failure.errno != ECONNRESET && failure.errno != EPIPE {
            logger.debug("connection error", metadata: ["error": "\(errnoDescription(failure.errno))"])
        }
        return result
    }

    /// A sockmap pair's userspace share: bytes that reached a socket before
    /// its pairing (or a direction the kernel does not carry), read and
    /// written by hand with read/write, then the EOF.
    private func pumpLeftovers(_ carrier: inout Carrier, _ flow: Flow, read: Bool, session: Session) -> PumpResult {
        let source = session.fd(flow.source)
        let destination = session.fd(flow.destination)
        var result = PumpResult()
        while true {
            while carrier.pending > 0 {
                let buffer = carrier.buffer!
                let chunk = UnsafeRawBufferPointer(rebasing: buffer[carrier.bufferStart..<(carrier.bufferStart + carrier.pending)])
                let written: IOResult<Int>
                do {
                    written = try Socket.write(destination, from: chunk)
                } catch {
                    discardCarrier(&carrier)
                    result.failure = (flow.destination, error.errno)
                    return finish(result, carrier, flow)
                }
                guard case .done(let n) = written else {
                    session.noteFull(flow.destination)
                    return finish(result, carrier, flow)
                }
                logger.debug("forwarded bytes that reached a socket before its sockmap pairing", metadata: [
                    "bytes": "\(n)", "to": "\(flow.destination)",
                ])
                carrier.bufferStart += n
                carrier.pending -= n
                result.moved += n
                if flow == .downstream { session.sockmapPair?.userspaceToClient += UInt64(n) } else { session.sockmapPair?.userspaceToBackend += UInt64(n) }
            }
            releaseCarrier(&carrier)
            guard read && !result.endOfFile else { return finish(result, carrier, flow) }
            if carrier.buffer == nil { carrier.buffer = takeBuffer() }
            carrier.bufferStart = 0
            let outcome: Socket.ReadOutcome
            do {
                outcome = try Socket.read(source, into: carrier.buffer!)
            } catch {
                releaseCarrier(&carrier)
                result.failure = (flow.source, error.errno)
                return finish(result, carrier, flow)
            }
            switch outcome {
            case .wouldBlock:
                releaseCarrier(&carrier)
                session.noteEmptied(flow.source)
                return finish(result, carrier, flow)
            case .endOfFile:
                releaseCarrier(&carrier)
                result.endOfFile = true
            case .bytes(let n):
                carrier.pending = n
            }
        }
    }

    private func readIn(_ carrier: inout Carrier, from source: Int32, path: DataPathKind) throws(SystemCallError) -> Socket.ReadOutcome {
        if path == .splice && carrier.bulk && carrier.pipe == nil {
            // Out of fds for a pipe: this transfer goes through a buffer instead.
            carrier.pipe = try? takePipe()
        }
        if let pipe = carrier.pipe {
            switch try Socket.splice(from: source, to: pipe.writeEnd, maxBytes: 1 << 20) {
            case .wouldBlock: return .wouldBlock
            case .done(0): return .endOfFile
            case .done(let n):
                if n < settings.bulkExitBytes { carrier.bulk = false }
                return .bytes(n)
            }
        }
        if carrier.buffer == nil { carrier.buffer = takeBuffer() }
        carrier.bufferStart = 0
        let outcome = try Socket.read(source, into: carrier.buffer!)
        if path == .splice, case .bytes(let n) = outcome, n >= settings.bulkEntryBytes { carrier.bulk = true }
        return outcome
    }

    /// After a short read with the FIN known to be in: reads on (into the
    /// rest of the buffer) to take the EOF before the bytes are written, so
    /// that they can leave in one segment with the FIN passed on after them.
    /// True when the EOF was read; bytes read instead join the pending ones,
    /// and an error is left for the next read to meet.
    private func takeEndOfFile(_ carrier: inout Carrier, from source: Int32) -> Bool {
        guard let buffer = carrier.buffer, carrier.bufferStart + carrier.pending < buffer.count else { return false }
        let rest = UnsafeMutableRawBufferPointer(rebasing: buffer[(carrier.bufferStart + carrier.pending)...])
        switch try? Socket.read(source, into: rest) {
        case .endOfFile?: return true
        case .bytes(let n)?: carrier.pending += n
        case .wouldBlock?, nil: break
        }
        return false
    }

    private func writeOut(_ carrier: inout Carrier, to destination: Int32, last: Bool) throws(SystemCallError) -> IOResult<Int> {
        if let pipe = carrier.pipe {
            return try Socket.splice(from: pipe.readEnd, to: destination, maxBytes: carrier.pending)
        }
        let buffer = carrier.buffer!
        let chunk = UnsafeRawBufferPointer(rebasing: buffer[carrier.bufferStart..<(carrier.bufferStart + carrier.pending)])
        let result = try Socket.write(destination, from: chunk, last: last)
        if case .done(let n) = result { carrier.bufferStart += n }
        return result
    }

    // MARK: - Pooled buffers and pipes

    /// Returns an empty carrier's buffer or pipe to the worker's pool.
    func releaseCarrier(_ carrier: inout Carrier) {
        precondition(carrier.pending == 0, "releasing a carrier that still holds bytes")
        if let buffer = carrier.buffer {
            carrier.buffer = nil
            if bufferPool.count < settings.poolLimit { bufferPool.append(buffer) } else { buffer.deallocate() }
        }
        if let pipe = carrier.pipe {
            carrier.pipe = nil
            if pipePool.count < settings.poolLimit { pipePool.append(pipe) } else { pipe.close() }
        }
    }

    /// Frees a carrier whose bytes will never be delivered (connection torn down).
    func discardCarrier(_ carrier: inout Carrier) {
        if let buffer = carrier.buffer {
            carrier.buffer = nil
            if bufferPool.count < settings.poolLimit { bufferPool.append(buffer) } else { buffer.deallocate() }
        }
        if let pipe = carrier.pipe {
            carrier.pipe = nil
            pipe.close() // may hold bytes: never reuse
        }
        carrier.pending = 0
    }

    func takeBuffer() -> UnsafeMutableRawBufferPointer {
        bufferPool.popLast() ?? .allocate(byteCount: settings.copyBufferSize, alignment: 64)
    }

    func takePipe() throws(SystemCallError) -> Pipe {
        if let pipe = pipePool.popLast() { return pipe }
        return try Pipe.make()
    }
}
