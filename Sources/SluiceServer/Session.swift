import CSluice
import Glibc
import SluiceCore
import SluicePosix

/// One direction of a proxied connection (client→backend or backend→client).
/// Holds bytes only while they are in flight: a pooled buffer (copy) or a
/// pooled pipe (splice); an idle connection holds neither.
struct Direction {
    var sourceEOF = false
    var shutdownSent = false
    var pending = 0
    var bytes: UInt64 = 0
    var buffer: UnsafeMutableRawBufferPointer?
    var bufferStart = 0
    var pipe: Pipe?
    /// On the splice path: whether the next read goes through a pipe. Small
    /// exchanges are cheaper with read/write; a read that fills a whole
    /// buffer means a bulk transfer, which splice(2) moves with no copy.
    var bulk = false

    var wantsRead: Bool { !sourceEOF && pending == 0 }
    var wantsWrite: Bool { pending > 0 }
    var finished: Bool { shutdownSent }
}

/// A failure on one side of a session while moving bytes.
struct SideFailure: Error {
    let side: Side
    let error: SystemCallError
}

/// A proxied connection, owned and touched by one worker thread only.
final class Session {
    enum Phase { case connecting, proxying }

    /// Unique within the owning worker (a moved session gets a new one).
    var id: UInt64
    let listener: RuntimeListener
    let client: Int32
    let clientAddress: SocketAddress
    let clientKey: UInt64
    let startedNanoseconds: UInt64
    var phase: Phase = .connecting

    var backend: Int32 = -1
    var backendIndex: Int?
    var triedBackends: [Int] = []
    var connectTimer: TimerID?
    var idleTimer: TimerID?
    var lastActivityMilliseconds: UInt64

    /// What each fd is armed for in epoll right now; nil when not armed
    /// (oneshot fired, or never added).
    var clientArmed: EpollEvents?
    var clientAdded = false
    /// Whether the backend socket is in this worker's epoll (it is added at
    /// connect; a session adopted from another worker starts outside).
    var backendAdded = false
    var backendArmed: EpollEvents?

    /// How this session's bytes move (sockmap sessions that could not be
    /// spliced fall back to splice).
    var path: DataPathKind = .splice
    /// Set while the kernel splices this session.
    var spliced: SplicedPair?

    var upstream = Direction()   // client → backend
    var downstream = Direction() // backend → client
    var firstEOF: Side?

    init(id: UInt64, listener: RuntimeListener, client: Int32, clientAddress: SocketAddress, now: UInt64) {
        self.id = id
        self.listener = listener
        self.client = client
        self.clientAddress = clientAddress
        self.clientKey = hashClientAddress(clientAddress.ipBytes)
        self.startedNanoseconds = monotonicNanoseconds()
        self.lastActivityMilliseconds = now
    }

    var backendDescription: String? {
        backendIndex.map { listener.pool.addresses[$0].description }
    }
}

/// Kernel-side state of a session spliced through the SOCKHASH.
final class SplicedPair {
    let clientCookie: UInt64
    let backendCookie: UInt64
    /// Bytes that had entered each socket's send path before splicing began:
    /// the baseline for "has the peer taken every redirected byte".
    let clientSentBase: UInt64
    let backendSentBase: UInt64
    /// Bytes userspace itself wrote (data that reached a socket before its pairing).
    var userspaceToClient: UInt64 = 0
    var userspaceToBackend: UInt64 = 0
    /// After an EOF: how much of the redirected bytes the peer had taken at
    /// the last look, when that last grew, and the current polling interval.
    var flushProgress: [Side: (taken: UInt64, at: UInt64, interval: UInt64)] = [:]
    /// Redirected byte total at the last idle check.
    var lastRedirected: UInt64 = 0
    /// Whether the kernel carries backend-to-client bytes. Not when the
    /// client's FIN arrived around its insertion: the kernel then drops
    /// what it redirects into that socket, so userspace carries them.
    var backendToClientInKernel = true

    init(clientCookie: UInt64, backendCookie: UInt64, clientSentBase: UInt64, backendSentBase: UInt64) {
        self.clientCookie = clientCookie
        self.backendCookie = backendCookie
        self.clientSentBase = clientSentBase
        self.backendSentBase = backendSentBase
    }
}
