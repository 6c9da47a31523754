import Foundation
import Glibc
import SluicePosix
import SluiceTestSupport
import Testing

/// Capability bits as /proc/<pid>/status prints them (CapEff), for a process.
func capabilities(_ pid: Int32) -> (uid: Int, effective: UInt64)? {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    var uid = -1, effective: UInt64 = 0
    for line in status.split(separator: "\n") {
        let fields = line.split(whereSeparator: { $0 == "\t" || $0 == " " })
        if fields.first == "Uid:", fields.count > 1 { uid = Int(fields[1]) ?? -1 }
        if fields.first == "CapEff:", fields.count > 1 { effective = UInt64(fields[1], radix: 16) ?? 0 }
    }
    return (uid, effective)
}

let capBPF: UInt64 = 1 << 39
let capNetAdmin: UInt64 = 1 << 12

@Suite("Deployment: systemd, Kubernetes, install, least privilege", .serialized)
struct DeployTests {
    @Test("the systemd units pass systemd-analyze verify")
    func systemdUnits() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("units-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        var paths: [String] = []
        for unit in ["sluice.service", "sluice@.service"] {
            let text = try String(contentsOf: packageRoot.appendingPathComponent("deploy/systemd/\(unit)"), encoding: .utf8)
            #expect(text.contains("Type=notify") && text.contains("NoNewPrivileges=yes") && text.contains("CAP_BPF"))
            let path = dir.appendingPathComponent(unit).path
            // verify checks that ExecStart exists: point it at the binary just built.
            try text.replacingOccurrences(of: "/usr/local/bin/sluice", with: sluiceBinary).write(toFile: path, atomically: true, encoding: .utf8)
            paths.append(path)
        }
        let (status, output) = try runCommand("/usr/bin/systemd-analyze", ["verify"] + paths)
        #expect(status == 0 && output.isEmpty, "\(output)")
    }

    @Test("the Kubernetes manifests validate against the API schemas, and a broken one does not")
    func kubernetesManifests() throws {
        let dir = packageRoot.appendingPathComponent("deploy/kubernetes").path
        let (status, output) = try runCommand("/usr/bin/env", ["python3", "-m", "kubernetes_validate", "--strict", "\(dir)/configmap.yaml", "\(dir)/daemonset.yaml"])
        #expect(status == 0, "\(output)")
        #expect(output.contains("daemonset/sluice"))
        let broken = FileManager.default.temporaryDirectory.appendingPathComponent("broken-\(UUID().uuidString).yaml").path
        let daemonset = try String(contentsOfFile: "\(dir)/daemonset.yaml", encoding: .utf8)
        try daemonset.replacingOccurrences(of: "hostNetwork: true", with: "hostNetwrk: true").write(toFile: broken, atomically: true, encoding: .utf8)
        let (bad, _) = try runCommand("/usr/bin/env", ["python3", "-m", "kubernetes_validate", "--strict", broken])
        #expect(bad != 0)
        // The ConfigMap carries a configuration sluice accepts.
        let map = try String(contentsOfFile: "\(dir)/configmap.yaml", encoding: .utf8)
        let body = map.components(separatedBy: "sluice.yaml: |\n")[1]
        let yaml = body.split(separator: "\n").map { $0.hasPrefix("    ") ? String($0.dropFirst(4)) : String($0) }.joined(separator: "\n")
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("cm-\(UUID().uuidString).yaml").path
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        let (checked, checkOutput) = try runCommand(sluiceBinary, ["check", "-c", path])
        #expect(checked == 0, "\(checkOutput)")
    }

