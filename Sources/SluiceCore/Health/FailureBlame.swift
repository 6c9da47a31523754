#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Whom a failed connection attempt (a proxied connect or a health check)
/// says something about. Only a backend's own failures may mark it down or
/// eject it: a proxy that ran out of descriptors would otherwise eject every
/// healthy backend at once, and stay empty-handed after the shortage passed.
public enum FailureBlame: Sendable, Equatable {
    /// This host ran short (descriptors, socket buffers, memory, local
    /// ports): the backend was never asked.
    case local
    /// The backend, or the path to it: refused, reset, unreachable, timed out.
    case backend

    public init(errno code: Int32) {
        switch code {
        case EMFILE, ENFILE, ENOBUFS, ENOMEM:
            self = .local
        case EADDRNOTAVAIL:
            // From connect(2): no free local port for this destination.
            self = .local
        default:
            self = .backend
        }
    }
}
