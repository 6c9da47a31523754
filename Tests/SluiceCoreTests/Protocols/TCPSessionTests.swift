import Glibc
import SluiceCore
import Testing

/// A session driven by hand: every event the worker would feed, every action it would execute.
struct Driver {
    var session: TCPSession

    init(path: DataPathKind = .copy, attempts: Int = 3, now: UInt64 = 0, promotion: SockmapPromotion? = nil) {
        session = TCPSession(
            path: path,
            limits: TCPSessionLimits(maxAttempts: attempts, connectTimeoutMilliseconds: 1000,
                                     idleTimeoutMilliseconds: 10_000, flushTimeoutMilliseconds: 5000,
                                     promotion: promotion),
            now: now)
    }

    @discardableResult
    mutating func on(_ event: TCPSession.Event) -> [TCPSession.Action] {
        var actions: [TCPSession.Action] = []
        session.handle(event, into: &actions)
        return actions
    }

    /// Accepted and connected to backend `backend` at `now`.
    mutating func connect(to backend: Int = 0, now: UInt64 = 0) -> [TCPSession.Action] {
        on(.accepted)
        on(.connecting(backend: backend, now: now))
        return on(.connected(now: now))
    }

    var closedWith: CloseReason? {
        if case .closing(let reason) = session.phase { return reason }
        return nil
    }
}

func isClose(_ action: TCPSession.Action) -> Bool {
    if case .close = action { return true }
    return false
}

@Suite("TCP session: connecting")
struct TCPSessionConnectingTests {
    @Test("an accepted client asks for a backend, and a started connect arms its timeout")
    func acceptedAsksForBackend() {
        var d = Driver()
        #expect(d.on(.accepted) == [.connectNext(excluding: [])])
        #expect(d.on(.connecting(backend: 2, now: 100)) == [.schedule(.connect(attempt: 1), at: 1100)])
    }

