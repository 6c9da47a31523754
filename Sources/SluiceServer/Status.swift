import Foundation
import Glibc
import SluiceBPF
import SluiceCore
import SluicePosix

/// What a running daemon writes next to its lock, for `sluice status`: the
/// facts the counters alone do not carry (names, addresses, modes).
public struct InstanceInfo: Codable, Sendable, Equatable {
    public struct Listener: Codable, Sendable, Equatable {
        public var name: String
        public var address: String
        public var pool: String
        /// Its record in listener_load (its place in the configuration
        /// until reloads add and remove listeners).
        public var slot: Int?
    }

    public var instance: String
    public var pid: Int32
    public var started: Double  // Unix time
    public var steering: String
    public var dataPathConfigured: String  // as configured
    public var dataPath: String            // as resolved
    public var dataPathReason: String
    public var workers: Int
    public var stallThresholdMilliseconds: UInt64
    public var listeners: [Listener]
    public var adminSocket: String?
    public var metrics: String?
    /// The configuration file, its generation (1 at start, one more per
    /// reload that applied) and when that generation was loaded (Unix time).
    public var configPath: String?
    public var generation: Int?
    public var loaded: Double?
    /// Reloads refused so far, and the errors of the last one refused.
    public var reloadsFailed: UInt64?
    public var lastReloadErrors: [String]?
    /// Why the last binary upgrade did not happen (this process kept serving).
    public var lastUpgradeError: String?
    public var upgradesFailed: UInt64?

    enum CodingKeys: String, CodingKey {
        case instance, pid, started, steering, workers, listeners, metrics, generation, loaded
        case lastUpgradeError = "last_upgrade_error", upgradesFailed = "upgrades_failed"
        case configPath = "config", reloadsFailed = "reloads_failed", lastReloadErrors = "last_reload_errors"
        case dataPathConfigured = "data_path_configured", dataPath = "data_path", dataPathReason = "data_path_reason"
        case stallThresholdMilliseconds = "stall_threshold_ms", adminSocket = "admin_socket"
    }

    public static func path(instance: String, runDirectory: String = InstanceLock.defaultDirectory) -> String {
        "\(runDirectory)/\(instance).json"
    }

    /// Written atomically (temporary file, then rename), readable by all.
    public func write(runDirectory: String = InstanceLock.defaultDirectory) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(self)
        let final = Self.path(instance: instance, runDirectory: runDirectory)
        let temporary = final + ".tmp"
        try data.write(to: URL(fileURLWithPath: temporary))
        chmod(temporary, 0o644)
        guard rename(temporary, final) == 0 else { throw SystemCallError(call: "rename \(final)", errno: errno) }
    }

    public static func read(instance: String, runDirectory: String = InstanceLock.defaultDirectory) -> InstanceInfo? {
        guard let data = FileManager.default.contents(atPath: path(instance: instance, runDirectory: runDirectory)) else { return nil }
        return try? JSONDecoder().decode(InstanceInfo.self, from: data)
    }
}

/// One stable document: what `sluice status --json` prints and the admin
/// socket's `status` answers.
public struct StatusSnapshot: Codable, Sendable, Equatable {
    public struct Worker: Codable, Sendable, Equatable {
        public var id: Int
        public var state: String          // ok | stalled | draining
        /// Open connections plus `pending` (what steering compares).
        public var active: UInt64
        /// Charges for handshakes not yet accepted; they expire within a second.
        public var pending: UInt64
        /// Decrements refused because `active` would have gone below zero (a bug if not 0).
        public var underflows: UInt64
        public var accepted: UInt64
        public var connectionsPerSecond: Double
        public var bytesIn: UInt64
        public var bytesOut: UInt64
        public var heartbeatAgeMilliseconds: UInt64
        public var busyPercent: Double
        /// Open UDP flows (what select_flow compares).
        public var flows: UInt64 = 0

        enum CodingKeys: String, CodingKey {
            case id, state, active, pending, underflows, accepted, flows
            case connectionsPerSecond = "connections_per_second", bytesIn = "bytes_in", bytesOut = "bytes_out"
            case heartbeatAgeMilliseconds = "heartbeat_age_ms", busyPercent = "busy_percent"
        }
    }

