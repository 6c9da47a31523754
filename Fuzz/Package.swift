// swift-tools-version: 6.1
// libFuzzer targets, one executable per fuzzer. Kept out of the main package:
// they are built with -sanitize=fuzzer, which must not reach the daemon.
// Build and run one: Fuzz/run <name> <seconds>  (or: make fuzz)
import PackageDescription

let package = Package(
    name: "SluiceFuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        // Named: a path dependency's identity is its directory's name, which is
        // the checkout's (main, a worktree, CI's clone), not "Sluice".
        .package(name: "Sluice", path: ".."),
    ],
    targets: [
        .executableTarget(
            name: "FuzzAdmin",
            dependencies: [.product(name: "SluiceCore", package: "Sluice")]
        ),
    ]
)