    @Test("a successful connect cancels the timeout, starts the idle clock and pumps what the client already sent")
    func connectSuccess() {
        var d = Driver()
        let actions = d.connect(to: 2, now: 500)
        #expect(actions == [
            .cancel(.connect(attempt: 1)), .schedule(.idle, at: 10_500),
            .pump(.upstream, read: true), .arm,
        ])
        #expect(d.session.connectedBackend == 2)
        // EPOLLRDHUP too: a FIN that comes with the last bytes is read in the same pump.
        #expect(d.session.interest.client == [.readable, .readHangup])
        #expect(d.session.interest.backend == [.readable, .readHangup])
    }

    @Test("the backend socket turning writable completes the connect; with an error or hangup the worker reads the outcome")
    func writableChecksConnect() {
        var d = Driver()
        d.on(.accepted)
        d.on(.connecting(backend: 0, now: 0))
        #expect(d.on(.ready(.backend, .writable)) == [.confirmConnect])
        #expect(d.on(.ready(.backend, [.writable, .error])) == [.checkConnect])
        #expect(d.on(.ready(.backend, [.writable, .hangup])) == [.checkConnect])
        #expect(d.on(.ready(.backend, .hangup)) == [.checkConnect])
    }

    @Test("a connect timeout blames the backend and tries the next one, excluding those tried")
    func timeoutTriesNext() {
        var d = Driver()
        d.on(.accepted)
        d.on(.connecting(backend: 4, now: 0))
        #expect(d.on(.timerFired(.connect(attempt: 1), now: 1000)) == [
            .noteConnectFailure(backend: 4, errno: nil, blame: .backend), .abandonAttempt, .connectNext(excluding: [4]),
        ])
        #expect(d.on(.connecting(backend: 1, now: 1000)) == [.schedule(.connect(attempt: 2), at: 2000)])
    }

    @Test("a stale connect timer (an earlier attempt's) does nothing")
    func staleTimer() {
        var d = Driver()
        d.on(.accepted)
        d.on(.connecting(backend: 4, now: 0))
        d.on(.connectFailed(errno: ECONNREFUSED))
        d.on(.connecting(backend: 5, now: 10))
        #expect(d.on(.timerFired(.connect(attempt: 1), now: 1000)) == [])
    }

    @Test("a refused connect blames the backend and moves on")
    func refusedMovesOn() {
        var d = Driver()
        d.on(.accepted)
        d.on(.connecting(backend: 0, now: 0))
        #expect(d.on(.connectFailed(errno: ECONNREFUSED)) == [
            .noteConnectFailure(backend: 0, errno: ECONNREFUSED, blame: .backend),
            .cancel(.connect(attempt: 1)), .abandonAttempt, .connectNext(excluding: [0]),
        ])
    }

    @Test("retries exhausted: the client is closed with connect_failed")
    func retriesExhausted() {
        var d = Driver(attempts: 2)
        d.on(.accepted)
        d.on(.connecting(backend: 0, now: 0))
        d.on(.connectFailed(errno: ECONNREFUSED))
        d.on(.connecting(backend: 1, now: 0))
        let actions = d.on(.connectFailed(errno: ECONNREFUSED))
        #expect(actions.suffix(2) == [
            .noteNoBackend(tried: [0, 1]), .close(.connectFailed, resetPeer: false, connectedTo: nil),
        ])
        #expect(d.closedWith == .connectFailed)
        #expect(d.on(.connected(now: 5)) == [], "a closed session ignores everything")
    }

    @Test("no eligible backend at all: closed with no_backend; after some tries: connect_failed")
    func noEligible() {
        var first = Driver()
        first.on(.accepted)
        #expect(first.on(.noEligibleBackend) == [.noteNoBackend(tried: []), .close(.noBackend, resetPeer: false, connectedTo: nil)])
        var later = Driver()
        later.on(.accepted)
        later.on(.connecting(backend: 3, now: 0))
        later.on(.connectFailed(errno: ECONNREFUSED))
        #expect(later.on(.noEligibleBackend).last == .close(.connectFailed, resetPeer: false, connectedTo: nil))
    }

    @Test("a local failure (no local port, no descriptors) is not the backend's fault and ends the attempt at once",
          arguments: [EADDRNOTAVAIL, EMFILE])
    func localFailure(code: Int32) {
        var d = Driver()
        d.on(.accepted)
        d.on(.connecting(backend: 0, now: 0))
        #expect(d.on(.connectFailed(errno: code)) == [
            .noteConnectFailure(backend: 0, errno: code, blame: .local), .cancel(.connect(attempt: 1)),
            .abandonAttempt, .close(.resourceExhausted, resetPeer: false, connectedTo: nil),
        ])
    }

    @Test("a backend socket that cannot be created closes the client as resource_exhausted")
    func socketFailure() {
        var d = Driver()
        d.on(.accepted)
        #expect(d.on(.socketFailed(backend: 1, errno: EMFILE)) == [
            .noteConnectFailure(backend: 1, errno: EMFILE, blame: .local),
            .close(.resourceExhausted, resetPeer: false, connectedTo: nil),
        ])
        #expect(d.session.backend == 1, "the access log names the backend it was for")
    }

    @Test("a connect that fails after a backend was abandoned leaves no backend to name")
    func abandonedBackendNotNamed() {
        var d = Driver(attempts: 1)
        d.on(.accepted)
        d.on(.connecting(backend: 3, now: 0))
        #expect(d.session.backend == 3)
        d.on(.connectFailed(errno: ECONNREFUSED))
        #expect(d.session.backend == nil)
        #expect(d.closedWith == .connectFailed)
    }

    @Test("the drain deadline closes a session still connecting")
    func drainWhileConnecting() {
        var d = Driver()
        d.on(.accepted)
        d.on(.connecting(backend: 0, now: 0))
        #expect(d.on(.drainDeadline) == [.close(.drainTimeout, resetPeer: false, connectedTo: nil)])
    }
}

