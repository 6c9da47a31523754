/// One worker's state per pool (its balancer, its idle backend connections),
/// found by a linear scan of the pools' identities. A worker serves a handful
/// of pools, and a dictionary hashes its key (SipHash) on every lookup: five
/// lookups per HTTP request cost about 2,000 instructions (callgrind).
struct PoolTable<Value> {
    private(set) var keys: [ObjectIdentifier] = []
    private var values: [Value] = []

    var isEmpty: Bool { keys.isEmpty }

    func slot(of key: ObjectIdentifier) -> Int? { keys.firstIndex(of: key) }

    subscript(key: ObjectIdentifier) -> Value? {
        get { slot(of: key).map { values[$0] } }
        set {
            if let i = slot(of: key) {
                if let newValue { values[i] = newValue } else {
                    keys.remove(at: i)
                    values.remove(at: i)
                }
            } else if let newValue {
                keys.append(key)
                values.append(newValue)
            }
        }
    }

    /// In place: the entry for `key`, made the first time it is asked for.
    subscript(key: ObjectIdentifier, default make: @autoclosure () -> Value) -> Value {
        get { slot(of: key).map { values[$0] } ?? make() }
        _modify {
            var i = slot(of: key)
            if i == nil {
                keys.append(key)
                values.append(make())
                i = keys.count - 1
            }
            yield &values[i!]
        }
    }

    /// In place, by the slot `slot(of:)` found.
    subscript(slot slot: Int) -> Value {
        get { values[slot] }
        _modify { yield &values[slot] }
    }

    var slots: Range<Int> { keys.indices }

    /// Takes out the entries whose key `gone` names; returns their values.
    mutating func remove(where gone: (ObjectIdentifier) -> Bool) -> [Value] {
        var removed: [Value] = []
        for i in keys.indices.reversed() where gone(keys[i]) {
            keys.remove(at: i)
            removed.append(values.remove(at: i))
        }
        return removed
    }
}
