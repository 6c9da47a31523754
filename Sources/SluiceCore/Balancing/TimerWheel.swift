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

/// Identifies one scheduled timer. Stale ids (of fired or cancelled timers)
/// are recognized and ignored; they never match a later timer.
public struct TimerID: Hashable, Sendable {
    @usableFromInline let index: Int32
    @usableFromInline let serial: UInt64

    @inlinable
    init(index: Int32, serial: UInt64) {
        self.index = index
        self.serial = serial
    }
}

/// One slab entry of a `TimerWheel`: a pending timer, or a free node on the
/// free list (serial 0, chained through `next`).
@usableFromInline
struct TimerWheelNode: Sendable {
    @usableFromInline var deadline: UInt64
    /// max(deadline / tickMilliseconds, the wheel's tick when scheduled).
    /// Always >= currentTick for a pending node.
    @usableFromInline var tick: UInt64
    /// 0 when the node is free.
    @usableFromInline var serial: UInt64
    @usableFromInline var prev: Int32
    @usableFromInline var next: Int32

    @inlinable
    init(deadline: UInt64, tick: UInt64, serial: UInt64, prev: Int32, next: Int32) {
        self.deadline = deadline
        self.tick = tick
        self.serial = serial
        self.prev = prev
        self.next = next
    }
}

public struct TimerWheel<Payload> {
    @usableFromInline typealias Node = TimerWheelNode

    public let tickMilliseconds: UInt64
    public let slotCount: Int

    @usableFromInline var nodes: [Node] = []
    @usableFromInline var payloads: [Payload?] = []
    @usableFromInline var freeHead: Int32 = -1
    /// Per slot: head of the list of nodes whose tick is in the window
    /// [currentTick, currentTick + slotCount), -1 if none.
    @usableFromInline var nearHeads: [Int32]
    /// Per slot: head of the list of nodes at least one rotation out.
    @usableFromInline var farHeads: [Int32]
    /// Per slot: a lower bound on the ticks in the far list (exact after a
    /// sweep; removals may leave it low); UInt64.max when the list is empty
    /// (check `farHeads` for emptiness: a timer may really be at tick .max).
    @usableFromInline var farMinTick: [UInt64]
    /// The number of nodes in far lists, and a lower bound on all their
    /// ticks (UInt64.max when there are none): `nextDeadline` runs on every
    /// turn of an event loop, and a scan of `farMinTick` would cost it
    /// `slotCount` reads whenever only far timers are pending, as when
    /// every connection waits on a timeout longer than a rotation.
    @usableFromInline var farCount = 0
    @usableFromInline var farMinAll = UInt64.max
    /// Bit s set iff slot s's near list is non-empty.
    @usableFromInline var nearBits: [UInt64]
    /// floor(now / tick) for the latest `advance` (or init); never decreases.
    @usableFromInline var currentTick: UInt64
    @usableFromInline var nextSerial: UInt64 = 1

    @usableFromInline var latestNow: UInt64
    @usableFromInline var liveCount: Int = 0

    /// The latest time passed to `init` or `advance`.
    @inlinable public var nowMilliseconds: UInt64 { latestNow }

    /// The number of pending timers.
    @inlinable public var count: Int { liveCount }

    @inlinable
    public init(tickMilliseconds: UInt64 = 10, slotCount: Int = 512, nowMilliseconds: UInt64) {
        precondition(tickMilliseconds > 0, "tickMilliseconds must be positive")
        precondition(slotCount > 0, "slotCount must be positive")
        self.tickMilliseconds = tickMilliseconds
        self.slotCount = slotCount
        self.nearHeads = [Int32](repeating: -1, count: slotCount)
        self.farHeads = [Int32](repeating: -1, count: slotCount)
        self.farMinTick = [UInt64](repeating: .max, count: slotCount)
        self.nearBits = [UInt64](repeating: 0, count: (slotCount + 63) / 64)
        self.currentTick = nowMilliseconds / tickMilliseconds
        self.latestNow = nowMilliseconds
    }

    @inlinable
    @inline(__always)
    func slot(ofTick tick: UInt64) -> Int {
        Int(tick % UInt64(slotCount))
    }

    /// Whether a tick (>= `base`) falls in the window starting at `base`.
    @inlinable
    @inline(__always)
    func isNear(_ tick: UInt64, base: UInt64) -> Bool {
        tick &- base < UInt64(slotCount)
    }

