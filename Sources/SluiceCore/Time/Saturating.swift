// Deadline arithmetic that cannot trap.
//
// The configuration bounds (ConfigBounds.swift) keep every duration far from
// overflow: monotonic milliseconds plus 24 h is nowhere near UInt64.max. But a
// deadline is computed on a worker or the control thread, where a trap takes
// the whole proxy down; saturating there turns a value that slipped past
// validation (a programmatic config, a hand-edited info file) into "never".

extension UInt64 {
    /// `self + other`, or `UInt64.max` when the sum does not fit.
    @inlinable
    public func saturatingAdd(_ other: UInt64) -> UInt64 {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? .max : sum
    }

    /// `self * other`, or `UInt64.max` when the product does not fit.
    @inlinable
    public func saturatingMultiply(_ other: UInt64) -> UInt64 {
        let (product, overflow) = multipliedReportingOverflow(by: other)
        return overflow ? .max : product
    }
}

extension Duration {
    /// Whole milliseconds, rounded down: 0 for a negative duration,
    /// `UInt64.max` for one longer than that many milliseconds.
    public var milliseconds: UInt64 {
        let (seconds, attoseconds) = components
        guard seconds >= 0 else { return 0 }
        let wholeSeconds = UInt64(seconds).saturatingMultiply(1000)
        return wholeSeconds.saturatingAdd(UInt64(max(0, attoseconds)) / 1_000_000_000_000_000)
    }

    /// Whole nanoseconds, rounded down, saturating like `milliseconds`.
    public var nanoseconds: UInt64 {
        let (seconds, attoseconds) = components
        guard seconds >= 0 else { return 0 }
        let wholeSeconds = UInt64(seconds).saturatingMultiply(1_000_000_000)
        return wholeSeconds.saturatingAdd(UInt64(max(0, attoseconds)) / 1_000_000_000)
    }
}

/// The monotonic millisecond `duration` after `now`; `UInt64.max` (never)
/// rather than a trap when that is beyond the clock's range.
@inlinable
public func deadline(after duration: Duration, from now: UInt64) -> UInt64 {
    now.saturatingAdd(duration.milliseconds)
}
