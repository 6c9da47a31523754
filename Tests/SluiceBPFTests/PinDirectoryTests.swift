import Foundation
import Glibc
@testable import SluiceBPF
import SluicePosix
import Testing

/// A victim outside any pin directory: a file, and a directory holding one.
private struct Victim {
    let directory: String
    let file: String

    init() throws {
        directory = NSTemporaryDirectory() + "sluice-victim-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        file = directory + "/precious"
        try "keep me".write(toFile: file, atomically: false, encoding: .utf8)
    }

    var intact: Bool { (try? String(contentsOfFile: file, encoding: .utf8)) == "keep me" }

    func remove() { try? FileManager.default.removeItem(atPath: directory) }
}

/// A pin root of its own on bpffs (and its staging sibling), removed after.
private struct PinRoot {
    let path = "/sys/fs/bpf/sluice-test-\(UUID().uuidString.prefix(8))"
    var staging: String { path + "-staging" }

    func steering(_ instance: String) throws -> KernelSteering {
        try KernelSteering(instance: instance, workers: 1, listeners: 1, stallThresholdNanoseconds: 1,
                           attachPrograms: false, pinRoot: path)
    }

    func clean() {
        for dir in [path, staging] {
            if let names = try? FileManager.default.contentsOfDirectory(atPath: dir) {
                for name in names { removePinDirectory("\(dir)/\(name)"); unlink("\(dir)/\(name)") }
            }
            rmdir(dir)
        }
    }
}

private func makeDirectory(_ path: String, owner: uid_t = 0, mode: mode_t = 0o750) {
    mkdir(path, 0o700)
    chown(path, owner, 0)
    chmod(path, mode)
}

@Suite("Pin directories: no symlink followed, no foreign directory used")
struct PinDirectoryTests {
    @Test("removing a pin directory removes a symlink planted in it, never what it points at")
    func removalDoesNotFollowSymlinksInside() throws {
        guard try requireBPF() else { return }
        let victim = try Victim()
        defer { victim.remove() }
        let root = PinRoot()
        defer { root.clean() }
        mkdir(root.path, 0o755)
        let dir = root.path + "/inst"
        mkdir(dir, 0o750)
        #expect(symlink(victim.file, dir + "/worker_load") == 0)
        #expect(symlink(victim.directory, dir + "/steer_stats") == 0)
        mkdir(dir + "/sub", 0o750)
        #expect(symlink(victim.directory, dir + "/sub/abi") == 0)
        #expect(removePinDirectory(dir))
        #expect(access(dir, F_OK) != 0, "the pin directory is gone")
        #expect(victim.intact, "the file a planted symlink pointed at survives")
    }

    @Test("a pin directory that is a symlink is left alone, and so is what it points at")
    func removalDoesNotFollowASymlinkedDirectory() throws {
        let victim = try Victim()
        defer { victim.remove() }
        let link = NSTemporaryDirectory() + "sluice-pinlink-\(UUID().uuidString.prefix(8))"
        #expect(symlink(victim.directory, link) == 0)
        defer { unlink(link) }
        #expect(!removePinDirectory(link))
        #expect(victim.intact)
    }

