import ArgumentParser
import Foundation
import CSluice
import Logging
import SluiceCore
import SluicePosix
import SluiceServer

@main
struct SluiceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sluice",
        abstract: "An eBPF-accelerated TCP load-balancing proxy.",
        subcommands: [Run.self, Check.self, Reload.self, Upgrade.self, Demo.self, Status.self]
    )
}

/// Loads and validates a configuration file, printing every error.
func loadConfig(_ path: String, quiet: Bool = false) throws -> LoadedConfig {
    do {
        let loaded = try ConfigFile.load(path: path)
        if !quiet { for notice in loaded.notices { printError("notice: \(notice)") } }
        return loaded
    } catch {
        for line in error.errors { printError("error: \(line)") }
        printError("\(path): \(error.errors.count) error\(error.errors.count == 1 ? "" : "s")")
        throw ExitCode(2)
    }
}

func printError(_ text: String) {
    var line = text
    line.append("\n")
    try? FileSystem.writeAll(Descriptor.standardError, line.utf8)
}

func printOut(_ text: String) {
    var line = text
    line.append("\n")
    try? FileSystem.writeAll(Descriptor.standardOutput, line.utf8)
}

/// Runs a server to completion and turns its failure into a message and an exit code.
func runServer(_ config: SluiceConfig, options: ServerOptions, logQueueBytes: Int = LogSink.defaultCapacityBytes) throws {
    let sink: LogSink
    do {
        sink = try LogSink(path: config.log.file, capacityBytes: logQueueBytes)
    } catch {
        printError("error: log.file: cannot open: \(error)")
        throw ExitCode(1)
    }
    // The last lines ("stopped", or why the start failed) are written before exit.
    defer { sink.stop() }
    let logs = LogFactory(sink: sink, level: config.log.level.swiftLogLevel)
    let server = Server(config: config, logs: logs, accessSink: sink, options: options)
    let status: Int32
    do {
        status = try server.run()
    } catch {
        logs.logger("sluice").critical("cannot start: \(error)")
        throw ExitCode(1)
    }
    if status != 0 { throw ExitCode(status) }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the proxy with a configuration file.")

    @Option(name: .shortAndLong, help: "Path of the YAML configuration.")
    var config: String

    @Flag(help: "At exit, fail (status 3) if any descriptor the server opened is still open.")
    var verifyCleanExit = false

    @Option(help: ArgumentHelp("Benchmark knob: on SIGUSR1, block worker K for MS milliseconds (K:MS).", visibility: .hidden))
    var stallOnSigusr1: String?

    @Option(help: ArgumentHelp("Test knob: bytes of log lines queued for a slow log output before lines are dropped.",
                               visibility: .hidden))
    var logQueueBytes: Int = LogSink.defaultCapacityBytes

    @Option(help: ArgumentHelp("Binary upgrade: take over from the running process at this socket (it passes this itself).",
                               visibility: .hidden))
    var upgradeFrom: String?

    func run() throws {
        let loaded = try loadConfig(config)
        var options = ServerOptions(verifyCleanExit: verifyCleanExit)
        // Absolute: a reload reads the same file whatever the directory is then.
        options.configPath = config.hasPrefix("/") ? config : FileManager.default.currentDirectoryPath + "/" + config
        // Now: a package upgrade may replace the file later, and an upgrade without --binary starts that one.
        options.executablePath = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            .map { $0.hasSuffix(" (deleted)") ? String($0.dropLast(10)) : $0 }
        options.upgradeFrom = upgradeFrom
        if let knob = stallOnSigusr1 {
            let parts = knob.split(separator: ":")
            guard parts.count == 2, let worker = Int(parts[0]), let ms = UInt64(parts[1]) else {
                printError("error: --stall-on-sigusr1: expected WORKER:MILLISECONDS; found \"\(knob)\"")
                throw ExitCode(2)
            }
            options.stallOnSIGUSR1 = (worker, ms)
        }
        try runServer(loaded.config, options: options, logQueueBytes: logQueueBytes)
    }
}

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Validate a configuration file and exit.")

    @Option(name: .shortAndLong, help: "Path of the YAML configuration.")
    var config: String

    func run() throws {
        let loaded = try loadConfig(config)
        let c = loaded.config
        // A warning, not an error: the limit where it runs may differ from here.
        if let limit = openFilesLimit(), let warning = DescriptorBudget(config: c).warning(openFilesLimit: limit) {
            printError("warning: \(warning)")
        }
        printOut("\(config): OK: \(c.listeners.count) listener(s), \(c.pools.count) pool(s), "
            + "\(c.workers) worker(s), steering \(c.steering.rawValue), data path \(c.dataPath.rawValue)")
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show workers, listeners and backends of a running instance.",
        discussion: """
            Reads the instance's pinned BPF maps directly, so it answers even when the daemon \
            is wedged; backends come from the admin socket when it answers.
            """
    )

    @Option(help: "Instance name.")
    var instance = "default"

    @Flag(help: "Print one JSON document.")
    var json = false

    @Flag(help: "Redraw every INTERVAL seconds (default 1) until Ctrl-C.")
    var watch = false

    @Flag(help: "Exit 1 unless the daemon runs, its workers beat and its admin socket answers (for liveness probes).")
    var check = false

    @Argument(help: "Seconds between redraws with --watch.")
    var interval: Double?

    func validate() throws {
        if interval != nil && !watch { throw ValidationError("an interval only goes with --watch") }
        if let interval, !(interval >= 0.1 && interval <= 3600) {
            throw ValidationError("the interval is in seconds, 0.1 to 3600; found \(interval)")
        }
    }

    func run() throws {
        if check { return try checkAlive() }
        repeat {
            let snapshot: StatusSnapshot
            do {
                snapshot = try StatusReader.read(instance: instance)
            } catch {
                printError(error.description)
                throw ExitCode(error.exitCode)
            }
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                printOut(String(decoding: try encoder.encode(snapshot), as: UTF8.self))
            } else {
                // Home and clear, then the table: redrawn in place with --watch.
                if watch { printOutRaw("\u{1B}[H\u{1B}[2J") }
                printOutRaw(StatusText.render(snapshot))
            }
            if watch { sleepMilliseconds(UInt32((interval ?? 1) * 1000)) }
        } while watch
    }
}

