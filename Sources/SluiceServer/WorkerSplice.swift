import CSluice
import Glibc
import Logging
import SluiceBPF
import SluiceCore
import SluicePosix

/// The sockmap data path of a worker: pairing, EOF and teardown. The kernel
/// moves the bytes; the worker only sees EOF, resets, and the few bytes that
/// reached a socket before its pairing existed.
extension Worker {
    /// Puts a freshly connected session's two sockets in the SOCKHASH.
    /// Returns false (nothing changed, no byte redirected) when the session
    /// must stay on the userspace path.
    func enterSockmap(_ session: Session) -> Bool {
        guard let sockmap = sockmapPairs else { return false }
        let client = session.client
        let backend = session.backend
        let clientCookie: UInt64, backendCookie: UInt64
        let clientProgress: (written: UInt64, established: Bool)
        let backendProgress: (written: UInt64, established: Bool)
        do {
            clientProgress = try tcpProgress(client)
            backendProgress = try tcpProgress(backend)
            // A half-closed socket (the client already sent its FIN) stays in
            // userspace: the EOF it carries must not be lost in the pairing.
            guard clientProgress.established && backendProgress.established else {
                logger.debug("not splicing a half-closed connection", metadata: ["client": "\(session.clientAddress)"])
                return false
            }
            clientCookie = try socketCookie(client)
            backendCookie = try socketCookie(backend)
        } catch {
            return false
        }
        for fd in [client, backend] { SockmapPairs.prepare(fd) }
        // Order matters. The client's pairing first (no effect yet: the client
        // is not in the SOCKHASH); then the backend's socket (its bytes, with
        // no pairing yet, stay with the backend socket for us to read); then
        // the client's socket, whose bytes, including any already queued,
        // now go straight to the backend; last the backend's pairing.
        do {
            try sockmap.insertPeer(cookie: clientCookie, peer: backendCookie, worker: id, fromClient: true)
        } catch {
            logger.warning("cannot splice in the kernel; copying in userspace", metadata: ["error": "\(error)"])
            return false
        }
        do {
            try sockmap.insertSocket(backend, cookie: backendCookie)
        } catch {
            sockmap.removePeer(cookie: clientCookie)
            logger.warning("cannot splice in the kernel; copying in userspace", metadata: ["error": "\(error)"])
            return false
        }
        // From here the backend socket stays in the SOCKHASH until it closes:
        // taking it out would discard what the kernel queued on it. Unpaired,
        // its bytes simply pass to userspace, so the copy path can carry on.
        if (try? tcpProgress(backend).established) != true {
            logger.debug("backend half-closed while splicing began; copying in userspace")
            sockmap.removePeer(cookie: clientCookie)
            session.path = .copy
            return false
        }
        do {
            try sockmap.insertSocket(client, cookie: clientCookie)
        } catch {
            sockmap.removePeer(cookie: clientCookie)
            logger.warning("cannot splice in the kernel; copying in userspace", metadata: ["error": "\(error)"])
            session.path = .copy
            return false
        }
        let pair = SockmapPair(
            clientCookie: clientCookie, backendCookie: backendCookie,
            clientSentBase: clientProgress.written, backendSentBase: backendProgress.written)
        session.sockmapPair = pair
        // A FIN that reached the client between the first check and its
        // insertion leaves a socket the kernel cannot send redirected bytes
        // into: carry the backend's bytes in userspace (its bytes to the
        // backend were either redirected before the FIN or are still queued
        // for us to read).
        let clientStillOpen = (try? tcpProgress(client).established) == true
        // Bytes the backend sent before its pairing sit on its socket; pairing
        // it now would let later bytes overtake them (the kernel redirects new
        // skbs at once while we would forward the old ones by hand). A backend
        // that already spoke (server-first protocols) therefore keeps its
        // direction in userspace; the client's direction stays in the kernel.
        var backendInKernel = clientStillOpen && !hasPendingBytes(backend)
        if backendInKernel {
            do {
                try sockmap.insertPeer(cookie: backendCookie, peer: clientCookie, worker: id, fromClient: false)
            } catch {
                logger.error("cannot pair the backend socket", metadata: ["error": "\(error)"])
                close(session, reason: .resourceExhausted)
                return true
            }
            if hasPendingBytes(backend) {
                // Bytes slipped in between the check and the pairing.
                sockmap.removePeer(cookie: backendCookie)
                if (sockmap.redirectedBytes(cookie: backendCookie) ?? 0) > 0 {
                    // Some already went ahead of them: the order cannot be kept.
                    logger.error("backend bytes raced the splice pairing; resetting the connection rather than reordering it")
                    close(session, reason: .internalError, resetPeer: true)
                    return true
                }
                backendInKernel = false
            }
        }
        pair.backendToClientInKernel = backendInKernel
        if !clientStillOpen { logger.debug("client half-closed while splicing began; its direction back goes through userspace") }
        // Bytes that reached either socket before it was paired wait in its
        // receive queue, and the verdict program only runs when new data
        // arrives: with a full receive window none ever does (seen: 128 KB
        // stuck for good). Setting SO_RCVLOWAT makes TCP call data_ready now,
        // which hands the queue to the verdict program, in order.
        for fd in [client, backend] { try? Socket.setOption(fd, SOL_SOCKET, SO_RCVLOWAT, 1, "SO_RCVLOWAT") }
        // A backend direction left in userspace: forward what waits.
        if !backendInKernel { readSockmapSide(session, side: .backend) }
        if !clientStillOpen, sessions[session.id] != nil { readSockmapSide(session, side: .client) }
        if sessions[session.id] != nil { rearmSockmap(session) }
        return true
    }

