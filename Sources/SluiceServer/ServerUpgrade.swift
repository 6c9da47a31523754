import CSluice
import Glibc
import Logging
import SluiceBPF
import SluiceCore
import SluicePosix
import Synchronization

/// A binary upgrade under way in the old process: the thread that talks to
/// the new one, and how it ended (read by the control thread).
final class UpgradeInFlight: @unchecked Sendable {
    let child: Int32
    let outcome = Mutex<UpgradeOutcome?>(nil)
    var thread: OSThread?

    init(child: Int32) { self.child = child }
}

enum UpgradeOutcome: Sendable {
    /// The new process took over: it serves the listeners and `handed` connections.
    case handedOver(handed: Int, kept: Int, milliseconds: UInt64)
    case failed(String)
}

/// What the conversation needs, fixed on the control thread before it starts.
struct UpgradePlan: @unchecked Sendable {
    var manifest: UpgradeManifest
    /// The instance lock, then every listener's sockets (as the manifest says).
    var fds: [Int32]
    var workers: [Worker]
    var socketPath: String
    /// How long connections have to come to rest before the rest finish here.
    var restMilliseconds: UInt64
    /// The new process's pools (name → backend addresses): a connection to
    /// a backend it does not have stays here and finishes.
    var allowed: [String: Set<String>]?
}

extension Server {
    func adminUpgrade(binary: String?) -> String? {
        let refusal = startUpgrade(binary: binary)
        if let refusal {
            lastUpgradeError = refusal
            if let live, live.writesInfo { rewriteInstanceInfo(listeners: liveListeners, dataPath: live.dataPath) }
        }
        return refusal
    }

    /// SIGUSR2 or the admin socket: starts `binary` (this one by default) on
    /// the same file and hands it everything. Nil when started; else why not.
    func startUpgrade(binary: String?) -> String? {
        guard let live, let loop = live.loop else { return "the daemon is not serving yet" }
        if upgrade != nil { return "an upgrade is already under way" }
        if loop.stopDeadline != nil || handedOver {
            return adoption != nil ? "this process is still taking over from the one it upgrades" : "the daemon is stopping"
        }
        guard let configPath = options.configPath else { return "this daemon runs a built-in configuration (no file for the new binary)" }
        guard let lock = live.lock else { return "no instance lock to hand over (is /run/sluice writable?)" }
        if config.user != nil { return "with user: the daemon no longer has the privileges a new binary needs to take over" }
        let executable = binary ?? options.executablePath ?? "/proc/self/exe"
        let socketPath = "\(InstanceLock.defaultDirectory)/\(config.instance).upgrade"
        let listenerFD: Int32
        do { listenerFD = try HandoverChannel.listen(path: socketPath) } catch {
            return "cannot listen on \(socketPath): \(error)"
        }
        let arguments = [executable, "run", "-c", configPath, "--upgrade-from", socketPath]
            + (options.verifyCleanExit ? ["--verify-clean-exit"] : [])
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        let child = sluice_spawn(executable, &argv)
        guard child > 0 else {
            closeDescriptor(listenerFD)
            FileSystem.removeFile(socketPath)
            return "cannot start \(executable): \(errnoDescription(errno))"
        }
        var fds = [lock.fd], maps: [Int32] = []
        var listeners: [UpgradeManifest.Listener] = []
        let mapsGo = config.steering == .leastLoaded && live.steering != nil
        for listener in liveListeners {
            guard let sockets = live.sockets[listener.index], sockets.count == config.workers else { continue }
            listeners.append(.init(name: listener.name, slot: listener.index, bind: "\(listener.config.bind)", mode: listener.config.mode.rawValue))
            fds += sockets
            if mapsGo { maps += live.steering?.listenerMapFDs(listener: listener.index) ?? [] }
        }
        if maps.count != listeners.count * KernelSteering.listenerMaps.count { maps = [] }
        fds += maps
        let manifest = UpgradeManifest(
            pid: CurrentProcess.id, abi: SluiceBPFLayout.abiVersion, instance: config.instance, workers: config.workers,
            steering: config.steering.rawValue, dataPath: config.dataPath.rawValue, listeners: listeners,
            sockmapPinned: live.dataPath.sockmap != nil && live.steering != nil, listenerMaps: !maps.isEmpty,
            freshSlot: live.freshSlot, retiredSlots: live.retiredSlots, sharedCounters: live.steering != nil)
        let plan = UpgradePlan(manifest: manifest, fds: fds, workers: live.workers, socketPath: socketPath,
                               restMilliseconds: min(config.drainTimeout.milliseconds, 10_000))
        let inFlight = UpgradeInFlight(child: child)
        let logger = logs.logger("sluice.upgrade"), wake = loop.discoveryWake
        logger.notice("binary upgrade: started the new process", metadata: ["binary": "\(executable)", "pid": "\(child)"])
        do {
            inFlight.thread = try OSThread.start(name: "sluice-upgrade") {
                let result = Self.converse(plan, listener: listenerFD, child: child, logger: logger)
                closeDescriptor(listenerFD)
                FileSystem.removeFile(socketPath)
                inFlight.outcome.withLock { $0 = result }
                wake.signal()
            }
        } catch {
            kill(child, SIGKILL)
            _ = waitpid(child, nil, 0)
            closeDescriptor(listenerFD)
            FileSystem.removeFile(socketPath)
            return "cannot start the upgrade thread: \(error)"
        }
        upgrade = inFlight
        return nil
    }

