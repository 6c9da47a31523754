import Glibc
import SluiceCore
import Testing

@Suite("Failure blame: local shortages are not backend failures")
struct FailureBlameTests {
    @Test("running out of descriptors, buffers, memory or local ports is this host's problem",
          arguments: [EMFILE, ENFILE, ENOBUFS, ENOMEM, EADDRNOTAVAIL])
    func local(code: Int32) {
        #expect(FailureBlame(errno: code) == .local)
    }

    @Test("refusals, resets, unreachable networks and timeouts are the backend's",
          arguments: [ECONNREFUSED, ECONNRESET, ETIMEDOUT, EHOSTUNREACH, ENETUNREACH, EPIPE, ECONNABORTED])
    func backend(code: Int32) {
        #expect(FailureBlame(errno: code) == .backend)
    }
}
