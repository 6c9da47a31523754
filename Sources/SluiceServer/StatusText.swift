/// The human form of `sluice status`: a table that fits 80 columns.
public enum StatusText {
    public static func render(_ s: StatusSnapshot) -> String {
        var lines: [String] = []
        var head = "sluice \(s.instance)  \(s.daemon)"
        if let pid = s.pid { head += "  pid \(pid)" }
        if let up = s.uptimeSeconds { head += "  up \(duration(up))" }
        lines.append(head)
        let totalActive = s.workers.reduce(0) { $0 + $1.active }
        let rate = s.workers.reduce(0) { $0 + $1.connectionsPerSecond }
        lines.append("steering \(s.steering.mode)  data path \(s.dataPath)  open \(group(totalActive))  new/s \(decimal(rate))")
        if let generation = s.generation {
            var config = "config generation \(generation)"
            if let ago = s.loadedSecondsAgo { config += ", loaded \(duration(ago)) ago" }
            if let refused = s.reloadsFailed, refused > 0 { config += "  reloads refused \(refused)" }
            lines.append(config)
            for error in s.lastReloadErrors ?? [] { lines.append("  last reload refused: \(error)") }
        }
        lines.append("")
        lines.append(table(workerColumns, ["W", "state", "active", "share", "accepted", "conn/s", "in", "out", "beat", "busy"]))
        for w in s.workers {
            let share = totalActive > 0 ? Double(w.active) / Double(totalActive) : 0
            lines.append(table(workerColumns, [
                "\(w.id)", w.state, group(w.active), bar(share), group(w.accepted), decimal(w.connectionsPerSecond),
                bytes(w.bytesIn), bytes(w.bytesOut), age(w.heartbeatAgeMilliseconds), "\(Int(w.busyPercent.rounded()))%",
            ]))
        }
        if !s.listeners.isEmpty {
            lines.append("")
            lines.append(table(listenerColumns, ["listener", "address", "pool", "open", "accepted", "refused"]))
            for l in s.listeners {
                lines.append(table(listenerColumns, [
                    l.name, l.address, l.pool, group(l.active), group(l.accepted), group(l.rejected + l.noBackend),
                ]))
            }
            for l in s.listeners {
                guard let requests = l.requests else { continue }
                let rate = l.requestsPerSecond.map { "\(decimal($0)) requests/s, " } ?? ""
                let tunnels = l.tunnels.map { ", \(group($0)) tunnels open" } ?? ""
                lines.append(fit("http \(l.name): \(rate)\(group(requests)) answered\(tunnels)"))
            }
        }
        lines.append("")
        var steering = "steered \(group(s.steering.selected))  fallbacks \(group(s.steering.fallback))"
            + "  all stalled \(group(s.steering.allStalled))  stalled skipped \(group(s.steering.stallSkips))"
        if let moves = s.steering.moves { steering += "  moved \(group(moves))" }
        if s.steering.flowsPlaced > 0 || s.workers.contains(where: { $0.flows > 0 }) {
            steering += "  udp flows \(s.workers.map { group($0.flows) }.joined(separator: "/"))"
                + " (placed \(group(s.steering.flowsPlaced)), followed \(group(s.steering.flowsFollowed)))"
        }
        lines.append(fit(steering))
        if let paths = s.dataPaths {
            lines.append(fit("closed by path: copy \(group(paths.copy))  splice \(group(paths.splice))"
                + "  sockmap \(group(paths.sockmap))  promoted \(group(paths.promotions))"))
        }
        if let local = s.localResourceErrors, (s.logLinesDropped ?? 0) + local.connect + local.healthCheck > 0 {
            lines.append(fit("log lines dropped \(group(s.logLinesDropped ?? 0))  local resource errors: "
                + "connect \(group(local.connect))  health check \(group(local.healthCheck))"))
        }
        if let backends = s.backends, !backends.isEmpty {
            lines.append("")
            lines.append(table(backendColumns, ["backend", "pool", "state", "open", "weight", "failures", "checked"]))
            for b in backends {
                lines.append(table(backendColumns, [
                    b.address, b.pool, b.state, group(b.active), "\(b.weight)", group(b.failures), b.lastCheck ?? "-",
                ]))
            }
            // Hostname backends: the addresses their records gave.
            var names: [(key: String, addresses: [String])] = []
            for b in backends {
                guard let name = b.name else { continue }
                let key = "\(b.pool) \(name)"
                if let k = names.firstIndex(where: { $0.key == key }) { names[k].addresses.append(b.address) } else { names.append((key, [b.address])) }
            }
            for entry in names {
                let pool = entry.key.prefix { $0 != " " }, name = entry.key.drop { $0 != " " }.dropFirst()
                lines.append(fit("dns \(name) (pool \(pool)): \(entry.addresses.count) address\(entry.addresses.count == 1 ? "" : "es")"))
                var line = " "
                for address in entry.addresses {
                    if line.count + address.count + 1 > 80 { lines.append(line); line = " " }
                    line += " " + address
                }
                lines.append(line)
            }
        }
        for note in s.notes { lines.append(fit("note: \(note)")) }
        return lines.joined(separator: "\n") + "\n"
    }

