@testable import SluiceServer
import Testing

@Suite("PoolTable: per-pool state found by identity")
struct PoolTableTests {
    final class Pool {}

    @Test("entries are made once, changed in place, found by slot, and removed by identity")
    func entries() {
        let a = Pool(), b = Pool(), c = Pool()
        var table = PoolTable<[Int]>()
        #expect(table.isEmpty && table[ObjectIdentifier(a)] == nil)
        table[ObjectIdentifier(a), default: []].append(1)
        table[ObjectIdentifier(a), default: [99]].append(2) // exists: `default` is not used
        table[ObjectIdentifier(b)] = [7]
        #expect(table[ObjectIdentifier(a)] == [1, 2] && table[ObjectIdentifier(b)] == [7])
        let slot = table.slot(of: ObjectIdentifier(b))!
        table[slot: slot].append(8)
        #expect(table[ObjectIdentifier(b)] == [7, 8] && table.slot(of: ObjectIdentifier(c)) == nil)
        table[ObjectIdentifier(c)] = [3]
        let removed = table.remove { $0 != ObjectIdentifier(b) }
        #expect(removed.sorted { $0[0] < $1[0] } == [[1, 2], [3]] && table.keys == [ObjectIdentifier(b)])
        table[ObjectIdentifier(b)] = nil
        #expect(table.isEmpty && table.slots.isEmpty)
    }
}
