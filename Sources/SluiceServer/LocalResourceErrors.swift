import Atomics
import Logging
import SluiceCore
import SluicePosix

/// Connection attempts and health checks that failed for lack of a local
/// resource (see `FailureBlame`): counted here instead of against a backend,
/// and logged at most once a second per place, with how many lines were
/// left out, so that a shortage does not also flood the log.
public final class LocalResourceErrors: Sendable {
    public enum Place: Int, CaseIterable, Sendable {
        case connect, healthCheck

        public var label: String { self == .connect ? "connect" : "health_check" }
    }

    private let counts = Place.allCases.map { _ in ManagedAtomic<UInt64>(0) }
    private let lastLoggedMilliseconds = Place.allCases.map { _ in ManagedAtomic<UInt64>(0) }
    private let suppressed = Place.allCases.map { _ in ManagedAtomic<UInt64>(0) }
    static let logIntervalMilliseconds: UInt64 = 1000

    public init() {}

    public func count(_ place: Place) -> UInt64 { counts[place.rawValue].load(ordering: .relaxed) }

    /// Counts one error; returns how many went unlogged before it when this
    /// one should be logged, nil when it should not. Any thread may call it.
    func note(_ place: Place, nowMilliseconds now: UInt64) -> UInt64? {
        let i = place.rawValue
        counts[i].wrappingIncrement(ordering: .relaxed)
        let last = lastLoggedMilliseconds[i].load(ordering: .relaxed)
        if (last == 0 || now >= last + Self.logIntervalMilliseconds),
           lastLoggedMilliseconds[i].compareExchange(expected: last, desired: max(1, now), ordering: .relaxed).exchanged {
            return suppressed[i].exchange(0, ordering: .relaxed)
        }
        suppressed[i].wrappingIncrement(ordering: .relaxed)
        return nil
    }

    /// Counts one error at `place` and logs it if its second has no line yet.
    func record(_ place: Place, errno code: Int32, backend: SocketAddress, logger: Logger) {
        guard let unlogged = note(place, nowMilliseconds: monotonicMilliseconds()) else { return }
        logger.warning("local resource shortage, not counted against the backend", metadata: [
            "where": "\(place.label)", "error": "\(errnoDescription(code))", "backend": "\(backend)",
            "suppressed": "\(unlogged)",
        ])
    }
}

/// The counters of `LocalResourceErrors` as `sluice status --json` shows them.
public struct LocalResourceErrorCounts: Codable, Sendable, Equatable {
    public var connect: UInt64
    public var healthCheck: UInt64

    enum CodingKeys: String, CodingKey {
        case connect
        case healthCheck = "health_check"
    }

    init(_ errors: LocalResourceErrors) {
        connect = errors.count(.connect)
        healthCheck = errors.count(.healthCheck)
    }
}
