// The range of every duration and count in the configuration, in one place.
// The decoder rejects values outside them (with the field path), and the
// README's configuration reference lists the same numbers.
//
// Why these numbers: deadlines are monotonic milliseconds plus a duration, so
// nothing accepted may come near UInt64 overflow; the timer wheel and the
// loops work in whole milliseconds, so a positive duration below 1 ms would
// round to "already expired"; and the rest are what the runtime can honour
// (64 workers and listeners are the sizes of the BPF tables).

public enum ConfigBounds {
    static let day: Duration = .seconds(86_400)

    // MARK: Durations

    /// How stale a worker's heartbeat may get before steering skips it. Below
    /// 100 ms an ordinary slow loop turn (a burst of accepts, a page fault)
    /// would count as a stall, and the control thread (ticking every 100 ms)
    /// could not act on stalls before they ended.
    public static let stallThreshold: ClosedRange<Duration> = .milliseconds(100) ... .seconds(60)
    public static let sockmapAfterTurns: ClosedRange<Int> = 1...1_000_000
    /// A stream shorter than 1 MiB is over before the pairing's four map
    /// updates could pay; 1 TiB is "never" for any stream that ends.
    public static let sockmapAfterBytes: ClosedRange<Int> = (1 << 20)...(1 << 40)
    public static let httpHeadTimeout: ClosedRange<Duration> = .milliseconds(100) ... .seconds(3600)
    public static let httpResponseTimeout: ClosedRange<Duration> = .milliseconds(1) ... .seconds(86_400)
    public static let httpMaxHead: ClosedRange<Int> = 1024...(1 << 20)
    public static let httpRoutes: ClosedRange<Int> = 0...1000
    public static let httpKeepAlivePerBackend: ClosedRange<Int> = 0...10_000
    public static let httpKeepAliveTimeout: ClosedRange<Duration> = .milliseconds(1) ... .seconds(3600)
    public static let redisConnectionsPerBackend: ClosedRange<Int> = 1...64
    public static let redisReplyTimeout: ClosedRange<Duration> = .milliseconds(1) ... .seconds(3600)
    public static let udpFlowIdleTimeout: ClosedRange<Duration> = .milliseconds(10) ... day
    public static let udpMaxFlows: ClosedRange<Int> = 1...1_000_000
    public static let proxyHeaderTimeout: ClosedRange<Duration> = .milliseconds(10) ... .seconds(60)
    public static let httpTunnelIdleTimeout: ClosedRange<Duration> = .milliseconds(1) ... day
    public static let drainTimeout: ClosedRange<Duration> = .milliseconds(1) ... day
    public static let connectTimeout: ClosedRange<Duration> = .milliseconds(1) ... day
    public static let idleTimeout: ClosedRange<Duration> = .milliseconds(1) ... day
    /// Admin and metrics clients: long enough for a slow scrape, short enough
    /// that idle clients cannot hold the slots for long.
    public static let adminIdleTimeout: ClosedRange<Duration> = .milliseconds(100) ... day
    /// Below 10 ms a check loop would mostly measure itself.
    public static let healthInterval: ClosedRange<Duration> = .milliseconds(10) ... .seconds(3600)
    /// Also at most the check's own interval.
    public static let healthTimeout: ClosedRange<Duration> = .milliseconds(1) ... .seconds(3600)
    /// Longer would be cut to the ejection cap anyway.
    public static let ejection: ClosedRange<Duration> =
        .milliseconds(1) ... .milliseconds(Int64(PassiveEjectionState.maxEjectionMilliseconds))
    /// The control thread ticks at this interval (at most every 100 ms, at
    /// least every 10 ms).
    public static let rebalanceInterval: ClosedRange<Duration> = .milliseconds(10) ... .seconds(1)
    /// `resolve.min_ttl` and `max_ttl`: below 100 ms a name with a TTL of 0
    /// would be asked for many times a second, for answers that cannot change
    /// faster than the proxy takes them in; beyond a day a moved backend would
    /// be missed for too long. min_ttl is also at most max_ttl.
    public static let resolveTTL: ClosedRange<Duration> = .milliseconds(100) ... day
    /// One attempt of a query: c-ares takes whole milliseconds; a nameserver
    /// slower than a minute is as good as down.
    public static let resolveTimeout: ClosedRange<Duration> = .milliseconds(10) ... .seconds(60)

    // MARK: Counts

    /// SLUICE_MAX_WORKERS in sluice_abi.h: one worker_load record each.
    public static let workers: ClosedRange<Int> = 1...64
    /// SLUICE_MAX_LISTENERS in sluice_abi.h: one listener_load record each.
    public static let listeners: ClosedRange<Int> = 1...64
    public static let maxConnections: ClosedRange<Int> = 1...10_000_000
    public static let retries: ClosedRange<Int> = 0...16
    public static let weight: ClosedRange<Int> = 1...1000
    public static let rise: ClosedRange<Int> = 1...100
    public static let fall: ClosedRange<Int> = 1...100
    public static let expectStatus: ClosedRange<Int> = 100...599
    public static let passiveFailures: ClosedRange<Int> = 1...1000
    public static let minHealthy: ClosedRange<Int> = 0...1000
    /// c-ares tries them in order; more would only lengthen a failing lookup.
    public static let nameservers: ClosedRange<Int> = 0...16
    /// The ratio must exceed 1 (1 would move connections back and forth for
    /// a difference of one); above 100 rebalancing is as good as off.
    public static let rebalanceRatioAbove: Double = 1.0
    public static let rebalanceRatioMax: Double = 100.0

    /// "1ms...24h".
    static func describe(_ range: ClosedRange<Duration>) -> String {
        "\(formatDuration(range.lowerBound))...\(formatDuration(range.upperBound))"
    }
}