    @Test("install.sh installs binary, example config and units; again changes nothing; --uninstall removes them")
    func installScript() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("root-\(UUID().uuidString)").path
        let script = packageRoot.appendingPathComponent("deploy/install.sh").path
        func install(_ extra: [String]) throws -> (Int32, String) {
            try runCommand("/bin/sh", [script] + extra, environment: ["DESTDIR": root])
        }
        #expect(try install(["--binary", sluiceBinary]).0 == 0)
        let config = "\(root)/etc/sluice/sluice.yaml"
        try "# edited by the operator\n".appending(String(contentsOfFile: config, encoding: .utf8)).write(toFile: config, atomically: true, encoding: .utf8)
        let (again, output) = try install(["--binary", sluiceBinary])
        #expect(again == 0, "\(output)")
        #expect(try String(contentsOfFile: config, encoding: .utf8).hasPrefix("# edited by the operator"), "config kept")
        for path in ["/usr/local/bin/sluice", "/etc/systemd/system/sluice.service", "/etc/systemd/system/sluice@.service"] {
            #expect(access(root + path, R_OK) == 0, "\(path)")
        }
        #expect(try install(["--uninstall"]).0 == 0)
        #expect(access("\(root)/usr/local/bin/sluice", F_OK) != 0)
        #expect(access("\(root)/etc/systemd/system/sluice.service", F_OK) != 0)
        #expect(access(config, F_OK) == 0, "configuration kept without --purge")
        #expect(try install(["--uninstall", "--purge"]).0 == 0)
        #expect(access(config, F_OK) != 0)
    }

    @Test("with user: set, the daemon runs as that user with CAP_BPF and CAP_NET_ADMIN only, and still pairs connections in the sockmap")
    func leastPrivilege() throws {
        guard requireRoot() else { return }
        let echo = try TestServer.echo()
        let port = freePort()
        let yaml = proxyConfig(port: port, backends: [echo.address], dataPath: "sockmap", extraTop: "user: nobody\nadmin: { metrics: off }")
            .replacingOccurrences(of: "steering: hash", with: "steering: least_loaded")
        let sluice = try SluiceProcess.run(config: yaml)
        let caps = try #require(capabilities(sluice.process.processIdentifier))
        #expect(caps.uid == 65534)
        #expect(caps.effective == capBPF | capNetAdmin, "CapEff \(String(caps.effective, radix: 16))")
        for i in 0..<4 { #expect(echoRoundTrip(port: port, size: 500_000, seed: UInt64(i)) == nil) }
        try sluice.waitForLog("path=sockmap") // lines reach the log through a queue
        try sluice.waitForLog("running as nobody") // lines reach the log through a queue
        // Group members read the pins; nobody outside the group can.
        let pins = "/sys/fs/bpf/sluice/e2e\(port)"
        let member = ["/usr/bin/setpriv", "--reuid=65533", "--regid=65534", "--clear-groups", "--"]
        let outsider = ["/usr/bin/setpriv", "--reuid=65533", "--regid=65533", "--clear-groups", "--"]
        let (readStatus, readOutput) = try runCommand(member[0], Array(member.dropFirst()) + [sluiceBinary, "status", "--instance", "e2e\(port)", "--json"])
        #expect(readStatus == 0 && readOutput.contains("\"workers\""), "\(readOutput)")
        let (deniedStatus, deniedOutput) = try runCommand(outsider[0], Array(outsider.dropFirst()) + [sluiceBinary, "status", "--instance", "e2e\(port)"])
        #expect(deniedStatus != 0 && deniedOutput.contains("Permission denied"), "\(deniedOutput)")
        // Steering state stays root's: 0640, group nogroup. Not even the daemon's own
        // user (another process of it) opens those maps for writing.
        for name in ["worker_load", "listener_load", "steer_stats", "abi", "sockmap_socks", "sockmap_peers"] {
            var info = stat()
            #expect(lstat("\(pins)/\(name)", &info) == 0 && info.st_mode & 0o777 == 0o640 && info.st_uid == 0 && info.st_gid == 65534,
                    "\(name): mode \(String(info.st_mode & 0o777, radix: 8)) uid \(info.st_uid) gid \(info.st_gid)")
        }
        let daemonUser = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
        for who in [member, daemonUser] {
            let (writeStatus, writeOutput) = try runCommand(who[0], Array(who.dropFirst()) + [
                "/usr/sbin/bpftool", "map", "update", "pinned", "\(pins)/worker_load", "key", "0", "0", "0", "0",
                "value"] + Array(repeating: "0", count: 56))
            #expect(writeStatus != 0 && writeOutput.contains("Permission denied"), "\(who[1]) cannot write steering state: \(writeOutput)")
        }
        let (ownStatus, ownOutput) = try runCommand(daemonUser[0], Array(daemonUser.dropFirst()) + [sluiceBinary, "status", "--instance", "e2e\(port)", "--json"])
        #expect(ownStatus == 0 && ownOutput.contains("\"workers\""), "the daemon's user reads the pins: \(ownOutput)")
        // Nor does it take the daemon's descriptors: changing uid made the daemon non-dumpable.
        let (fdStatus, _) = try runCommand(daemonUser[0], Array(daemonUser.dropFirst()) + ["/bin/ls", "/proc/\(sluice.process.processIdentifier)/fd"])
        #expect(fdStatus != 0, "the daemon's user cannot list (or pidfd_getfd) the daemon's descriptors")
        #expect(try sluice.stop() == 0)
        #expect(sluice.log.contains("clean exit"))
        #expect(access(pins, F_OK) != 0, "pins removed by the unprivileged daemon at stop")
    }

    @Test("started without root, sluice run names the missing privilege")
    func refusesWithoutPrivilege() throws {
        guard requireRoot() else { return }
        let yaml = proxyConfig(port: freePort(), backends: ["127.0.0.1:9001"]).replacingOccurrences(of: "steering: hash", with: "steering: least_loaded")
        let sluice = try SluiceProcess(arguments: ["run"], configYAML: yaml,
                                       launcher: ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        #expect(try sluice.waitForExit(seconds: 10) != 0)
        #expect(sluice.log.contains("missing privilege: CAP_BPF"), "\(sluice.log)")
    }

    @Test("systemd readiness: READY=1 once listening, STOPPING=1 on SIGTERM")
    func sdNotify() throws {
        let echo = try TestServer.echo()
        let path = "/tmp/sluice-notify-\(UUID().uuidString.prefix(8)).sock"
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd); unlink(path) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: path.utf8) }
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let sluice = try SluiceProcess(arguments: ["run"], configYAML: proxyConfig(port: freePort(), backends: [echo.address]),
                                       environment: ["NOTIFY_SOCKET": path])
        var buffer = [UInt8](repeating: 0, count: 512)
        let n = recv(fd, &buffer, buffer.count, 0)
        #expect(n > 0 && String(decoding: buffer[0..<max(0, n)], as: UTF8.self).hasPrefix("READY=1"))
        // Log lines go through a queue: the line may follow the notification.
        try sluice.waitForLog("ready")
        sluice.signal(SIGTERM)
        let m = recv(fd, &buffer, buffer.count, 0)
        #expect(m > 0 && String(decoding: buffer[0..<max(0, m)], as: UTF8.self).hasPrefix("STOPPING=1"))
        #expect(try sluice.waitForExit(seconds: 10) == 0)
    }
}