    public struct Listener: Codable, Sendable, Equatable {
        public var name: String
        public var address: String
        public var pool: String
        public var active: UInt64
        public var accepted: UInt64
        public var rejected: UInt64
        public var noBackend: UInt64
        /// `mode: http` listeners: requests answered, and per second over the
        /// sampling window (from the admin socket).
        public var requests: UInt64?
        public var requestsPerSecond: Double?
        /// WebSocket (and CONNECT) tunnels open now.
        public var tunnels: UInt64?

        enum CodingKeys: String, CodingKey {
            case name, address, pool, active, accepted, rejected, requests, tunnels
            case noBackend = "no_backend", requestsPerSecond = "requests_per_second"
        }
    }

    public struct Backend: Codable, Sendable, Equatable {
        public var pool: String
        public var address: String
        public var state: String          // up | down | ejected | drained
        public var active: Int
        public var weight: Int
        public var failures: Int
        public var lastCheck: String?
        /// The hostname backend (`host:port`) whose record this address is.
        public var name: String?

        enum CodingKeys: String, CodingKey {
            case pool, address, state, active, weight, failures, name
            case lastCheck = "last_check"
        }
    }

    public struct Steering: Codable, Sendable, Equatable {
        public var mode: String
        public var selected: UInt64
        public var fallback: UInt64
        public var allStalled: UInt64
        public var stallSkips: UInt64
        public var passed: UInt64
        public var acks: UInt64
        public var acksFollowed: UInt64
        public var moves: UInt64?
        /// UDP: new flows placed by select_flow, and datagrams that followed their flow.
        public var flowsPlaced: UInt64 = 0
        public var flowsFollowed: UInt64 = 0

        enum CodingKeys: String, CodingKey {
            case mode, selected, fallback, moves
            case allStalled = "all_stalled", stallSkips = "stall_skips", passed, acks, acksFollowed = "acks_followed"
            case flowsPlaced = "flows_placed", flowsFollowed = "flows_followed"
        }
    }

    public var instance: String
    /// running | not responding | stopped (SIGSTOP) | not running
    public var daemon: String
    public var pid: Int32?
    public var uptimeSeconds: Double?
    public var workers: [Worker]
    public var listeners: [Listener]
    public var backends: [Backend]?
    public var steering: Steering
    /// The data path in use: sockmap | splice | copy (`unknown` without the info file).
    public var dataPath: String
    public var notes: [String]
    /// What the daemon absorbed to keep serving; from the daemon itself, so
    /// nil when it did not answer.
    public var logLinesDropped: UInt64?
    public var localResourceErrors: LocalResourceErrorCounts?
    /// Closed connections per data path, and promotions; from the daemon.
    public var dataPaths: DataPathCounts?
    /// The configuration's generation (one more per reload applied), and
    /// how long ago it was loaded.
    public var generation: Int?
    public var loadedSecondsAgo: Double?
    /// Reloads refused, and the errors of the last one.
    public var reloadsFailed: UInt64?
    public var lastReloadErrors: [String]?

    enum CodingKeys: String, CodingKey {
        case instance, daemon, pid, workers, listeners, backends, steering, notes, generation
        case loadedSecondsAgo = "loaded_s_ago", reloadsFailed = "reloads_failed", lastReloadErrors = "last_reload_errors"
        case dataPath = "data_path", uptimeSeconds = "uptime_s"
        case logLinesDropped = "log_lines_dropped", localResourceErrors = "local_resource_errors"
        case dataPaths = "data_paths"
    }
}

public struct StatusError: Error, CustomStringConvertible {
    public let description: String
    /// Exit status for the CLI: 1 when no instance runs, 2 for other trouble.
    public let exitCode: Int32
}

