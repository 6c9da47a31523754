import SluicePosix

/// What start-up has acquired, released in reverse order on every way out of
/// `serve()`: a failed step needs no cleanup of its own beyond what it made
/// itself, and nothing is closed twice.
final class ReleaseStack {
    private var releases: [() -> Void] = []

    /// `release` runs once, after everything pushed later.
    func push(_ release: @escaping () -> Void) { releases.append(release) }

    /// Keeps `object` alive until the stack unwinds to it (its deinit is its release).
    func hold(_ object: AnyObject?) {
        guard let object else { return }
        releases.append { withExtendedLifetime(object) {} }
    }

    func releaseAll() {
        while let release = releases.popLast() { release() }
    }
}

/// The listening sockets, one list per worker (index: listener), owned here
/// until each worker takes its own.
final class BoundListeners {
    private(set) var byWorker: [[Int32]]

    init(workers: Int) { byWorker = Array(repeating: [], count: workers) }

    func add(_ fd: Int32, worker: Int) { byWorker[worker].append(fd) }

    /// The sockets of every worker for one listener.
    func sockets(listener index: Int) -> [Int32] { byWorker.map { $0[index] } }

    /// Worker `k` owns its sockets now: they are no longer closed here.
    func handOver(worker k: Int) { byWorker[k] = [] }

    func close() {
        for fds in byWorker { for fd in fds { closeDescriptor(fd) } }
        byWorker = byWorker.map { _ in [] }
    }
}
