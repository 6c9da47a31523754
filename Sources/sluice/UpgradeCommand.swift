import ArgumentParser
import Foundation
import Glibc
import SluicePosix
import SluiceServer

struct Upgrade: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replace a running instance's binary without dropping a connection.",
        discussion: """
            The running daemon starts the new binary on its configuration file and hands it \
            its listeners and its established connections; it exits once they are handed over \
            (what cannot move finishes there within drain_timeout). If the new binary fails, \
            the running one keeps serving and this command says why (exit status 1). \
            SIGUSR2 to the daemon starts the same upgrade to the binary it was started from.
            """
    )

    @Option(help: "Instance name.")
    var instance = "default"

    @Option(help: "The new binary (default: the one the daemon was started from).")
    var binary: String?

    @Option(help: "Seconds to wait for the outcome.")
    var timeout: Double = 60

    func run() throws {
        guard let info = InstanceInfo.read(instance: instance) else {
            printError("no sluice instance \"\(instance)\" is running (no info file at \(InstanceInfo.path(instance: instance)))")
            throw ExitCode(2)
        }
        let failedBefore = info.upgradesFailed ?? 0
        if let socket = info.adminSocket {
            var request: [String: Any] = ["cmd": "upgrade"]
            if let binary { request["binary"] = binary.hasPrefix("/") ? binary : FileManager.default.currentDirectoryPath + "/" + binary }
            let reply = (try? AdminClient.request(socket: socket, request, timeoutMilliseconds: 5000)) ?? ""
            guard reply.contains("\"ok\":true") else {
                printError("sluice \(instance): \(reply.isEmpty ? "the admin socket does not answer" : reply)")
                throw ExitCode(1)
            }
        } else {
            guard binary == nil else {
                printError("--binary needs the admin socket; without it, SIGUSR2 upgrades to the binary the daemon was started from")
                throw ExitCode(2)
            }
            guard kill(info.pid, SIGUSR2) == 0 else {
                printError("sluice \(instance): cannot signal process \(info.pid): \(String(cString: strerror(errno)))")
                throw ExitCode(2)
            }
        }
        try wait(oldPID: info.pid, failedBefore: failedBefore)
    }

    /// The info file names the new process once it serves, or the old one says why not.
    private func wait(oldPID: Int32, failedBefore: UInt64) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            usleep(50_000)
            guard let now = InstanceInfo.read(instance: instance) else { continue }
            if now.pid != oldPID && kill(now.pid, 0) == 0 {
                printOut("sluice \(instance): upgraded, pid \(oldPID) → \(now.pid)")
                return
            }
            if (now.upgradesFailed ?? 0) != failedBefore {
                printError("sluice \(instance): upgrade failed, pid \(oldPID) keeps serving: \(now.lastUpgradeError ?? "see its log")")
                throw ExitCode(1)
            }
        }
        printError("sluice \(instance): no outcome within \(timeout) s (see the daemon's log)")
        throw ExitCode(2)
    }
}
