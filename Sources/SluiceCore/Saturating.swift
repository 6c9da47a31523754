extension UInt64 {
    /// Deadline arithmetic: a sum past the end of time stays at the end of
    /// time instead of trapping.
    @inlinable
    public func addingSaturated(_ other: UInt64) -> UInt64 {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? .max : sum
    }
}