    @Test("pin refuses a pin directory that is a symlink, naming it")
    func refusesSymlinkedPinDirectory() throws {
        guard try requireBPF() else { return }
        let victim = try Victim()
        defer { victim.remove() }
        let root = PinRoot()
        defer { root.clean() }
        mkdir(root.path, 0o755)
        #expect(symlink(victim.directory, root.path + "/inst") == 0)
        let steering = try root.steering("inst")
        defer { steering.close() }
        let error = #expect(throws: BPFError.self) { try steering.pin() }
        #expect(error?.description.contains("\(root.path)/inst") == true && error?.description.contains("symbolic link") == true,
                "\(String(describing: error))")
        #expect(victim.intact)
        var info = stat()
        #expect(lstat(root.path + "/inst", &info) == 0 && info.st_mode & S_IFMT == S_IFLNK, "the link itself is left for root to look at")
    }

    @Test("pin refuses a stale pin directory another user owns, naming path, owner and mode")
    func refusesForeignPinDirectory() throws {
        guard try requireBPF() else { return }
        let root = PinRoot()
        defer { root.clean() }
        mkdir(root.path, 0o755)
        makeDirectory(root.path + "/inst", owner: 12345)
        let steering = try root.steering("inst")
        defer { steering.close() }
        let error = #expect(throws: BPFError.self) { try steering.pin() }
        let text = error?.description ?? ""
        #expect(text.contains("\(root.path)/inst") && text.contains("uid 12345") && text.contains("mode 750"), "\(text)")
        // The daemon's own user (a previous run with `user:`) is trusted with it.
        #expect(try steering.pin(daemonUser: 12345), "replaced")
        var info = stat()
        #expect(stat(root.path + "/inst/worker_load", &info) == 0 && info.st_uid == 0 && info.st_mode & 0o777 == 0o640)
    }

    @Test("pin refuses a pin directory, staging directory or parent that others may write to")
    func refusesWritableDirectories() throws {
        guard try requireBPF() else { return }
        do {
            let root = PinRoot()
            defer { root.clean() }
            mkdir(root.path, 0o755)
            makeDirectory(root.path + "/inst", mode: 0o777)
            let steering = try root.steering("inst")
            defer { steering.close() }
            let error = #expect(throws: BPFError.self) { try steering.pin() }
            #expect(error?.description.contains("mode 777") == true, "\(String(describing: error))")
        }
        do {
            let root = PinRoot()
            defer { root.clean() }
            mkdir(root.path, 0o755)
            mkdir(root.staging, 0o755)
            makeDirectory(root.staging + "/inst-\(getpid())", owner: 12345)
            let steering = try root.steering("inst")
            defer { steering.close() }
            let error = #expect(throws: BPFError.self) { try steering.pin() }
            #expect(error?.description.contains(root.staging + "/inst-\(getpid())") == true, "\(String(describing: error))")
            #expect(access(root.path + "/inst", F_OK) != 0, "nothing pinned")
        }
        do {
            let root = PinRoot()
            defer { root.clean() }
            makeDirectory(root.path, mode: 0o1777)
            let steering = try root.steering("inst")
            defer { steering.close() }
            let error = #expect(throws: BPFError.self) { try steering.pin() }
            #expect(error?.description.contains("mode 1777") == true, "\(String(describing: error))")
        }
        do {
            // The daemon group's sticky parent (what a run with `user:` leaves) is fine.
            let root = PinRoot()
            defer { root.clean() }
            makeDirectory(root.path, mode: 0o1770)
            let steering = try root.steering("inst")
            #expect(try !steering.pin())
            steering.close()
            #expect(access(root.path + "/inst", F_OK) != 0, "unpinned at close")
        }
    }

    @Test("the instance lock refuses a symlink planted under its name, and leaves its target alone")
    func lockDoesNotFollowSymlinks() throws {
        let victim = try Victim()
        defer { victim.remove() }
        let directory = victim.directory + "/run"
        mkdir(directory, 0o755)
        #expect(symlink(victim.file, directory + "/inst.lock") == 0)
        #expect(throws: BPFError.self) { _ = try InstanceLock(instance: "inst", directory: directory) }
        #expect(victim.intact)
        var info = stat()
        #expect(stat(victim.file, &info) == 0 && info.st_uid == geteuid(), "not handed to anyone")
    }

    @Test("checkPinDirectory: the sticky group-writable exception is only for the shared parents")
    func stickyGroupWritable() throws {
        guard geteuid() == 0 else { return }
        let dir = NSTemporaryDirectory() + "sluice-sticky-\(UUID().uuidString.prefix(8))"
        makeDirectory(dir, mode: 0o1770)
        defer { rmdir(dir) }
        #expect(throws: BPFError.self) { try checkPinDirectory(dir) }
        try checkPinDirectory(dir, allowStickyGroupWrite: true)
        chmod(dir, 0o770)
        #expect(throws: BPFError.self) { try checkPinDirectory(dir, allowStickyGroupWrite: true) }
    }
}