    /// Control thread, on its wake-up: how the upgrade ended, if it has.
    func checkUpgrade() {
        if let adoption, adoption.isComplete { claimNames(adoption) }
        guard let inFlight = upgrade, let outcome = inFlight.outcome.withLock({ $0 }) else { return }
        inFlight.thread?.join()
        upgrade = nil
        switch outcome {
        case .failed(let why):
            lastUpgradeError = why
            logger.error("binary upgrade failed; this process keeps serving", metadata: ["why": "\(why)"])
            if let live, live.writesInfo { rewriteInstanceInfo(listeners: liveListeners, dataPath: live.dataPath) }
        case .handedOver(let handed, let kept, let milliseconds):
            logger.notice("binary upgrade: the new process serves; this one finishes what stayed and exits", metadata: [
                "pid": "\(inFlight.child)", "handed_over": "\(handed)", "finishing_here": "\(kept)", "ms": "\(milliseconds)",
            ])
            handOverNames(to: inFlight.child)
            deferredStop = nil // this process drains already
        }
        if let stop = deferredStop {
            deferredStop = nil
            stop()
        }
    }

    /// New process: the old one is done; the pins, lock file, info file and
    /// admin socket are this one's from now on.
    private func claimNames(_ completed: UpgradeAdoption) {
        adoption = nil
        handedOver = false
        live?.steering?.claimPins()
        live?.lock?.claimFile()
        if let loop = live?.loop {
            do { loop.admin = try openAdmin(epoll: loop.epoll) } catch {
                logger.error("after the upgrade: \(error)")
            }
        }
        if let live, live.writesInfo { rewriteInstanceInfo(listeners: liveListeners, dataPath: live.dataPath) }
        SystemdNotify.send("STATUS=listening (upgraded)")
        logger.notice("binary upgrade: this process took over", metadata: ["from": "\(completed.manifest.pid)"])
    }

    /// The new process owns the pins, the lock file, the info file and the
    /// admin socket's name now: this one leaves them, tells systemd who the
    /// main process is, and drains what stayed here.
    private func handOverNames(to child: Int32) {
        handedOver = true
        live?.steering?.leavePins()
        live?.lock?.leaveFile()
        // The admin socket's name and the metrics port are the new process's now.
        live?.loop?.admin?.leavesPath = true
        live?.loop?.admin?.close()
        live?.loop?.admin = nil
        SystemdNotify.send("MAINPID=\(child)")
        let deadline = monotonicMilliseconds().saturatingAdd(config.drainTimeout.milliseconds)
        live?.loop?.stopDeadline = deadline.saturatingAdd(2000)
        for worker in live?.workers ?? [] { worker.send(.drainAfterUpgrade(deadlineMilliseconds: deadline)) }
    }

    /// The upgrade thread: the whole conversation with the new process.
    private static func converse(_ plan: UpgradePlan, listener: Int32, child: Int32, logger: Logger) -> UpgradeOutcome {
        var plan = plan
        let started = monotonicMilliseconds()
        let channel: HandoverChannel
        do { channel = try acceptNewProcess(listener, child: child) } catch {
            return abandon(child, error.description)
        }
        do {
            let (hello, strayAtHello) = try channel.receiveMessage(timeoutMilliseconds: 10_000)
            for fd in strayAtHello { closeDescriptor(fd) }
            guard let hello = hello.hello else { return abandon(child, "the new process did not say hello") }
            guard hello.abi == SluiceBPFLayout.abiVersion else {
                return abandon(child, "the new binary speaks BPF ABI \(hello.abi), this one \(SluiceBPFLayout.abiVersion)")
            }
            // The descriptors in messages of at most SLUICE_HANDOVER_MAX_FDS, the manifest first.
            var manifest = plan.manifest
            manifest.descriptors = plan.fds.count
            var chunks = stride(from: 0, to: plan.fds.count, by: Int(SLUICE_HANDOVER_MAX_FDS)).map {
                Array(plan.fds[$0..<min(plan.fds.count, $0 + Int(SLUICE_HANDOVER_MAX_FDS))])
            }
            try channel.send(UpgradeMessage(manifest: manifest), fds: chunks.isEmpty ? [] : chunks.removeFirst())
            for chunk in chunks { try channel.send(UpgradeMessage(descriptors: chunk.count), fds: chunk) }
            let (answer, stray) = try channel.receiveMessage(timeoutMilliseconds: 30_000)
            for fd in stray { closeDescriptor(fd) }
            if let refusal = answer.refuse { return abandon(child, "the new process refused: \(refusal)") }
            guard answer.ready == true else { return abandon(child, "the new process did not get ready") }
            plan.allowed = answer.pools.map { $0.mapValues(Set.init) }
        } catch {
            return abandon(child, "\(error)")
        }
        // Both processes serve the listeners now; this one stops taking new connections.
        for worker in plan.workers { worker.send(.pauseAccepting(true)) }
        logger.info("binary upgrade: the new process serves the listeners", metadata: ["pid": "\(child)"])
        do {
            let (handed, kept) = try handConnections(plan, channel)
            try channel.send(UpgradeMessage(done: handed))
            return .handedOver(handed: handed, kept: kept, milliseconds: monotonicMilliseconds() - started)
        } catch {
            // The new process is gone mid-way: take the listeners back.
            for worker in plan.workers { worker.send(.pauseAccepting(false)) }
            return abandon(child, "\(error)")
        }
    }

