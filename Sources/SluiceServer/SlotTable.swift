/// Something a `SlotTable` holds: the table gives it its id.
protocol Slotted: AnyObject {
    var id: UInt64 { get set }
}

/// A worker's connections by id, where an id is a slot in an array and that
/// slot's generation: finding the connection of an epoll token is an index
/// and a comparison, not a hash (a dictionary's hashing was a tenth of a
/// relayed message's userspace instructions). A slot freed by a close gets
/// the next generation, so that an id a timer or a batch of events still
/// holds finds nothing rather than the slot's next connection. Generations
/// start at 1, so that no id is 0 (which `DescriptorOwners` reads as none).
struct SlotTable<Value: Slotted> {
    /// Ids fit the 55 bits an epoll token leaves them (see `Worker.token`):
    /// 24 for the slot, 31 for its generation.
    static var slotBits: UInt64 { 24 }
    private static var slotMask: UInt64 { (1 << slotBits) - 1 }
    private static var generationMask: UInt64 { (1 << 31) - 1 }

    private var slots: [Value?] = []
    private var generations: [UInt64] = []
    private var freeSlots: [Int] = []
    private(set) var count = 0

    var isEmpty: Bool { count == 0 }

    /// Stores `value` in a free slot and gives it that slot's id.
    mutating func insert(_ value: Value) {
        let slot: Int
        if let free = freeSlots.popLast() {
            slot = free
        } else {
            slot = slots.count
            precondition(UInt64(slot) <= Self.slotMask, "more connections than a worker's slots")
            slots.append(nil)
            generations.append(1)
        }
        slots[slot] = value
        value.id = generations[slot] << Self.slotBits | UInt64(slot)
        count += 1
    }

    subscript(id: UInt64) -> Value? {
        let slot = Int(truncatingIfNeeded: id & Self.slotMask)
        guard slot < slots.count, generations[slot] == id >> Self.slotBits else { return nil }
        return slots[slot]
    }

    /// Frees the slot of `id`; nil when no value holds that id (any more).
    @discardableResult
    mutating func removeValue(forKey id: UInt64) -> Value? {
        guard let value = self[id] else { return nil }
        let slot = Int(truncatingIfNeeded: id & Self.slotMask)
        slots[slot] = nil
        generations[slot] = max(1, (generations[slot] + 1) & Self.generationMask)
        freeSlots.append(slot)
        count -= 1
        return value
    }

    /// Every value held, as an array: the caller may remove while it walks it.
    var values: [Value] { slots.compactMap { $0 } }
}
