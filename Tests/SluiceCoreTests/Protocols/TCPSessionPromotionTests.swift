import SluiceCore
import Testing

/// `data_path: auto`: a session starts in userspace and moves into the
/// kernel after enough small request/response exchanges.
@Suite("TCP session: promotion to the kernel")
struct TCPSessionPromotionTests {
    static let promotion = SockmapPromotion(turns: 3, smallMessageBytes: 1000)

    /// Connected on the splice path with promotion after three small exchanges.
    func connected() -> Driver {
        var d = Driver(path: .splice, promotion: Self.promotion)
        _ = d.connect()
        return d
    }

    /// One request and its response, each `bytes` long; the actions of the response's pump.
    @discardableResult
    func exchange(_ d: inout Driver, request: Int = 100, response: Int = 300, spliced: Bool = false) -> [TCPSession.Action] {
        d.on(.pumped(.upstream, PumpResult(moved: request), now: 1))
        return d.on(.pumped(.downstream, PumpResult(moved: response, spliced: spliced), now: 1))
    }

    func isHandingOver(_ d: Driver) -> Bool {
        if case .handingOver = d.session.phase { return true }
        return false
    }

    @Test("after `turns` small exchanges, at the end of a response, the session asks to be handed to the kernel")
    func promotesAfterTurns() {
        var d = connected()
        #expect(!exchange(&d).contains(.handToKernel))
        #expect(!exchange(&d).contains(.handToKernel))
        #expect(exchange(&d) == [.handToKernel])
        #expect(isHandingOver(d))
        #expect(d.session.rhythm.attempted)
    }

    @Test("a response that arrives in several pumps is one message: only changes of direction count")
    func pumpsOfOneMessage() {
        var d = connected()
        for _ in 0..<2 { exchange(&d) }
        d.on(.pumped(.upstream, PumpResult(moved: 50), now: 1))
        d.on(.pumped(.upstream, PumpResult(moved: 50), now: 1))
        #expect(d.on(.pumped(.downstream, PumpResult(moved: 200), now: 1)) == [.handToKernel])
    }

    @Test("a bulk message starts the count over; a bulk response is never the moment to promote")
    func bulkResets() {
        var d = connected()
        for _ in 0..<2 { exchange(&d) }
        #expect(!exchange(&d, response: 1 << 20).contains(.handToKernel))
        #expect(d.session.rhythm.smallChanges == 0)
        // Bulk in several pumps: the message grows past the limit.
        exchange(&d)
        d.on(.pumped(.upstream, PumpResult(moved: 100), now: 1))
        d.on(.pumped(.downstream, PumpResult(moved: 600), now: 1))
        #expect(!d.on(.pumped(.downstream, PumpResult(moved: 600), now: 1)).contains(.handToKernel))
        #expect(d.session.rhythm.smallChanges == 0)
        for _ in 0..<2 { exchange(&d) }
        #expect(!isHandingOver(d))
        #expect(exchange(&d) == [.handToKernel])
    }

    @Test("a bulk request starts the count over too")
    func bulkRequestResets() {
        var d = connected()
        for _ in 0..<2 { exchange(&d) }
        #expect(!exchange(&d, request: 5000).contains(.handToKernel))
        for _ in 0..<2 { exchange(&d) }
        #expect(exchange(&d) == [.handToKernel])
    }

    @Test("not while bytes are held in userspace: a response still pending waits for the next quiet moment")
    func notWhilePending() {
        var d = connected()
        for _ in 0..<2 { exchange(&d) }
        d.on(.pumped(.upstream, PumpResult(moved: 100), now: 1))
        #expect(!d.on(.pumped(.downstream, PumpResult(moved: 100, pending: true), now: 1)).contains(.handToKernel))
        #expect(d.on(.pumped(.downstream, PumpResult(moved: 100), now: 1)) == [.handToKernel])
    }

    @Test("not after an EOF: the pairing must not swallow it", arguments: [Flow.upstream, Flow.downstream])
    func notAfterEOF(flow: Flow) {
        var d = connected()
        for _ in 0..<2 { exchange(&d) }
        d.on(.pumped(flow, PumpResult(endOfFile: true), now: 1))
        d.on(.pumped(.upstream, PumpResult(moved: 100), now: 1))
        #expect(!d.on(.pumped(.downstream, PumpResult(moved: 100), now: 1)).contains(.handToKernel))
        #expect(!isHandingOver(d))
    }

    @Test("not at the end of a request: the backend's answer would race the pairing")
    func notAfterRequest() {
        var d = connected()
        for _ in 0..<3 { exchange(&d) }
        var e = connected()
        for _ in 0..<2 { exchange(&e) }
        e.on(.pumped(.upstream, PumpResult(moved: 100), now: 1))
        #expect(!isHandingOver(e))
        #expect(isHandingOver(d))
    }

    @Test("a promoted session is in the kernel: path sockmap, both paths named, interest EOF only")
    func paired() {
        var d = connected()
        exchange(&d, spliced: true)
        for _ in 0..<2 { exchange(&d) }
        #expect(d.on(.kernelPairing(.paired(backendToClientInKernel: true, clientOpen: true))) == [.arm])
        #expect(d.session.path == .sockmap)
        #expect(d.session.pathsUsed == [.copy, .splice, .sockmap])
        #expect(d.session.pathsUsed.description == "copy+splice+sockmap")
        #expect(d.session.interest.client == [.readHangup])
        #expect(d.session.isSteady)
    }

    @Test("a backend answer that raced the pairing keeps its direction in userspace")
    func pairedWithBackendBytes() {
        var d = connected()
        for _ in 0..<3 { exchange(&d) }
        #expect(d.on(.kernelPairing(.paired(backendToClientInKernel: false, clientOpen: true)))
            == [.pump(.downstream, read: true), .arm])
        #expect(d.session.interest.backend == [.readHangup, .readable])
    }

    @Test("a refused promotion stays in userspace on its path and is not tried again")
    func refusedStays() {
        var d = connected()
        for _ in 0..<3 { exchange(&d) }
        #expect(d.on(.kernelPairing(.refused)) == [.arm])
        #expect(d.session.path == .splice)
        #expect(d.session.interest.client == [.readable, .readHangup])
        for _ in 0..<10 { #expect(!exchange(&d).contains(.handToKernel)) }
    }

    @Test("a pairing broken half-way closes the session")
    func failedCloses() {
        var d = connected()
        for _ in 0..<3 { exchange(&d) }
        let actions = d.on(.kernelPairing(.failed(.internalError, resetPeer: true)))
        #expect(actions == [.close(.internalError, resetPeer: true, connectedTo: 0)])
    }

    @Test("without a promotion (a fixed data path) a session never leaves userspace")
    func fixedPathStays() {
        var d = Driver(path: .splice)
        _ = d.connect()
        for _ in 0..<50 { #expect(!exchange(&d).contains(.handToKernel)) }
        #expect(d.session.pathsUsed == [.copy])
    }

    @Test("one turn is enough when `turns` is 1")
    func singleTurn() {
        var d = Driver(path: .copy, promotion: SockmapPromotion(turns: 1, smallMessageBytes: 1000))
        _ = d.connect()
        #expect(exchange(&d) == [.handToKernel])
    }
}
