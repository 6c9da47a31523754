/// Rise/fall accounting of active health checks for one backend: `fall`
/// failures in a row take an up backend down, `rise` successes in a row
/// bring a down one up. Starts up (a new backend is trusted until checks say
/// otherwise, as an operator adding it expects).
public struct HealthCheckState: Sendable, Equatable {
    public private(set) var isUp = true
    public private(set) var successesInARow = 0
    public private(set) var failuresInARow = 0

    public init() {}

    /// Records one check; returns true when the backend changed state.
    public mutating func record(success: Bool, rise: Int, fall: Int) -> Bool {
        if success {
            successesInARow += 1
            failuresInARow = 0
            if !isUp && successesInARow >= rise {
                isUp = true
                return true
            }
        } else {
            failuresInARow += 1
            successesInARow = 0
            if isUp && failuresInARow >= fall {
                isUp = false
                return true
            }
        }
        return false
    }
}

/// Passive ejection of one backend: consecutive failures (connect refused
/// or timed out, reset before the first byte) eject it for `ejection`,
/// doubling on each ejection that follows without a success in between
/// (capped at `maxEjection`).
public struct PassiveEjectionState: Sendable, Equatable {
    public private(set) var failuresInARow = 0
    public private(set) var ejections = 0
    public private(set) var ejectedUntilMilliseconds: UInt64 = 0

    public static let maxEjectionMilliseconds: UInt64 = 300_000

    public init() {}

    public func isEjected(now: UInt64) -> Bool { now < ejectedUntilMilliseconds }

    /// Records a failure; returns the end of a new ejection if this one ejects.
    /// `mayEject` is false when ejecting would leave too few healthy backends.
    public mutating func failure(now: UInt64, threshold: Int, ejectionMilliseconds: UInt64, mayEject: Bool) -> UInt64? {
        failuresInARow += 1
        guard failuresInARow >= threshold, !isEjected(now: now), mayEject else { return nil }
        let factor = UInt64(1) << UInt64(min(ejections, 16))
        let length = min(ejectionMilliseconds.saturatingMultiply(factor), Self.maxEjectionMilliseconds)
        ejections += 1
        failuresInARow = 0
        ejectedUntilMilliseconds = now.saturatingAdd(length)
        return ejectedUntilMilliseconds
    }

    /// A success (the backend delivered bytes or closed cleanly) forgives.
    public mutating func success() {
        failuresInARow = 0
        ejections = 0
    }
}

/// What an HTTP health check's answer says: the status code of the first
/// line, or nil while the line is incomplete or not HTTP.
public func httpStatusCode(_ head: some Collection<UInt8>) -> Int?? {
    guard let end = head.firstIndex(of: UInt8(ascii: "\n")) else {
        return head.count > 1024 ? .some(nil) : nil // no line ending in 1 KiB: not HTTP
    }
    let line = String(decoding: head[..<end], as: UTF8.self)
    let parts = line.split(separator: " ", maxSplits: 2)
    guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), parts[1].count == 3, let code = Int(parts[1]) else {
        return .some(nil)
    }
    return .some(code)
}
