import Foundation
import Glibc
import SluiceBPF
import SluiceCore
import SluicePosix
import Testing
@testable import SluiceServer

@Suite("The binary upgrade's channel and manifest")
struct HandoverChannelTests {
    @Test("a message and its descriptors arrive together; the descriptors are the same open files")
    func descriptorsTravel() throws {
        let path = NSTemporaryDirectory() + "sluice-handover-\(UUID().uuidString).sock"
        let listener = try HandoverChannel.listen(path: path)
        defer { closeDescriptor(listener); FileSystem.removeFile(path) }
        let client = try HandoverChannel.connect(path: path, timeoutMilliseconds: 1000)
        let server = try HandoverChannel.accept(listener, timeoutMilliseconds: 1000)
        var pipe: [Int32] = [0, 0]
        #expect(Glibc.pipe(&pipe) == 0)
        try client.send(Array("hello".utf8), fds: [pipe[1]])
        closeDescriptor(pipe[1])
        let (bytes, fds) = try server.receive(timeoutMilliseconds: 1000)
        #expect(String(decoding: bytes, as: UTF8.self) == "hello" && fds.count == 1)
        #expect(write(fds[0], "x", 1) == 1, "the passed end writes into the same pipe")
        var byte: UInt8 = 0
        #expect(read(pipe[0], &byte, 1) == 1 && byte == UInt8(ascii: "x"))
        #expect(fcntl(fds[0], F_GETFD) & FD_CLOEXEC != 0, "received close-on-exec")
        closeDescriptor(fds[0])
        closeDescriptor(pipe[0])
        #expect(throws: SystemCallError.self) { _ = try server.receive(timeoutMilliseconds: 10) }
    }

    @Test("the peer's end is an error, not an empty message")
    func peerGone() throws {
        let path = NSTemporaryDirectory() + "sluice-handover-\(UUID().uuidString).sock"
        let listener = try HandoverChannel.listen(path: path)
        defer { closeDescriptor(listener); FileSystem.removeFile(path) }
        var client: HandoverChannel? = try HandoverChannel.connect(path: path, timeoutMilliseconds: 1000)
        let server = try HandoverChannel.accept(listener, timeoutMilliseconds: 1000)
        _ = client
        client = nil
        do { _ = try server.receive(timeoutMilliseconds: 1000); Issue.record("no error") } catch {
            #expect(error.errno == ECONNRESET)
        }
    }

    @Test("a manifest that does not match the new file is refused, saying what differs")
    func manifestMismatch() throws {
        let config = try ConfigLoader.parse(yaml: """
            instance: edge
            workers: 2
            listeners:
              - { name: web, bind: "127.0.0.1:8080", pool: web }
            pools:
              - { name: web, backends: [ { address: "127.0.0.1:9001" } ] }
            """, file: "x.yaml", onlineCPUs: 2).config
        var manifest = UpgradeManifest(
            pid: 1, abi: SluiceBPFLayout.abiVersion, instance: "edge", workers: 2, steering: config.steering.rawValue,
            dataPath: config.dataPath.rawValue, listeners: [.init(name: "web", slot: 3, bind: "127.0.0.1:8080", mode: "tcp")],
            sockmapPinned: false, listenerMaps: false)
        #expect(manifest.mismatch(with: config) == nil)
        manifest.workers = 4
        #expect(manifest.mismatch(with: config)?.contains("workers: 4 running, 2 configured") == true)
        manifest.workers = 2
        manifest.listeners[0].bind = "127.0.0.1:8081"
        #expect(manifest.mismatch(with: config)?.contains("sluice reload") == true)
        manifest.listeners[0].bind = "127.0.0.1:8080"
        manifest.abi += 1
        #expect(manifest.mismatch(with: config)?.contains("BPF ABI") == true)
    }
}
