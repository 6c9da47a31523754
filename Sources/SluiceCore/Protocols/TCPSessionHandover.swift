/// What a steady session (relaying or in the kernel, no EOF seen, nothing
/// held in userspace) carries to another process at a binary upgrade: the
/// rest is rebuilt there (limits from its configuration, backend index from
/// its pool). Plain values, so that it crosses the process boundary as JSON.
public struct TCPSessionHandover: Codable, Sendable, Equatable {
    public var path: String
    /// In the SOCKHASH (`kernel` phase) rather than relayed in userspace.
    public var inKernel: Bool
    public var backendToClientInKernel: Bool
    public var pathsUsed: UInt8
    public var lastActivity: UInt64
    public var userspaceUpstream: UInt64
    public var userspaceDownstream: UInt64
    /// The rhythm a relaying session watches for promotion.
    public var rhythmAttempted: Bool
    public var rhythmSmallChanges: Int
    public var rhythmMessageBytes: UInt64
    public var rhythmLastFlow: String?
}

extension TCPSession {
    /// The state to hand over, or nil when the session is not steady enough:
    /// connecting, handing over, an EOF seen, a flush awaited, bytes pending.
    public var handover: TCPSessionHandover? {
        let relay: Relay, inKernel: Bool, backendToClient: Bool
        switch phase {
        case .relaying(let r):
            (relay, inKernel, backendToClient) = (r, false, false)
        case .kernel(let pair):
            guard pair.flushFromClient == nil && pair.flushFromBackend == nil else { return nil }
            (relay, inKernel, backendToClient) = (pair.relay, true, pair.backendToClientInKernel)
        case .connecting, .handingOver, .closing:
            return nil
        }
        guard relay.firstEOF == nil, relay.upstream == FlowState(), relay.downstream == FlowState() else { return nil }
        return TCPSessionHandover(
            path: path.rawValue, inKernel: inKernel, backendToClientInKernel: backendToClient, pathsUsed: pathsUsed.rawValue,
            lastActivity: lastActivity, userspaceUpstream: userspaceBytes.upstream, userspaceDownstream: userspaceBytes.downstream,
            rhythmAttempted: rhythm.attempted, rhythmSmallChanges: rhythm.smallChanges, rhythmMessageBytes: rhythm.messageBytes,
            rhythmLastFlow: rhythm.lastFlow.map { $0 == .upstream ? "upstream" : "downstream" })
    }
}
