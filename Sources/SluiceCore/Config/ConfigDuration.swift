// Durations in the configuration: a decimal number followed by a unit,
// e.g. "300ms", "1.5s", "5m". Units: ns, us, ms, s, m, h.

private let attosecondsPerSecond: Int128 = 1_000_000_000_000_000_000

/// Units from largest to smallest, with their length in attoseconds.
private let durationUnits: [(suffix: String, attoseconds: Int128)] = [
    ("h", 3600 * attosecondsPerSecond),
    ("m", 60 * attosecondsPerSecond),
    ("s", attosecondsPerSecond),
    ("ms", 1_000_000_000_000_000),
    ("us", 1_000_000_000_000),
    ("ns", 1_000_000_000),
]

/// Parses "300ms" -> .milliseconds(300), "1.5s" -> .milliseconds(1500).
/// Returns nil when malformed: no unit, unknown unit, sign, spaces, exponent,
/// a value not representable exactly, or out of Duration's range.
public func parseDuration(_ text: String) -> Duration? {
    let bytes = Array(text.utf8)
    var index = 0
    func digits() -> [UInt8] {
        let start = index
        while index < bytes.count, bytes[index] >= 0x30, bytes[index] <= 0x39 { index += 1 }
        return Array(bytes[start..<index])
    }
    let whole = digits()
    guard !whole.isEmpty else { return nil }
    var fraction: [UInt8] = []
    if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
        index += 1
        fraction = digits()
        guard !fraction.isEmpty else { return nil }
    }
    let suffix = String(decoding: bytes[index...], as: UTF8.self)
    guard let unit = durationUnits.first(where: { $0.suffix == suffix })?.attoseconds else { return nil }

    func value(_ digits: ArraySlice<UInt8>) -> Int128? {
        var result: Int128 = 0
        for digit in digits {
            let (shifted, overflow1) = result.multipliedReportingOverflow(by: 10)
            let (added, overflow2) = shifted.addingReportingOverflow(Int128(digit - 0x30))
            if overflow1 || overflow2 { return nil }
            result = added
        }
        return result
    }
    let trimmedWhole = whole.drop { $0 == 0x30 }
    var trimmedFraction = fraction[...]
    while trimmedFraction.last == 0x30 { trimmedFraction = trimmedFraction.dropLast() }
    // 10^30 attoseconds is far beyond Duration's range; anything finer than
    // 10^-30 of a unit cannot be an exact number of attoseconds.
    guard trimmedWhole.count <= 30, trimmedFraction.count <= 30,
          let wholeValue = value(trimmedWhole), let fractionValue = value(trimmedFraction)
    else { return nil }

    var scale: Int128 = 1
    for _ in 0..<trimmedFraction.count { scale *= 10 }
    let (wholeAtto, overflow1) = wholeValue.multipliedReportingOverflow(by: unit)
    let (fractionScaled, overflow2) = fractionValue.multipliedReportingOverflow(by: unit)
    guard !overflow1, !overflow2, fractionScaled % scale == 0 else { return nil }
    let (total, overflow3) = wholeAtto.addingReportingOverflow(fractionScaled / scale)
    guard !overflow3 else { return nil }

    let seconds = total / attosecondsPerSecond
    guard seconds <= Int128(Int64.max) else { return nil }
    return Duration(
        secondsComponent: Int64(seconds),
        attosecondsComponent: Int64(total % attosecondsPerSecond)
    )
}

/// The inverse of `parseDuration`, in the largest unit that represents `d`
/// exactly: "300ms", "2s", "5m", "1500ms". Zero is "0s"; sub-nanosecond
/// values use a decimal number of nanoseconds.
public func formatDuration(_ d: Duration) -> String {
    let (seconds, attoseconds) = d.components
    let total = Int128(seconds) * attosecondsPerSecond + Int128(attoseconds)
    if total == 0 { return "0s" }
    if total < 0 { return "-" + formatPositive(-total) }
    return formatPositive(total)
}

private func formatPositive(_ total: Int128) -> String {
    for unit in durationUnits where total % unit.attoseconds == 0 {
        return "\(total / unit.attoseconds)\(unit.suffix)"
    }
    let nanosecond: Int128 = 1_000_000_000
    var fraction = String(total % nanosecond)
    fraction = String(repeating: "0", count: 9 - fraction.count) + fraction
    while fraction.last == "0" { fraction.removeLast() }
    return "\(total / nanosecond).\(fraction)ns"
}
