/// Counters of what the daemon gave up on to keep serving: log lines it
/// dropped rather than stall on a full output.
extension MetricsText {
    mutating func appendResilience(logLinesDropped: UInt64) {
        family("sluice_log_lines_dropped_total", "counter", "Log lines dropped because the log output did not keep up.")
        sample("sluice_log_lines_dropped_total", [:], Double(logLinesDropped))
    }
}
