import Foundation
import Glibc
import SluicePosix
@testable import SluiceServer
import Testing

/// A pipe whose write end becomes the sink's output (through a path in
/// /proc, so the sink sees a pipe exactly as it would see a full stdout).
private struct OutputPipe {
    let readEnd: Int32
    let writeEnd: Int32

    init() {
        var fds: [Int32] = [0, 0]
        precondition(pipe(&fds) == 0)
        readEnd = fds[0]
        writeEnd = fds[1]
    }

    var writePath: String { "/proc/self/fd/\(writeEnd)" }

    /// Reads whatever the pipe holds until `done` says enough or `seconds` pass.
    func read(seconds: Double, until done: (String) -> Bool) -> String {
        var text = ""
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        let deadline = Date().addingTimeInterval(seconds)
        while !done(text) && Date() < deadline {
            var pfd = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 50) > 0 else { continue }
            let n = Glibc.read(readEnd, &buffer, buffer.count)
            if n <= 0 { break }
            text += String(decoding: buffer[0..<n], as: UTF8.self)
        }
        return text
    }

    /// Fills the pipe to the brim, as a consumer that stopped reading leaves it.
    func fillUp() {
        let flags = fcntl(writeEnd, F_GETFL)
        _ = fcntl(writeEnd, F_SETFL, flags | O_NONBLOCK)
        let block = [UInt8](repeating: 0x2E, count: 4096)
        while Glibc.write(writeEnd, block, block.count) > 0 {}
        _ = fcntl(writeEnd, F_SETFL, flags)
    }

    func close() {
        Glibc.close(readEnd)
        Glibc.close(writeEnd)
    }
}

/// The counts in every "N log lines dropped" notice of `text`, summed.
func droppedCountsInNotices(_ text: String) -> UInt64 {
    text.split(separator: "\n").compactMap { line -> UInt64? in
        guard let range = line.range(of: " log lines dropped") else { return nil }
        return UInt64(line[..<range.lowerBound].split(separator: " ").last ?? "")
    }.reduce(0, +)
}

@Suite("Log output never blocks its callers")
struct LogSinkTests {
    @Test("a pipe nobody reads: writes return, extra lines are dropped and counted, the count is reported once it drains")
    func unreadPipe() throws {
        let pipe = OutputPipe()
        defer { pipe.close() }
        let sink = try LogSink(path: pipe.writePath, capacityBytes: 8192)
        // 20,000 lines of ~100 bytes: 2 MB, far beyond a 64 KiB pipe and an 8 KiB queue.
        let filler = String(repeating: "x", count: 90)
        for i in 0..<20_000 { sink.write(line: "line \(i) \(filler)") }
        let dropped = sink.droppedLines
        #expect(dropped > 0, "a full pipe and a full queue drop lines")
        #expect(dropped < 20_000, "the lines the pipe and the queue hold are not dropped")

        // The reader comes back: queued lines, then the notice.
        let text = pipe.read(seconds: 10) { $0.contains("log lines dropped") }
        #expect(text.contains("log lines dropped"), "\(text.suffix(300))")
        #expect(sink.flush())
        sink.write(line: "after")
        #expect(sink.flush())
        let rest = pipe.read(seconds: 5) { $0.contains("after\n") }
        let all = text + rest
        let lines = all.split(separator: "\n")
        let kept = lines.filter { $0.hasPrefix("line ") }.count
        #expect(UInt64(kept) + sink.droppedLines == 20_000, "every line is written or counted as dropped")
        #expect(droppedCountsInNotices(all) == sink.droppedLines, "the notices add up to the counter")
        // Order is kept: the lines that made it out are in the order written.
        let numbers = lines.filter { $0.hasPrefix("line ") }.compactMap { Int($0.split(separator: " ")[1]) }
        #expect(numbers == numbers.sorted())
        #expect(lines.last == "after")
        sink.stop()
    }

    @Test("stop writes every queued line before returning")
    func stopFlushes() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-log-\(UUID().uuidString)").path
        defer { unlink(path) }
        let sink = try LogSink(path: path)
        for i in 0..<1000 { sink.write(line: "line \(i)") }
        sink.write(line: "stopped")
        sink.stop()
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let lines = text.split(separator: "\n")
        #expect(lines.count == 1001)
        #expect(lines.last == "stopped")
        #expect(sink.droppedLines == 0)
    }

    @Test("stop gives up on an output that never takes its lines, and counts them as dropped")
    func stopIsBounded() throws {
        let pipe = OutputPipe()
        defer { pipe.close() }
        pipe.fillUp()
        let sink = try LogSink(path: pipe.writePath, capacityBytes: 1024)
        for i in 0..<200 { sink.write(line: "line \(i)") }
        sink.stop(timeoutMilliseconds: 100)
        #expect(sink.droppedLines == 200, "nothing fit in the full pipe: every line is lost, and counted")
        sink.write(line: "after stop")
        #expect(sink.droppedLines == 201)
    }
}

@Suite("Local resource errors")
struct LocalResourceErrorTests {
    @Test("every error is counted; at most one is logged a second per place, and it says how many were not")
    func rateLimited() {
        let errors = LocalResourceErrors()
        #expect(errors.note(.connect, nowMilliseconds: 5000) == 0, "the first one is logged")
        #expect(errors.note(.connect, nowMilliseconds: 5001) == nil)
        #expect(errors.note(.connect, nowMilliseconds: 5999) == nil)
        #expect(errors.note(.healthCheck, nowMilliseconds: 5999) == 0, "each place has its own second")
        #expect(errors.note(.connect, nowMilliseconds: 6000) == 2, "two left out since the last line")
        #expect(errors.note(.connect, nowMilliseconds: 6001) == nil)
        #expect(errors.count(.connect) == 5)
        #expect(errors.count(.healthCheck) == 1)
    }
}

@Suite("Status shows what was absorbed")
struct ResilienceStatusTextTests {
    @Test("one line with the drop and local-error counts, only when one is not zero")
    func absorbedLine() {
        var snapshot = StatusTextTests.snapshot
        let errors = LocalResourceErrors()
        snapshot.logLinesDropped = 0
        snapshot.localResourceErrors = LocalResourceErrorCounts(errors)
        #expect(StatusText.render(snapshot) == StatusTextTests.expected, "nothing added while all are zero")
        _ = errors.note(.connect, nowMilliseconds: 1000)
        _ = errors.note(.connect, nowMilliseconds: 1001)
        snapshot.logLinesDropped = 1234
        snapshot.localResourceErrors = LocalResourceErrorCounts(errors)
        let text = StatusText.render(snapshot)
        #expect(text.contains("\nlog lines dropped 1,234  local resource errors: connect 2  health check 0\n"), "\(text)")
    }
}