@Suite("TCP session: relaying in userspace")
struct TCPSessionRelayTests {
    @Test("a readable client pumps upstream; a readable backend pumps downstream; then both are re-armed")
    func readinessPumps() {
        var d = Driver()
        _ = d.connect()
        #expect(d.on(.ready(.client, .readable)) == [.pump(.upstream, read: true), .arm])
        #expect(d.on(.ready(.backend, .readable)) == [.pump(.downstream, read: true), .arm])
        #expect(d.on(.ready(.backend, .writable)) == [.pump(.upstream, read: true), .arm])
        #expect(d.on(.ready(.client, [.error])) == [.pump(.upstream, read: true), .pump(.downstream, read: true), .arm])
    }

    @Test("a full destination waits for writable and stops reading that flow")
    func backpressure() {
        var d = Driver()
        _ = d.connect()
        d.on(.pumped(.upstream, PumpResult(moved: 10, pending: true), now: 1))
        #expect(d.session.interest.client == nil)
        #expect(d.session.interest.backend == [.readable, .readHangup, .writable])
    }

    @Test("client EOF half-closes the backend; the backend may still answer; its EOF ends the session as client_eof")
    func clientEOFFirst() {
        var d = Driver()
        _ = d.connect(to: 7)
        #expect(d.on(.pumped(.upstream, PumpResult(moved: 5, endOfFile: true), now: 1)) == [.shutdownWrite(.backend)])
        #expect(d.session.interest.client == nil)
        #expect(d.session.interest.backend == [.readable, .readHangup])
        d.on(.pumped(.downstream, PumpResult(moved: 100), now: 2))
        // The last FIN goes with the close: no shutdown(2) first.
        #expect(d.on(.pumped(.downstream, PumpResult(endOfFile: true), now: 3)) == [
            .close(.clientClosed, resetPeer: false, connectedTo: 7),
        ])
        #expect(d.session.userspaceBytes == (5, 100))
        #expect(d.session.backend == 7)
    }

    @Test("backend EOF first: the client is half-closed and the session ends as backend_eof")
    func backendEOFFirst() {
        var d = Driver()
        _ = d.connect()
        #expect(d.on(.pumped(.downstream, PumpResult(endOfFile: true), now: 1)) == [.shutdownWrite(.client)])
        #expect(d.on(.pumped(.upstream, PumpResult(moved: 3, endOfFile: true), now: 2)).last
                == .close(.backendClosed, resetPeer: false, connectedTo: 0))
    }

    @Test("an EOF with bytes still pending is passed on only once they are written")
    func eofAfterPending() {
        var d = Driver()
        _ = d.connect()
        #expect(d.on(.pumped(.upstream, PumpResult(moved: 1, pending: true), now: 1)) == [])
        // The worker never reads past pending bytes, so EOF comes after they drain.
        #expect(d.on(.pumped(.upstream, PumpResult(moved: 9, pending: false, endOfFile: true), now: 2)) == [.shutdownWrite(.backend)])
    }

    @Test("a reset on one side is passed on as a reset to the other", arguments: [Side.client, Side.backend])
    func resetPassedOn(side: Side) {
        var d = Driver()
        _ = d.connect(to: 1)
        let actions = d.on(.pumped(side.outgoing, PumpResult(failure: (side, ECONNRESET)), now: 1))
        let reason: CloseReason = side == .client ? .clientReset : .backendReset
        #expect(actions == [.close(reason, resetPeer: true, connectedTo: 1)])
    }

    @Test("idle timeout closes a quiet session; activity postpones it")
    func idleTimeout() {
        var d = Driver()
        _ = d.connect(now: 0)
        d.on(.pumped(.upstream, PumpResult(moved: 1), now: 4000))
        #expect(d.on(.timerFired(.idle, now: 10_000)) == [.schedule(.idle, at: 14_000)])
        #expect(d.on(.timerFired(.idle, now: 14_000)) == [.close(.idleTimeout, resetPeer: false, connectedTo: 0)])
    }

    @Test("the drain deadline closes an open session")
    func drainDeadline() {
        var d = Driver()
        _ = d.connect(to: 3)
        #expect(d.on(.drainDeadline) == [.close(.drainTimeout, resetPeer: false, connectedTo: 3)])
    }

    @Test("an adopted session re-arms its idle timer from its last activity and pumps both ways")
    func adopted() {
        var d = Driver()
        _ = d.connect(now: 50)
        #expect(d.session.isSteady)
        #expect(d.on(.adopted) == [
            .schedule(.idle, at: 10_050), .pump(.upstream, read: true), .pump(.downstream, read: true), .arm,
        ])
        d.on(.pumped(.upstream, PumpResult(endOfFile: true), now: 60))
        #expect(!d.session.isSteady, "a session passing an EOF on stays where it is")
    }

    @Test("backend health: a reset before the first byte counts against it; bytes or a clean EOF for it")
    func verdict() {
        #expect(TCPSession.backendVerdict(reason: .backendReset, bytesToClient: 0) == false)
        #expect(TCPSession.backendVerdict(reason: .backendReset, bytesToClient: 1) == true)
        #expect(TCPSession.backendVerdict(reason: .clientClosed, bytesToClient: 0) == true)
        #expect(TCPSession.backendVerdict(reason: .idleTimeout, bytesToClient: 0) == nil)
    }
}

