import Atomics
import CSluice
import Logging
import SluiceBPF
import SluiceCore
import SluicePosix
import Synchronization

// Rebalancing: established connections handed between workers, and what
// the control thread may ask of a worker from its own thread.
extension Worker {
    // MARK: - Moving connections between workers

    /// Its heartbeat is older than the stall threshold (any thread may ask).
    func isStalled(now: UInt64) -> Bool {
        let beat = record.load(.heartbeatNanoseconds)
        return now > beat && now - beat > settings.stallThresholdNanoseconds
    }

    /// Neither stalled nor draining: may give and take connections.
    func isLive(now: UInt64) -> Bool {
        !isStalled(now: now) && record.load(.flags) & UInt64(SLUICE_WORKER_DRAINING) == 0
    }

    /// Control thread: takes back the connections handed to this worker that
    /// it has not adopted yet (it stalled before it could), so that they can
    /// go to a live worker instead of freezing here.
    func reclaimPendingAdoptions() -> [MigratingSessions] {
        commands.withLock { queue in
            var reclaimed: [MigratingSessions] = []
            queue.items.removeAll { command in
                guard case .adopt(let migrating) = command else { return false }
                reclaimed.append(migrating)
                return true
            }
            return reclaimed
        }
    }

    /// On leaving the loop: no command will run after this, and connections
    /// handed over too late are closed here rather than left open unowned.
    func closeLeftoverAdoptions() {
        let leftovers = commands.withLock { queue -> [WorkerCommand] in
            queue.closed = true
            defer { queue.items.removeAll() }
            return queue.items
        }
        for command in leftovers {
            switch command {
            case .adopt(let migrating):
                adopt(migrating)
                for session in migrating.sessions { drive(session, .drainDeadline) }
            case .adoptHanded(let handed):
                for fd in handed.fds { closeDescriptor(fd) }
            case .reconfigure(let next):
                for fd in next.sockets.values { closeDescriptor(fd) }
            default:
                break
            }
        }
    }

    /// Hands up to `count` established, quiet-enough sessions to `receiver`.
    /// A session is disarmed and out of this epoll before it leaves (oneshot:
    /// no event for it can be in flight here), and its timers go with it.
    func give(_ count: Int, to receiver: Worker) {
        guard !draining, receiver !== self else { return }
        var moving: [Session] = []
        for session in sessions.values where moving.count < count {
            // Only sessions in steady state: connected, no EOF being passed on.
            guard session.machine.isSteady else { continue }
            moving.append(session)
        }
        for session in moving {
            epoll.remove(session.client)
            epoll.remove(session.backend)
            session.forgetRegistration(.client)
            session.forgetRegistration(.backend)
            if let timer = session.idleTimer { _ = timers.cancel(timer) }
            session.idleTimer = nil
            sessions.removeValue(forKey: session.id)
            releaseActive()
            counters.movedOut.wrappingIncrement(ordering: .relaxed)
        }
        guard !moving.isEmpty else { return }
        guard receiver.send(.adopt(MigratingSessions(sessions: moving, from: id))) else {
            // The receiver has stopped: keep them.
            counters.movedOut.wrappingDecrement(by: UInt64(moving.count), ordering: .relaxed)
            adopt(MigratingSessions(sessions: moving, from: id))
            return
        }
        logger.info("rebalanced: handed connections to a less loaded worker", metadata: [
            "to": "\(receiver.id)", "count": "\(moving.count)",
            "active": "\(record.load(.active))", "to_active": "\(receiver.record.load(.active))",
        ])
    }

    /// Takes over sessions from another worker: new ids in this worker's
    /// token space, both sockets into this epoll, the idle deadline kept.
    func adopt(_ migrating: MigratingSessions) {
        for session in migrating.sessions {
            sessions.insert(session)
            record.add(.active, 1)
            // Taken back after a failed hand-over is not a move.
            if migrating.from != id { counters.movedIn.wrappingIncrement(ordering: .relaxed) }
            // The idle deadline is kept; a session relayed in userspace
            // pumps both ways (level-triggered readiness fires again for
            // whatever was pending), a sockmap-paired one re-arms for EOF.
            drive(session, .adopted)
        }
        logger.debug("adopted connections", metadata: ["count": "\(migrating.sessions.count)", "from": "\(migrating.from)"])
    }
}
