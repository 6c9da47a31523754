import CSluice
import Glibc

// UDP sockets: the listening ones each worker binds, the connected ones
// each flow opens to its backend, and batched I/O on both.
extension Socket {
    public static func udp(family: Int32) throws(SystemCallError) -> Int32 {
        try systemCall("socket") { Glibc.socket(family, SLUICE_SOCK_DGRAM | SLUICE_SOCK_NONBLOCK | SLUICE_SOCK_CLOEXEC, 0) }
    }

    /// A UDP socket bound to `address`, one of a reuseport group. Unconnected:
    /// a connected socket in the group would change the kernel's lookup. A
    /// wildcard bind asks for each datagram's local address, to answer from it.
    public static func udpListen(on address: SocketAddress, reusePort: Bool, bufferBytes: Int32) throws(SystemCallError) -> Int32 {
        let fd = try udp(family: address.family)
        do throws(SystemCallError) {
            try setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR")
            if reusePort { try setOption(fd, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT") }
            if address.family == AF_INET6 { try setOption(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, 1, "IPV6_V6ONLY") }
            setBuffers(fd, bufferBytes)
            if address.isUnspecified {
                _ = try systemCall("setsockopt(PKTINFO)") { sluice_datagram_want_local(fd, address.family) }
            }
            _ = try systemCall("bind \(address)") { address.withSockaddr { Glibc.bind(fd, $0, $1) } }
            return fd
        } catch {
            closeDescriptor(fd)
            throw error
        }
    }

    /// A UDP socket connected to `backend`: it receives only the backend's
    /// datagrams, and ICMP errors come back as ECONNREFUSED.
    public static func udpConnect(to backend: SocketAddress, bufferBytes: Int32) throws(SystemCallError) -> Int32 {
        let fd = try udp(family: backend.family)
        setBuffers(fd, bufferBytes)
        let rc = backend.withSockaddr { Glibc.connect(fd, $0, $1) }
        if rc != 0 {
            let code = Glibc.errno
            closeDescriptor(fd)
            throw SystemCallError(call: "connect \(backend)", errno: code)
        }
        return fd
    }

    /// Best effort, and past the sysctl ceiling where the process may (root: SO_*BUFFORCE).
    private static func setBuffers(_ fd: Int32, _ bytes: Int32) {
        for (force, plain) in [(SO_RCVBUFFORCE, SO_RCVBUF), (SO_SNDBUFFORCE, SO_SNDBUF)] {
            if (try? setOption(fd, SOL_SOCKET, force, bytes, "SO_BUFFORCE")) == nil {
                try? setOption(fd, SOL_SOCKET, plain, bytes, "SO_BUF")
            }
        }
    }
}

extension SocketAddress {
    /// 0.0.0.0 or ::.
    public var isUnspecified: Bool { ipBytes.allSatisfy { $0 == 0 } }
}

/// Buffers for a batch of datagrams (recvmmsg/sendmmsg), each room for the
/// largest UDP datagram: none is ever truncated or split.
public final class DatagramBatch {
    public static let datagramCapacity = 65_536
    public let count: Int
    public let entries: UnsafeMutablePointer<sluice_datagram>
    private let storage: UnsafeMutableRawPointer

    public init(count: Int) {
        self.count = count
        storage = .allocate(byteCount: count * Self.datagramCapacity, alignment: 64)
        entries = .allocate(capacity: count)
        for i in 0..<count {
            entries[i] = sluice_datagram()
            entries[i].data = storage + i * Self.datagramCapacity
            entries[i].capacity = Self.datagramCapacity
        }
    }

    deinit {
        entries.deallocate()
        storage.deallocate()
    }

    /// Datagrams waiting on `fd`, into entries `start...`, at most `limit`:
    /// how many (0: none), or the error. A recvmmsg that finds fewer than
    /// it asked for pays for one more (empty) receive: callers that usually
    /// get one ask for few.
    public func receive(_ fd: Int32, at start: Int = 0, limit: Int = .max) -> Result<Int, SystemCallError> {
        let end = min(count, start.addingReportingOverflow(limit).overflow ? count : start + limit)
        for i in start..<end { entries[i].capacity = Self.datagramCapacity }
        let n = sluice_datagram_receive(fd, entries + start, UInt32(end - start))
        return n < 0 ? .failure(SystemCallError(call: "recvmmsg", errno: Glibc.errno)) : .success(Int(n))
    }

    /// Sends entries `range` on `fd` (to each one's peer when `addressed`):
    /// how many went, or the error of the first that did not.
    public func send(_ fd: Int32, _ range: Range<Int>, addressed: Bool) -> Result<Int, SystemCallError> {
        let n = sluice_datagram_send(fd, entries + range.lowerBound, UInt32(range.count), addressed ? 1 : 0)
        return n < 0 ? .failure(SystemCallError(call: "sendmmsg", errno: Glibc.errno)) : .success(Int(n))
    }

    public func bytes(_ i: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: entries[i].data, count: entries[i].length)
    }

    public func peer(_ i: Int) -> SocketAddress {
        SocketAddress(storage: entries[i].peer, length: entries[i].peer_length)
    }
}
