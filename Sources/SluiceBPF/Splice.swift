import CLibbpf
import CSluice
import Glibc
import SluicePosix

/// The in-kernel data path: the `splice_socks` SOCKHASH with `splice_verdict`
/// attached as its stream verdict, and the `splice_peers` pairing map. Safe
/// to call from every worker thread (each call is one bpf syscall).
public final class KernelSplice: @unchecked Sendable {
    private let object: BPFObject
    private let socks: Int32
    private let peers: Int32
    public let capacity: Int

    /// - workerLoadFD: the steering object's `worker_load`, so spliced bytes
    ///   add to the same per-worker totals; nil gives the object its own.
    /// - pairs: how many spliced connections can exist at once.
    public init(workerLoadFD: Int32?, pairs: Int) throws(BPFError) {
        let object = try BPFObject(
            bytes: embeddedSpliceObject, name: "splice",
            expectedPrograms: SpliceBPFLayout.programs, expectedMaps: SpliceBPFLayout.maps)
        do throws(BPFError) {
            let entries = UInt32(clamping: max(2, pairs * 2))
            try object.setMaxEntries("splice_socks", entries)
            try object.setMaxEntries("splice_peers", entries)
            if let workerLoadFD { try object.reuseMap("worker_load", fd: workerLoadFD) }
            try object.load(capabilityHint: "a SOCKHASH and its verdict program need CAP_BPF and CAP_NET_ADMIN")
            socks = try object.mapFD("splice_socks")
            peers = try object.mapFD("splice_peers")
            let prog = try object.programFD("splice_verdict")
            if bpf_prog_attach(prog, socks, BPF_SK_SKB_STREAM_VERDICT, 0) != 0 {
                throw BPFError("attaching splice_verdict to splice_socks failed: \(errnoDescription(errno)) (needs CAP_NET_ADMIN)")
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

    public var programID: UInt32? { try? object.programID("splice_verdict") }

    /// The maps pinned beside the instance's steering maps, for bpftool.
    public static let pinnedMaps = ["splice_socks", "splice_peers"]

    /// Pins the splice maps into an existing instance directory (mode 0640).
    /// They go when the directory is removed at stop.
    public func pin(into directory: String) throws(BPFError) {
        for name in Self.pinnedMaps {
            let path = "\(directory)/\(name)"
            unlink(path)
            if bpf_obj_pin(try object.mapFD(name), path) != 0 {
                throw BPFError("pinning \(name) failed: \(errnoDescription(errno))")
            }
            chmod(path, 0o640)
        }
    }
    public func mapID(_ name: String) -> UInt32? { try? object.mapID(name) }

    /// Adds a socket to the SOCKHASH under its cookie.
    public func insertSocket(_ fd: Int32, cookie: UInt64) throws(SystemCallError) {
        var key = cookie
        var value = UInt64(fd)
        _ = try systemCall("splice_socks insert") { bpf_map_update_elem(socks, &key, &value, UInt64(BPF_NOEXIST)) }
    }

    public func removeSocket(cookie: UInt64) {
        var key = cookie
        _ = bpf_map_delete_elem(socks, &key)
    }

    /// Pairs `cookie`'s incoming bytes with `peer`: from now on they are redirected there.
    public func insertPeer(cookie: UInt64, peer: UInt64, worker: Int, fromClient: Bool) throws(SystemCallError) {
        var key = cookie
        var value = sluice_splice_peer(
            peer: peer, bytes: 0, worker: UInt64(worker),
            side: UInt64(fromClient ? SLUICE_SIDE_CLIENT : SLUICE_SIDE_BACKEND))
        _ = try systemCall("splice_peers insert") { bpf_map_update_elem(peers, &key, &value, UInt64(BPF_NOEXIST)) }
    }

    /// Bytes the kernel has redirected from this socket so far.
    public func redirectedBytes(cookie: UInt64) -> UInt64? {
        var key = cookie
        var value = sluice_splice_peer()
        return bpf_map_lookup_elem(peers, &key, &value) == 0 ? value.bytes : nil
    }

    public func removePeer(cookie: UInt64) {
        var key = cookie
        _ = bpf_map_delete_elem(peers, &key)
    }

    /// Entries in each map (walks the keys; for tests and status).
    public var entryCounts: (sockets: Int, peers: Int) { (countKeys(socks), countKeys(peers)) }

    private func countKeys(_ fd: Int32) -> Int {
        var key: UInt64 = 0
        var next: UInt64 = 0
        var count = 0
        var rc = bpf_map_get_next_key(fd, nil, &next)
        while rc == 0 {
            count += 1
            key = next
            rc = bpf_map_get_next_key(fd, &key, &next)
        }
        return count
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

extension KernelSplice {
    /// Splices two loopback connections and checks that bytes cross both
    /// ways. Returns nil when the kernel path works, else why not.
    public func selfTest() -> String? {
        var fds: [Int32] = []
        defer { for fd in fds { closeDescriptor(fd) } }
        func pair() throws(SystemCallError) -> (outer: Int32, inner: Int32) {
            let listener = try Socket.listen(on: SocketAddress(ip: "127.0.0.1", port: 0)!, reusePort: false, backlog: 4)
            defer { closeDescriptor(listener) }
            let outer = try Socket.tcp(family: AF_INET)
            fds.append(outer)
            _ = try Socket.connect(outer, to: try Socket.localAddress(listener))
            for _ in 0..<1000 {
                if case .done(let (inner, _)) = try Socket.accept(listener) {
                    fds.append(inner)
                    return (outer, inner)
                }
                usleep(1000)
            }
            throw SystemCallError(call: "accept (self-test)", errno: ETIMEDOUT)
        }
        func transfer(from: Int32, to: Int32, count: Int) -> Bool {
            let bytes = [UInt8](repeating: 0x5A, count: count)
            var sent = 0
            var received = 0
            var buffer = [UInt8](repeating: 0, count: 65536)
            let deadline = monotonicMilliseconds() + 2000
            while received < count && monotonicMilliseconds() < deadline {
                if sent < count {
                    let n = bytes[sent...].withUnsafeBytes { Glibc.send(from, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                    if n > 0 { sent += n }
                }
                var pfd = pollfd(fd: to, events: Int16(POLLIN), revents: 0)
                _ = poll(&pfd, 1, 10)
                let n = Glibc.recv(to, &buffer, buffer.count, Int32(MSG_DONTWAIT))
                if n > 0 { received += n }
            }
            return received == count
        }
        do {
            let (client, proxyA) = try pair()
            let (proxyB, server) = try pair()
            let a = try socketCookie(proxyA)
            let b = try socketCookie(proxyB)
            try insertPeer(cookie: a, peer: b, worker: 0, fromClient: true)
            defer { removePeer(cookie: a) }
            try insertSocket(proxyB, cookie: b)
            try insertSocket(proxyA, cookie: a)
            try insertPeer(cookie: b, peer: a, worker: 0, fromClient: false)
            defer { removePeer(cookie: b) }
            guard transfer(from: client, to: server, count: 256 * 1024) else { return "bytes did not reach the backend side" }
            guard transfer(from: server, to: client, count: 256 * 1024) else { return "bytes did not reach the client side" }
            return nil
        } catch {
            return "\(error)"
        }
    }
}
