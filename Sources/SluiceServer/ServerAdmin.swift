import Atomics
import Logging
import CSluice
import SluiceBPF
import SluiceCore
import SluicePosix

// What the admin socket and the metrics endpoint read from the running
// server (control thread only).
extension Server {
    func adminStatus() -> StatusSnapshot? {
        guard var snapshot = try? StatusReader.read(instance: config.instance, sampleSeconds: 0, askAdmin: false) else { return nil }
        snapshot.backends = adminBackends().backends
        snapshot.steering.moves = moves
        snapshot.logLinesDropped = logLinesDropped
        snapshot.localResourceErrors = LocalResourceErrorCounts(localResourceErrors)
        snapshot.dataPaths = DataPathCounts(liveWorkers.map(\.counters))
        return snapshot
    }

    func adminBackends() -> AdminBackendsReply {
        let now = monotonicMilliseconds()
        var backends: [StatusSnapshot.Backend] = []
        for pool in livePools {
            let names = backendNames(pool: pool.name)
            for (i, backend) in pool.config.backends.enumerated() {
                let checkedAt = pool.lastCheckAt[i].load(ordering: .relaxed)
                var lastCheck: String?
                if checkedAt > 0 {
                    let age = (now > checkedAt ? now - checkedAt : 0) / 1000
                    lastCheck = "\(age)s " + (pool.lastCheckPassed[i].load(ordering: .relaxed) ? "ok" : "fail")
                }
                backends.append(.init(
                    pool: pool.name, address: "\(backend.address)", state: pool.state(i, now: now),
                    active: pool.active[i].load(ordering: .relaxed), weight: backend.weight,
                    failures: pool.connectFailures[i].load(ordering: .relaxed), lastCheck: lastCheck,
                    name: names[backend.address]))
            }
        }
        return AdminBackendsReply(backends: backends, moves: moves, logLinesDropped: logLinesDropped,
                                  localResourceErrors: LocalResourceErrorCounts(localResourceErrors),
                                  dataPaths: DataPathCounts(liveWorkers.map(\.counters)),
                                  httpRequests: Dictionary(liveListeners.compactMap { l in l.http.map { (l.name, $0.answered) } },
                                                           uniquingKeysWith: +),
                                  httpTunnels: Dictionary(liveListeners.compactMap { l in
                                      l.http.map { (l.name, UInt64(max(0, $0.openTunnels.load(ordering: .relaxed)))) }
                                  }, uniquingKeysWith: +))
    }

    /// Address → the hostname backend of pool `name` it was resolved from.
    private func backendNames(pool name: String) -> [SocketAddressSpec: String] {
        var names: [SocketAddressSpec: String] = [:]
        for named in config.pools.first(where: { $0.name == name })?.named ?? [] {
            for address in resolved[named] ?? [] where names[address] == nil { names[address] = "\(named.host):\(named.port)" }
        }
        return names
    }

    func adminDrainBackend(pool name: String, backend: String, drained: Bool) -> String? {
        guard let pool = livePools.first(where: { $0.name == name }) else { return "no pool \"\(name)\"" }
        guard case .success(let wanted) = SocketAddressSpec.parse(backend),
              let index = pool.config.backends.firstIndex(where: { $0.address == wanted }) else {
            return "pool \"\(name)\" has no backend \"\(backend)\""
        }
        pool.drained[index].store(drained, ordering: .relaxed)
        return nil
    }

    func adminDrainWorker(_ worker: Int, drained: Bool) -> String? {
        guard let table = liveTable, worker >= 0, worker < liveWorkers.count else {
            return "no worker \(worker) (workers are 0...\(liveWorkers.count - 1))"
        }
        guard config.steering == .leastLoaded else {
            return "draining a worker needs steering least_loaded (the kernel's hash does not skip it)"
        }
        let record = table.record(worker)
        let bit = UInt64(SLUICE_WORKER_DRAINING)
        if drained { record.setBits(.flags, bit) } else { record.clearBits(.flags, bit) }
        return nil
    }

    private var logLinesDropped: UInt64 { logs.sink.droppedLines + (accessSink !== logs.sink ? accessSink.droppedLines : 0) }