extension Status {
    /// Liveness without the network: pinned counters say the workers beat,
    /// the admin socket (root only) says the control thread answers.
    func checkAlive() throws {
        let snapshot: StatusSnapshot
        do {
            snapshot = try StatusReader.read(instance: instance)
        } catch {
            printError(error.description)
            throw ExitCode(1)
        }
        guard snapshot.daemon == "running" else {
            printError("sluice \(instance): \(snapshot.daemon)")
            throw ExitCode(1)
        }
        guard let socket = InstanceInfo.read(instance: instance)?.adminSocket else {
            printError("sluice \(instance): no admin socket to ask")
            throw ExitCode(1)
        }
        do {
            let reply = try AdminClient.request(socket: socket, ["cmd": "status"], timeoutMilliseconds: 2000)
            guard reply.contains("\"workers\"") else { throw ValidationError(reply) }
        } catch {
            printError("sluice \(instance): the admin socket does not answer: \(error)")
            throw ExitCode(1)
        }
        printOut("sluice \(instance): running, workers beating, admin socket answering")
    }
}

func printOutRaw(_ text: String) {
    try? FileSystem.writeAll(Descriptor.standardOutput, text.utf8)
}

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start two built-in HTTP backends on loopback and the proxy in front of them."
    )

    @Option(help: "Proxy port on 127.0.0.1 (0 picks a free one).")
    var port: UInt16 = 8080

    @Option(help: "Worker threads (default: online CPUs).")
    var workers: Int?

    @Option(help: "Data path: splice (splice(2) through a pipe) or copy (read/write).")
    var dataPath: String = "splice"

    @Option(help: "Access log: off, text or json.")
    var access: String = "text"

    @Option(help: "Prometheus metrics port on 127.0.0.1 (0: off).")
    var metricsPort: UInt16 = 9901

    func run() throws {
        guard let mode = DataPathMode(rawValue: dataPath), mode == .splice || mode == .copy else {
            printError("error: --data-path: expected splice or copy; found \"\(dataPath)\"")
            throw ExitCode(2)
        }
        guard let accessFormat = AccessLogFormat(rawValue: access) else {
            printError("error: --access: expected off, text or json; found \"\(access)\"")
            throw ExitCode(2)
        }
        var backends: [DemoBackend] = []
        for name in ["backend-1", "backend-2"] {
            do {
                let backend = try DemoBackend(name: name, bindTo: SocketAddress(ip: "127.0.0.1", port: 0)!)
                try backend.start()
                backends.append(backend)
            } catch {
                printError("error: cannot start demo backend: \(error)")
                throw ExitCode(1)
            }
        }
        let pool = PoolConfig(
            name: "demo", algorithm: .roundRobin, retries: 1,
            backends: backends.map {
                BackendConfig(address: SocketAddressSpec(host: $0.address.ipText, port: $0.address.port, family: .inet), weight: 1)
            }
        )
        let listener = ListenerConfig(
            name: "demo", bind: SocketAddressSpec(host: "127.0.0.1", port: port, family: .inet), pool: "demo",
            maxConnections: 100_000, connectTimeout: .seconds(2), idleTimeout: .seconds(300)
        )
        // Least-loaded steering needs BPF (root); without it the demo still runs, on the kernel's hash.
        let steering: SteeringMode = Privileges.isRoot ? .leastLoaded : .hash
        if steering == .hash { printError("note: not root, so steering is \"hash\" (least_loaded needs BPF)") }
        let config = SluiceConfig(
            instance: "demo", workers: workers ?? ConfigDefaults.workers(onlineCPUs: CurrentProcess.onlineCPUCount), steering: steering, dataPath: mode,
            stallThreshold: .milliseconds(200), drainTimeout: .seconds(5),
            log: LogConfig(level: .info, access: accessFormat, file: "stderr"),
            admin: AdminConfig(
                socket: "/run/sluice/demo.sock",
                metrics: metricsPort > 0 ? SocketAddressSpec(host: "127.0.0.1", port: metricsPort, family: .inet) : nil),
            listeners: [listener], pools: [pool]
        )
        var options = ServerOptions()
        let backendList = backends.map { "\($0.name) at \($0.address)" }.joined(separator: ", ")
        options.onReady = { listeners in
            guard let address = listeners.first?.address else { return }
            printOut("""
                sluice demo: proxy at http://\(address)/ in front of \(backendList)
                  try:    curl http://\(address)/
                  load:   wrk -t2 -c64 -d10s http://\(address)/
                  status: sluice status --instance demo --watch
                  metrics: \(metricsPort > 0 ? "curl http://127.0.0.1:\(metricsPort)/metrics" : "off (--metrics-port)")
                  stop:   Ctrl-C
                """)
        }
        try runServer(config, options: options)
    }
}