@Suite("TCP session: handed to the kernel (sockmap)")
struct TCPSessionKernelTests {
    @Test("a connected sockmap session is handed to the kernel; a full pairing waits for EOF only")
    func handOver() {
        var d = Driver(path: .sockmap)
        #expect(d.connect().last == .handToKernel)
        #expect(d.session.interest.client == nil, "nothing is armed while pairing")
        #expect(d.on(.kernelPairing(.paired(backendToClientInKernel: true, clientOpen: true))) == [.arm])
        #expect(d.session.interest.client == .readHangup)
        #expect(d.session.interest.backend == .readHangup)
        #expect(d.session.path == .sockmap)
    }

    @Test("a refused pairing (half-closed before it began) falls back to read/write in userspace")
    func refusedFallsBack() {
        var d = Driver(path: .sockmap)
        _ = d.connect()
        #expect(d.on(.kernelPairing(.refused)) == [.pump(.upstream, read: true), .arm])
        #expect(d.session.path == .copy)
    }

    @Test("a pairing broken half-way closes with the reason the worker gives")
    func pairingFailed() {
        var d = Driver(path: .sockmap)
        _ = d.connect(to: 2)
        #expect(d.on(.kernelPairing(.failed(.internalError, resetPeer: true))) == [
            .close(.internalError, resetPeer: true, connectedTo: 2),
        ])
    }

    @Test("a backend that spoke first keeps its direction in userspace: its bytes are forwarded by hand")
    func serverFirst() {
        var d = Driver(path: .sockmap)
        _ = d.connect()
        #expect(d.on(.kernelPairing(.paired(backendToClientInKernel: false, clientOpen: true))) == [
            .pump(.downstream, read: true), .arm,
        ])
        #expect(d.session.interest.backend == [.readHangup, .readable])
    }

    @Test("a client half-closed during the pairing: its EOF is read in userspace, the backend's bytes too")
    func clientHalfClosed() {
        var d = Driver(path: .sockmap)
        _ = d.connect()
        #expect(d.on(.kernelPairing(.paired(backendToClientInKernel: false, clientOpen: false))) == [
            .pump(.downstream, read: true), .pump(.upstream, read: true), .arm,
        ])
    }

    @Test("EOF on a spliced side waits until the peer took every redirected byte, then half-closes it")
    func flushWait() {
        var d = Driver(path: .sockmap)
        _ = d.connect()
        d.on(.kernelPairing(.paired(backendToClientInKernel: true, clientOpen: true)))
        #expect(d.on(.ready(.client, .readHangup)) == [.pump(.upstream, read: true), .arm])
        #expect(d.on(.pumped(.upstream, PumpResult(endOfFile: true), now: 100)) == [.checkFlush(.client)])
        // 600 of 1000 bytes taken: poke the peer's write space, look again soon.
        #expect(d.on(.flushMeasured(.client, taken: 600, expected: 1000, now: 100)) == [
            .nudgeWriteSpace(.backend), .schedule(.flush(.client), at: 102),
        ])
        #expect(!d.session.isSteady)
        #expect(d.on(.timerFired(.flush(.client), now: 102)) == [.checkFlush(.client)])
        // Progress: the polling interval starts over.
        #expect(d.on(.flushMeasured(.client, taken: 800, expected: 1000, now: 102)) == [.schedule(.flush(.client), at: 103)])
        // No progress: poke again and back off.
        #expect(d.on(.flushMeasured(.client, taken: 800, expected: 1000, now: 103)) == [
            .nudgeWriteSpace(.backend), .schedule(.flush(.client), at: 105),
        ])
        #expect(d.on(.flushMeasured(.client, taken: 1000, expected: 1000, now: 105)) == [.shutdownWrite(.backend), .arm])
        #expect(d.session.interest.client == [])
        #expect(d.on(.timerFired(.flush(.client), now: 110)) == [], "a flush already passed on is not checked again")
    }

    @Test("a redirect backlog that stops moving for the flush timeout: the EOF is passed on anyway")
    func flushGivesUp() {
        var d = Driver(path: .sockmap)
        _ = d.connect()
        d.on(.kernelPairing(.paired(backendToClientInKernel: true, clientOpen: true)))
        d.on(.pumped(.downstream, PumpResult(endOfFile: true), now: 0))
        d.on(.flushMeasured(.backend, taken: 10, expected: 20, now: 0))
        #expect(d.on(.flushMeasured(.backend, taken: 10, expected: 20, now: 5000)) == [
            .nudgeWriteSpace(.client), .flushAbandoned(.backend, missing: 10), .shutdownWrite(.client), .arm,
        ])
    }

    @Test("both EOFs passed on end the spliced session, named after the first")
    func bothEOFs() {
        var d = Driver(path: .sockmap)
        _ = d.connect(to: 5)
        d.on(.kernelPairing(.paired(backendToClientInKernel: true, clientOpen: true)))
        d.on(.pumped(.downstream, PumpResult(endOfFile: true), now: 0))
        d.on(.flushMeasured(.backend, taken: nil, expected: 0, now: 0))
        d.on(.pumped(.upstream, PumpResult(endOfFile: true), now: 1))
        #expect(d.on(.flushMeasured(.client, taken: 7, expected: 7, now: 1)) == [
            .shutdownWrite(.backend), .close(.backendClosed, resetPeer: false, connectedTo: 5),
        ])
    }

    @Test("a reset on a spliced socket is passed on as a reset")
    func splicedReset() {
        var d = Driver(path: .sockmap)
        _ = d.connect(to: 1)
        d.on(.kernelPairing(.paired(backendToClientInKernel: true, clientOpen: true)))
        #expect(d.on(.pumped(.downstream, PumpResult(failure: (.backend, ECONNRESET)), now: 0)) == [
            .close(.backendReset, resetPeer: true, connectedTo: 1),
        ])
    }

    @Test("leftovers for a side that is full wait for it to be writable")
    func leftovers() {
        var d = Driver(path: .sockmap)
        _ = d.connect()
        d.on(.kernelPairing(.paired(backendToClientInKernel: false, clientOpen: true)))
        d.on(.pumped(.downstream, PumpResult(moved: 10, pending: true), now: 0))
        #expect(d.session.interest.client == [.readHangup, .writable])
        #expect(d.on(.ready(.client, .writable)) == [.pump(.downstream, read: false), .arm])
    }

    @Test("an EOF already read is not read again: a later hang-up only flushes what is left")
    func eofReadOnce() {
        var d = Driver(path: .sockmap)
        _ = d.connect()
        d.on(.kernelPairing(.paired(backendToClientInKernel: true, clientOpen: true)))
        d.on(.pumped(.upstream, PumpResult(endOfFile: true), now: 0))
        d.on(.flushMeasured(.client, taken: 1, expected: 2, now: 0))
        #expect(d.on(.ready(.client, .hangup)) == [.pump(.upstream, read: false), .pump(.downstream, read: false), .arm])
        #expect(d.on(.pumped(.upstream, PumpResult(), now: 1)) == [], "the flush wait already under way goes on")
    }

    @Test("an adopted spliced session re-arms for EOF and keeps its idle deadline")
    func adoptedSpliced() {
        var d = Driver(path: .sockmap)
        _ = d.connect(now: 20)
        d.on(.kernelPairing(.paired(backendToClientInKernel: true, clientOpen: true)))
        #expect(d.session.isSteady)
        #expect(d.on(.adopted) == [.schedule(.idle, at: 10_020), .arm])
    }

    @Test("kernel activity postpones the idle timeout")
    func kernelIdle() {
        var d = Driver(path: .sockmap)
        _ = d.connect(now: 0)
        d.on(.kernelPairing(.paired(backendToClientInKernel: true, clientOpen: true)))
        d.on(.kernelActivity(now: 9000))
        #expect(d.on(.timerFired(.idle, now: 10_000)) == [.schedule(.idle, at: 19_000)])
        #expect(d.on(.timerFired(.idle, now: 19_000)).contains(where: isClose))
    }
}