    func metricsText() -> String {
        var out = MetricsText()
        out.family("sluice_build_info", "gauge", "Build of this sluice.")
        out.sample("sluice_build_info", ["version": sluiceVersion, "abi": "\(SluiceBPFLayout.abiVersion)"], 1)
        out.family("sluice_config_generation", "gauge", "Configuration generation: 1 at start, one more per reload applied.")
        out.sample("sluice_config_generation", [:], Double(generation))
        out.family("sluice_config_loaded_timestamp_seconds", "gauge", "When the running configuration was loaded (Unix time).")
        out.sample("sluice_config_loaded_timestamp_seconds", [:], loadedAt)
        out.family("sluice_config_reloads_total", "counter", "Reloads, by result: applied, or refused (the running configuration stayed).")
        out.sample("sluice_config_reloads_total", ["result": "applied"], Double(reloads.succeeded))
        out.sample("sluice_config_reloads_total", ["result": "refused"], Double(reloads.failed))
        appendWorkerMetrics(to: &out)
        appendListenerAndBackendMetrics(to: &out)
        if let steering = liveSteering {
            let stats = steering.stats
            out.family("sluice_steering_total", "counter", "Steering decisions of select_worker by outcome.")
            for (outcome, value) in [("selected", stats.selected), ("fallback", stats.fallback), ("all_stalled", stats.allStalled),
                                     ("stall_skip", stats.stallSkips), ("passed", stats.passed), ("ack", stats.acks), ("ack_followed", stats.acksFollowed)] {
                out.sample("sluice_steering_total", ["outcome": outcome], Double(value))
            }
        }
        out.family("sluice_rebalance_moves_total", "counter", "Connections moved between workers.")
        out.sample("sluice_rebalance_moves_total", [:], Double(moves))
        out.appendResilience(logLinesDropped: logLinesDropped, localResourceErrors: localResourceErrors)
        return out.text
    }

    private func appendWorkerMetrics(to out: inout MetricsText) {
        if let table = liveTable {
            let now = monotonicNanoseconds()
            let families: [(String, String, String, (WorkerLoadRecord) -> Double)] = [
                ("sluice_worker_active_connections", "gauge", "Open connections plus pending charges per worker (what steering compares).", { Double($0.load(.active)) }),
                ("sluice_worker_pending_charges", "gauge", "Handshakes steered to the worker and not yet accepted.", { Double($0.load(.pending)) }),
                ("sluice_worker_load_underflows_total", "counter", "Decrements refused because the count would have gone below zero.", { Double($0.load(.underflows)) }),
                ("sluice_worker_accepted_total", "counter", "Connections accepted by the worker.", { Double($0.load(.accepted)) }),
                ("sluice_worker_udp_flows", "gauge", "Open UDP flows per worker (what select_flow compares).", { Double($0.load(.flows)) }),
                ("sluice_worker_bytes_in_total", "counter", "Bytes from clients.", { Double($0.load(.bytesIn)) }),
                ("sluice_worker_bytes_out_total", "counter", "Bytes to clients.", { Double($0.load(.bytesOut)) }),
                ("sluice_worker_busy_seconds_total", "counter", "Time spent handling events.", { Double($0.load(.busyNanoseconds)) / 1e9 }),
                ("sluice_worker_heartbeat_age_seconds", "gauge", "Time since the worker's last loop turn.", {
                    let beat = $0.load(.heartbeatNanoseconds)
                    return now > beat ? Double(now - beat) / 1e9 : 0
                }),
                ("sluice_worker_draining", "gauge", "1 while the worker takes no new connections.", {
                    $0.load(.flags) & UInt64(SLUICE_WORKER_DRAINING) != 0 ? 1 : 0
                }),
            ]
            for (name, type, help, value) in families {
                out.family(name, type, help)
                for k in liveWorkers.indices { out.sample(name, ["worker": "\(k)"], value(table.record(k))) }
            }
            if let loadKeeper {
                out.family("sluice_worker_charges_expired_total", "counter", "Charges for handshakes that never completed, expired.")
                for (k, count) in loadKeeper.expired.enumerated() {
                    out.sample("sluice_worker_charges_expired_total", ["worker": "\(k)"], Double(count))
                }
            }
        }
        let workerCounterFamilies: [(String, String, (WorkerCounters) -> UInt64)] = [
            ("sluice_worker_accept_backoffs_total", "Listener pauses for lack of descriptors or memory.", { $0.acceptBackoffs.load(ordering: .relaxed) }),
            ("sluice_worker_moved_in_total", "Connections adopted from other workers.", { $0.movedIn.load(ordering: .relaxed) }),
            ("sluice_worker_moved_out_total", "Connections handed to other workers.", { $0.movedOut.load(ordering: .relaxed) }),
            ("sluice_worker_sockmap_promotions_total", "Connections moved from userspace into the kernel (sockmap) mid-stream.", {
                $0.promotions.load(ordering: .relaxed)
            }),
        ]
        for (name, help, value) in workerCounterFamilies {
            out.family(name, "counter", help)
            for worker in liveWorkers { out.sample(name, ["worker": "\(worker.id)"], Double(value(worker.counters))) }
        }
        let byPath = "sluice_worker_connections_by_path_total"
        out.family(byPath, "counter", "Closed connections by the data paths that moved their bytes (one per path used).")
        for worker in liveWorkers {
            for kind in DataPathKind.allCases {
                let count = worker.counters.closedByPath[kind]?.load(ordering: .relaxed) ?? 0
                out.sample(byPath, ["worker": "\(worker.id)", "path": kind.rawValue], Double(count))
            }
        }
    }

