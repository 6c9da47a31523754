import CLibbpf
import CSluice
import Glibc
import SluicePosix

/// The in-kernel data path: the `sockmap_socks` SOCKHASH with `redirect_peer`
/// attached as its stream verdict, and the `sockmap_peers` pairing map. Safe
/// to call from every worker thread (each call is one bpf syscall).
public final class SockmapPairs: @unchecked Sendable {
    private let object: BPFObject
    let socks: Int32
    let peers: Int32
    public let capacity: Int

    /// - workerLoadFD: the steering object's `worker_load`, so redirected bytes
    ///   add to the same per-worker totals; nil gives the object its own.
    /// - pairs: how many paired connections can exist at once.
    /// - adoptingPins: an instance directory whose pinned SOCKHASH and
    ///   pairing map are taken over (a binary upgrade: the pairs in them keep
    ///   flowing); the verdict program attached anew replaces the old one
    ///   for sockets inserted from now on.
    public init(workerLoadFD: Int32?, pairs: Int, adoptingPins: String? = nil) throws(BPFError) {
        let object = try BPFObject(
            bytes: embeddedSockmapObject, name: "sockmap",
            expectedPrograms: SockmapBPFLayout.programs, expectedMaps: SockmapBPFLayout.maps)
        do throws(BPFError) {
            let entries = UInt32(clamping: max(2, pairs * 2))
            try object.setMaxEntries(.sockmapSocks, entries)
            try object.setMaxEntries(.sockmapPeers, entries)
            if let workerLoadFD { try object.reuseMap(.workerLoad, fd: workerLoadFD) }
            if let adoptingPins {
                for name in PinLayout.pinnedSockmapMaps { try object.reusePinnedMap(name, path: "\(adoptingPins)/\(name.rawValue)") }
            }
            try object.load(capabilityHint: "a SOCKHASH and its verdict program need CAP_BPF and CAP_NET_ADMIN")
            socks = try object.mapFD(.sockmapSocks)
            peers = try object.mapFD(.sockmapPeers)
            let prog = try object.programFD(.redirectPeer)
            if bpf_prog_attach(prog, socks, BPF_SK_SKB_STREAM_VERDICT, 0) != 0 {
                throw BPFError("attaching redirect_peer to sockmap_socks failed: \(errnoDescription(errno)) (needs CAP_NET_ADMIN)")
            }
        } catch {
            object.close()
            throw error
        }
        self.object = object
        capacity = max(1, pairs)
    }

    deinit { close() }

    public func close() { object.close() }

    /// Pins the sockmap maps into an existing instance directory (mode 0640).
    /// They go when the directory is removed at stop.
    public func pin(into directory: String) throws(BPFError) {
        for name in PinLayout.pinnedSockmapMaps {
            let path = "\(directory)/\(name.rawValue)"
            FileSystem.removeFile(path)
            if bpf_obj_pin(try object.mapFD(name), path) != 0 {
                throw BPFError("pinning \(name.rawValue) failed: \(errnoDescription(errno))")
            }
            try? FileSystem.changeMode(path, 0o640)
        }
    }

    /// Adds a socket to the SOCKHASH under its cookie.
    public func insertSocket(_ fd: Int32, cookie: UInt64) throws(SystemCallError) {
        var key = cookie
        var value = UInt64(fd)
        _ = try systemCall("sockmap_socks insert") { bpf_map_update_elem(socks, &key, &value, UInt64(BPF_NOEXIST)) }
    }

    public func removeSocket(cookie: UInt64) {
        var key = cookie
        _ = bpf_map_delete_elem(socks, &key)
    }

    /// Pairs `cookie`'s incoming bytes with `peer`: from now on they are redirected there.
    public func insertPeer(cookie: UInt64, peer: UInt64, worker: Int, fromClient: Bool) throws(SystemCallError) {
        var key = cookie
        var value = sluice_sockmap_peer(
            peer: peer, bytes: 0, worker: UInt64(worker),
            side: UInt64(fromClient ? SLUICE_SIDE_CLIENT : SLUICE_SIDE_BACKEND))
        _ = try systemCall("sockmap_peers insert") { bpf_map_update_elem(peers, &key, &value, UInt64(BPF_NOEXIST)) }
    }

    /// Credits the bytes redirected from this socket from now on to `worker`
    /// (a connection handed to another worker or process).
    public func moveOwner(cookie: UInt64, worker: Int) {
        var key = cookie
        var value = sluice_sockmap_peer()
        guard bpf_map_lookup_elem(peers, &key, &value) == 0 else { return }
        value.worker = UInt64(worker)
        _ = bpf_map_update_elem(peers, &key, &value, UInt64(BPF_EXIST))
    }

    /// Bytes the kernel has redirected from this socket so far.
    public func redirectedBytes(cookie: UInt64) -> UInt64? {
        var key = cookie
        var value = sluice_sockmap_peer()
        return bpf_map_lookup_elem(peers, &key, &value) == 0 ? value.bytes : nil
    }

    public func removePeer(cookie: UInt64) {
        var key = cookie
        _ = bpf_map_delete_elem(peers, &key)
    }
}

public func socketCookie(_ fd: Int32) throws(SystemCallError) -> UInt64 {
    var cookie: UInt64 = 0
    _ = try systemCall("getsockopt(SO_COOKIE)") { sluice_socket_cookie(fd, &cookie) }
    return cookie
}