@Suite("TCP session: whatever happens")
struct TCPSessionInvariantTests {
    /// Every event the worker could feed, in any order.
    static let events: [TCPSession.Event] = [
        .accepted, .connecting(backend: 0, now: 1), .connecting(backend: 1, now: 2), .noEligibleBackend,
        .socketFailed(backend: 2, errno: EMFILE), .connected(now: 3), .connectFailed(errno: ECONNREFUSED),
        .connectFailed(errno: EADDRNOTAVAIL), .ready(.client, .readable), .ready(.backend, .writable),
        .ready(.client, .readHangup), .ready(.backend, [.error, .hangup]),
        .pumped(.upstream, PumpResult(moved: 5), now: 4), .pumped(.downstream, PumpResult(moved: 1, pending: true), now: 4),
        .pumped(.downstream, PumpResult(moved: 7), now: 4),
        .pumped(.upstream, PumpResult(endOfFile: true), now: 5), .pumped(.downstream, PumpResult(endOfFile: true), now: 5),
        .pumped(.downstream, PumpResult(failure: (.backend, ECONNRESET)), now: 6),
        .kernelPairing(.refused), .kernelPairing(.paired(backendToClientInKernel: false, clientOpen: true)),
        .kernelPairing(.paired(backendToClientInKernel: true, clientOpen: false)),
        .flushMeasured(.client, taken: 1, expected: 2, now: 6), .flushMeasured(.backend, taken: 2, expected: 2, now: 7),
        .kernelActivity(now: 8), .timerFired(.connect(attempt: 1), now: 9), .timerFired(.idle, now: 9),
        .timerFired(.idle, now: 20_000), .timerFired(.flush(.client), now: 9), .adopted, .drainDeadline,
    ]

