import SluiceCore
import SluicePosix

extension Worker {
    /// A connect that failed for lack of a local resource (descriptors,
    /// buffers, memory, local ports) is counted as such, never against the
    /// backend, and the client is closed rather than tried on the next
    /// backend: the shortage is this host's, so every other backend would
    /// fail the same way while the client waits longer and holds more of
    /// what ran out. Closing sheds load until the shortage passes, which is
    /// what an operator watching the local-error counter expects; a failure
    /// that is the backend's still moves on to the next one.
    /// Returns false, having done nothing, when the failure is the backend's.
    func closeOnLocalFailure(_ session: Session, errno code: Int32) -> Bool {
        guard FailureBlame(errno: code) == .local else { return false }
        if let index = session.backendIndex { noteLocalFailure(errno: code, backend: session.listener.pool.addresses[index]) }
        abandonBackendAttempt(session, blamingBackend: false)
        close(session, reason: .resourceExhausted)
        return true
    }

    /// Counts (and, once a second, logs) a local failure; ignores the backend's.
    func noteLocalFailure(errno code: Int32, backend: SocketAddress) {
        guard FailureBlame(errno: code) == .local else { return }
        settings.localResourceErrors.record(.connect, errno: code, backend: backend, logger: logger)
    }
}
