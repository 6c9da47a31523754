import Foundation
import PackagePlugin

/// Compiles every `bpf/*.bpf.c` of the package with the toolchain's clang
/// (`-target bpf -O2 -g`: libbpf needs the BTF) and emits a Swift source that
/// holds each object, base64-encoded, so the binary carries its own BPF code
/// and nothing generated is ever committed.
@main
struct BPFObjectPlugin: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let packageDir = context.package.directoryURL
        let bpfDir = packageDir.appending(path: "bpf")
        let abiDir = packageDir.appending(path: "Sources/CSluice/include")
        let clang = try context.tool(named: "clang").url
        let sources = try FileManager.default.contentsOfDirectory(atPath: bpfDir.path)
            .filter { $0.hasSuffix(".bpf.c") }
            .sorted()
        let headers = try FileManager.default.contentsOfDirectory(atPath: abiDir.path)
            .filter { $0.hasSuffix(".h") }
            .map { abiDir.appending(path: $0) }
            + FileManager.default.contentsOfDirectory(atPath: bpfDir.path)
            .filter { $0.hasSuffix(".h") }
            .map { bpfDir.appending(path: $0) }

        return sources.map { file in
            let stem = String(file.dropLast(".bpf.c".count))
            let source = bpfDir.appending(path: file)
            let object = context.pluginWorkDirectoryURL.appending(path: "\(stem).bpf.o")
            let swift = context.pluginWorkDirectoryURL.appending(path: "BPFObject_\(stem).swift")
            let symbol = "bpfObject_" + stem.map { $0.isLetter || $0.isNumber ? String($0) : "_" }.joined()
            let script = """
                set -e
                "\(clang.path)" -O2 -g -target bpf -Wall -Werror \
                  -I/usr/include/x86_64-linux-gnu -I"\(abiDir.path)" \
                  -c "\(source.path)" -o "\(object.path)"
                { printf '// Generated from bpf/\(file); do not edit.\\n'
                  printf 'let \(symbol) = "'
                  base64 -w0 "\(object.path)"
                  printf '"\\n'
                } > "\(swift.path).tmp"
                mv "\(swift.path).tmp" "\(swift.path)"
                """
            return .buildCommand(
                displayName: "Compiling BPF program \(file)",
                executable: URL(fileURLWithPath: "/bin/sh"),
                arguments: ["-c", script],
                inputFiles: [source] + headers,
                outputFiles: [swift]
            )
        }
    }
}