    /// A column: width, and whether numbers line up on the right.
    struct Column {
        let width: Int
        let right: Bool
        init(_ width: Int, right: Bool = false) {
            self.width = width
            self.right = right
        }
    }

    // Each table is at most 80 characters wide, separators included.
    static let workerColumns = [Column(2, right: true), Column(8), Column(8, right: true), Column(11), Column(10, right: true),
                                Column(7, right: true), Column(7, right: true), Column(7, right: true), Column(6, right: true),
                                Column(5, right: true)]
    static let listenerColumns = [Column(10), Column(22), Column(10), Column(7, right: true), Column(11, right: true),
                                  Column(8, right: true)]
    static let backendColumns = [Column(22), Column(10), Column(8), Column(7, right: true), Column(6, right: true),
                                 Column(8, right: true), Column(8)]

    static func table(_ columns: [Column], _ cells: [String]) -> String {
        var out = ""
        for (i, cell) in cells.enumerated() {
            let column = columns[i]
            let text = cell.count > column.width ? String(cell.prefix(column.width - 1)) + "…" : cell
            let padding = String(repeating: " ", count: column.width - text.count)
            out += column.right ? padding + text : text + padding
            if i < cells.count - 1 { out += " " }
        }
        return fit(out)
    }

    static func bar(_ share: Double) -> String {
        let eighths = Int((share * 10 * 8).rounded())
        let full = eighths / 8
        let partial = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"][eighths % 8]
        return String(repeating: "█", count: full) + partial
    }

    static func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
    }

    static func fit(_ line: String) -> String {
        let trimmed = trimRight(line)
        return trimmed.count <= 80 ? trimmed : String(trimmed.prefix(79)) + "…"
    }

    static func trimRight(_ s: String) -> String {
        var out = s
        while out.last == " " { out.removeLast() }
        return out
    }

    static func group(_ n: UInt64) -> String {
        let digits = String(n)
        var out = ""
        for (i, c) in digits.enumerated() {
            if i > 0 && (digits.count - i) % 3 == 0 { out += "," }
            out.append(c)
        }
        return out
    }

    static func group(_ n: Int) -> String { n < 0 ? "-" + group(UInt64(-n)) : group(UInt64(n)) }

    static func decimal(_ v: Double) -> String {
        if v >= 1000 { return group(UInt64(v.rounded())) }
        let tenths = Int((v * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)"
    }

    static func bytes(_ n: UInt64) -> String {
        let units = ["B", "K", "M", "G", "T", "P"]
        var value = Double(n)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        if unit == 0 { return "\(n)B" }
        return value >= 100 ? "\(Int(value.rounded()))\(units[unit])" : "\(decimal(value))\(units[unit])"
    }

    static func age(_ ms: UInt64) -> String {
        if ms < 1000 { return "\(ms)ms" }
        if ms < 60_000 { return "\(ms / 1000)s" }
        return duration(Double(ms) / 1000)
    }

    static func duration(_ seconds: Double) -> String {
        let s = Int(seconds)
        if s < 60 { return "\(s)s" }
        if s < 3600 { return "\(s / 60)m\(s % 60)s" }
        if s < 86400 { return "\(s / 3600)h\((s % 3600) / 60)m" }
        return "\(s / 86400)d\((s % 86400) / 3600)h"
    }
}
