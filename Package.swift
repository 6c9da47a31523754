// swift-tools-version: 6.1
import PackageDescription

/// Release builds of the targets on the per-event path skip the run-time
/// exclusivity checks (about 1% of a worker's CPU on small keep-alive
/// requests, measured with perf); debug builds, and so every test, keep them.
let hotPathSettings: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]

let package = Package(
    name: "Sluice",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "sluice", targets: ["sluice"]),
        // For the fuzzers in Fuzz/, a package of their own.
        .library(name: "SluiceCore", targets: ["SluiceCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.3.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // Structs and constants shared with the BPF programs, and C shims for
        // what Swift cannot call directly (variadic syscalls, _GNU_SOURCE calls).
        .target(name: "CSluice"),
        .systemLibrary(name: "CLibbpf", pkgConfig: "libbpf", providers: [.apt(["libbpf-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        // Debian's c-ares: resolves the backends written as hostnames.
        .systemLibrary(name: "CAres", pkgConfig: "libcares", providers: [.apt(["libc-ares-dev"])]),
        .target(
            name: "SluiceCore",
            dependencies: ["COpenSSL", .product(name: "Yams", package: "Yams")],
            swiftSettings: hotPathSettings
        ),
        .target(name: "SluicePosix", dependencies: ["CSluice"]),
        .target(
            name: "SluiceBPF",
            dependencies: [
                "CSluice", "CLibbpf", "SluicePosix",
                .product(name: "Atomics", package: "swift-atomics"),
            ],
            plugins: ["BPFObjectPlugin"]
        ),
        .target(
            name: "SluiceServer",
            dependencies: [
                "SluiceCore", "SluicePosix", "SluiceBPF", "CSluice", "CAres",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Atomics", package: "swift-atomics"),
            ],
            swiftSettings: hotPathSettings
        ),
        .executableTarget(
            name: "sluice",
            dependencies: [
                "SluiceServer", "SluiceCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Compiles bpf/*.bpf.c with the toolchain's clang and embeds the objects.
        .plugin(name: "BPFObjectPlugin", capability: .buildTool()),

        // Child processes and pipes for the tests, without Foundation's trapping I/O.
        .target(name: "SluiceTestSupport", dependencies: ["CSluice"], path: "Tests/SluiceTestSupport"),
        .testTarget(name: "SluiceCoreTests", dependencies: ["SluiceCore"]),
        .testTarget(
            name: "SluiceBPFTests",
            dependencies: ["SluiceBPF", "SluicePosix", "CSluice", "CLibbpf", "SluiceTestSupport", .product(name: "Atomics", package: "swift-atomics")]
        ),
        .testTarget(
            name: "SluiceServerTests",
            dependencies: ["SluiceServer", "SluicePosix", "SluiceCore", "SluiceBPF", "CSluice", "CAres", "SluiceTestSupport"]
        ),
        .testTarget(
            name: "SluiceEndToEndTests",
            dependencies: ["sluice", "SluiceCore", "SluicePosix", "CSluice", "SluiceTestSupport"]
        ),
    ]
)
