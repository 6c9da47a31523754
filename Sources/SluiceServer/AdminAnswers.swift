import Foundation
import Logging
import SluiceCore

/// What the admin socket can ask of the running server.
protocol AdminHandler: AnyObject {
    func adminStatus() -> StatusSnapshot?
    func adminBackends() -> AdminBackendsReply
    func adminDrainBackend(pool: String, backend: String, drained: Bool) -> String?  // nil = done, else why not
    func adminDrainWorker(_ worker: Int, drained: Bool) -> String?
    func adminReload() -> ReloadOutcome
    func adminUpgrade(binary: String?) -> String?
    func metricsText() -> String
}

/// Turns parsed requests into the bytes a client is sent. Decides nothing
/// about connections: `AdminEndpoints` owns those.
struct AdminAnswers {
    weak var handler: AdminHandler?
    let logger: Logger

    /// One JSON answer line (with its newline) for one admin line; nil for a blank line.
    func answer(_ line: AdminLine) -> [UInt8]? {
        switch line {
        case .blank: return nil
        case .malformed(let error): return Self.line(Self.json(["error": error.message]))
        case .request(let request): return Self.line(answer(request))
        }
    }

    static func errorLine(_ message: String) -> [UInt8] { line(json(["error": message])) }

    private static func line(_ text: String) -> [UInt8] { Array(text.utf8) + [UInt8(ascii: "\n")] }

    private func answer(_ request: AdminRequest) -> String {
        guard let handler else { return Self.json(["error": "shutting down"]) }
        switch request {
        case .status:
            guard let status = handler.adminStatus(), let data = try? JSONEncoder().encode(status) else {
                return Self.json(["error": "status unavailable"])
            }
            return String(decoding: data, as: UTF8.self)
        case .backends:
            guard let data = try? JSONEncoder().encode(handler.adminBackends()) else { return Self.json(["error": "unavailable"]) }
            return String(decoding: data, as: UTF8.self)
        case .drainBackend(let pool, let backend, let drained):
            if let problem = handler.adminDrainBackend(pool: pool, backend: backend, drained: drained) {
                return Self.json(["error": problem])
            }
            logger.notice("admin: \(drained ? "drain_backend" : "undrain_backend")", metadata: ["pool": "\(pool)", "backend": "\(backend)"])
            return Self.json(["ok": true])
        case .drainWorker(let worker, let drained):
            if let problem = handler.adminDrainWorker(worker, drained: drained) {
                return Self.json(["error": problem])
            }
            logger.notice("admin: \(drained ? "drain_worker" : "undrain_worker")", metadata: ["worker": "\(worker)"])
            return Self.json(["ok": true])
        case .reload:
            let outcome = handler.adminReload()
            if outcome.applied { return Self.json(["ok": true, "generation": outcome.generation, "changes": outcome.changes]) }
            return Self.json(["error": "reload refused: the running configuration stays", "errors": outcome.errors,
                              "generation": outcome.generation])
        case .upgrade(let binary):
            if let refusal = handler.adminUpgrade(binary: binary) { return Self.json(["error": "upgrade not started: \(refusal)"]) }
            logger.notice("admin: upgrade", metadata: ["binary": "\(binary ?? "(this one)")"])
            return Self.json(["ok": true])
        }
    }

    /// The whole HTTP response to one metrics request; every one closes the connection.
    func metricsResponse(_ request: MetricsRequest, headOnly: Bool) -> [UInt8] {
        switch request {
        case .metrics:
            let body = handler?.metricsText() ?? ""
            return Self.http("200 OK", contentType: "text/plain; version=0.0.4; charset=utf-8", body: body, headOnly: headOnly)
        case .notFound:
            return Self.http("404 Not Found", body: "not found: the metrics are at /metrics\n", headOnly: headOnly)
        case .methodNotAllowed:
            return Self.http("405 Method Not Allowed", body: "only GET and HEAD\n", headOnly: false, extra: "Allow: GET, HEAD\r\n")
        }
    }

    static func badRequest(_ reason: String) -> [UInt8] {
        http("400 Bad Request", body: reason + "\n", headOnly: false)
    }

    private static func http(_ status: String, contentType: String = "text/plain", body: String, headOnly: Bool, extra: String = "") -> [UInt8] {
        let head = "HTTP/1.1 \(status)\r\nContent-Type: \(contentType)\r\nContent-Length: \(body.utf8.count)\r\n"
            + extra + "Connection: close\r\n\r\n"
        return Array(head.utf8) + (headOnly ? [] : Array(body.utf8))
    }

    static func json(_ object: [String: Any]) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }
}
