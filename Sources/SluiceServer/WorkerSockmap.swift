import CSluice
import Logging
import SluiceBPF
import SluiceCore
import SluicePosix

/// The sockmap data path of a worker: pairing, the kernel's progress, and
/// teardown. The kernel moves the bytes; the worker only sees EOF, resets,
/// and the few bytes that reached a socket before its pairing existed.
///
/// The pairing stays here as one executor (the session's `handToKernel`
/// action) rather than a dialogue with the session: it is an ordered
/// sequence of map updates and socket-state checks whose correctness
/// depends on the kernel's timing between them, and its only outcome the
/// session needs is a `KernelPairing`.
extension Worker {
    /// Puts a freshly connected session's two sockets in the SOCKHASH.
    /// `.refused` (nothing changed, no byte redirected): the session must
    /// stay on the userspace path.
    func enterSockmap(_ session: Session) -> KernelPairing {
        guard let sockmap = sockmapPairs else { return .refused }
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
                return .refused
            }
            clientCookie = try socketCookie(client)
            backendCookie = try socketCookie(backend)
        } catch {
            return .refused
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
            logger.warning("cannot pair in the sockmap; copying in userspace", metadata: ["error": "\(error)"])
            return .refused
        }
        do {
            try sockmap.insertSocket(backend, cookie: backendCookie)
        } catch {
            sockmap.removePeer(cookie: clientCookie)
            logger.warning("cannot pair in the sockmap; copying in userspace", metadata: ["error": "\(error)"])
            return .refused
        }
        // From here the backend socket stays in the SOCKHASH until it closes:
        // taking it out would discard what the kernel queued on it. Unpaired,
        // its bytes simply pass to userspace, so the copy path can carry on.
        if (try? tcpProgress(backend).established) != true {
            logger.debug("backend half-closed while splicing began; copying in userspace")
            sockmap.removePeer(cookie: clientCookie)
            return .refused
        }
        do {
            try sockmap.insertSocket(client, cookie: clientCookie)
        } catch {
            sockmap.removePeer(cookie: clientCookie)
            logger.warning("cannot pair in the sockmap; copying in userspace", metadata: ["error": "\(error)"])
            return .refused
        }
        let pair = SockmapPair(
            clientCookie: clientCookie, backendCookie: backendCookie,
            clientSentBase: clientProgress.written, backendSentBase: backendProgress.written)
        session.sockmapPair = pair // from here closing the session takes the pairings out
        return pairBackend(session, pair, sockmap)
    }

    /// The second half of the pairing, once both sockets are in the
    /// SOCKHASH and the client's bytes go to the backend: whether the
    /// kernel may also carry the backend's bytes to the client.
    private func pairBackend(_ session: Session, _ pair: SockmapPair, _ sockmap: SockmapPairs) -> KernelPairing {
        let client = session.client
        let backend = session.backend
        let clientCookie = pair.clientCookie
        let backendCookie = pair.backendCookie
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
        var backendInKernel = clientStillOpen && !Socket.hasBytesWaiting(backend)
        if backendInKernel {
            do {
                try sockmap.insertPeer(cookie: backendCookie, peer: clientCookie, worker: id, fromClient: false)
            } catch {
                logger.error("cannot pair the backend socket", metadata: ["error": "\(error)"])
                return .failed(.resourceExhausted, resetPeer: false)
            }
            if Socket.hasBytesWaiting(backend) {
                // Bytes slipped in between the check and the pairing.
                sockmap.removePeer(cookie: backendCookie)
                if (sockmap.redirectedBytes(cookie: backendCookie) ?? 0) > 0 {
                    // Some already went ahead of them: the order cannot be kept.
                    logger.error("backend bytes raced the sockmap pairing; resetting the connection rather than reordering it")
                    return .failed(.internalError, resetPeer: true)
                }
                backendInKernel = false
            }
        }
        if !clientStillOpen { logger.debug("client half-closed while splicing began; its direction back goes through userspace") }
        // Bytes that reached either socket before it was paired wait in its
        // receive queue, and the verdict program only runs when new data
        // arrives: with a full receive window none ever does (seen: 128 KB
        // stuck for good). Setting SO_RCVLOWAT makes TCP call data_ready now,
        // which hands the queue to the verdict program, in order.
        for fd in [client, backend] { try? Socket.setOption(fd, SOL_SOCKET, SO_RCVLOWAT, 1, "SO_RCVLOWAT") }
        // What the kernel does not carry (the backend's bytes, the client's
        // EOF) the session reads in userspace.
        return .paired(backendToClientInKernel: backendInKernel, clientOpen: clientStillOpen)
    }

    /// After an EOF from `side`: how many of the bytes redirected from it
    /// (plus those userspace wrote) its peer has taken since the pairing, by
    /// its send path's growth (nil: unknown), against how many it must take.
    func flushProgress(_ session: Session, from side: Side) -> (taken: UInt64?, expected: UInt64) {
        guard let pair = session.sockmapPair, let sockmap = sockmapPairs else { return (nil, 0) }
        let expected = (sockmap.redirectedBytes(cookie: pair.cookie(side)) ?? 0)
            + (side == .client ? pair.userspaceToBackend : pair.userspaceToClient)
        let base = side == .client ? pair.backendSentBase : pair.clientSentBase
        let taken = (try? tcpProgress(session.fd(side.peer))).map { $0.written &- base }
        return (taken, expected)
    }

    /// Idle detection for spliced sessions: userspace sees no bytes, so the
    /// kernel's per-socket counters tell whether anything moved since the last look.
    func kernelMoved(_ session: Session) -> Bool {
        guard let pair = session.sockmapPair, let sockmap = sockmapPairs else { return false }
        let total = (sockmap.redirectedBytes(cookie: pair.clientCookie) ?? 0)
            &+ (sockmap.redirectedBytes(cookie: pair.backendCookie) ?? 0)
        guard total != pair.lastRedirected else { return false }
        pair.lastRedirected = total
        return true
    }

    /// Takes a spliced session out of the kernel maps before its sockets
    /// close (closing removes the SOCKHASH entries; the pairings are ours),
    /// and returns the bytes the kernel moved each way, for the access log.
    func finishSplicing(_ session: Session) -> (upstream: UInt64, downstream: UInt64) {
        guard let pair = session.sockmapPair, let sockmap = sockmapPairs else { return (0, 0) }
        let moved = (sockmap.redirectedBytes(cookie: pair.clientCookie) ?? 0, sockmap.redirectedBytes(cookie: pair.backendCookie) ?? 0)
        sockmap.removePeer(cookie: pair.clientCookie)
        sockmap.removePeer(cookie: pair.backendCookie)
        session.sockmapPair = nil
        return moved
    }
}
