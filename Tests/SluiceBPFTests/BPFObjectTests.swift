import CLibbpf
import Glibc
@testable import SluiceBPF
import SluicePosix
import Testing

@Suite("Embedded BPF object")
struct BPFObjectTests {
    @Test("the embedded object has every program and map the loader expects")
    func layout() throws {
        let object = try BPFObject(bytes: embeddedSluiceObject)
        defer { object.close() }
        #expect(Set(object.programNames) == Set(SluiceBPFLayout.programs.map(\.rawValue)))
        #expect(Set(SluiceBPFLayout.maps.map(\.rawValue)).isSubset(of: Set(object.mapNames)))
    }

    @Test("an object without the expected programs is refused at open")
    func refusesForeignObject() {
        #expect(throws: BPFError.self) { try BPFObject(bytes: [0x7F, 0x45, 0x4C, 0x46, 1, 2, 3]) }
    }

    @Test("load verifies the programs, and close releases every program and map (nothing holds an fd to them)")
    func loadAndRelease() throws {
        guard try requireBPF() else { return }
        let object = try BPFObject(bytes: embeddedSluiceObject)
        try object.load()
        let programID = try object.programID(.selectWorker)
        let mapIDs = try SluiceBPFLayout.maps.map { try object.mapID($0) }
        #expect(bpfProgramExists(id: programID))
        for id in mapIDs { #expect(bpfMapExists(id: id)) }
        object.close()
        // A kernel object lives while any fd refers to it: gone means no fd left
        // (a bpftool run by a test in parallel may hold one for a moment).
        try waitUntilTrue(5) { !bpfProgramExists(id: programID) }
        // Maps go after an RCU grace period, once the program that held them is freed.
        try waitUntilTrue(5) { mapIDs.allSatisfy { !bpfMapExists(id: $0) } }
    }

    @Test("the ABI version is written to the abi map at load")
    func abiVersion() throws {
        guard try requireBPF() else { return }
        let object = try BPFObject(bytes: embeddedSluiceObject)
        defer { object.close() }
        try object.load()
        var key: UInt32 = 0
        var value: UInt64 = 0
        #expect(bpf_map_lookup_elem(try object.mapFD(.abi), &key, &value) == 0)
        #expect(value == SluiceBPFLayout.abiVersion)
    }
}