    /// Whether a socket has bytes waiting for us (in its receive queue or,
    /// for a SOCKHASH member, passed to it by the verdict program).
    private func hasPendingBytes(_ fd: Int32) -> Bool {
        var byte: UInt8 = 0
        return Glibc.recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) > 0
    }

    /// An event on a spliced socket: EOF, reset, or room to write leftovers.
    func handleSockmapEvent(_ session: Session, side: Side, events: EpollEvents) {
        if !events.isDisjoint(with: [.readHangup, .readable, .error, .hangup]) {
            readSockmapSide(session, side: side)
            guard sessions[session.id] != nil else { return }
        }
        if events.contains(.writable) || !events.isDisjoint(with: [.error, .hangup]) {
            // Leftover bytes headed to this side.
            flushLeftovers(session, to: side)
            guard sessions[session.id] != nil else { return }
        }
        rearmSockmap(session)
    }

    /// Reads what the kernel left on a spliced socket: bytes that arrived
    /// before its pairing (forwarded by hand), EOF, or a reset.
    private func readSockmapSide(_ session: Session, side: Side) {
        let fd = side == .client ? session.client : session.backend
        var direction = side == .client ? session.upstream : session.downstream
        defer {
            if side == .client { session.upstream = direction } else { session.downstream = direction }
        }
        while !direction.sourceEOF && direction.pending == 0 {
            if direction.buffer == nil { direction.buffer = takeBuffer() }
            direction.bufferStart = 0
            let outcome: Socket.ReadOutcome
            do {
                outcome = try Socket.read(fd, into: direction.buffer!)
            } catch {
                releaseCarrier(&direction)
                if side == .client { session.upstream = direction } else { session.downstream = direction }
                close(session, reason: side == .client ? .clientReset : .backendReset, resetPeer: true)
                return
            }
            switch outcome {
            case .wouldBlock:
                releaseCarrier(&direction)
                return
            case .endOfFile:
                releaseCarrier(&direction)
                direction.sourceEOF = true
                if session.firstEOF == nil { session.firstEOF = side }
            case .bytes(let n):
                direction.pending = n
                if side == .client { session.upstream = direction } else { session.downstream = direction }
                flushLeftovers(session, to: side == .client ? .backend : .client)
                guard sessions[session.id] != nil else { return }
                direction = side == .client ? session.upstream : session.downstream
            }
        }
        if direction.sourceEOF && !direction.shutdownSent && direction.pending == 0 {
            if side == .client { session.upstream = direction } else { session.downstream = direction }
            passSockmapEOF(session, from: side)
            direction = side == .client ? session.upstream : session.downstream
        }
    }

    /// Writes bytes userspace holds for `destination` (leftovers from before
    /// the pairing); what does not fit waits for the socket to be writable.
    private func flushLeftovers(_ session: Session, to destination: Side) {
        let fd = destination == .client ? session.client : session.backend
        var direction = destination == .client ? session.downstream : session.upstream
        defer {
            if destination == .client { session.downstream = direction } else { session.upstream = direction }
        }
        while direction.pending > 0 {
            let buffer = direction.buffer!
            let chunk = UnsafeRawBufferPointer(rebasing: buffer[direction.bufferStart..<(direction.bufferStart + direction.pending)])
            let result: IOResult<Int>
            do {
                result = try Socket.write(fd, from: chunk)
            } catch {
                direction.pending = 0
                releaseCarrier(&direction)
                if destination == .client { session.downstream = direction } else { session.upstream = direction }
                close(session, reason: destination == .client ? .clientReset : .backendReset, resetPeer: true)
                return
            }
            guard case .done(let n) = result else { return }
            logger.debug("forwarded bytes that reached a spliced socket before its pairing", metadata: [
                "bytes": "\(n)", "to": "\(destination)",
            ])
            direction.bufferStart += n
            direction.pending -= n
            direction.bytes += UInt64(n)
            if destination == .client {
                session.sockmapPair?.userspaceToClient += UInt64(n)
                record.add(.bytesOut, UInt64(n))
            } else {
                session.sockmapPair?.userspaceToBackend += UInt64(n)
                record.add(.bytesIn, UInt64(n))
            }
        }
        releaseCarrier(&direction)
    }

    /// The kernel does not forward FIN: once the peer has taken every byte
    /// redirected from `side` (its send path grew by that much since the
    /// pairing), shut the peer's write side. Shutting it earlier would cut off
    /// bytes still in the kernel's redirect backlog. Polled on the timer
    /// wheel, bounded by `sockmapFlushTimeoutMilliseconds`.
    func passSockmapEOF(_ session: Session, from side: Side) {
        guard let pair = session.sockmapPair, let sockmap = sockmapPairs else { return }
        let direction = side == .client ? session.upstream : session.downstream
        guard direction.sourceEOF, !direction.shutdownSent else { return }
        let peerFD = side == .client ? session.backend : session.client
        let cookie = side == .client ? pair.clientCookie : pair.backendCookie
        let expected = (sockmap.redirectedBytes(cookie: cookie) ?? 0)
            + (side == .client ? pair.userspaceToBackend : pair.userspaceToClient)
        let base = side == .client ? pair.backendSentBase : pair.clientSentBase
        let now = monotonicMilliseconds()
        let taken = (try? tcpProgress(peerFD)).map { $0.written &- base }
        if let taken, taken < expected {
            // Still draining: wait while it moves (backpressure from a slow
            // reader is fine); give up only when it stops moving.
            var progress = pair.flushProgress[side] ?? (taken: taken, at: now, interval: 1)
            if taken > progress.taken {
                progress = (taken: taken, at: now, interval: 1)
            } else {
                progress.interval = min(progress.interval * 2, 50)
                // Setting the send buffer calls the socket's write_space,
                // which reschedules a redirect backlog that waits for room.
                try? Socket.setOption(peerFD, SOL_SOCKET, SO_SNDBUFFORCE, SockmapPairs.sendBuffer, "SO_SNDBUFFORCE")
            }
            pair.flushProgress[side] = progress
            if now &- progress.at < settings.sockmapFlushTimeoutMilliseconds {
                _ = timers.schedule(at: now + progress.interval, .sockmapFlush(session: session.id, side: side))
                return
            }
            logger.warning("spliced bytes stopped reaching the peer; passing EOF anyway", metadata: [
                "missing": "\(expected - taken)",
            ])
        }
        Socket.shutdownWrite(peerFD)
        if side == .client { session.upstream.shutdownSent = true } else { session.downstream.shutdownSent = true }
        if session.upstream.shutdownSent && session.downstream.shutdownSent {
            close(session, reason: session.firstEOF == .backend ? .backendClosed : .clientClosed)
        } else {
            rearmSockmap(session)
        }
    }

    /// Spliced sockets wait for EOF (EPOLLRDHUP) only: the verdict program
    /// raises spurious EPOLLIN. A side that already gave its EOF waits for
    /// errors only; writable only while leftovers wait.
    func rearmSockmap(_ session: Session) {
        var clientInterest: EpollEvents = session.upstream.sourceEOF ? [] : [.readHangup]
        if session.downstream.pending > 0 { clientInterest.insert(.writable) }
        var backendInterest: EpollEvents = session.downstream.sourceEOF ? [] : [.readHangup]
        if session.sockmapPair?.backendToClientInKernel == false && !session.downstream.sourceEOF
            && session.downstream.pending == 0 {
            backendInterest.insert(.readable)
        }
        if session.upstream.pending > 0 { backendInterest.insert(.writable) }
        // Always armed, if only for errors: a reset must reach us.
        arm(session, client: clientInterest, backend: backendInterest)
    }

    /// Idle detection for spliced sessions: userspace sees no bytes, so the
    /// kernel's per-socket counters tell whether anything moved.
    func noteSockmapActivity(_ session: Session, now: UInt64) {
        guard let pair = session.sockmapPair, let sockmap = sockmapPairs else { return }
        let total = (sockmap.redirectedBytes(cookie: pair.clientCookie) ?? 0)
            &+ (sockmap.redirectedBytes(cookie: pair.backendCookie) ?? 0)
        if total != pair.lastRedirected {
            pair.lastRedirected = total
            session.lastActivityMilliseconds = now
        }
    }

    /// Takes a spliced session out of the kernel maps before its sockets
    /// close (closing removes the SOCKHASH entries; the pairings are ours),
    /// and settles its byte counts for the access log.
    func finishSplicing(_ session: Session) {
        guard let pair = session.sockmapPair, let sockmap = sockmapPairs else { return }
        session.upstream.bytes += sockmap.redirectedBytes(cookie: pair.clientCookie) ?? 0
        session.downstream.bytes += sockmap.redirectedBytes(cookie: pair.backendCookie) ?? 0
        sockmap.removePeer(cookie: pair.clientCookie)
        sockmap.removePeer(cookie: pair.backendCookie)
        session.sockmapPair = nil
    }
}
