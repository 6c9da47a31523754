@testable import SluiceServer
import Testing

@Suite("SlotTable: a worker's connections by id")
struct SlotTableTests {
    final class Entry: Slotted {
        var id: UInt64 = 0
    }

    @Test("each entry gets an id that finds it, and only it, until it is removed")
    func idsFindTheirEntry() {
        var table = SlotTable<Entry>()
        let entries = (0..<100).map { _ in Entry() }
        for entry in entries { table.insert(entry) }
        #expect(table.count == 100 && !table.isEmpty)
        #expect(!entries.contains { $0.id == 0 }, "0 means no connection to DescriptorOwners")
        #expect(Set(entries.map(\.id)).count == 100, "ids are unique")
        for entry in entries { #expect(table[entry.id] === entry) }
        #expect(table.removeValue(forKey: entries[7].id) === entries[7])
        #expect(table[entries[7].id] == nil && table.removeValue(forKey: entries[7].id) == nil)
        #expect(table.count == 99 && table.values.count == 99 && !table.values.contains { $0 === entries[7] })
    }

    @Test("a freed slot is reused under a new id: an old id (a timer's, a batch's) finds nothing")
    func staleIdsFindNothing() {
        var table = SlotTable<Entry>()
        let first = Entry()
        table.insert(first)
        let stale = first.id
        table.removeValue(forKey: stale)
        let second = Entry()
        table.insert(second)
        #expect(second.id & ((1 << SlotTable<Entry>.slotBits) - 1) == stale & ((1 << SlotTable<Entry>.slotBits) - 1), "same slot")
        #expect(second.id != stale && table[stale] == nil && table[second.id] === second)
        // Ids past the slots in use, or made up, find nothing either.
        #expect(table[12_345] == nil && table[UInt64.max >> 9] == nil)
        table.removeValue(forKey: second.id)
        #expect(table.isEmpty && table.values.isEmpty)
    }

    @Test("ids fit an epoll token: 55 bits, however often a slot is reused")
    func idsFitTokens() {
        var table = SlotTable<Entry>()
        var highest: UInt64 = 0
        for _ in 0..<5_000 {
            let entry = Entry()
            table.insert(entry)
            highest = max(highest, entry.id)
            table.removeValue(forKey: entry.id)
        }
        #expect(highest < 1 << 55 && highest >> SlotTable<Entry>.slotBits == 5_000)
    }
}
