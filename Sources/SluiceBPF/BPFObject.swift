import CLibbpf
import CSluice
import Glibc
import SluicePosix

/// A failure while opening, checking or loading the embedded BPF object.
public struct BPFError: Error, Sendable, CustomStringConvertible {
    public let description: String
    /// The instance lock is held by a live daemon.
    public let alreadyRunning: Bool
    public init(_ description: String, alreadyRunning: Bool = false) {
        self.description = description
        self.alreadyRunning = alreadyRunning
    }
}

/// The object compiled from bpf/sluice.bpf.c at build time.
public var embeddedSluiceObject: [UInt8] { decodeBase64(bpfObject_sluice) }
/// The object compiled from bpf/sockmap.bpf.c at build time.
public var embeddedSockmapObject: [UInt8] { decodeBase64(bpfObject_sockmap) }

/// One opened (and, after `load()`, loaded) libbpf object. Owns every kernel
/// object it creates: `close()` releases all of them.
public final class BPFObject {
    private var object: OpaquePointer?
    private let image: UnsafeMutableRawBufferPointer
    public private(set) var isLoaded = false

    /// Opens the object (no kernel objects yet) and checks its layout.
    public init(
        bytes: [UInt8], name: String = "sluice",
        expectedPrograms: [BPFProgram] = SluiceBPFLayout.programs, expectedMaps: [BPFMap] = SluiceBPFLayout.maps
    ) throws(BPFError) {
        quietLibbpf
        image = .allocate(byteCount: bytes.count, alignment: 8)
        image.copyBytes(from: bytes)
        var opts = bpf_object_open_opts()
        opts.sz = MemoryLayout<bpf_object_open_opts>.stride
        let opened: OpaquePointer? = name.withCString { cname in
            opts.object_name = cname
            return bpf_object__open_mem(image.baseAddress, image.count, &opts)
        }
        guard let opened, libbpf_get_error(UnsafeRawPointer(opened)) == 0 else {
            image.deallocate()
            throw BPFError("opening the BPF object failed: \(errnoDescription(Glibc.errno))")
        }
        object = opened
        do throws(BPFError) {
            try checkLayout(programs: expectedPrograms, maps: expectedMaps)
        } catch {
            close()
            throw error
        }
    }

    deinit { close() }

    public var programNames: [String] {
        var names: [String] = []
        var prog = bpf_object__next_program(object, nil)
        while let p = prog {
            names.append(String(cString: bpf_program__name(p)))
            prog = bpf_object__next_program(object, p)
        }
        return names
    }

    public var mapNames: [String] {
        var names: [String] = []
        var map = bpf_object__next_map(object, nil)
        while let m = map {
            names.append(String(cString: bpf_map__name(m)))
            map = bpf_object__next_map(object, m)
        }
        return names
    }

    private func checkLayout(programs expectedPrograms: [BPFProgram], maps expectedMaps: [BPFMap]) throws(BPFError) {
        let programs = Set(programNames)
        let maps = Set(mapNames)
        let missing = expectedPrograms.filter { !programs.contains($0.rawValue) }.map { "program \($0.rawValue)" }
            + expectedMaps.filter { !maps.contains($0.rawValue) }.map { "map \($0.rawValue)" }
        if !missing.isEmpty {
            throw BPFError("the BPF object lacks \(missing.joined(separator: ", ")): it was built from other sources")
        }
    }

    /// Sets a `const volatile` global; only between open and load.
    public func setReadOnly<T: FixedWidthInteger>(_ name: String, _ value: T) throws(BPFError) {
        precondition(!isLoaded, "read-only globals are fixed at load")
        var v = value
        let rc = sluice_set_rodata(object, name, &v, MemoryLayout<T>.size)
        if rc != 0 { throw BPFError("setting \(name) in the BPF object failed: \(errnoDescription(-rc))") }
    }

    /// Makes map `name` use an existing map (another object's) instead of
    /// creating its own; only between open and load.
    public func reuseMap(_ name: BPFMap, fd: Int32) throws(BPFError) {
        precondition(!isLoaded, "maps are created at load")
        guard let map = bpf_object__find_map_by_name(object, name.rawValue) else { throw BPFError("no BPF map \(name.rawValue)") }
        let rc = bpf_map__reuse_fd(map, fd)
        if rc != 0 { throw BPFError("reusing map \(name.rawValue) failed: \(errnoDescription(-rc))") }
    }

