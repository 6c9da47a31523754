// swift-tools-version: 6.1
// libFuzzer targets, one executable per fuzzer: Sources/Fuzz<Name>/main.swift.
// A package of its own so that the main package's `swift build` and `swift
// test` never see -sanitize=fuzzer. Build and run one with `Fuzz/run <name> <seconds>`.
import Foundation
import PackageDescription

// Every directory under Sources/ is a fuzzer: adding one needs no edit here.
let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Sources")
let fuzzers = ((try? FileManager.default.contentsOfDirectory(atPath: sources.path)) ?? [])
    .filter { $0.hasPrefix("Fuzz") }
    .sorted()

/// Reference implementations a fuzzer compares against (test-only: the
/// main package never depends on them).
let references: [String: [Target.Dependency]] = [
    "FuzzHttp": [
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOEmbedded", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
    ],
]

let package = Package(
    name: "SluiceFuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "Sluice", path: ".."),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: fuzzers.map { name in
        .executableTarget(name: name, dependencies: [.product(name: "SluiceCore", package: "Sluice")] + (references[name] ?? []))
    }
)
