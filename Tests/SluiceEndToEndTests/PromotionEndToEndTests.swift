import Foundation
import Glibc
import SluicePosix
import Testing

/// Exchanges after which these tests' `data_path: auto` promotes a session.
let promotionTurns = 4

/// Sends `message` and reads back exactly as many bytes; nil, or what went wrong.
func echoExchange(_ fd: Int32, _ message: [UInt8]) -> String? {
    let writer = startThread { _ = sendAll(fd, message) }
    defer { writer.join() }
    var received = [UInt8](repeating: 0, count: message.count)
    var offset = 0
    while offset < message.count {
        let n = received.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + offset, message.count - offset, 0) }
        if n <= 0 {
            if n < 0 && errno == EINTR { continue }
            return "\(message.count)-byte message: \(offset) bytes came back, then \(n == 0 ? "EOF" : errnoDescription(errno))"
        }
        offset += n
    }
    return received == message ? nil : "\(message.count)-byte message came back altered"
}

/// Sizes for one client: small exchanges first (they promote), then
/// log-uniform sizes from 1 byte to 1 MiB, all from `seed`.
func exchangeSizes(seed: UInt64, small: Int, large: Int) -> [Int] {
    var rng = SplitMix(seed)
    let first = (0..<small).map { _ in 1 + Int(rng.next() % 2000) }
    let rest = (0..<large).map { _ in max(1, Int(pow(2.0, Double(rng.next() % 2001) / 100.0))) }
    return first + rest
}

struct SplitMix {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The paths of every access line, e.g. ["copy+sockmap", "copy"].
func accessPaths(_ log: String) -> [String] {
    log.split(separator: "\n").filter { $0.contains(" access ") }.compactMap { line in
        line.split(separator: " ").first { $0.hasPrefix("path=") }.map { String($0.dropFirst(5)) }
    }
}

/// Connects and makes `promotionTurns` small exchanges (the session is
/// promoted as the last answer leaves); nil, with the failure noted, if that fails.
func connectAndExchange(port: UInt16, client i: Int, failures: Locked<[String]>) -> Int32? {
    guard let fd = try? connectTCP("127.0.0.1", port, timeoutSeconds: 30) else {
        failures.withLock { $0.append("client \(i): no connection") }
        return nil
    }
    for k in 0..<promotionTurns {
        if let failure = echoExchange(fd, payload(size: 200, seed: UInt64(i * 10 + k))) {
            failures.withLock { $0.append("client \(i): \(failure)") }
            close(fd)
            return nil
        }
    }
    return fd
}

@Suite("data_path auto: promotion to the kernel mid-stream", .serialized)
struct PromotionEndToEndTests {
    /// Starts sluice (auto, promoting) in front of `backend` and runs `client`
    /// on `count` threads at once; each notes what went wrong in `failures`.
    /// Returns the running proxy and its port, once every client is done.
    func run(_ count: Int, clientsOf backend: TestServer,
             _ client: @escaping @Sendable (_ index: Int, _ port: UInt16, _ failures: Locked<[String]>) -> Void) throws
        -> (sluice: SluiceProcess, port: UInt16)
    {
        let port = freePort()
        let sluice = try SluiceProcess.run(config: proxyConfig(port: port, backends: [backend.address], dataPath: "auto",
                                                               extraTop: "sockmap_after_turns: \(promotionTurns)"))
        let failures = Locked<[String]>([])
        let threads = (0..<count).map { i in startThread { client(i, port, failures) } }
        for t in threads { t.join() }
        #expect(failures.value.isEmpty, "\(failures.value)")
        return (sluice, port)
    }

    @Test("64 pairs: small exchanges promote each to sockmap; then checksummed random sizes up to 1 MiB come back byte-exact")
    func promotionUnderLoad() throws {
        guard requireRoot() else { return }
        let echo = try TestServer.echo()
        let (sluice, port) = try run(64, clientsOf: echo) { i, port, failures in
            let fd: Int32
            do { fd = try connectTCP("127.0.0.1", port, timeoutSeconds: 30) } catch {
                failures.withLock { $0.append("\(error)") }
                return
            }
            defer { close(fd) }
            for (k, size) in exchangeSizes(seed: UInt64(i), small: promotionTurns + 2, large: 10).enumerated() {
                if let failure = echoExchange(fd, payload(size: size, seed: UInt64(i * 100 + k))) {
                    failures.withLock { $0.append("client \(i), exchange \(k): \(failure)") }
                    return
                }
            }
            shutdown(fd, Int32(SHUT_WR))
            let (rest, clean) = readToEnd(fd)
            if !clean || !rest.isEmpty { failures.withLock { $0.append("client \(i): \(rest.count) extra bytes, clean EOF \(clean)") } }
        }
        let status = try statusJSON("e2e\(port)")
        let counts = status["data_paths"] as? [String: Int]
        #expect(status["data_path"] as? String == "auto")
        #expect(try sluice.stop() == 0, "\(sluice.log)")
        let paths = accessPaths(sluice.log)
        #expect(paths.count == 64)
        #expect(paths.allSatisfy { $0.hasSuffix("+sockmap") }, "\(paths)")
        #expect(counts?["promotions"] == 64 && counts?["sockmap"] == 64, "\(String(describing: counts))")
    }

