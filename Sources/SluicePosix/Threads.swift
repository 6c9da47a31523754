import CSluice
import Glibc

private final class ThreadBody {
    let name: String
    let body: @Sendable () -> Void
    init(name: String, body: @escaping @Sendable () -> Void) {
        self.name = name
        self.body = body
    }
}

/// A plain OS thread (not Swift concurrency's cooperative pool, which epoll
/// loops must never block). Started here, outside `main.swift`, so the
/// closure does not inherit `@MainActor`. The stop signals are blocked in it:
/// they belong to the control thread's signalfd.
public struct OSThread: Sendable {
    private let handle: pthread_t

    public static func start(name: String, _ body: @escaping @Sendable () -> Void) throws(SystemCallError) -> OSThread {
        let box = Unmanaged.passRetained(ThreadBody(name: name, body: body))
        var handle = pthread_t()
        let rc = sluice_thread_create(&handle, { raw in
            let box = Unmanaged<ThreadBody>.fromOpaque(raw!).takeRetainedValue()
            _ = box.name.withCString { sluice_set_thread_name($0) }
            box.body()
            return nil
        }, box.toOpaque())
        guard rc == 0 else {
            box.release()
            throw SystemCallError(call: "pthread_create", errno: rc)
        }
        return OSThread(handle: handle)
    }

    public func join() {
        pthread_join(handle, nil)
    }
}