    private func appendListenerAndBackendMetrics(to out: inout MetricsText) {
        let listenerFamilies: [(String, String, String, ListenerField)] = [
            ("sluice_listener_active_connections", "gauge", "Open connections per listener.", .active),
            ("sluice_listener_accepted_total", "counter", "Connections accepted.", .accepted),
            ("sluice_listener_rejected_total", "counter", "Connections refused at max_connections.", .rejected),
            ("sluice_listener_no_backend_total", "counter", "Connections closed because no backend was reachable.", .noBackend),
        ]
        for (name, type, help, field) in listenerFamilies {
            out.family(name, type, help)
            for listener in liveListeners {
                out.sample(name, ["listener": listener.name, "pool": listener.poolLabel], Double(listener.counters.load(field)))
            }
        }
        let requests = "sluice_http_requests_total"
        out.family(requests, "counter", "HTTP requests answered, per listener, pool and status class (the proxy's own answers count too).")
        for listener in liveListeners {
            guard let http = listener.http else { continue }
            for (p, pool) in http.pools.enumerated() {
                for k in 0..<5 {
                    out.sample(requests, ["listener": listener.name, "pool": pool.name, "class": "\(k + 1)xx"],
                               Double(http.requests[p].load(class: k)))
                }
            }
        }
        let rejected = "sluice_listener_proxy_header_rejected_total"
        out.family(rejected, "counter", "Connections closed for a missing, malformed or late PROXY header (no backend was asked).")
        for listener in liveListeners where listener.config.proxyProtocol.accept != .off {
            out.sample(rejected, ["listener": listener.name], Double(listener.proxyHeaderRejected.load(ordering: .relaxed)))
        }
        let families = "sluice_redis_commands_total"
        out.family(families, "counter", "Commands from clients of mode redis listeners, per family.")
        for listener in liveListeners where listener.config.mode == .redis {
            for family in RedisFamily.allCases {
                out.sample(families, ["listener": listener.name, "family": family.name],
                           Double(listener.redisFamilies[family.rawValue].load(ordering: .relaxed)))
            }
        }
        let sent = "sluice_redis_backend_commands_total"
        out.family(sent, "counter", "Commands (and parts of split ones) sent to each Redis backend.")
        for pool in livePools where liveListeners.contains(where: { $0.config.mode == .redis && $0.pool === pool }) {
            for (i, address) in pool.addresses.enumerated() {
                out.sample(sent, ["pool": pool.name, "backend": "\(address)"], Double(pool.redisCommands[i].load(ordering: .relaxed)))
            }
        }
        appendUDPMetrics(to: &out)
        let tunnels = "sluice_http_tunnels_open"
        out.family(tunnels, "gauge", "WebSocket (and CONNECT) tunnels open, per HTTP listener.")
        for listener in liveListeners {
            guard let http = listener.http else { continue }
            out.sample(tunnels, ["listener": listener.name], Double(http.openTunnels.load(ordering: .relaxed)))
        }
        let backendFamilies: [(String, String, String, (RuntimePool, Int) -> Double)] = [
            ("sluice_backend_active_connections", "gauge", "Connections per backend, a connect under way included.", { Double($0.active[$1].load(ordering: .relaxed)) }),
            ("sluice_backend_connect_failures_total", "counter", "Failed connection attempts.", { Double($0.connectFailures[$1].load(ordering: .relaxed)) }),
            ("sluice_backend_drained", "gauge", "1 while drained by the admin socket.", { $0.drained[$1].load(ordering: .relaxed) ? 1 : 0 }),
            ("sluice_backend_up", "gauge", "1 while the backend takes new connections (up, not ejected, not drained).", {
                $0.isEligible($1, now: monotonicMilliseconds()) ? 1 : 0
            }),
            ("sluice_backend_health_transitions_total", "counter", "Up/down changes decided by active checks.", {
                Double($0.healthTransitions[$1].load(ordering: .relaxed))
            }),
            ("sluice_backend_ejections_total", "counter", "Passive ejections.", { Double($0.ejections[$1].load(ordering: .relaxed)) }),
        ]
        for (name, type, help, value) in backendFamilies {
            out.family(name, type, help)
            for pool in livePools {
                for (i, backend) in pool.config.backends.enumerated() {
                    out.sample(name, ["pool": pool.name, "backend": "\(backend.address)"], value(pool, i))
                }
            }
        }
    }

