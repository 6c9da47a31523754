import Glibc
import SluiceBPF
import SluicePosix
import Testing

/// Root/BPF tests skip with a reason on an unprivileged machine, but fail
/// when SLUICE_REQUIRE_BPF=1 (CI), where skipping would hide a regression.
func requireBPF() throws -> Bool {
    if geteuid() == 0 { return true }
    if getenv("SLUICE_REQUIRE_BPF").map({ String(cString: $0) }) == "1" {
        Issue.record("SLUICE_REQUIRE_BPF=1 but not running as root: BPF tests cannot run")
        return false
    }
    print("skipping BPF test: needs root (CAP_BPF)")
    return false
}

@Suite("Embedded BPF object")
struct BPFObjectTests {
    @Test("the embedded object has every program and map the loader expects")
    func layout() throws {
        let object = try BPFObject(bytes: embeddedSluiceObject)
        defer { object.close() }
        #expect(Set(object.programNames) == Set(SluiceBPFLayout.programs))
        #expect(Set(SluiceBPFLayout.maps).isSubset(of: Set(object.mapNames)))
    }

    @Test("an object without the expected programs is refused at open")
    func refusesForeignObject() {
        #expect(throws: BPFError.self) { try BPFObject(bytes: [0x7F, 0x45, 0x4C, 0x46, 1, 2, 3]) }
    }

    @Test("load verifies the programs, and close leaves no program and no fd behind")
    func loadAndRelease() throws {
        guard try requireBPF() else { return }
        let fdsBefore = openDescriptors()
        let object = try BPFObject(bytes: embeddedSluiceObject)
        try object.load()
        let id = try object.programID("select_worker")
        #expect(bpfProgramExists(id: id))
        #expect(try object.mapFD("worker_load") >= 0)
        object.close()
        #expect(!bpfProgramExists(id: id))
        // Other tests open fds concurrently; only ours must be gone.
        #expect(openDescriptors().subtracting(fdsBefore).count <= 2)
    }
}