    @Test("promotion while the client's next messages are in flight: the echoed stream stays byte-exact")
    func promotionWithBytesInFlight() throws {
        guard requireRoot() else { return }
        let echo = try TestServer.echo()
        let (sluice, _) = try run(32, clientsOf: echo) { i, port, failures in
            guard let fd = connectAndExchange(port: port, client: i, failures: failures) else { return }
            defer { close(fd) }
            var rng = SplitMix(UInt64(i))
            let messages = (0..<300).map { k in payload(size: 1 + Int(rng.next() % 1500), seed: UInt64(i * 1000 + k)) }
            var sent = StreamDigest()
            for m in messages { m.withUnsafeBytes { sent.update($0) } }
            // The session is promoted as the last answer leaves; the
            // writer does not wait for answers any more, so the next
            // messages are already queued or on their way.
            let writer = startThread {
                for (k, m) in messages.enumerated() {
                    _ = sendAll(fd, m)
                    if k % 8 == 7 { usleep(200) }
                }
                shutdown(fd, Int32(SHUT_WR))
            }
            let (received, clean) = readToEnd(fd)
            writer.join()
            var got = StreamDigest()
            received.withUnsafeBytes { got.update($0) }
            if !clean || got != sent {
                failures.withLock { $0.append("client \(i): \(got.count) of \(sent.count) bytes, clean EOF \(clean)") }
            }
        }
        #expect(try sluice.stop() == 0, "\(sluice.log)")
        let paths = accessPaths(sluice.log)
        #expect(paths.count == 32 && paths.allSatisfy { $0.hasSuffix("+sockmap") }, "\(paths)")
    }

    @Test("a client half-closing as its session is promoted: its last message and the answer arrive whole",
          arguments: [0, 50_000])
    func clientHalfCloseDuringPromotion(lastMessage: Int) throws {
        guard requireRoot() else { return }
        let echo = try TestServer.echo()
        let (sluice, _) = try run(64, clientsOf: echo) { i, port, failures in
            guard let fd = connectAndExchange(port: port, client: i, failures: failures) else { return }
            defer { close(fd) }
            // The promotion starts as the last answer leaves: race it.
            let last = payload(size: lastMessage, seed: UInt64(i))
            _ = sendAll(fd, last)
            shutdown(fd, Int32(SHUT_WR))
            let (received, clean) = readToEnd(fd)
            if !clean || received != last {
                failures.withLock { $0.append("client \(i): \(received.count) of \(last.count) bytes back, clean EOF \(clean)") }
            }
        }
        #expect(try sluice.stop() == 0, "\(sluice.log)")
        let lines = sluice.log.split(separator: "\n").filter { $0.contains(" access ") }
        #expect(lines.count == 64 && lines.allSatisfy { $0.contains("reason=client_eof") }, "\(lines)")
    }

    @Test("a backend closing as its session is promoted: its parting bytes and EOF reach the client whole")
    func backendCloseDuringPromotion() throws {
        guard requireRoot() else { return }
        let parting = payload(size: 30_000, seed: 99)
        // Echoes `promotionTurns` messages, then says goodbye and closes.
        let backend = try TestServer { fd in
            var chunk = [UInt8](repeating: 0, count: 200)
            for _ in 0..<promotionTurns {
                var offset = 0
                while offset < chunk.count {
                    let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + offset, 200 - offset, 0) }
                    if n <= 0 { return }
                    offset += n
                }
                guard sendAll(fd, chunk) else { return }
            }
            _ = sendAll(fd, parting)
            shutdown(fd, Int32(SHUT_WR))
            _ = readToEnd(fd)
        }
        let (sluice, _) = try run(64, clientsOf: backend) { i, port, failures in
            guard let fd = connectAndExchange(port: port, client: i, failures: failures) else { return }
            defer { close(fd) }
            let (received, clean) = readToEnd(fd)
            shutdown(fd, Int32(SHUT_WR))
            if !clean || received != parting {
                failures.withLock { $0.append("client \(i): \(received.count) of \(parting.count) parting bytes, clean EOF \(clean)") }
            }
        }
        #expect(try sluice.stop() == 0, "\(sluice.log)")
        #expect(accessPaths(sluice.log).count == 64)
    }
}