    private static func acceptNewProcess(_ listener: Int32, child: Int32) throws(ServerError) -> HandoverChannel {
        let deadline = monotonicMilliseconds() + 15_000
        while monotonicMilliseconds() < deadline {
            var status: Int32 = 0
            if waitpid(child, &status, WNOHANG) == child {
                throw ServerError("the new process exited (status \(status >> 8 & 0xFF), signal \(status & 0x7F)) before it connected")
            }
            do { return try HandoverChannel.accept(listener, timeoutMilliseconds: 100) } catch {
                if error.errno != ETIMEDOUT { throw ServerError("\(error)") }
            }
        }
        throw ServerError("the new process did not connect within 15 s")
    }

    /// Stops the new process (if it still runs) and says why.
    private static func abandon(_ child: Int32, _ why: String) -> UpgradeOutcome {
        var status: Int32 = 0
        if waitpid(child, &status, WNOHANG) == 0 {
            kill(child, SIGKILL)
            _ = waitpid(child, &status, 0)
        }
        return .failed(why)
    }

    /// Rounds: every worker hands over what is at rest, sent in batches the
    /// new process acknowledges; until nothing is left that may come to rest,
    /// or the time for it runs out. Returns (handed over, left here). When
    /// the new process fails mid-way, what was not sent goes back to the
    /// workers it came from.
    private static func handConnections(_ plan: UpgradePlan, _ channel: HandoverChannel) throws(ServerError) -> (Int, Int) {
        let mailbox = HandoverMailbox(allowed: plan.allowed, sharedCounters: plan.manifest.sharedCounters ?? true)
        let deadline = monotonicMilliseconds().saturatingAdd(plan.restMilliseconds)
        var handed = 0
        var remaining = [Int?](repeating: nil, count: plan.workers.count)
        var asked = [Bool](repeating: false, count: plan.workers.count)
        var pending: [HandoverMailbox.Delivery] = []
        do throws(ServerError) {
            while true {
                for (k, worker) in plan.workers.enumerated() where !asked[k] {
                    asked[k] = worker.send(.export(mailbox))
                    if !asked[k] { remaining[k] = 0 }
                }
                sleepMilliseconds(5)
                pending = mailbox.take()
                while !pending.isEmpty {
                    let delivery = pending[0]
                    asked[delivery.worker] = false
                    remaining[delivery.worker] = delivery.remaining
                    handed += try send(&pending[0].batch, channel)
                    pending.removeFirst()
                }
                if remaining.allSatisfy({ $0 == 0 }) || monotonicMilliseconds() >= deadline { break }
            }
            pending = mailbox.close()
            while !pending.isEmpty {
                remaining[pending[0].worker] = pending[0].remaining
                handed += try send(&pending[0].batch, channel)
                pending.removeFirst()
            }
        } catch {
            for delivery in pending + mailbox.close() where !delivery.batch.connections.isEmpty {
                let back = AdoptedConnections(connections: delivery.batch.connections, fds: delivery.batch.fds)
                if !plan.workers[delivery.worker].send(.adoptHanded(back)) { for fd in back.fds { closeDescriptor(fd) } }
            }
            throw error
        }
        return (handed, remaining.reduce(0) { $0 + ($1 ?? 0) })
    }

    /// A worker's batch, in messages the new process acknowledges. What was
    /// sent leaves the batch (its descriptors closed here: the new process
    /// has its own); on failure the batch holds what was not sent.
    private static func send(_ batch: inout ExportedConnections, _ channel: HandoverChannel) throws(ServerError) -> Int {
        var sent = 0
        while !batch.connections.isEmpty {
            let count = min(100, batch.connections.count)
            let fdCount = batch.connections[0..<count].reduce(0) { $0 + $1.descriptors }
            try channel.send(UpgradeMessage(connections: Array(batch.connections[0..<count])), fds: Array(batch.fds[0..<fdCount]))
            // Sent: the new process holds these descriptors now, whatever happens next.
            for fd in batch.fds[0..<fdCount] { closeDescriptor(fd) }
            batch.connections.removeFirst(count)
            batch.fds.removeFirst(fdCount)
            sent += count
            let (ack, stray) = try channel.receiveMessage(timeoutMilliseconds: 10_000)
            for fd in stray { closeDescriptor(fd) }
            guard ack.adopted == count else { throw ServerError("the new process did not acknowledge a batch") }
        }
        return sent
    }
}
