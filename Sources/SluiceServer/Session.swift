import Glibc
import SluiceCore
import SluicePosix

/// How a session's bytes move between its two sockets.
public enum DataPathKind: String, Sendable {
    /// splice(2) through a pipe taken from the worker's pool while bytes are in flight.
    case splice
    /// read/write through a buffer taken from the worker's pool while bytes are in flight.
    case copy
}

/// Why a session ended; the access log prints the raw value.
enum CloseReason: String {
    case clientClosed = "client_eof"
    case backendClosed = "backend_eof"
    case clientReset = "client_reset"
    case backendReset = "backend_reset"
    case idleTimeout = "idle_timeout"
    case connectFailed = "connect_failed"
    case noBackend = "no_backend"
    case drainTimeout = "drain_timeout"
    case resourceExhausted = "resource_exhausted"
    case internalError = "internal_error"
}

enum Side: UInt64 {
    case client = 0
    case backend = 1
}

/// One direction of a proxied connection (client→backend or backend→client).
/// Holds bytes only while they are in flight: a pooled buffer (copy) or a
/// pooled pipe (splice); an idle connection holds neither.
struct Direction {
    var sourceEOF = false
    var shutdownSent = false
    var destinationBlocked = false
    var pending = 0
    var bytes: UInt64 = 0
    var buffer: UnsafeMutableRawBufferPointer?
    var bufferStart = 0
    var pipe: Pipe?

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

    let id: UInt64
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
    var backendArmed: EpollEvents?

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
