// When each hostname backend is looked up again, and its last good answer.
// Pure, like the rebalancing plan: BackendDiscovery asks what is due, starts
// those lookups, and reports how each ended; times are monotonic milliseconds.

public struct ResolveSchedule: Sendable {
    /// Retries after failures back off up to this (or up to min_ttl, when
    /// that is longer), but never past max_ttl.
    public static let maxRetryDelay: Duration = .seconds(30)

    public struct Entry: Sendable, Equatable {
        /// The last good answer, sorted by text, without duplicates; nil until one.
        public var addresses: [SocketAddressSpec]?
        public var dueAt: UInt64
        /// Failed lookups since the last answer.
        public var failures = 0
        /// The ticket of the lookup under way, if any: an ending with another
        /// ticket is for a lookup the schedule has forgotten.
        public var lookup: UInt64?
    }

    public private(set) var settings: ResolveConfig
    public private(set) var entries: [NamedBackend: Entry] = [:]
    private var lastTicket: UInt64 = 0

    public init(names: Set<NamedBackend>, settings: ResolveConfig, now: UInt64) {
        self.settings = settings
        for name in names { entries[name] = Entry(dueAt: now) }
    }

    /// The answer of every name that has one.
    public var table: [NamedBackend: [SocketAddressSpec]] {
        entries.compactMapValues(\.addresses)
    }

    /// The names due at `now` with no lookup under way, in a stable order.
    public func due(now: UInt64) -> [NamedBackend] {
        entries.filter { $0.value.lookup == nil && $0.value.dueAt <= now }.keys
            .sorted { ($0.description, $0.weight) < ($1.description, $1.weight) }
    }

    /// The earliest time a name without a lookup under way is due; nil when none is.
    public var nextDue: UInt64? {
        entries.values.filter { $0.lookup == nil }.map(\.dueAt).min()
    }

    /// A lookup of `name` begins; its ending must bring back the ticket.
    public mutating func started(_ name: NamedBackend) -> UInt64 {
        lastTicket += 1
        entries[name]?.lookup = lastTicket
        return lastTicket
    }

    /// A lookup answered `addresses`, valid for `ttl` (nil: unknown).
    /// Returns whether the table changed. An empty answer counts as a failure.
    public mutating func answered(_ name: NamedBackend, ticket: UInt64, addresses: [SocketAddressSpec], ttl: Duration?,
                                  now: UInt64) -> Bool {
        guard addresses.isEmpty == false else {
            _ = failed(name, ticket: ticket, now: now)
            return false
        }
        guard var entry = entries[name], entry.lookup == ticket else { return false }
        let sorted = Self.addressSet(addresses)
        let changed = entry.addresses != sorted
        entry.addresses = sorted
        entry.failures = 0
        entry.lookup = nil
        entry.dueAt = deadline(after: Self.refreshDelay(ttl: ttl, settings: settings), from: now)
        entries[name] = entry
        return changed
    }

    /// A lookup failed: the last answer stays. Returns the delay before the
    /// next attempt, or nil when the lookup was a forgotten one.
    public mutating func failed(_ name: NamedBackend, ticket: UInt64, now: UInt64) -> Duration? {
        guard var entry = entries[name], entry.lookup == ticket else { return nil }
        entry.failures += 1
        entry.lookup = nil
        let delay = Self.retryDelay(failures: entry.failures, settings: settings)
        entry.dueAt = deadline(after: delay, from: now)
        entries[name] = entry
        return delay
    }

    /// Reload: names kept keep their answers, also when only their weight
    /// changed; new names are due now. When the settings change, every name
    /// is due now and lookups under way are forgotten (the resolver they ran
    /// on is replaced). Returns whether the table changed (a name that had an
    /// answer is gone, or has a new weight).
    public mutating func replace(names: Set<NamedBackend>, settings: ResolveConfig, now: UInt64) -> Bool {
        let dropped = entries.filter { !names.contains($0.key) }
        let changed = dropped.values.contains { $0.addresses != nil }
        for name in dropped.keys { entries[name] = nil }
        for name in names where entries[name] == nil {
            let sameHost = dropped.first { $0.key.host == name.host && $0.key.port == name.port }?.value
            guard var entry = sameHost else {
                entries[name] = Entry(dueAt: now)
                continue
            }
            // A lookup under way ends under the old name, where it is ignored: ask again.
            if entry.lookup != nil { entry.lookup = nil; entry.dueAt = now }
            entries[name] = entry
        }
        if settings != self.settings {
            self.settings = settings
            forgetLookups(now: now)
        }
        return changed
    }

    /// The lookups under way are gone (their resolver was closed): every name is due now.
    public mutating func forgetLookups(now: UInt64) {
        for name in entries.keys {
            entries[name]?.lookup = nil
            entries[name]?.dueAt = now
        }
    }

    /// An answer as the table keeps it: canonical, sorted by text, each address once.
    public static func addressSet(_ addresses: [SocketAddressSpec]) -> [SocketAddressSpec] {
        Array(Set(addresses.map(\.canonical))).sorted { $0.description < $1.description }
    }

    /// How long an answer is kept: its TTL within [min_ttl, max_ttl]; min_ttl without one.
    public static func refreshDelay(ttl: Duration?, settings: ResolveConfig) -> Duration {
        min(max(ttl ?? settings.minTTL, settings.minTTL), settings.maxTTL)
    }

    /// After the n-th failure in a row (n ≥ 1): min_ttl, doubled each time
    /// up to `maxRetryDelay` (or min_ttl when longer), and never past max_ttl.
    public static func retryDelay(failures: Int, settings: ResolveConfig) -> Duration {
        let cap = max(maxRetryDelay, settings.minTTL)
        var delay = settings.minTTL
        for _ in 1..<max(1, min(failures, 64)) where delay < cap { delay = delay * 2 }
        return min(min(delay, cap), settings.maxTTL)
    }
}
