import CLibbpf
import CSluice
import Glibc
import SluicePosix

/// A UDP client's address as `udp_flows` keys it (`struct sluice_flow_key`):
/// what select_flow reads from a datagram's headers, rebuilt here from the
/// address recvmsg gave, so the worker can drop its entry. An IPv4-mapped
/// IPv6 address is the IPv4 one: the datagram on the wire was IPv4.
/// Hashable without allocating: the worker's flow table is keyed by it too.
public struct UDPFlowKey: Hashable, Sendable {
    /// The address's 16 bytes as two words (an IPv4 address in the first 4).
    let high: UInt64
    let low: UInt64
    /// Network order, as in the UDP header.
    let port: UInt16
    let family: UInt16

    public init(_ address: SocketAddress) {
        var key = sluice_flow_key()
        withUnsafeBytes(of: address.storage) { raw in
            if address.family == AF_INET6 {
                let sin6 = raw.load(as: sockaddr_in6.self)
                key.port = sin6.sin6_port
                withUnsafeBytes(of: sin6.sin6_addr) { bytes in
                    let mapped = bytes.prefix(10).allSatisfy { $0 == 0 } && bytes[10] == 0xFF && bytes[11] == 0xFF
                    withUnsafeMutableBytes(of: &key.addr) { out in
                        if mapped {
                            key.family = 4
                            out.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[12..<16]))
                        } else {
                            key.family = 6
                            out.copyMemory(from: bytes)
                        }
                    }
                }
            } else {
                let sin = raw.load(as: sockaddr_in.self)
                key.family = 4
                key.port = sin.sin_port
                withUnsafeMutableBytes(of: &key.addr) { $0.storeBytes(of: sin.sin_addr.s_addr, as: UInt32.self) }
            }
        }
        self.init(key)
    }

    init(_ key: sluice_flow_key) {
        (high, low) = withUnsafeBytes(of: key.addr) { ($0.load(as: UInt64.self), $0.load(fromByteOffset: 8, as: UInt64.self)) }
        port = key.port
        family = key.family
    }

    var cKey: sluice_flow_key {
        var key = sluice_flow_key()
        withUnsafeMutableBytes(of: &key.addr) {
            $0.storeBytes(of: high, as: UInt64.self)
            $0.storeBytes(of: low, toByteOffset: 8, as: UInt64.self)
        }
        key.port = port
        key.family = family
        return key
    }

    /// Drops this flow's entry from a `udp_flows` map: its next datagram is placed anew.
    public func forget(inMap fd: Int32) {
        var key = cKey
        _ = bpf_map_delete_elem(fd, &key)
    }

    /// The worker a `udp_flows` map sends this flow to, if it has an entry.
    public func owner(inMap fd: Int32) -> UInt32? {
        var key = cKey
        var worker: UInt32 = 0
        return bpf_map_lookup_elem(fd, &key, &worker) == 0 ? worker : nil
    }
}