    /// splice: with promotion after one small exchange, so that random events reach it.
    @Test("a session closes at most once, and asks for nothing after its close", arguments: [DataPathKind.copy, .sockmap, .splice])
    func closesOnce(path: DataPathKind) {
        var random = SplitMix(seed: path == .copy ? 1 : path == .sockmap ? 2 : 3)
        var promoted = 0
        for _ in 0..<2000 {
            let promotion = path == .splice ? SockmapPromotion(turns: 1, smallMessageBytes: 100) : nil
            var d = Driver(path: path, promotion: promotion)
            var closes = 0
            for _ in 0..<12 {
                let event = Self.events[Int(random.next() % UInt64(Self.events.count))]
                let wasClosed = d.closedWith != nil
                let actions = d.on(event)
                if wasClosed { #expect(actions.isEmpty) }
                closes += actions.filter(isClose).count
                if promotion != nil && actions.contains(.handToKernel) { promoted += 1 }
                #expect(actions.filter(isClose).isEmpty || isClose(actions.last!), "close is the last action")
            }
            #expect(closes <= 1)
            #expect((closes == 1) == (d.closedWith != nil))
            #expect(!d.session.pathsUsed.contains(.sockmap) || d.session.path == .sockmap)
        }
        if path == .splice { #expect(promoted > 0, "random events reached a promotion") }
    }
}

private struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