    @inlinable
    @inline(__always)
    func isLive(_ id: TimerID) -> Bool {
        id.index >= 0 && Int(id.index) < nodes.count && nodes[Int(id.index)].serial == id.serial
    }

    // MARK: schedule / cancel / reschedule

    /// Schedules `payload` to fire at `deadlineMilliseconds`. Deadlines at or
    /// before the current time fire on the next `advance`.
    @inlinable
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
        link(index, near: isNear(tick, base: currentTick))
        liveCount += 1
        return TimerID(index: index, serial: serial)
    }

    /// Cancels a pending timer and returns its payload; nil if it already
    /// fired or was cancelled.
    @inlinable
    @discardableResult
    public mutating func cancel(_ id: TimerID) -> Payload? {
        guard isLive(id) else { return nil }
        unlink(id.index, near: isNear(nodes[Int(id.index)].tick, base: currentTick))
        liveCount -= 1
        return release(id.index)
    }

    /// Moves a pending timer to a new deadline in O(1). Returns the timer's id
    /// (always equal to `id`), or nil if it already fired or was cancelled.
    @inlinable
    @discardableResult
    public mutating func reschedule(_ id: TimerID, at deadline: UInt64) -> TimerID? {
        guard isLive(id) else { return nil }
        let i = Int(id.index)
        let tick = Swift.max(deadline / tickMilliseconds, currentTick)
        let oldTick = nodes[i].tick
        nodes[i].deadline = deadline
        if tick != oldTick {
            unlink(id.index, near: isNear(oldTick, base: currentTick))
            nodes[i].tick = tick
            link(id.index, near: isNear(tick, base: currentTick))
        }
        return id
    }

    /// The deadline of a pending timer, nil if it fired or was cancelled.
    @inlinable
    public func deadline(of id: TimerID) -> UInt64? {
        isLive(id) ? nodes[Int(id.index)].deadline : nil
    }

    // MARK: advance

    /// Removes and returns every pending timer with deadline <= now, in
    /// deadline order (ties in scheduling order). Never fires a timer early.
    /// However far time jumps, visits each slot at most once.
    /// A `now` earlier than a previous one fires only timers due by then.
    @inlinable
    public mutating func advance(to now: UInt64) -> [(TimerID, Payload)] {
        let oldTick = currentTick
        let newTick = Swift.max(now / tickMilliseconds, oldTick)
        currentTick = newTick
        latestNow = Swift.max(latestNow, now)
        guard liveCount > 0 else { return [] }

        var fired: [(deadline: UInt64, serial: UInt64, id: TimerID, payload: Payload)] = []
        let span = newTick - oldTick
        if span >= UInt64(slotCount) {
            // A rotation or more: every slot is due for a sweep, once.
            for s in 0..<slotCount {
                sweepNear(s, now: now, into: &fired)
                sweepFar(s, now: now, into: &fired)
            }
        } else {
            // Ticks oldTick..<newTick have passed: their near timers are all
            // due, and the window gains ticks oldTick + slotCount..., which
            // live in the same slots' far lists. Tick newTick is partial.
            var s = slot(ofTick: oldTick)
            for _ in 0..<Int(span) {
                sweepNear(s, now: now, into: &fired)
                sweepFar(s, now: now, into: &fired)
                s += 1
                if s == slotCount { s = 0 }
            }
            sweepNear(s, now: now, into: &fired)
        }
        if fired.count > 1 {
            fired.sort { ($0.deadline, $0.serial) < ($1.deadline, $1.serial) }
        }
        return fired.map { ($0.id, $0.payload) }
    }

    /// Fires the due nodes of a slot's near list. (Undue ones are at
    /// currentTick, which is still in the window.)
    @inlinable
    mutating func sweepNear(
        _ s: Int, now: UInt64,
        into fired: inout [(deadline: UInt64, serial: UInt64, id: TimerID, payload: Payload)]
    ) {
        var cursor = nearHeads[s]
        while cursor >= 0 {
            let node = nodes[Int(cursor)]
            if node.deadline <= now {
                unlink(cursor, near: true)
                liveCount -= 1
                let payload = release(cursor)!
                fired.append((node.deadline, node.serial, TimerID(index: cursor, serial: node.serial), payload))
            }
            cursor = node.next
        }
    }

    /// Fires the due nodes of a slot's far list and moves those now inside
    /// the window to the near list.
    @inlinable
    mutating func sweepFar(
        _ s: Int, now: UInt64,
        into fired: inout [(deadline: UInt64, serial: UInt64, id: TimerID, payload: Payload)]
    ) {
        guard farHeads[s] >= 0 else { return }
        // Skip if nothing can be due (a due node has tick <= currentTick) or
        // entering the window.
        let lowerBound = farMinTick[s]
        if lowerBound > currentTick && !isNear(lowerBound, base: currentTick) { return }
        var minTick = UInt64.max
        var cursor = farHeads[s]
        while cursor >= 0 {
            let node = nodes[Int(cursor)]
            if node.deadline <= now {
                unlink(cursor, near: false)
                liveCount -= 1
                let payload = release(cursor)!
                fired.append((node.deadline, node.serial, TimerID(index: cursor, serial: node.serial), payload))
            } else if isNear(node.tick, base: currentTick) {
                unlink(cursor, near: false)
                link(cursor, near: true)
            } else if node.tick < minTick {
                minTick = node.tick
            }
            cursor = node.next
        }
        farMinTick[s] = minTick
    }

    // MARK: nextDeadline

    /// The earliest pending deadline, or nil if no timer is pending.
    ///
    /// Exact when the earliest timer is within one rotation
    /// (slotCount × tickMilliseconds) of the current tick. Otherwise a lower
    /// bound at tick granularity that is still later than the current time,
    /// so a caller that sleeps until it, advances and asks again converges
    /// without spinning. Costs a bitmap scan plus one tick's timers.
    @inlinable
    public var nextDeadline: UInt64? {
        guard liveCount > 0 else { return nil }
        if let s = firstNearSlot(from: slot(ofTick: currentTick)) {
            var best = UInt64.max
            var cursor = nearHeads[s]
            while cursor >= 0 {
                let node = nodes[Int(cursor)]
                if node.deadline < best { best = node.deadline }
                cursor = node.next
            }
            return best
        }
        // Only far timers: they are all at or after the end of the window.
        let (windowEnd, overflow) = currentTick.addingReportingOverflow(UInt64(slotCount))
        var tick = overflow ? UInt64.max : windowEnd
        if farMinAll != .max && farMinAll > tick { tick = farMinAll }
        let (bound, overflow2) = tick.multipliedReportingOverflow(by: tickMilliseconds)
        return overflow2 ? .max : bound
    }

    /// The first slot with a non-empty near list, scanning cyclically from
    /// `start` (i.e. in tick order).
    @inlinable
    func firstNearSlot(from start: Int) -> Int? {
        let words = nearBits.count
        var w = start >> 6
        var bits = nearBits[w] & (~0 << UInt64(start & 63))
        for _ in 0...words {
            if bits != 0 {
                let s = w << 6 + bits.trailingZeroBitCount
                if s < slotCount { return s }
            }
            w += 1
            if w == words { w = 0 }
            bits = nearBits[w]
        }
        return nil
    }

    // MARK: lists and slab

    @inlinable
    @inline(__always)
    mutating func link(_ index: Int32, near: Bool) {
        let i = Int(index)
        let tick = nodes[i].tick
        let s = slot(ofTick: tick)
        let head = near ? nearHeads[s] : farHeads[s]
        nodes[i].prev = -1
        nodes[i].next = head
        if head >= 0 { nodes[Int(head)].prev = index }
        if near {
            nearHeads[s] = index
            nearBits[s >> 6] |= 1 << UInt64(s & 63)
        } else {
            farHeads[s] = index
            if tick < farMinTick[s] { farMinTick[s] = tick }
            farCount += 1
            if tick < farMinAll { farMinAll = tick }
        }
    }

    @inlinable
    @inline(__always)
    mutating func unlink(_ index: Int32, near: Bool) {
        let node = nodes[Int(index)]
        let s = slot(ofTick: node.tick)
        if !near {
            farCount -= 1
            if farCount == 0 { farMinAll = .max }
        }
        if node.next >= 0 { nodes[Int(node.next)].prev = node.prev }
        if node.prev >= 0 {
            nodes[Int(node.prev)].next = node.next
        } else if near {
            nearHeads[s] = node.next
            if node.next < 0 { nearBits[s >> 6] &= ~(1 << UInt64(s & 63)) }
        } else {
            farHeads[s] = node.next
            if node.next < 0 { farMinTick[s] = .max }
        }
    }

    /// Frees an unlinked node and returns its payload.
    @inlinable
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
