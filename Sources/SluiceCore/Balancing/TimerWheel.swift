// A hashed timing wheel (Varghese & Lauck 1987, scheme 6) for per-worker
// connection timeouts: O(1) schedule, cancel and reschedule.
//
// Time is cut into ticks of `tickMilliseconds`. A timer with deadline d
// belongs to tick d / tick (rounded down; a deadline already in the past
// belongs to the current tick) and lives in that tick's slot, modulo
// `slotCount`, in an intrusive doubly-linked list threaded through a slab of
// nodes. Freed nodes are reused, so storage is bounded by the peak number of
// live timers. Every node keeps its absolute deadline and fires only once
// `deadline <= now`, so nothing ever fires early.
//
// Each slot has two lists: *near* holds the timers whose tick is inside the
// current window [currentTick, currentTick + slotCount) (so a slot's near
// list is exactly one tick's timers), *far* holds those one or more
// rotations out. When a tick passes, the window gains the tick one rotation
// later, which maps to the same slot: its far timers for that tick are
// promoted. A bitmap of non-empty near lists lets `nextDeadline` find the
// earliest tick without walking the slots one by one.

public struct TimerWheel<Payload> {
    struct Node {
        var deadline: UInt64
        /// The tick whose slot holds the node: max(deadline / tick, the
        /// wheel's tick when it was scheduled).
        var tick: UInt64
        /// 0 when the node is free.
        var serial: UInt64
        var prev: Int32
        var next: Int32
    }

    public let tickMilliseconds: UInt64
    public let slotCount: Int

    var nodes: [Node] = []
    var payloads: [Payload?] = []
    var freeHead: Int32 = -1
    /// Head node of each slot's list, -1 if empty.
    var heads: [Int32]
    /// A lower bound on the tick of every node in each slot (exact after the
    /// slot is swept; cancellation may leave it low); UInt64.max if empty.
    var slotMinTick: [UInt64]
    /// floor(now / tick) for the latest `advance` (or init). Every pending
    /// node has tick >= currentTick.
    var currentTick: UInt64
    var nextSerial: UInt64 = 1

    /// The latest time passed to `init` or `advance`.
    public private(set) var nowMilliseconds: UInt64

    /// The number of pending timers.
    public private(set) var count: Int = 0

    public init(tickMilliseconds: UInt64 = 10, slotCount: Int = 512, nowMilliseconds: UInt64) {
        precondition(tickMilliseconds > 0, "tickMilliseconds must be positive")
        precondition(slotCount > 0, "slotCount must be positive")
        self.tickMilliseconds = tickMilliseconds
        self.slotCount = slotCount
        self.heads = [Int32](repeating: -1, count: slotCount)
        self.slotMinTick = [UInt64](repeating: .max, count: slotCount)
        self.currentTick = nowMilliseconds / tickMilliseconds
        self.nowMilliseconds = nowMilliseconds
    }

    /// Node slots allocated (live + free). Bounded by the peak number of
    /// simultaneously pending timers.
    var storageCapacityForTesting: Int { nodes.count }

    @inline(__always)
    func slot(ofTick tick: UInt64) -> Int {
        Int(tick % UInt64(slotCount))
    }

    @inline(__always)
    func isLive(_ id: TimerID) -> Bool {
        id.index >= 0 && Int(id.index) < nodes.count && nodes[Int(id.index)].serial == id.serial
    }

    // MARK: schedule / cancel / reschedule

    /// Schedules `payload` to fire at `deadlineMilliseconds`. Deadlines at or
    /// before the current time fire on the next `advance`.
    public mutating func schedule(at deadlineMilliseconds: UInt64, _ payload: Payload) -> TimerID {
        let serial = nextSerial
        nextSerial += 1
        let tick = Swift.max(deadlineMilliseconds / tickMilliseconds, currentTick)
        let node = Node(deadline: deadlineMilliseconds, tick: tick, serial: serial, prev: -1, next: -1)
        let index: Int32
        if freeHead >= 0 {
            index = freeHead
            freeHead = nodes[Int(index)].next
            nodes[Int(index)] = node
            payloads[Int(index)] = payload
        } else {
            precondition(nodes.count < Int(Int32.max), "too many timers")
            index = Int32(nodes.count)
            nodes.append(node)
            payloads.append(payload)
        }
        link(index)
        count += 1
        return TimerID(index: index, serial: serial)
    }

    /// Cancels a pending timer and returns its payload; nil if it already
    /// fired or was cancelled.
    @discardableResult
    public mutating func cancel(_ id: TimerID) -> Payload? {
        guard isLive(id) else { return nil }
        unlink(id.index)
        count -= 1
        return release(id.index)
    }

    /// Moves a pending timer to a new deadline in O(1). Returns the timer's id
    /// (always equal to `id`), or nil if it already fired or was cancelled.
    @discardableResult
    public mutating func reschedule(_ id: TimerID, at deadline: UInt64) -> TimerID? {
        guard isLive(id) else { return nil }
        let i = Int(id.index)
        let tick = Swift.max(deadline / tickMilliseconds, currentTick)
        if tick == nodes[i].tick {
            nodes[i].deadline = deadline
        } else {
            unlink(id.index)
            nodes[i].deadline = deadline
            nodes[i].tick = tick
            link(id.index)
        }
        return id
    }

