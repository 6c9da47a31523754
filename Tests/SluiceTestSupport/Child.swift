import CSluice
import Glibc
import Synchronization

/// A child process started with posix_spawn(3), in place of Foundation's
/// `Process`: that one reads /proc/self/fd before each spawn with a struct
/// copy that runs past glibc's readdir buffer (swift-corelibs-foundation
/// #5472), and a test process holding a few thousand descriptors crashed on
/// it. This is the daemon's own spawn (`sluice_spawn_stdio`): every
/// descriptor above 2 closed in the child in one action, no signal blocked or
/// ignored (the test process blocks stop signals on its peer threads and
/// ignores SIGPIPE). The child stays in the test's process group, where
/// `Tests/run` finds what is left.
public final class Child: Sendable {
    public let processIdentifier: pid_t
    /// Its status once reaped.
    private let status = Mutex<Int32?>(nil)

    /// `input`, `output` and `errors` are descriptors for the child's 0, 1
    /// and 2 (nil: /dev/null). `environment` replaces the test's environment.
    public init(_ executable: String, _ arguments: [String], environment: [String: String]? = nil,
                input: Int32? = nil, output: Int32? = nil, errors: Int32? = nil) throws(SpawnError) {
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        let envp = environment.map { $0.map { strdup("\($0.key)=\($0.value)") } + [nil] }
        defer { envp?.forEach { free($0) } }
        let stdio = [input, output, errors].map { $0 ?? SLUICE_SPAWN_NULL }
        let pid = envp.map { sluice_spawn_stdio(executable, argv, $0, stdio) } ?? sluice_spawn_stdio(executable, argv, nil, stdio)
        guard pid > 0 else { throw SpawnError(executable: executable, errno: errno) }
        processIdentifier = pid
    }

    /// Whether it has not exited yet (it is reaped when it has).
    public var isRunning: Bool { reap(blocking: false) == nil }

    public func waitUntilExit() { _ = reap(blocking: true) }

    /// Its exit status, or the number of the signal that ended it.
    /// Waits for it to exit.
    public var terminationStatus: Int32 { reap(blocking: true)! }

    public func terminate() { kill(processIdentifier, SIGTERM) }

    /// The status once it has exited. A blocking wait polls: two threads
    /// blocked in waitpid(2) on one child would leave one with ECHILD.
    private func reap(blocking: Bool) -> Int32? {
        while true {
            if let status = poll() { return status }
            if !blocking { return nil }
            usleep(2_000)
        }
    }

    private func poll() -> Int32? {
        status.withLock { status in
            if let status { return status }
            var raw: Int32 = 0
            var rc: pid_t
            repeat { rc = waitpid(processIdentifier, &raw, WNOHANG) } while rc == -1 && errno == EINTR
            guard rc == processIdentifier else { return nil }
            // WIFEXITED / WEXITSTATUS / WTERMSIG, which Swift does not import.
            status = raw & 0x7f == 0 ? (raw >> 8) & 0xff : raw & 0x7f
            return status
        }
    }
}

public struct SpawnError: Error, CustomStringConvertible {
    public let executable: String
    public let errno: Int32
    public var description: String { "cannot start \(executable): \(String(cString: strerror(errno)))" }
}
