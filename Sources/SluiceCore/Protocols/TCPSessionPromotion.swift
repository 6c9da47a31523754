// Promotion to the kernel (`data_path: auto`): when a relaying session asks
// to be handed to the SOCKHASH. See `SockmapPromotion` for the two rules.
extension TCPSession {
    /// Follows the rhythm: a change of direction ends a message, which is
    /// small or bulk; bulk starts the count of small turns over.
    mutating func keepTime(_ flow: Flow, moved: UInt64, _ promotion: SockmapPromotion) {
        if rhythm.lastFlow != flow {
            if rhythm.lastFlow != nil {
                rhythm.smallChanges = rhythm.messageBytes <= promotion.smallMessageBytes ? rhythm.smallChanges + 1 : 0
            }
            rhythm.lastFlow = flow
            rhythm.messageBytes = 0
        }
        rhythm.messageBytes += moved
        if rhythm.messageBytes > promotion.smallMessageBytes { rhythm.smallChanges = 0 }
    }

    /// At a quiet moment only: nothing held in userspace (bytes queued on a
    /// socket the kernel forwards in order), no EOF seen (the pairing must
    /// not swallow one), and for a stream, no packet half read on either
    /// socket. Then after `turns` small exchanges, at the end of a response;
    /// or after `streamBytes` from the client in one message.
    func promotionDue(after flow: Flow, _ result: PumpResult, _ relay: Relay) -> Bool {
        guard let promotion = limits.promotion, !rhythm.attempted,
              !relay.upstream.pending, !relay.downstream.pending,
              !relay.upstream.sourceEOF, !relay.downstream.sourceEOF else { return false }
        if let turns = promotion.turns, flow == .downstream, result.moved > 0,
           rhythm.smallChanges >= 2 * turns - 1, rhythm.messageBytes <= promotion.smallMessageBytes {
            return true
        }
        // Any pump of the stream's flow may be the one whose read emptied the socket.
        return awaitsEmptySource(flow) && relay.upstream.emptied && relay.downstream.emptied
    }

    /// A stream from the client past `streamBytes` waits for a read that
    /// empties the client's socket; from a sender faster than one pump's
    /// fairness budget none may come: the worker lets this flow's pumps run
    /// longer (once, until the promotion is tried).
    /// (Inlinable: the worker asks on every pump, and a call across the
    /// module boundary would copy the whole session.)
    @inlinable
    public func awaitsEmptySource(_ flow: Flow) -> Bool {
        guard let streamBytes = limits.promotion?.streamBytes, !rhythm.attempted, flow == .upstream,
              rhythm.lastFlow == .upstream else { return false }
        return rhythm.messageBytes >= streamBytes
    }
}
