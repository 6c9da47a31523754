import Foundation
import SluiceBPF
import SluiceCore
import SluicePosix

/// One message of the binary upgrade's conversation, as JSON; descriptors
/// ride along as SCM_RIGHTS. In order:
/// 1. new → old `hello`;
/// 2. old → new `manifest`, with the instance lock and every listener's sockets;
/// 3. new → old `ready` (its workers serve those sockets) or `refuse`;
/// 4. old → new `connections` (their descriptors with them), each answered by `adopted`;
/// 5. old → new `done`.
struct UpgradeMessage: Codable {
    var hello: UpgradeHello?
    var manifest: UpgradeManifest?
    var refuse: String?
    var ready: Bool?
    /// With `ready`: the new process's pools, name → backend addresses.
    var pools: [String: [String]]?
    /// Descriptors of the manifest that did not fit on its message follow in
    /// messages of their own, each saying how many it carries.
    var descriptors: Int?
    var connections: [HandedConnection]?
    var adopted: Int?
    var done: Int?

    func encoded() -> [UInt8] { (try? Array(JSONEncoder().encode(self))) ?? [] }

    static func decode(_ bytes: [UInt8]) throws(ServerError) -> UpgradeMessage {
        do { return try JSONDecoder().decode(UpgradeMessage.self, from: Data(bytes)) } catch {
            throw ServerError("the other sluice sent what this one cannot read: \(error)")
        }
    }
}

struct UpgradeHello: Codable {
    var pid: Int32
    var abi: UInt64
    var version: String
}

/// What the running process serves, for the new one to check against its
/// own configuration and to take over as it is.
struct UpgradeManifest: Codable {
    struct Listener: Codable {
        var name: String
        var slot: Int
        var bind: String
        var mode: String
    }

    var pid: Int32
    var abi: UInt64
    var instance: String
    var workers: Int
    var steering: String
    var dataPath: String
    /// In order; each has one socket per worker, in the message's descriptors
    /// after the lock: listener-major, worker-minor.
    var listeners: [Listener]
    /// Whether the SOCKHASH and its pairing map are pinned (to be taken over).
    var sockmapPinned: Bool
    /// Whether each listener's `worker_socks` and `udp_flows` follow the
    /// sockets in the descriptors (steering least_loaded).
    var listenerMaps: Bool
    /// Every descriptor the manifest comes with, over as many messages as it takes.
    var descriptors: Int?
    /// Listener slots: the next never used, and those retired (still counting, maybe).
    var freshSlot: Int?
    var retiredSlots: [Int]?
    /// Whether the listener counters are the pinned `listener_load` both
    /// processes share (else each has its own, and connections move their count).
    var sharedCounters: Bool?

    /// Why `config` cannot take this process over, or nil.
    func mismatch(with config: SluiceConfig) -> String? {
        if abi != SluiceBPFLayout.abiVersion { return "BPF ABI \(abi) running, \(SluiceBPFLayout.abiVersion) in the new binary" }
        if instance != config.instance { return "instance \(instance) running, \(config.instance) configured" }
        if workers != config.workers { return "workers: \(workers) running, \(config.workers) configured (a restart changes it)" }
        if steering != config.steering.rawValue || dataPath != config.dataPath.rawValue {
            return "steering or data_path differ from the running ones (a restart changes them)"
        }
        let configured = config.listeners.map { "\($0.name) \($0.bind) \($0.mode.rawValue)" }
        let running = listeners.map { "\($0.name) \($0.bind) \($0.mode)" }
        if Set(configured) != Set(running) || configured.count != running.count {
            return "the listeners in the file differ from the running ones: run `sluice reload` first, then upgrade"
        }
        return nil
    }
}

extension HandoverChannel {
    func send(_ message: UpgradeMessage, fds: [Int32] = []) throws(ServerError) {
        do { try send(message.encoded(), fds: fds) } catch { throw ServerError("\(error)") }
    }

    func receiveMessage(timeoutMilliseconds: Int32) throws(ServerError) -> (UpgradeMessage, [Int32]) {
        let (bytes, fds): ([UInt8], [Int32])
        do { (bytes, fds) = try receive(timeoutMilliseconds: timeoutMilliseconds) } catch {
            throw ServerError(error.errno == ECONNRESET ? "the other sluice went away" : "\(error)")
        }
        do { return (try UpgradeMessage.decode(bytes), fds) } catch {
            for fd in fds { closeDescriptor(fd) }
            throw error
        }
    }
}
