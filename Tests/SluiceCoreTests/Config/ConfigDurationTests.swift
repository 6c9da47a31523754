import Testing
@testable import SluiceCore

@Suite("Durations")
struct ConfigDurationTests {
    @Test(arguments: [
        ("300ms", Duration.milliseconds(300)),
        ("2s", .seconds(2)),
        ("5m", .seconds(300)),
        ("1h", .seconds(3600)),
        ("1.5s", .milliseconds(1500)),
        ("0.25ms", .microseconds(250)),
        ("750us", .microseconds(750)),
        ("42ns", .nanoseconds(42)),
        ("0s", .zero),
        ("007s", .seconds(7)),
        ("1.000s", .seconds(1)),
        ("2.5h", .seconds(9000)),
    ])
    func parsesValidDurations(text: String, expected: Duration) {
        #expect(parseDuration(text) == expected)
    }

    @Test(arguments: [
        "", "10", "s", "5 parsecs", "-1s", "+1s", "1.s", ".5s", "1e3ms", "1 s", " 1s", "1s ",
        "1S", "1sec", "1d", "1.5.5s", "1ms2", "99999999999999999999999h", "0.0000000000000000000001s",
    ])
    func rejectsMalformedDurations(text: String) {
        #expect(parseDuration(text) == nil)
    }

    @Test(arguments: [
        (Duration.milliseconds(300), "300ms"),
        (.seconds(2), "2s"),
        (.seconds(300), "5m"),
        (.seconds(3600), "1h"),
        (.seconds(90), "90s"),
        (.milliseconds(1500), "1500ms"),
        (.microseconds(250), "250us"),
        (.nanoseconds(42), "42ns"),
        (.zero, "0s"),
        (.seconds(-2), "-2s"),
    ])
    func formatsInTheLargestExactUnit(duration: Duration, expected: String) {
        #expect(formatDuration(duration) == expected)
    }

    @Test func formatsSubNanosecondValues() {
        let d = Duration(secondsComponent: 0, attosecondsComponent: 1_500_000_000)
        #expect(formatDuration(d) == "1.5ns")
        #expect(parseDuration("1.5ns") == d)
    }

    @Test(arguments: ["300ms", "2s", "5m", "1h", "1.5s", "90s", "1.25ms", "3us", "7ns", "36h", "0s"])
    func roundTripsFromText(text: String) throws {
        let parsed = try #require(parseDuration(text))
        #expect(parseDuration(formatDuration(parsed)) == parsed)
    }

    @Test(arguments: [
        Duration.seconds(1), .milliseconds(1), .microseconds(1), .nanoseconds(1), .seconds(86_400 * 365),
        .milliseconds(123_456), .nanoseconds(1_000_000_001), .seconds(7200), .seconds(61),
    ])
    func roundTripsFromDuration(duration: Duration) {
        #expect(parseDuration(formatDuration(duration)) == duration)
    }
}