    /// Makes map `name` the one pinned at `path` (a binary upgrade takes
    /// over the running process's maps rather than creating its own).
    public func reusePinnedMap(_ name: BPFMap, path: String) throws(BPFError) {
        let fd = bpf_obj_get(path)
        guard fd >= 0 else { throw BPFError("cannot open the pinned map \(path): \(errnoDescription(errno))") }
        defer { closeDescriptor(fd) } // libbpf keeps a duplicate
        try reuseMap(name, fd: fd)
    }

    /// Sizes a map; only between open and load.
    public func setMaxEntries(_ name: BPFMap, _ entries: UInt32) throws(BPFError) {
        guard let map = bpf_object__find_map_by_name(object, name.rawValue) else { throw BPFError("no BPF map \(name.rawValue)") }
        let rc = bpf_map__set_max_entries(map, entries)
        if rc != 0 { throw BPFError("sizing map \(name.rawValue) failed: \(errnoDescription(-rc))") }
    }

    /// Verifies and loads every program and creates every map.
    public func load(capabilityHint: String = "needs root or CAP_BPF") throws(BPFError) {
        let rc = bpf_object__load(object)
        if rc != 0 {
            throw BPFError("loading the BPF object failed: \(errnoDescription(-rc)) (\(capabilityHint))")
        }
        isLoaded = true
        guard bpf_object__find_map_by_name(object, BPFMap.abi.rawValue) != nil else { return }
        var key: UInt32 = 0
        var version = SluiceBPFLayout.abiVersion
        let abiFD = try mapFD(.abi)
        if bpf_map_update_elem(abiFD, &key, &version, 0) != 0 {
            throw BPFError("writing the ABI version failed: \(errnoDescription(Glibc.errno))")
        }
    }

    public func programFD(_ name: BPFProgram) throws(BPFError) -> Int32 {
        guard let prog = bpf_object__find_program_by_name(object, name.rawValue) else {
            throw BPFError("no BPF program \(name.rawValue)")
        }
        let fd = bpf_program__fd(prog)
        guard fd >= 0 else { throw BPFError("BPF program \(name.rawValue) is not loaded") }
        return fd
    }

    public func mapFD(_ name: BPFMap) throws(BPFError) -> Int32 {
        guard let map = bpf_object__find_map_by_name(object, name.rawValue) else {
            throw BPFError("no BPF map \(name.rawValue)")
        }
        let fd = bpf_map__fd(map)
        guard fd >= 0 else { throw BPFError("BPF map \(name.rawValue) is not created") }
        return fd
    }

    /// The kernel's id of a map (what bpftool shows).
    public func mapID(_ name: BPFMap) throws(BPFError) -> UInt32 {
        var info = bpf_map_info()
        var length = UInt32(MemoryLayout<bpf_map_info>.size)
        let fd = try mapFD(name)
        guard bpf_obj_get_info_by_fd(fd, &info, &length) == 0 else {
            throw BPFError("bpf_obj_get_info_by_fd: \(errnoDescription(Glibc.errno))")
        }
        return info.id
    }

    /// The kernel's id of a loaded program (stable across fds; what bpftool shows).
    public func programID(_ name: BPFProgram) throws(BPFError) -> UInt32 {
        var info = bpf_prog_info()
        var length = UInt32(MemoryLayout<bpf_prog_info>.size)
        let fd = try programFD(name)
        guard bpf_obj_get_info_by_fd(fd, &info, &length) == 0 else {
            throw BPFError("bpf_obj_get_info_by_fd: \(errnoDescription(Glibc.errno))")
        }
        return info.id
    }

    /// Releases every program, map and fd of the object.
    public func close() {
        guard let object else { return }
        bpf_object__close(object)
        self.object = nil
        image.deallocate()
        isLoaded = false
    }
}

/// Installs the libbpf print hook once (see shim.h).
private let quietLibbpf: Void = sluice_libbpf_quiet_unless_debugging()

func decodeBase64(_ text: String) -> [UInt8] {
    var table = [UInt8](repeating: 0xFF, count: 256)
    for (i, c) in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8.enumerated() {
        table[Int(c)] = UInt8(i)
    }
    var out: [UInt8] = []
    out.reserveCapacity(text.utf8.count * 3 / 4)
    var accumulator: UInt32 = 0
    var bits = 0
    for c in text.utf8 {
        let v = table[Int(c)]
        if v == 0xFF { continue } // padding
        accumulator = (accumulator << 6) | UInt32(v)
        bits += 6
        if bits >= 8 {
            bits -= 8
            out.append(UInt8((accumulator >> UInt32(bits)) & 0xFF))
        }
    }
    return out
}