/// Reads an instance's pinned maps directly (no daemon needed), plus its
/// info file, plus the admin socket when it answers.
public enum StatusReader {
    public static func read(
        instance: String, sampleSeconds: Double = 0.25, pinRoot: String = PinLayout.root,
        runDirectory: String = InstanceLock.defaultDirectory, askAdmin: Bool = true
    ) throws(StatusError) -> StatusSnapshot {
        let info = InstanceInfo.read(instance: instance, runDirectory: runDirectory)
        let pins: PinnedInstance
        do {
            pins = try PinnedInstance.open(instance: instance, readOnly: true, pinRoot: pinRoot)
        } catch {
            if case .notRunning = error {
                throw StatusError(description: "no sluice instance \"\(instance)\" is running (\(error))", exitCode: 1)
            }
            throw StatusError(description: "\(error)", exitCode: 2)
        }
        defer { pins.close() }
        let workerCount = info?.workers ?? PinnedInstance.maxWorkers
        let listenerCount = info?.listeners.count ?? 0
        func sample() -> (at: UInt64, workers: [WorkerLoadSample]) {
            (monotonicNanoseconds(), pins.workers(count: workerCount))
        }
        let socket = askAdmin ? info?.adminSocket : nil
        let firstRequests = socket.flatMap { Self.httpRequests(socket: $0) }
        let first = sample()
        if sampleSeconds > 0 { usleep(UInt32(sampleSeconds * 1e6)) }
        let second = sample()
        let elapsed = Double(second.at - first.at) / 1e9
        let stall = (info?.stallThresholdMilliseconds ?? 200).saturatingMultiply(1_000_000)

        var snapshot = StatusSnapshot(
            instance: instance, daemon: "running", pid: info?.pid, uptimeSeconds: nil, workers: [], listeners: [],
            backends: nil, steering: steering(pins.steering, mode: info?.steering ?? "unknown"),
            dataPath: info?.dataPath ?? "unknown", notes: [])
        if let info {
            snapshot.uptimeSeconds = Date().timeIntervalSince1970 - info.started
            snapshot.generation = info.generation
            snapshot.loadedSecondsAgo = info.loaded.map { Date().timeIntervalSince1970 - $0 }
            snapshot.reloadsFailed = info.reloadsFailed
            snapshot.lastReloadErrors = info.lastReloadErrors
        }
        for k in second.workers.indices {
            let now = second.workers[k], before = first.workers[k]
            let age = second.at > now.heartbeatNanoseconds ? second.at - now.heartbeatNanoseconds : 0
            let state = now.isDraining ? "draining" : (age > stall ? "stalled" : "ok")
            let busy = now.busyNanoseconds &- before.busyNanoseconds
            snapshot.workers.append(.init(
                id: k, state: state, active: now.active, pending: now.pending, underflows: now.underflows,
                accepted: now.accepted,
                connectionsPerSecond: elapsed > 0 ? Double(now.accepted &- before.accepted) / elapsed : 0,
                bytesIn: now.bytesIn, bytesOut: now.bytesOut,
                heartbeatAgeMilliseconds: age / 1_000_000,
                busyPercent: elapsed > 0 ? min(100, Double(busy) / 1e9 / elapsed * 100) : 0, flows: now.flows))
        }
        let records = pins.listeners(count: (info?.listeners ?? []).reduce(listenerCount) { max($0, ($1.slot ?? 0) + 1) })
        for (position, listener) in (info?.listeners ?? []).enumerated() {
            let record = records[listener.slot ?? position]
            snapshot.listeners.append(.init(
                name: listener.name, address: listener.address, pool: listener.pool,
                active: record.active, accepted: record.accepted, rejected: record.rejected, noBackend: record.noBackend))
        }

        // Is the daemon there at all, and responsive?
        if let pid = info?.pid {
            switch processState(pid) {
            case nil:
                snapshot.daemon = "not running"
                snapshot.notes.append("process \(pid) is gone: these are stale pins from a run that did not stop cleanly")
            case "T", "t":
                snapshot.daemon = "stopped (SIGSTOP)"
                snapshot.notes.append("process \(pid) is stopped: workers do not beat; resume it with kill -CONT \(pid)")
            default:
                if !snapshot.workers.isEmpty && snapshot.workers.allSatisfy({ $0.state == "stalled" }) {
                    snapshot.daemon = "not responding"
                    snapshot.notes.append("every worker's heartbeat is older than the stall threshold")
                }
            }
        } else {
            snapshot.notes.append("no info file (\(InstanceInfo.path(instance: instance, runDirectory: runDirectory))): names and addresses unknown")
        }
        if askAdmin, snapshot.daemon == "running", let socket = info?.adminSocket {
            if let reply = try? AdminClient.request(socket: socket, ["cmd": "backends"], timeoutMilliseconds: 300),
               let data = reply.data(using: .utf8),
               let decoded = try? JSONDecoder().decode(AdminBackendsReply.self, from: data) {
                let elapsed = Double(monotonicNanoseconds() - (firstRequests?.at ?? 0)) / 1e9
                for k in snapshot.listeners.indices {
                    guard let total = decoded.httpRequests?[snapshot.listeners[k].name] else { continue }
                    snapshot.listeners[k].requests = total
                    snapshot.listeners[k].tunnels = decoded.httpTunnels?[snapshot.listeners[k].name]
                    if let before = firstRequests?.totals[snapshot.listeners[k].name], elapsed > 0 {
                        snapshot.listeners[k].requestsPerSecond = Double(total &- before) / elapsed
                    }
                }
                snapshot.backends = decoded.backends
                snapshot.steering.moves = decoded.moves
                snapshot.logLinesDropped = decoded.logLinesDropped
                snapshot.localResourceErrors = decoded.localResourceErrors
                snapshot.dataPaths = decoded.dataPaths
            }
        }
        return snapshot
    }