    /// Separate slots per endpoint, so that metrics clients (reachable from
    /// the network) cannot lock an operator out of the admin socket.
    static func adminLimits(_ config: AdminConfig) -> [AdminEndpoints.Endpoint: AdminEndpoints.Limits] {
        // Clamped to a day: Duration.milliseconds overflows for absurd values.
        func milliseconds(_ fallback: Duration) -> UInt64 { min(config.idleTimeout ?? fallback, .seconds(86_400)).milliseconds }
        return [
            .admin: .init(maxConnections: 64, idleTimeoutMilliseconds: milliseconds(ConfigDefaults.adminIdleTimeout)),
            .metrics: .init(maxConnections: 32, idleTimeoutMilliseconds: milliseconds(ConfigDefaults.metricsIdleTimeout)),
        ]
    }
}

extension Server {
    /// `mode: udp` listeners: datagrams and bytes each way, drops by reason
    /// (flows open and opened are the listener families above).
    func appendUDPMetrics(to out: inout MetricsText) {
        let listeners = liveListeners.filter { $0.config.mode == .udp }
        guard !listeners.isEmpty else { return }
        let families: [(String, String, (UDPCounters) -> (UInt64, UInt64))] = [
            ("sluice_udp_datagrams_total", "Datagrams relayed, from clients (in) and to them (out).", {
                ($0.datagramsIn.load(ordering: .relaxed), $0.datagramsOut.load(ordering: .relaxed))
            }),
            ("sluice_udp_bytes_total", "Datagram bytes relayed, from clients (in) and to them (out).", {
                ($0.bytesIn.load(ordering: .relaxed), $0.bytesOut.load(ordering: .relaxed))
            }),
        ]
        for (name, help, value) in families {
            out.family(name, "counter", help)
            for listener in listeners {
                let (inbound, outbound) = value(listener.udp)
                out.sample(name, ["listener": listener.name, "direction": "in"], Double(inbound))
                out.sample(name, ["listener": listener.name, "direction": "out"], Double(outbound))
            }
        }
        let dropped = "sluice_udp_dropped_total"
        out.family(dropped, "counter", "Datagrams dropped, by reason (max_flows, no_backend, backend_error, client_error, truncated).")
        for listener in listeners {
            for reason in UDPCounters.Drop.allCases {
                out.sample(dropped, ["listener": listener.name, "reason": reason.rawValue], Double(listener.udp.drops(reason)))
            }
        }
    }
}
