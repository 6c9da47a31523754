/// Counters of what the daemon absorbed to keep serving: log lines it
/// dropped rather than stall on a full output, and failures that were this
/// host's shortage rather than a backend's.
extension MetricsText {
    mutating func appendResilience(logLinesDropped: UInt64, localResourceErrors: LocalResourceErrors) {
        family("sluice_log_lines_dropped_total", "counter", "Log lines dropped because the log output did not keep up.")
        sample("sluice_log_lines_dropped_total", [:], Double(logLinesDropped))
        family("sluice_local_resource_errors_total", "counter",
               "Backend connects and health checks that failed for lack of a local resource (not counted against the backend).")
        for place in LocalResourceErrors.Place.allCases {
            sample("sluice_local_resource_errors_total", ["where": place.label], Double(localResourceErrors.count(place)))
        }
    }
}