    /// The admin socket's request totals per HTTP listener, and when they were read.
    static func httpRequests(socket: String) -> (at: UInt64, totals: [String: UInt64])? {
        guard let reply = try? AdminClient.request(socket: socket, ["cmd": "backends"], timeoutMilliseconds: 300),
              let decoded = try? JSONDecoder().decode(AdminBackendsReply.self, from: Data(reply.utf8)),
              let totals = decoded.httpRequests else { return nil }
        return (monotonicNanoseconds(), totals)
    }

    static func steering(_ stats: SteeringStats, mode: String) -> StatusSnapshot.Steering {
        .init(mode: mode, selected: stats.selected, fallback: stats.fallback, allStalled: stats.allStalled,
              stallSkips: stats.stallSkips, passed: stats.passed, acks: stats.acks, acksFollowed: stats.acksFollowed, moves: nil,
              flowsPlaced: stats.flowsPlaced, flowsFollowed: stats.flowsFollowed)
    }

    /// The state letter of /proc/<pid>/stat, nil when there is no such process.
    static func processState(_ pid: Int32) -> String? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        let rest = stat[stat.index(close, offsetBy: 2)...]
        return rest.first.map(String.init)
    }
}

struct AdminBackendsReply: Codable {
    var backends: [StatusSnapshot.Backend]
    var moves: UInt64?
    var logLinesDropped: UInt64?
    var localResourceErrors: LocalResourceErrorCounts?
    var dataPaths: DataPathCounts?
    /// Requests answered per `mode: http` listener, by name.
    var httpRequests: [String: UInt64]?
    /// Tunnels open per `mode: http` listener, by name.
    var httpTunnels: [String: UInt64]?

    enum CodingKeys: String, CodingKey {
        case backends, moves
        case logLinesDropped = "log_lines_dropped", localResourceErrors = "local_resource_errors"
        case dataPaths = "data_paths", httpRequests = "http_requests", httpTunnels = "http_tunnels"
    }
}

/// Closed connections by the data paths that moved their bytes (a
/// connection counts once per path it used), and how many sessions were
/// promoted into the kernel mid-stream.
public struct DataPathCounts: Codable, Sendable, Equatable {
    public var copy: UInt64 = 0
    public var splice: UInt64 = 0
    public var sockmap: UInt64 = 0
    public var promotions: UInt64 = 0

    public init(copy: UInt64, splice: UInt64, sockmap: UInt64, promotions: UInt64) {
        self.copy = copy
        self.splice = splice
        self.sockmap = sockmap
        self.promotions = promotions
    }

    init(_ counters: [WorkerCounters]) {
        for worker in counters {
            copy += worker.closedByPath[.copy]?.load(ordering: .relaxed) ?? 0
            splice += worker.closedByPath[.splice]?.load(ordering: .relaxed) ?? 0
            sockmap += worker.closedByPath[.sockmap]?.load(ordering: .relaxed) ?? 0
            promotions += worker.promotions.load(ordering: .relaxed)
        }
    }
}
