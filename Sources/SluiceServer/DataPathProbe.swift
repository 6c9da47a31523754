import SluiceBPF
import SluicePosix

/// `data_path: auto` decides by measurement: the same request/response
/// exchange (a small request, a 1 MiB response, on one persistent
/// connection pair over loopback) through the SOCKHASH and through splice(2).
/// Throughput alone does not decide it: the sockmap path keeps the proxy's
/// CPU near zero, so it wins unless it is clearly slower.
public struct DataPathMeasurement: Sendable, CustomStringConvertible {
    public var sockmapMiBps: Double
    public var spliceMiBps: Double
    /// Sockmap is chosen unless it reaches less than this share of splice(2)'s speed.
    public static let sockmapTolerance = 0.9

    public var prefersSockmap: Bool { sockmapMiBps >= spliceMiBps * Self.sockmapTolerance }

    public var description: String {
        "sockmap \(Int(sockmapMiBps)) MiB/s, splice(2) \(Int(spliceMiBps)) MiB/s"
    }
}

enum DataPathProbe {
    static let responseBytes = 1 << 20
    static let rounds = 32

    /// Runs the exchange with `proxy` moving the bytes; MiB/s of responses.
    static func exchange(_ pairs: LoopbackConnections) -> Double {
        let server = pairs.server
        let serverThread = try? OSThread.start(name: "probe-server") {
            var request = [UInt8](repeating: 0, count: 100)
            let response = [UInt8](repeating: 0x42, count: responseBytes)
            for _ in 0..<rounds {
                guard (try? Socket.receiveExactly(server, into: &request)) == true,
                      (try? Socket.sendAll(server, response)) != nil else { return }
            }
        }
        let request = [UInt8](repeating: 0x41, count: 100)
        var buffer = [UInt8](repeating: 0, count: 256 * 1024)
        let start = monotonicNanoseconds()
        var ok = true
        for _ in 0..<rounds where ok {
            ok = (try? Socket.sendAll(pairs.client, request)) != nil
            var received = 0
            while ok && received < responseBytes {
                let n = (try? Socket.receive(pairs.client, into: &buffer, maxBytes: responseBytes - received)) ?? 0
                if n <= 0 { ok = false } else { received += n }
            }
        }
        let seconds = Double(monotonicNanoseconds() - start) / 1e9
        Socket.shutdownBoth(pairs.client)
        Socket.shutdownBoth(pairs.server)
        serverThread?.join()
        return ok ? Double(rounds * responseBytes) / Double(1 << 20) / seconds : 0
    }

    /// Best of `trials` for each path: scheduling noise only ever slows a trial down.
    static func measure(sockmap: SockmapPairs, trials: Int = 2) -> DataPathMeasurement {
        var best = DataPathMeasurement(sockmapMiBps: 0, spliceMiBps: 0)
        for _ in 0..<trials {
            let trial = measureOnce(sockmap: sockmap)
            best.sockmapMiBps = max(best.sockmapMiBps, trial.sockmapMiBps)
            best.spliceMiBps = max(best.spliceMiBps, trial.spliceMiBps)
        }
        return best
    }

    static func measureOnce(sockmap: SockmapPairs) -> DataPathMeasurement {
        var result = DataPathMeasurement(sockmapMiBps: 0, spliceMiBps: 0)
        // Through the kernel.
        if let pairs = try? LoopbackConnections() {
            for fd in [pairs.proxyA, pairs.proxyB] { SockmapPairs.prepare(fd) }
            if let (a, b) = try? sockmap.pair(pairs.proxyA, pairs.proxyB, worker: 0) {
                result.sockmapMiBps = exchange(pairs)
                sockmap.removePeer(cookie: a)
                sockmap.removePeer(cookie: b)
            }
            pairs.close()
        }
        // Through splice(2), one thread per direction, as a worker would move them.
        if let pairs = try? LoopbackConnections() {
            func relay(_ from: Int32, _ to: Int32) -> OSThread? {
                try? OSThread.start(name: "probe-splice") {
                    guard let pipe = try? Pipe.makeBlocking() else { return }
                    defer { pipe.close() }
                    while true {
                        let n = (try? Socket.spliceBlocking(from: from, to: pipe.writeEnd, maxBytes: 1 << 20)) ?? 0
                        if n <= 0 { return }
                        var left = n
                        while left > 0 {
                            let m = (try? Socket.spliceBlocking(from: pipe.readEnd, to: to, maxBytes: left)) ?? 0
                            if m <= 0 { return }
                            left -= m
                        }
                    }
                }
            }
            let up = relay(pairs.proxyA, pairs.proxyB)
            let down = relay(pairs.proxyB, pairs.proxyA)
            result.spliceMiBps = exchange(pairs)
            Socket.shutdownBoth(pairs.proxyA)
            Socket.shutdownBoth(pairs.proxyB)
            up?.join()
            down?.join()
            pairs.close()
        }
        return result
    }
}
