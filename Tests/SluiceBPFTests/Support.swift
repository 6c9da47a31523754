// Helpers shared by the BPF tests: privilege checks, waiting, bpftool, raw
// packets, and views of kernel objects that only tests need.
import CLibbpf
import CSluice
import Foundation
import Glibc
@testable import SluiceBPF
import SluicePosix
import SluiceTestSupport
import Testing

/// Root/BPF tests skip with a reason on an unprivileged machine, but fail
/// when SLUICE_REQUIRE_BPF=1 (CI), where skipping would hide a regression.
func requireBPF() throws -> Bool {
    if geteuid() == 0 { return true }
    if getenv("SLUICE_REQUIRE_BPF").map({ String(cString: $0) }) == "1" {
        Issue.record("SLUICE_REQUIRE_BPF=1 but not running as root: BPF tests cannot run")
        return false
    }
    print("skipping BPF test: needs root (CAP_BPF)")
    return false
}

func readExactly(_ fd: Int32, _ count: Int) -> [UInt8] {
    var out = [UInt8]()
    var buffer = [UInt8](repeating: 0, count: 65536)
    while out.count < count {
        let n = recv(fd, &buffer, min(buffer.count, count - out.count), 0)
        if n <= 0 { break }
        out += buffer[0..<n]
    }
    return out
}

func closeAll(_ fds: [Int32]) { for fd in fds { closeDescriptor(fd) } }

func waitUntilTrue(_ seconds: Double, _ condition: () -> Bool) throws {
    let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
    while !condition() {
        if monotonicNanoseconds() > deadline { throw BPFError("condition not met within \(seconds)s") }
        usleep(5000)
    }
}

func bpftoolJSON(_ arguments: [String]) throws -> Any {
    let (_, output) = try runCommand("/usr/sbin/bpftool", ["-j"] + arguments, errors: false)
    return try JSONSerialization.jsonObject(with: Data(output.utf8))
}

/// Sends one bare TCP ACK (no SYN) from a raw socket to 127.0.0.1:port.
func sendBareACK(toPort port: UInt16) throws {
    let fd = socket(AF_INET, Int32(SOCK_RAW.rawValue), Int32(IPPROTO_TCP))
    guard fd >= 0 else { throw SystemCallError(call: "socket(SOCK_RAW)", errno: errno) }
    defer { close(fd) }
    var header = [UInt8](repeating: 0, count: 20)
    let sourcePort = UInt16.random(in: 20000...60000)
    header[0] = UInt8(sourcePort >> 8); header[1] = UInt8(sourcePort & 0xFF)
    header[2] = UInt8(port >> 8); header[3] = UInt8(port & 0xFF)
    for i in 4..<12 { header[i] = UInt8.random(in: 0...255) } // seq, ack
    header[12] = 5 << 4     // data offset: 5 words
    header[13] = 0x10       // ACK only
    header[14] = 0xFF; header[15] = 0xFF // window
    // Checksum over the pseudo-header (127.0.0.1 → 127.0.0.1, TCP, length 20) and the header.
    var sum: UInt32 = 0x7F00 + 0x0001 + 0x7F00 + 0x0001 + 6 + 20
    for i in stride(from: 0, to: 20, by: 2) { sum += UInt32(header[i]) << 8 | UInt32(header[i + 1]) }
    while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
    let checksum = ~UInt16(sum)
    header[16] = UInt8(checksum >> 8); header[17] = UInt8(checksum & 0xFF)
    let destination = SocketAddress(ip: "127.0.0.1", port: 0)!
    let sent = destination.withSockaddr { addr, len in
        header.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, addr, len) }
    }
    guard sent == 20 else { throw SystemCallError(call: "sendto(raw ACK)", errno: errno) }
}

/// Whether a map with this kernel id still exists.
func bpfMapExists(id: UInt32) -> Bool {
    let fd = bpf_map_get_fd_by_id(id)
    if fd >= 0 {
        closeDescriptor(fd)
        return true
    }
    return errno != ENOENT
}

/// Whether a program with this kernel id still exists.
func bpfProgramExists(id: UInt32) -> Bool {
    let fd = bpf_prog_get_fd_by_id(id)
    if fd >= 0 {
        closeDescriptor(fd)
        return true
    }
    return errno != ENOENT
}

extension KernelSteering {
    /// The kernel's id of one of the shared maps (what bpftool shows).
    func mapID(_ name: BPFMap) -> UInt32? { try? objects.first??.mapID(name) }
}

extension SockmapPairs {
    /// Entries in each map (walks the keys).
    var entryCounts: (sockets: Int, peers: Int) { (countKeys(socks), countKeys(peers)) }

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

/// Runs `body` on this thread in a network namespace of its own (loopback
/// up, nothing else), then puts the thread back in its namespace. Swift
/// Testing runs cases concurrently, one thread each, and a synchronous body
/// never changes thread, so the sockets, reuseport groups, raw packets and
/// SOCKHASH pairs of one case cannot meet another case's. Without root the
/// body runs where it is (the BPF tests then skip anyway).
func inOwnNetworkNamespace(_ body: () throws -> Void) throws {
    guard geteuid() == 0 else { return try body() }
    let newNet: Int32 = 0x4000_0000 // CLONE_NEWNET
    let original = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
    guard original >= 0 else { throw SystemCallError(call: "open /proc/thread-self/ns/net", errno: errno) }
    defer { closeDescriptor(original) }
    guard Namespaces.unshare(newNet) == 0 else { throw SystemCallError(call: "unshare(CLONE_NEWNET)", errno: errno) }
    defer { precondition(Namespaces.setns(original, newNet) == 0, "cannot return to the test's network namespace") }
    try bringLoopbackUp()
    try body()
}

/// unshare(2) and setns(2): glibc has them only under _GNU_SOURCE, which the
/// Glibc module does not import.
private enum Namespaces {
    typealias Unshare = @convention(c) (Int32) -> Int32
    typealias SetNS = @convention(c) (Int32, Int32) -> Int32
    static let unshare = unsafeBitCast(dlsym(nil, "unshare")!, to: Unshare.self)
    static let setns = unsafeBitCast(dlsym(nil, "setns")!, to: SetNS.self)
}

private func bringLoopbackUp() throws {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw SystemCallError(call: "socket", errno: errno) }
    defer { closeDescriptor(fd) }
    var request = ifreq()
    withUnsafeMutableBytes(of: &request.ifr_ifrn.ifrn_name) { $0.copyBytes(from: "lo".utf8) }
    guard ioctl(fd, UInt(SIOCGIFFLAGS), &request) == 0 else { throw SystemCallError(call: "SIOCGIFFLAGS lo", errno: errno) }
    request.ifr_ifru.ifru_flags |= Int16(IFF_UP | IFF_RUNNING)
    guard ioctl(fd, UInt(SIOCSIFFLAGS), &request) == 0 else { throw SystemCallError(call: "SIOCSIFFLAGS lo", errno: errno) }
}
