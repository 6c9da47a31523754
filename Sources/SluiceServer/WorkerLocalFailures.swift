import SluiceCore
import SluicePosix

extension Worker {
    /// Counts (and, once a second, logs) a local failure; ignores the backend's.
    /// A connect that failed for lack of a local resource closes the client
    /// rather than trying the next backend (the session decides that: see
    /// `TCPSession`): every other backend would fail the same way.
    func noteLocalFailure(errno code: Int32, backend: SocketAddress) {
        guard FailureBlame(errno: code) == .local else { return }
        settings.localResourceErrors.record(.connect, errno: code, backend: backend, logger: logger)
    }
}