    /// The deadline of a pending timer, nil if it fired or was cancelled.
    public func deadline(of id: TimerID) -> UInt64? {
        isLive(id) ? nodes[Int(id.index)].deadline : nil
    }

    // MARK: advance

    /// Removes and returns every pending timer with deadline <= now, in
    /// deadline order (ties in scheduling order). Never fires a timer early.
    /// Visits at most one full rotation of slots however far time jumps.
    /// A `now` earlier than a previous one fires only timers due by then.
    public mutating func advance(to now: UInt64) -> [(TimerID, Payload)] {
        let newTick = Swift.max(now / tickMilliseconds, currentTick)
        defer {
            currentTick = newTick
            nowMilliseconds = Swift.max(nowMilliseconds, now)
        }
        guard count > 0 else { return [] }

        // A node due by `now` has tick <= newTick (its deadline is, or it was
        // scheduled in the past at a tick <= currentTick), so slots whose
        // lower bound is beyond newTick can be skipped.
        let span = newTick - currentTick
        let visits = span >= UInt64(slotCount) ? slotCount : Int(span) + 1
        var fired: [(deadline: UInt64, serial: UInt64, id: TimerID, payload: Payload)] = []
        var s = slot(ofTick: currentTick)
        for _ in 0..<visits {
            if slotMinTick[s] <= newTick {
                var minTick = UInt64.max
                var cursor = heads[s]
                while cursor >= 0 {
                    let node = nodes[Int(cursor)]
                    if node.deadline <= now {
                        unlink(cursor)
                        count -= 1
                        let payload = release(cursor)!
                        fired.append((node.deadline, node.serial, TimerID(index: cursor, serial: node.serial), payload))
                    } else if node.tick < minTick {
                        minTick = node.tick
                    }
                    cursor = node.next
                }
                slotMinTick[s] = minTick
            }
            s += 1
            if s == slotCount { s = 0 }
        }
        if fired.count > 1 {
            fired.sort { ($0.deadline, $0.serial) < ($1.deadline, $1.serial) }
        }
        return fired.map { ($0.id, $0.payload) }
    }

    // MARK: nextDeadline

    /// The earliest pending deadline, or nil if no timer is pending.
    ///
    /// Exact when the earliest timer is within one rotation of the current
    /// tick (the normal case). Otherwise it is a lower bound at tick
    /// granularity (the start of the earliest timer's tick or an earlier
    /// tick), still more than the current time, so a caller that sleeps
    /// until it, advances and asks again converges without spinning.
    public var nextDeadline: UInt64? {
        guard count > 0 else { return nil }
        var farTick = UInt64.max
        var s = slot(ofTick: currentTick)
        var tick = currentTick
        for _ in 0..<slotCount {
            let lowerBound = slotMinTick[s]
            if lowerBound <= tick {
                // Nodes here have ticks tick, tick + slotCount, ...; the ones
                // at `tick` are the earliest of all.
                var best = UInt64.max
                var cursor = heads[s]
                while cursor >= 0 {
                    let node = nodes[Int(cursor)]
                    if node.tick <= tick {
                        if node.deadline < best { best = node.deadline }
                    } else if node.tick < farTick {
                        farTick = node.tick
                    }
                    cursor = node.next
                }
                if best != .max { return best }
            } else if lowerBound < farTick {
                farTick = lowerBound
            }
            s += 1
            if s == slotCount { s = 0 }
            tick &+= 1
        }
        let (bound, overflow) = farTick.multipliedReportingOverflow(by: tickMilliseconds)
        return overflow ? .max : bound
    }

    // MARK: lists and slab

    @inline(__always)
    mutating func link(_ index: Int32) {
        let i = Int(index)
        let tick = nodes[i].tick
        let s = slot(ofTick: tick)
        let head = heads[s]
        nodes[i].prev = -1
        nodes[i].next = head
        if head >= 0 { nodes[Int(head)].prev = index }
        heads[s] = index
        if tick < slotMinTick[s] { slotMinTick[s] = tick }
    }

    @inline(__always)
    mutating func unlink(_ index: Int32) {
        let node = nodes[Int(index)]
        let s = slot(ofTick: node.tick)
        if node.prev >= 0 {
            nodes[Int(node.prev)].next = node.next
        } else {
            heads[s] = node.next
        }
        if node.next >= 0 { nodes[Int(node.next)].prev = node.prev }
        if heads[s] < 0 { slotMinTick[s] = .max }
    }

    /// Frees an unlinked node and returns its payload.
    @inline(__always)
    mutating func release(_ index: Int32) -> Payload? {
        let i = Int(index)
        let payload = payloads[i]
        payloads[i] = nil
        nodes[i].serial = 0
        nodes[i].prev = -1
        nodes[i].next = freeHead
        freeHead = index
        return payload
    }
}

extension TimerWheel: Sendable where Payload: Sendable {}