/// Bytes that have entered a socket's send path, and its TCP state.
public func tcpProgress(_ fd: Int32) throws(SystemCallError) -> (written: UInt64, established: Bool) {
    var written: UInt64 = 0
    var state: UInt8 = 0
    _ = try systemCall("getsockopt(TCP_INFO)") { sluice_tcp_progress(fd, &written, &state) }
    return (written, Int32(state) == SLUICE_TCP_ESTABLISHED)
}

/// Two blocking loopback connections, (client ↔ proxyA) and (proxyB ↔ server):
/// proxyA and proxyB play a proxy's two sockets. For the start-up self-test
/// and the data-path measurement.
public struct LoopbackConnections {
    public private(set) var client: Int32 = -1, proxyA: Int32 = -1, proxyB: Int32 = -1, server: Int32 = -1
    private var fds: [Int32] = []

    public init(receiveTimeoutSeconds: Int = 2) throws(SystemCallError) {
        func pair(_ fds: inout [Int32]) throws(SystemCallError) -> (Int32, Int32) {
            let listener = try Socket.listen(on: SocketAddress(ip: "127.0.0.1", port: 0)!, reusePort: false, backlog: 4)
            defer { closeDescriptor(listener) }
            let outer = try Socket.blockingTCP(family: AF_INET)
            fds.append(outer)
            _ = try Socket.connect(outer, to: try Socket.localAddress(listener))
            let inner = try Socket.acceptBlocking(listener)
            fds.append(inner)
            return (outer, inner)
        }
        do throws(SystemCallError) {
            (client, proxyA) = try pair(&fds)
            (proxyB, server) = try pair(&fds)
        } catch {
            close()
            throw error
        }
        for fd in fds {
            Socket.setNoDelay(fd)
            try? Socket.setReceiveTimeout(fd, seconds: receiveTimeoutSeconds)
        }
    }

    public func close() { for fd in fds { closeDescriptor(fd) } }
}

extension SockmapPairs {
    /// Send buffer of paired sockets: with the default, redirects back up
    /// and the sockmap path runs at a third of splice(2)'s speed.
    public static let sendBuffer: Int32 = 16 << 20
    /// TCP_NOTSENT_LOWAT of paired sockets: the kernel's redirect backlog
    /// gives up on a socket that is not writable (less than half its send
    /// buffer free) without asking TCP to call it back when room appears, and
    /// the transfer stalls for good. With a small not-sent low-water mark,
    /// TCP's own "no room" path trips first, and that one does ask.
    public static let notSentLowWater: Int32 = 256 << 10

    /// Send-side settings every socket needs before it is paired.
    public static func prepare(_ fd: Int32) {
        try? Socket.setOption(fd, SOL_SOCKET, SO_SNDBUFFORCE, sendBuffer, "SO_SNDBUFFORCE")
        try? Socket.setOption(fd, Int32(IPPROTO_TCP), 25 /* TCP_NOTSENT_LOWAT */, notSentLowWater, "TCP_NOTSENT_LOWAT")
    }

    /// Pairs two sockets both ways, in the order that drops nothing: a's
    /// pairing, b's socket, a's socket, b's pairing (a redirect to a socket
    /// not yet in the SOCKHASH would drop the bytes). For sockets that carry
    /// no data yet; the workers add checks of their own around each step.
    public func pair(_ a: Int32, _ b: Int32, worker: Int) throws(SystemCallError) -> (UInt64, UInt64) {
        let cookieA = try socketCookie(a), cookieB = try socketCookie(b)
        try insertPeer(cookie: cookieA, peer: cookieB, worker: worker, fromClient: true)
        try insertSocket(b, cookie: cookieB)
        try insertSocket(a, cookie: cookieA)
        try insertPeer(cookie: cookieB, peer: cookieA, worker: worker, fromClient: false)
        return (cookieA, cookieB)
    }

    /// Pairs two loopback connections and checks that bytes cross both
    /// ways. Returns nil when the kernel path works, else why not.
    public func selfTest() -> String? {
        func transfer(from: Int32, to: Int32, count: Int) -> Bool {
            let bytes = [UInt8](repeating: 0x5A, count: count)
            var sent = 0
            var received = 0
            var buffer = [UInt8](repeating: 0, count: 65536)
            let deadline = monotonicMilliseconds() + 2000
            while received < count && monotonicMilliseconds() < deadline {
                if sent < count, case .done(let n)? = bytes[sent...].withUnsafeBytes({ try? Socket.sendWithoutWaiting(from, from: $0) }) {
                    sent += n
                }
                _ = try? Poll.wait([(to, .readable)], timeoutMilliseconds: 10)
                if case .done(let n)? = buffer.withUnsafeMutableBytes({ try? Socket.receiveWithoutWaiting(to, into: $0) }) {
                    received += n
                }
            }
            return received == count
        }
        do {
            let c = try LoopbackConnections()
            defer { c.close() }
            let (a, b) = try pair(c.proxyA, c.proxyB, worker: 0)
            defer {
                removePeer(cookie: a)
                removePeer(cookie: b)
            }
            guard transfer(from: c.client, to: c.server, count: 256 * 1024) else { return "bytes did not reach the backend side" }
            guard transfer(from: c.server, to: c.client, count: 256 * 1024) else { return "bytes did not reach the client side" }
            return nil
        } catch {
            return "\(error)"
        }
    }
}
