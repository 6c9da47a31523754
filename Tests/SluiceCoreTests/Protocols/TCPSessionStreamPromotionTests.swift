import SluiceCore
import Testing

/// `data_path: auto` with `sockmap_after_bytes`: a one-way stream from the
/// client moves into the kernel once it has carried enough, at a moment when
/// no packet can sit half read on either socket.
@Suite("TCP session: streams promoted to the kernel")
struct TCPSessionStreamPromotionTests {
    static let promotion = SockmapPromotion(turns: nil, streamBytes: 10_000, smallMessageBytes: 1000)

    func connected() -> Driver {
        var d = Driver(path: .splice, promotion: Self.promotion)
        _ = d.connect()
        return d
    }

    /// One upstream pump of `bytes`, its last read ending as `emptied` says.
    @discardableResult
    func stream(_ d: inout Driver, _ bytes: Int, emptied: Bool?, pending: Bool = false) -> [TCPSession.Action] {
        d.on(.pumped(.upstream, PumpResult(moved: bytes, pending: pending, spliced: true, emptied: emptied), now: 1))
    }

    func isHandingOver(_ d: Driver) -> Bool {
        if case .handingOver = d.session.phase { return true }
        return false
    }

    @Test("past streamBytes from the client, on a read that emptied its socket, the session asks for the kernel")
    func promotesAStream() {
        var d = connected()
        #expect(!stream(&d, 6000, emptied: true).contains(.handToKernel))
        #expect(stream(&d, 6000, emptied: true) == [.handToKernel])
        #expect(isHandingOver(d))
        #expect(d.session.rhythm.attempted)
    }

    @Test("not while the client's last read returned bytes: a packet may sit half read on its socket")
    func waitsForAnEmptySocket() {
        var d = connected()
        #expect(!stream(&d, 20_000, emptied: false).contains(.handToKernel))
        #expect(!stream(&d, 20_000, emptied: false).contains(.handToKernel))
        #expect(stream(&d, 100, emptied: true) == [.handToKernel])
    }

    @Test("not while the backend's last read returned bytes, nor while bytes are held in userspace")
    func waitsForTheOtherSocketAndPending() {
        var d = connected()
        d.on(.pumped(.downstream, PumpResult(moved: 10, emptied: false), now: 1))
        #expect(!stream(&d, 20_000, emptied: true).contains(.handToKernel))
        d.on(.pumped(.downstream, PumpResult(moved: 0, emptied: true), now: 1))
        #expect(!stream(&d, 100, emptied: true, pending: true).contains(.handToKernel))
        #expect(stream(&d, 100, emptied: true) == [.handToKernel])
    }

    @Test("a pump that did not read keeps what the last read said")
    func pumpsWithoutReads() {
        var d = connected()
        stream(&d, 5000, emptied: false)
        #expect(!stream(&d, 6000, emptied: nil).contains(.handToKernel))
        guard case .relaying(let relay) = d.session.phase else { Issue.record("not relaying"); return }
        #expect(!relay.upstream.emptied && relay.downstream.emptied)
    }

    @Test("a change of direction starts the stream over; a stream from the backend never promotes")
    func onlyOneWayFromTheClient() {
        var d = connected()
        stream(&d, 9000, emptied: true)
        d.on(.pumped(.downstream, PumpResult(moved: 10, emptied: true), now: 1))
        #expect(!stream(&d, 9000, emptied: true).contains(.handToKernel))
        var e = connected()
        for _ in 0..<5 {
            #expect(!e.on(.pumped(.downstream, PumpResult(moved: 50_000, spliced: true, emptied: true), now: 1))
                .contains(.handToKernel))
        }
    }

    @Test("without streamBytes a stream stays in userspace; without turns small exchanges do")
    func eachRuleOnItsOwn() {
        var d = Driver(path: .splice, promotion: SockmapPromotion(turns: 2, smallMessageBytes: 1000))
        _ = d.connect()
        for _ in 0..<5 { #expect(!stream(&d, 1 << 20, emptied: true).contains(.handToKernel)) }
        var e = connected()
        for _ in 0..<10 {
            e.on(.pumped(.upstream, PumpResult(moved: 100, emptied: true), now: 1))
            #expect(!e.on(.pumped(.downstream, PumpResult(moved: 100, emptied: true), now: 1)).contains(.handToKernel))
        }
    }
}
