import SluiceCore

// Decodes the input as a configuration file, the way `sluice check` does
// after reading it. Any outcome but a crash is fine; an accepted config must
// also survive the arithmetic the server does with it at start.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfig(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    guard let loaded = try? ConfigLoader.parse(bytes: bytes, file: "fuzz.yaml", onlineCPUs: 2) else { return 0 }
    exerciseRuntimeArithmetic(loaded.config)
    return 0
}

/// What the server computes from an accepted configuration before and while
/// serving; a value the validator let through must not trap here.
func exerciseRuntimeArithmetic(_ config: SluiceConfig) {
    let now = UInt64.max / 2
    var sink: UInt64 = 0
    sink &+= deadline(after: config.drainTimeout, from: now)
    sink &+= config.stallThreshold.nanoseconds
    sink &+= UInt64(Int32(clamping: max(1, min(1000, config.stallThreshold.milliseconds / 4))))
    for listener in config.listeners {
        sink &+= deadline(after: listener.connectTimeout, from: now)
        sink &+= deadline(after: listener.idleTimeout, from: now)
    }
    for pool in config.pools {
        if let check = pool.healthCheck {
            let interval = check.interval.milliseconds
            sink &+= now.saturatingAdd(interval - interval / 10).saturatingAdd(interval / 5)
            sink &+= deadline(after: check.timeout, from: now)
        }
        if let passive = pool.passive {
            var state = PassiveEjectionState()
            for _ in 0..<(passive.failures * 20) {
                sink &+= state.failure(now: now, threshold: passive.failures,
                                       ejectionMilliseconds: passive.ejection.milliseconds, mayEject: true) ?? 0
            }
        }
    }
    sink &+= UInt64(DescriptorBudget(config: config).required)
    for failures in [1, 2, 40, Int.max] {
        sink &+= deadline(after: ResolveSchedule.retryDelay(failures: failures, settings: config.resolve), from: now)
    }
    sink &+= deadline(after: ResolveSchedule.refreshDelay(ttl: .seconds(Int32.max), settings: config.resolve), from: now)
    for pool in config.pools {
        let answers = Dictionary(pool.named.map { ($0, [SocketAddressSpec(host: "127.0.0.1", port: $0.port, family: .inet)]) }) { a, _ in a }
        sink &+= UInt64(pool.expanded(resolved: answers).backends.count)
    }
    if sink == 42 { print("") } // keeps the work from being optimised away
}
