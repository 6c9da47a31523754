import Testing
@testable import SluiceCore

private let app = NamedBackend(host: "app.local", port: 80)
private let db = NamedBackend(host: "db.local", port: 5432, weight: 2)
private let settings = ResolveConfig(minTTL: .seconds(1), maxTTL: .seconds(300))

private func addresses(_ texts: String...) -> [SocketAddressSpec] { texts.map { configAddress($0) } }

@Suite("ResolveSchedule: when names are looked up again")
struct ResolveScheduleTests {
    @Test("an answer is kept for its TTL within [min_ttl, max_ttl]; min_ttl without a TTL", arguments: [
        (Duration?.none, Duration.seconds(1)), (.zero, .seconds(1)), (.milliseconds(400), .seconds(1)),
        (.seconds(30), .seconds(30)), (.seconds(300), .seconds(300)), (.seconds(86_400), .seconds(300)),
    ])
    func refreshClamp(ttl: Duration?, expected: Duration) {
        #expect(ResolveSchedule.refreshDelay(ttl: ttl, settings: settings) == expected)
    }

    @Test("retries back off from min_ttl, doubling to 30 s, never past max_ttl")
    func retryBackoff() {
        #expect((1...8).map { ResolveSchedule.retryDelay(failures: $0, settings: settings) }
            == [1, 2, 4, 8, 16, 30, 30, 30].map { Duration.seconds($0) })
        let short = ResolveConfig(minTTL: .milliseconds(500), maxTTL: .seconds(3))
        #expect((1...5).map { ResolveSchedule.retryDelay(failures: $0, settings: short) }
            == [.milliseconds(500), .seconds(1), .seconds(2), .seconds(3), .seconds(3)])
        let long = ResolveConfig(minTTL: .seconds(60), maxTTL: .seconds(600))
        #expect(ResolveSchedule.retryDelay(failures: 3, settings: long) == .seconds(60))
        #expect(ResolveSchedule.retryDelay(failures: 1_000_000, settings: settings) == .seconds(30))
    }

    @Test("every name is due at first; a lookup under way is not due again")
    func firstLookups() {
        var schedule = ResolveSchedule(names: [app, db], settings: settings, now: 1000)
        #expect(schedule.due(now: 1000) == [app, db])
        #expect(schedule.nextDue == 1000)
        _ = schedule.started(app)
        #expect(schedule.due(now: 5000) == [db])
        _ = schedule.started(db)
        #expect(schedule.nextDue == nil)
        #expect(schedule.table.isEmpty)
    }

    @Test("an answer is published once, sorted; the same set again is no change")
    func answers() {
        var schedule = ResolveSchedule(names: [app], settings: settings, now: 0)
        var ticket = schedule.started(app)
        let firstChanged = schedule.answered(app, ticket: ticket, addresses: addresses("10.0.0.2:80", "10.0.0.1:80", "10.0.0.2:80"),
                                  ttl: .seconds(10), now: 0)
        #expect(firstChanged)
        #expect(schedule.table == [app: addresses("10.0.0.1:80", "10.0.0.2:80")])
        #expect(schedule.nextDue == 10_000)
        #expect(schedule.due(now: 9_999).isEmpty)
        ticket = schedule.started(app)
        let sameChanged = schedule.answered(app, ticket: ticket, addresses: addresses("10.0.0.1:80", "10.0.0.2:80"), ttl: nil, now: 10_000)
        #expect(!sameChanged)
        #expect(schedule.nextDue == 11_000)
    }

    @Test("a failure keeps the last answer and backs off; an answer resets the backoff")
    func failures() {
        var schedule = ResolveSchedule(names: [app], settings: settings, now: 0)
        var ticket = schedule.started(app)
        _ = schedule.answered(app, ticket: ticket, addresses: addresses("10.0.0.1:80"), ttl: .seconds(5), now: 0)
        ticket = schedule.started(app)
        let firstRetry = schedule.failed(app, ticket: ticket, now: 5000)
        #expect(firstRetry == .seconds(1))
        ticket = schedule.started(app)
        let secondRetry = schedule.failed(app, ticket: ticket, now: 6000)
        #expect(secondRetry == .seconds(2))
        #expect(schedule.entries[app]?.failures == 2)
        #expect(schedule.nextDue == 8000)
        #expect(schedule.table == [app: addresses("10.0.0.1:80")])
        ticket = schedule.started(app)
        let emptyChanged = schedule.answered(app, ticket: ticket, addresses: [], ttl: nil, now: 8000)
        #expect(!emptyChanged, "an empty answer is a failure")
        #expect(schedule.entries[app]?.failures == 3)
        ticket = schedule.started(app)
        let recoveredChanged = schedule.answered(app, ticket: ticket, addresses: addresses("10.0.0.7:80"), ttl: nil, now: 12_000)
        #expect(recoveredChanged)
        #expect(schedule.entries[app]?.failures == 0)
    }

    @Test("reload: kept names keep their answers, dropped ones leave the table, new ones are due now")
    func replaceNames() {
        var schedule = ResolveSchedule(names: [app, db], settings: settings, now: 0)
        let ticket = schedule.started(app)
        _ = schedule.answered(app, ticket: ticket, addresses: addresses("10.0.0.1:80"), ttl: .seconds(60), now: 0)
        let other = NamedBackend(host: "other.local", port: 80)
        let droppedUnanswered = schedule.replace(names: [app, other], settings: settings, now: 100)
        #expect(!droppedUnanswered, "db had no answer")
        #expect(schedule.table == [app: addresses("10.0.0.1:80")])
        #expect(schedule.due(now: 100) == [other])
        let droppedAnswered = schedule.replace(names: [other], settings: settings, now: 200)
        #expect(droppedAnswered, "app's answer is gone")
        #expect(schedule.table.isEmpty)
    }

    @Test("reload with a new weight: the answer moves to the reweighted name, without a lookup")
    func replaceWeight() {
        var schedule = ResolveSchedule(names: [app], settings: settings, now: 0)
        let ticket = schedule.started(app)
        _ = schedule.answered(app, ticket: ticket, addresses: addresses("10.0.0.1:80"), ttl: .seconds(60), now: 0)
        let heavier = NamedBackend(host: app.host, port: app.port, weight: 5)
        let reweighted = schedule.replace(names: [heavier], settings: settings, now: 100)
        #expect(reweighted)
        #expect(schedule.table == [heavier: addresses("10.0.0.1:80")])
        #expect(schedule.due(now: 100).isEmpty)
        #expect(schedule.nextDue == 60_000)
        // With a lookup under way, the reweighted name is asked again at once.
        let inFlight = schedule.started(heavier)
        let lighter = NamedBackend(host: app.host, port: app.port, weight: 1)
        _ = schedule.replace(names: [lighter], settings: settings, now: 200)
        #expect(schedule.due(now: 200) == [lighter])
        let staleRetry = schedule.failed(heavier, ticket: inFlight, now: 300)
        #expect(staleRetry == nil)
        #expect(schedule.table == [lighter: addresses("10.0.0.1:80")])
    }

    @Test("reload with new settings: lookups under way are forgotten and every name is due now")
    func replaceSettings() {
        var schedule = ResolveSchedule(names: [app], settings: settings, now: 0)
        var ticket = schedule.started(app)
        _ = schedule.answered(app, ticket: ticket, addresses: addresses("10.0.0.1:80"), ttl: .seconds(60), now: 0)
        ticket = schedule.started(app)
        var faster = settings
        faster.timeout = .milliseconds(100)
        let settingsChanged = schedule.replace(names: [app], settings: faster, now: 500)
        #expect(!settingsChanged)
        #expect(schedule.due(now: 500) == [app])
        let staleRetry = schedule.failed(app, ticket: ticket, now: 600)
        #expect(staleRetry == nil, "the forgotten lookup's ending is ignored")
        let staleChanged = schedule.answered(app, ticket: ticket, addresses: addresses("10.0.0.9:80"), ttl: nil, now: 600)
        #expect(!staleChanged)
        #expect(schedule.table == [app: addresses("10.0.0.1:80")])
    }
}
