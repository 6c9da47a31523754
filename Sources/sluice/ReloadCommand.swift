import ArgumentParser
import Foundation
import Glibc
import SluicePosix
import SluiceServer

struct Reload: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make a running instance read its configuration file again and apply it.",
        discussion: """
            Applies without dropping a connection, or keeps the running configuration and prints \
            every error (exit status 1). Asks the admin socket when the instance has one; \
            otherwise sends SIGHUP and reads the outcome from the instance's info file.
            """
    )

    @Option(help: "Instance name.")
    var instance = "default"

    @Option(name: .shortAndLong, help: "The configuration file: the instance is the one it names (for ExecReload).")
    var config: String?

    @Option(help: "Seconds to wait for the outcome.")
    var timeout: Double = 10

    func validate() throws {
        if config != nil && instance != "default" { throw ValidationError("give --instance or --config, not both") }
    }

    func run() throws {
        // An invalid file names no instance; the daemon would refuse it anyway.
        let instance = try config.map { try loadConfig($0).config.instance } ?? instance
        guard let info = InstanceInfo.read(instance: instance) else {
            printError("no sluice instance \"\(instance)\" is running (no info file at \(InstanceInfo.path(instance: instance)))")
            throw ExitCode(2)
        }
        if let socket = info.adminSocket { return try ask(socket, instance: instance) }
        try signal(info, instance: instance)
    }

    private func ask(_ socket: String, instance: String) throws {
        let reply: String
        do {
            reply = try AdminClient.request(socket: socket, ["cmd": "reload"], timeoutMilliseconds: Int(timeout * 1000))
        } catch {
            printError("sluice \(instance): the admin socket \(socket) does not answer: \(error)")
            throw ExitCode(2)
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(reply.utf8)) as? [String: Any] else {
            printError("sluice \(instance): unexpected answer: \(reply)")
            throw ExitCode(2)
        }
        let generation = object["generation"] as? Int ?? 0
        if object["ok"] as? Bool == true {
            let changes = object["changes"] as? [String] ?? []
            printOut("sluice \(instance): reloaded, generation \(generation)" + (changes.isEmpty ? ", nothing changed" : ""))
            for change in changes { printOut("  \(change)") }
            return
        }
        printError("sluice \(instance): \(object["error"] as? String ?? reply) (generation \(generation))")
        for error in object["errors"] as? [String] ?? [] { printError("error: \(error)") }
        throw ExitCode(1)
    }

    /// Without an admin socket: SIGHUP, then the info file says which
    /// counter moved, the generation or the refusals.
    private func signal(_ info: InstanceInfo, instance: String) throws {
        let before = (info.generation ?? 1, info.reloadsFailed ?? 0)
        guard kill(info.pid, SIGHUP) == 0 else {
            printError("sluice \(instance): cannot signal process \(info.pid): \(String(cString: strerror(errno)))")
            throw ExitCode(2)
        }
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            usleep(50_000)
            guard let now = InstanceInfo.read(instance: instance) else { continue }
            if (now.generation ?? 1) != before.0 {
                printOut("sluice \(instance): reloaded, generation \(now.generation ?? 1)")
                return
            }
            if (now.reloadsFailed ?? 0) != before.1 {
                printError("sluice \(instance): reload refused: the running configuration stays (generation \(now.generation ?? 1))")
                for error in now.lastReloadErrors ?? [] { printError("error: \(error)") }
                throw ExitCode(1)
            }
        }
        printError("sluice \(instance): no outcome within \(timeout) s (see the daemon's log)")
        throw ExitCode(2)
    }
}
