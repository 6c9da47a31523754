import CSluice
import Foundation
import Glibc
@testable import SluiceBPF
import SluicePosix
import Testing

/// A reuseport group of `workers` UDP sockets on one loopback port with
/// select_flow attached: the kernel half of UDP steering, without a server.
final class FlowGroup {
    let sockets: [Int32]
    let port: UInt16
    let steering: KernelSteering

    init(workers: Int, stallThreshold: UInt64 = 5_000_000_000) throws {
        var sockets: [Int32] = []
        var address = SocketAddress(ip: "127.0.0.1", port: 0)!
        for _ in 0..<workers {
            let fd = try Socket.udpListen(on: address, reusePort: true, bufferBytes: 1 << 20)
            if address.port == 0 { address = try Socket.localAddress(fd) }
            sockets.append(fd)
        }
        self.sockets = sockets
        port = address.port
        steering = try KernelSteering(
            instance: "test-\(UUID().uuidString.prefix(8))", workers: workers, listeners: 1,
            stallThresholdNanoseconds: stallThreshold, attachPrograms: true, flowCapacity: [0: 1024])
        try steering.attach(listener: 0, workerSockets: sockets, datagrams: true)
        let now = monotonicNanoseconds()
        for k in 0..<workers { steering.table.record(k).store(.heartbeatNanoseconds, now) }
    }

    deinit {
        for fd in sockets { closeDescriptor(fd) }
        steering.close()
    }

    /// A client socket (its own port): one flow.
    func client() throws -> (fd: Int32, address: SocketAddress) {
        let fd = try Socket.udpConnect(to: SocketAddress(ip: "127.0.0.1", port: port)!, bufferBytes: 1 << 16)
        return (fd, try Socket.localAddress(fd))
    }

    /// Which worker's socket each of `count` datagrams from `fd` reached.
    func send(_ fd: Int32, _ count: Int = 1) throws -> [Int] {
        var reached: [Int] = []
        for _ in 0..<count {
            _ = Glibc.send(fd, "x", 1, 0)
            reached.append(try waitForDatagram())
        }
        return reached
    }

    private func waitForDatagram() throws -> Int {
        var polls = sockets.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        guard poll(&polls, nfds_t(polls.count), 2000) > 0, let k = polls.firstIndex(where: { $0.revents & Int16(POLLIN) != 0 }) else {
            throw SystemCallError(call: "poll for a datagram", errno: ETIMEDOUT)
        }
        var byte: UInt8 = 0
        _ = recv(sockets[k], &byte, 1, Int32(MSG_DONTWAIT))
        return k
    }

    var flowMap: Int32 { steering.flowMapFD(listener: 0)! }
}

@Suite("select_flow steering of UDP flows in the kernel")
struct FlowSteeringTests {
    @Test("a new flow goes to the worker with the fewest flows (flows_unseen counted), is remembered in udp_flows, and its datagrams follow")
    func placementAndAffinity() throws {
        guard try requireBPF() else { return }
        try inOwnNetworkNamespace {
            let group = try FlowGroup(workers: 3)
            group.steering.table.record(0).store(.flows, 10)
            group.steering.table.record(2).store(.flows, 10)
            let (fd, address) = try group.client()
            defer { closeDescriptor(fd) }
            #expect(try group.send(fd, 5) == [1, 1, 1, 1, 1], "placed on the emptiest, then followed")
            #expect(UDPFlowKey(address).owner(inMap: group.flowMap) == 1, "remembered, keyed as the worker keys it")
            #expect(group.steering.table.record(1).load(.flowsUnseen) == 1, "one placement the worker has not opened")
            #expect(group.steering.stats.flowsPlaced == 1 && group.steering.stats.flowsFollowed == 4)
            // Forgotten (the worker expired it): the next datagram is placed anew, by counts.
            group.steering.table.record(1).store(.flows, 20)
            UDPFlowKey(address).forget(inMap: group.flowMap)
            let again = try group.send(fd)
            #expect(again[0] != 1, "\(again)")
        }
    }

    @Test("a burst of new flows spreads evenly though no worker counts them yet (flows_unseen)")
    func burstSpreads() throws {
        guard try requireBPF() else { return }
        try inOwnNetworkNamespace {
            let group = try FlowGroup(workers: 4)
            let clients = try (0..<100).map { _ in try group.client() }
            defer { for c in clients { closeDescriptor(c.fd) } }
            var counts = [0, 0, 0, 0]
            for c in clients { counts[try group.send(c.fd)[0]] += 1 }
            #expect(counts.allSatisfy { $0 == 25 }, "\(counts)")
            let unseen = (0..<4).map { group.steering.table.record($0).load(.flowsUnseen) }
            #expect(unseen == [25, 25, 25, 25], "\(unseen)")
        }
    }

    @Test("a stalled worker gets no new flow but keeps its own (it holds their sockets)")
    func stalledWorker() throws {
        guard try requireBPF() else { return }
        try inOwnNetworkNamespace {
            let group = try FlowGroup(workers: 2, stallThreshold: 200_000_000)
            group.steering.table.record(0).store(.flows, 5)
            let (own, _) = try group.client()
            defer { closeDescriptor(own) }
            #expect(try group.send(own) == [1])
            group.steering.table.record(1).store(.heartbeatNanoseconds, monotonicNanoseconds() - 1_000_000_000)
            group.steering.table.record(0).store(.flows, 50)
            #expect(try group.send(own, 3) == [1, 1, 1], "its flow stays with it")
            let fresh = try (0..<10).map { _ in try group.client() }
            defer { for c in fresh { closeDescriptor(c.fd) } }
            #expect(try fresh.map { try group.send($0.fd)[0] } == Array(repeating: 0, count: 10), "new flows avoid it")
        }
    }

    @Test("an IPv4-mapped IPv6 address keys as the IPv4 one, as the datagram on the wire was")
    func mappedKeys() {
        let mapped = SocketAddress(ip: "::ffff:127.0.0.9", port: 4242)!
        let plain = SocketAddress(ip: "127.0.0.9", port: 4242)!
        #expect(UDPFlowKey(mapped) == UDPFlowKey(plain))
        #expect(UDPFlowKey(SocketAddress(ip: "::1", port: 4242)!) != UDPFlowKey(plain))
        #expect(UDPFlowKey(SocketAddress(ip: "127.0.0.9", port: 4243)!) != UDPFlowKey(plain))
    }
}
