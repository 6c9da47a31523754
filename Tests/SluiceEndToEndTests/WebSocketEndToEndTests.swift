import Foundation
import Glibc
import SluiceTestSupport
import Testing

let wsPeerScript = packageRoot.appendingPathComponent("Tests/SluiceEndToEndTests/Scripts/wspeer.py").path

/// The Python `websockets` echo server (Scripts/wspeer.py).
func startWebSocketBackend() throws -> (process: BackgroundProcess, port: UInt16) {
    let port = freePort()
    return (try BackgroundProcess(["/usr/bin/env", "python3", wsPeerScript, "server", "\(port)"], readyLine: "ready"), port)
}

/// Runs a wspeer.py client command; its output, trimmed.
func wsPeer(_ arguments: [String]) throws -> String {
    let (code, out) = try runCommand("/usr/bin/env", ["python3", wsPeerScript] + arguments)
    #expect(code == 0, "wspeer \(arguments): \(out)")
    return out.trimmingCharacters(in: .whitespacesAndNewlines)
}

/// A `mode: http` listener in front of the WebSocket backend.
func webSocketConfig(port: UInt16, backend: UInt16, dataPath: String = "auto", http: String = "", metrics: UInt16? = nil,
                     tunnelIdle: String = "1500ms") -> String {
    """
    instance: e2e\(port)
    workers: 2
    data_path: \(dataPath)
    drain_timeout: 2s
    log: { level: info, access: text, file: stderr }
    admin: { metrics: \(metrics.map { "\"127.0.0.1:\($0)\"" } ?? "off") }
    listeners:
      - { name: web, bind: "127.0.0.1:\(port)", pool: ws, mode: http, http: { tunnel_idle_timeout: \(tunnelIdle)\(http) } }
    pools:
      - { name: ws, backends: [ { address: "127.0.0.1:\(backend)" } ] }
    """
}

@Suite("WebSocket through mode http, with the Python websockets package", .serialized)
struct WebSocketEndToEndTests {
    @Test("the same transcript direct and through Sluice: 0 B to 16 MiB messages, fragments with pings between, close codes, permessage-deflate",
          arguments: ["auto", "sockmap", "splice", "copy"])
    func transcript(dataPath: String) throws {
        let (backend, backendPort) = try startWebSocketBackend()
        defer { _ = backend }
        let port = freePort()
        // The Python peers pause longer than the idle test's 1.5 s when the machine is busy.
        let sluice = try SluiceProcess.run(config: webSocketConfig(port: port, backend: backendPort, dataPath: dataPath, tunnelIdle: "20s"))
        let direct = try wsPeer(["transcript", "ws://127.0.0.1:\(backendPort)/"])
        let proxied = try wsPeer(["transcript", "ws://127.0.0.1:\(port)/chat"])
        #expect(proxied == direct)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(proxied.utf8)) as? [String: Any])
        let messages = try #require(object["messages"] as? [[Any]])
        #expect(messages.count == 13 && messages.allSatisfy { $0[2] as? Bool == true }, "\(messages)")
        #expect((object["close"] as? [Any])?.first as? Int == 4000)
        #expect((object["extensions"] as? String)?.hasPrefix("permessage-deflate") == true, "negotiated end to end")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
        let log = sluice.log
        #expect(log.contains("method=GET host=127.0.0.1 path=/chat status=101"), "\(log)")
        let tunnelLine = log.split(separator: "\n").first { $0.contains("tunnel=websocket") }
        #expect(tunnelLine?.contains("bytes_in=") == true && tunnelLine?.contains("bytes_in=0 ") == false, "\(log)")
        if dataPath == "sockmap" { #expect(tunnelLine?.contains("path=sockmap") == true, "\(log)") }
    }

    @Test("200 tunnels echo checksummed random data for 10 s; status and /metrics count them open, then closed")
    func concurrentTunnels() throws {
        let (backend, backendPort) = try startWebSocketBackend()
        defer { _ = backend }
        let port = freePort(), metricsPort = freePort()
        let sluice = try SluiceProcess.run(config: webSocketConfig(port: port, backend: backendPort, metrics: metricsPort)
            .replacingOccurrences(of: "access: text", with: "access: off"))
        let result = Locked("")
        let load = startThread {
            let out = (try? wsPeer(["load", "ws://127.0.0.1:\(port)/", "200", "10"])) ?? ""
            result.withLock { $0 = out }
        }
        usleep(5_000_000)
        let listener = try #require((try statusJSON("e2e\(port)")["listeners"] as? [[String: Any]])?.first)
        #expect(listener["tunnels"] as? Int == 200, "\(listener)")
        let (_, metrics) = try curl(["http://127.0.0.1:\(metricsPort)/metrics"])
        #expect(metrics.contains("sluice_http_tunnels_open{listener=\"web\"} 200"), "\(metrics)")
        load.join()
        let outcome = try #require(try JSONSerialization.jsonObject(with: Data(result.withLock { $0 }.utf8)) as? [String: Any])
        #expect(outcome["ok"] as? Int == 200 && outcome["bad"] as? Int == 0 && outcome["failed"] as? Int == 0, "\(outcome)")
        #expect((outcome["messages"] as? Int ?? 0) > 10_000, "\(outcome)")
        try waitUntil(5, "every tunnel closed") {
            ((try? statusJSON("e2e\(port)")["listeners"] as? [[String: Any]])?.first?["tunnels"] as? Int) == 0
        }
        #expect(try sluice.stop() == 0, "\(sluice.log)")
    }

    @Test("no tunnel the backend did not accept (200, 426 reach the client); frames sent before the 101 arrive; idle tunnels close; websocket: false is 403")
    func refusalsAndTimeouts() throws {
        let (backend, backendPort) = try startWebSocketBackend()
        defer { _ = backend }
        let port = freePort()
        let sluice = try SluiceProcess.run(config: webSocketConfig(port: port, backend: backendPort))
        #expect(try wsPeer(["status", "ws://127.0.0.1:\(port)/reject200"]) == "200 plain http")
        #expect(try wsPeer(["status", "ws://127.0.0.1:\(port)/reject426"]) == "426 upgrade elsewhere")
        #expect(try wsPeer(["early", "127.0.0.1", "\(port)"]) == "[\"accepted\", \"sent before the 101\"]")
        let idle = try wsPeer(["idle", "ws://127.0.0.1:\(port)/", "5"])
        let after = Double(idle.split(separator: " ").last ?? "") ?? -1
        #expect(idle.hasPrefix("closed after") && after >= 1.3 && after < 3, "tunnel_idle_timeout is 1.5 s: \(idle)")
        #expect(try sluice.stop() == 0, "\(sluice.log)")

        let off = freePort()
        let refusing = try SluiceProcess.run(config: webSocketConfig(port: off, backend: backendPort, http: ", websocket: false"))
        #expect(try wsPeer(["status", "ws://127.0.0.1:\(off)/"]) == "403 403 Forbidden")
        #expect(try refusing.stop() == 0, "\(refusing.log)")
    }
}
