/// One client connection of a `mode: redis` listener, as a state machine:
/// commands in, sub-commands to backends out, replies back in the order the
/// commands came. Many commands may be in flight (pipelining); a command
/// whose keys live on several servers (MGET, MSET, DEL...) is split, and its
/// replies merged. No sockets: the worker carries the actions out, and
/// tells the session what each backend answered, by tag.
public struct RedisSession: Sendable {
    public enum Event: Sendable, Equatable {
        /// One whole reply from a backend to the sub-command sent with `tag`.
        case reply(tag: UInt64, [UInt8])
        /// The sub-command sent with `tag` will get no reply (its backend failed).
        case failed(tag: UInt64, reason: String)
        case endOfFile
    }

    public enum Action: Sendable, Equatable {
        /// Send `command` to backend `backend`; its reply comes back as `reply(tag:)`.
        case forward(backend: Int, tag: UInt64, command: [UInt8])
        case reply([UInt8])
        /// Read more from the client (nothing else is in flight to wait for, or there is room).
        case read
        case close(CloseReason)
    }

    public struct Limits: Sendable {
        public var resp = RESPLimits()
        /// Commands in flight per client before the proxy stops reading it.
        public var maxInFlight = 4096
        /// `AUTH` must name this first, when set.
        public var password: [UInt8]?

        public init() {}
    }

    /// A command waiting for its parts' replies.
    struct Pending: Sendable {
        /// `last`: a transaction's MULTI ... EXEC, answered by EXEC's reply alone.
        enum Merge: Sendable { case asIs, values(positions: [[Int]]), sum, allOK, last }
        var parts: [[UInt8]?]
        var merge: Merge
        var ready: [UInt8]? // a reply the proxy made itself
        var quit = false
    }

    public let limits: Limits
    /// Which backend holds each key (the worker replaces it when backends
    /// change health); empty: no backend at all.
    public var shards: RedisShards
    private var buffer: [UInt8] = []
    /// Commands in flight from `head` on (those before it are answered and
    /// dropped in batches: no shifting of the whole queue per reply).
    private var queue: [Pending] = []
    private var head = 0
    /// The tag of `queue[0]`'s first part; tags count up from there.
    private var firstTag: UInt64 = 1
    private var nextTag: UInt64 = 1
    /// Tag → (queue position offset by `firstTag`..., part index): tags are
    /// handed out in order, so a tag's pending command is found by range.
    private var tagStarts: [UInt64] = []
    /// Between MULTI and EXEC: the commands queued, the one server they all
    /// go to, and whether one was refused (then EXEC answers EXECABORT).
    private struct Transaction: Sendable {
        var commands: [[UInt8]] = []
        var server: Int?
        var aborted = false
    }
    private var transaction: Transaction?
    private var authenticated: Bool
    /// 3 after `HELLO 3`: the worker then sends this client's commands over
    /// backend connections that said HELLO 3 too, so replies come in RESP3.
    public private(set) var protocolVersion = 2
    private var closing = false
    private var eof = false
    public private(set) var commands: UInt64 = 0
    public private(set) var errors: UInt64 = 0
    /// Commands by family, as `RedisFamily.allCases` orders them.
    public private(set) var byFamily = [UInt64](repeating: 0, count: RedisFamily.allCases.count)

    public init(limits: Limits, shards: RedisShards) {
        self.limits = limits
        self.shards = shards
        self.authenticated = limits.password == nil
    }

    public var inFlight: Int { queue.count - head }

    public mutating func start(into actions: inout [Action]) { actions.append(.read) }

    /// Between commands: nothing received and unanswered, no transaction
    /// open. Only then is a client handed to another process (a binary
    /// upgrade), with what its session must remember.
    public var handover: (authenticated: Bool, protocolVersion: Int)? {
        guard head >= queue.count, buffer.isEmpty, transaction == nil, !closing, !eof else { return nil }
        return (authenticated, protocolVersion)
    }

    /// A client handed over by another process, between commands.
    public mutating func resume(authenticated: Bool, protocolVersion: Int) {
        self.authenticated = authenticated
        self.protocolVersion = protocolVersion == 3 ? 3 : 2
    }

    /// Bytes from the client.
    public mutating func receive(_ bytes: UnsafeRawBufferPointer, into actions: inout [Action]) {
        guard !closing else { return }
        buffer.append(contentsOf: bytes)
        takeCommands(&actions)
    }

    public mutating func handle(_ event: Event, into actions: inout [Action]) {
        guard !closing else { return }
        switch event {
        case .reply(let tag, let bytes):
            settle(tag, bytes, &actions)
            takeCommands(&actions) // room again for what the client sent meanwhile
        case .failed(let tag, let reason):
            settle(tag, RESP.error("ERR backend unavailable: \(reason)"), &actions)
            takeCommands(&actions)
        case .endOfFile:
            eof = true
            if inFlight == 0 { close(.clientClosed, &actions) }
        }
    }

    // MARK: - Commands

    private mutating func takeCommands(_ actions: inout [Action]) {
        var offset = 0
        defer { if offset > 0 { buffer.removeFirst(offset) } }
        while inFlight < limits.maxInFlight && !closing {
            let parsed = buffer.withUnsafeBytes { raw in RESP.command(UnsafeRawBufferPointer(rebasing: raw[offset...]), limits: limits.resp) }
            switch parsed {
            case .incomplete:
                actions.append(.read)
                flush(&actions)
                return
            case .invalid(let reason):
                // The stream cannot be followed past this: answer what came before, then say why and close.
                answer(RESP.error("ERR Protocol error: \(reason)"), quit: true)
                flush(&actions)
                return
            case .complete(let command) where command.arguments.isEmpty:
                offset += command.length // an empty inline line
            case .complete(let command):
                // Slices of the buffer, not copies (gone before the buffer is trimmed).
                let args = command.arguments.map { buffer[(offset + $0.lowerBound)..<(offset + $0.upperBound)] }
                let raw = command.inline ? nil : offset..<offset + command.length
                offset += command.length
                commands += 1
                route(args, raw: raw, &actions)
            }
        }
        flush(&actions)
    }

    private mutating func answer(_ bytes: [UInt8], quit: Bool = false) {
        if RESP.isError(bytes) { errors += 1 }
        queue.append(Pending(parts: [], merge: .asIs, ready: bytes, quit: quit))
        tagStarts.append(nextTag)
    }

    /// A command's bytes as it came, from where they are in the buffer (nil:
    /// it came inline): copied out only when it goes to a server whole (a
    /// split one never does).
    private func bytes(_ raw: Range<Int>?, _ args: [ArraySlice<UInt8>]) -> [UInt8] {
        raw.map { Array(buffer[$0]) } ?? RESP.array(args)
    }

    private mutating func route(_ args: [ArraySlice<UInt8>], raw: Range<Int>?, _ actions: inout [Action]) {
        let name = RedisCommands.upper(args[0]) // once per command: the table's key and the messages'
        let kind = RedisCommands.kind(upper: name, as: args[0])
        byFamily[RedisFamily(kind).rawValue] += 1
        if transaction != nil || name == "MULTI" || name == "EXEC" || name == "DISCARD" {
            return transact(name, kind, args, raw: raw, &actions)
        }
        if case .local = kind { return local(name, args) }
        if case .refused(let reason) = kind { return answer(RESP.error("ERR \(reason)")) }
        guard authenticated else { return answer(RESP.error("NOAUTH Authentication required.")) }
        guard !shards.isEmpty else { return answer(RESP.error("ERR no backend available")) }
        let numkeys = kind == .script && args.count > 2 ? Int(String(decoding: args[2], as: UTF8.self)) : nil
        guard let keys = RedisCommands.keyIndices(kind, argumentCount: args.count, numkeys: numkeys) else {
            return answer(RESP.error("ERR wrong number of arguments for '\(name.lowercased())' command"))
        }
        let servers = keys.map { shards.server(of: args[$0]) }
        switch kind {
        case .multiKey(let merge):
            let (order, groups) = Self.grouped(keys, servers)
            if order.count == 1 { return forward([(order[0], bytes(raw, args))], merge: .asIs, &actions) }
            let parts = zip(order, groups).map { s, group in (s, RESP.array([args[0]] + group.map { args[$0] })) }
            let positions = groups.map { group in group.map { $0 - 1 } }
            forward(parts, merge: merge == .values ? .values(positions: positions) : .sum, &actions)
        case .keyValuePairs:
            let (order, groups) = Self.grouped(keys, servers)
            if order.count == 1 { return forward([(order[0], bytes(raw, args))], merge: .asIs, &actions) }
            forward(zip(order, groups).map { s, group in (s, RESP.array([args[0]] + group.flatMap { [args[$0], args[$0 + 1]] })) },
                    merge: .allOK, &actions)
        default:
            guard let first = servers.first, servers.allSatisfy({ $0 == first }) else {
                return answer(RESP.error("CROSSSLOT Keys in request don't hash to the same server"))
            }
            forward([(first, bytes(raw, args))], merge: .asIs, &actions)
        }
    }

    /// Keys by server: the servers in first-seen order, and each one's keys
    /// (a few servers: a linear search beats hashing).
    private static func grouped(_ keys: [Int], _ servers: [Int]) -> (order: [Int], groups: [[Int]]) {
        var order: [Int] = [], groups: [[Int]] = []
        for (k, server) in zip(keys, servers) {
            if let g = order.firstIndex(of: server) { groups[g].append(k) } else {
                order.append(server)
                groups.append([k])
            }
        }
        return (order, groups)
    }

    /// MULTI starts queueing here; the queued commands must all be on one
    /// server; EXEC sends MULTI, them and EXEC to it back to back (one
    /// connection, nothing in between) and answers EXEC's reply.
    private mutating func transact(_ name: String, _ kind: RedisCommandKind, _ args: [ArraySlice<UInt8>], raw: Range<Int>?, _ actions: inout [Action]) {
        switch name {
        case "MULTI":
            guard authenticated else { return answer(RESP.error("NOAUTH Authentication required.")) }
            guard transaction == nil else { return answer(RESP.error("ERR MULTI calls can not be nested")) }
            transaction = Transaction()
            answer(RESP.simple("OK"))
        case "DISCARD":
            guard transaction != nil else { return answer(RESP.error("ERR DISCARD without MULTI")) }
            transaction = nil
            answer(RESP.simple("OK"))
        case "EXEC":
            guard let tx = transaction else { return answer(RESP.error("ERR EXEC without MULTI")) }
            transaction = nil
            if tx.aborted { return answer(RESP.error("EXECABORT Transaction discarded because of previous errors.")) }
            if tx.commands.isEmpty { return answer(Array("*0\r\n".utf8)) }
            let batch = [RESP.array([Array("MULTI".utf8)])] + tx.commands + [RESP.array([Array("EXEC".utf8)])]
            forward(batch.map { (tx.server ?? 0, $0) }, merge: .last, &actions)
        default:
            var tx = transaction!
            defer { transaction = tx }
            func refuse(_ error: String) { tx.aborted = true; answer(RESP.error(error)) }
            switch kind {
            case .refused(let reason): return refuse("ERR \(reason)")
            case .local: return refuse("ERR \(name.lowercased()) inside MULTI is not supported through the proxy")
            default: break
            }
            guard !shards.isEmpty else { return refuse("ERR no backend available") }
            let numkeys = kind == .script && args.count > 2 ? Int(String(decoding: args[2], as: UTF8.self)) : nil
            guard let keys = RedisCommands.keyIndices(kind, argumentCount: args.count, numkeys: numkeys) else {
                return refuse("ERR wrong number of arguments for '\(name.lowercased())' command")
            }
            for server in keys.map({ shards.server(of: args[$0]) }) {
                if tx.server == nil { tx.server = server }
                guard tx.server == server else { return refuse("CROSSSLOT Keys in a transaction must all be on one server") }
            }
            tx.commands.append(bytes(raw, args))
            answer(RESP.simple("QUEUED"))
        }
    }

    private mutating func forward(_ parts: [(Int, [UInt8])], merge: Pending.Merge, _ actions: inout [Action]) {
        tagStarts.append(nextTag)
        queue.append(Pending(parts: Array(repeating: nil, count: parts.count), merge: merge))
        for (backend, command) in parts {
            actions.append(.forward(backend: backend, tag: nextTag, command: command))
            nextTag += 1
        }
    }

    private mutating func local(_ name: String, _ args: [ArraySlice<UInt8>]) {
        switch name {
        case "PING": answer(args.count > 1 ? RESP.bulk(Array(args[1])) : RESP.simple("PONG"))
        case "ECHO": answer(args.count == 2 ? RESP.bulk(Array(args[1])) : RESP.error("ERR wrong number of arguments for 'echo' command"))
        case "QUIT": answer(RESP.simple("OK"), quit: true)
        case "SELECT": answer(args.count == 2 && args[1] == [48] ? RESP.simple("OK") : RESP.error("ERR only database 0 exists through the proxy"))
        case "COMMAND": answer(Array("*0\r\n".utf8))
        case "HELLO": hello(args)
        default: // AUTH [user] password
            guard let password = limits.password else { return answer(RESP.error("ERR AUTH called without any password configured")) }
            guard args.count == 2 || args.count == 3 else { return answer(RESP.error("ERR wrong number of arguments for 'auth' command")) }
            authenticated = args.last!.elementsEqual(password)
            answer(authenticated ? RESP.simple("OK") : RESP.error("WRONGPASS invalid username-password pair"))
        }
    }

    /// HELLO [2|3 [AUTH user password] [SETNAME name]]: the protocol for
    /// this client's replies from now on, and the server's description.
    private mutating func hello(_ args: [ArraySlice<UInt8>]) {
        var version = protocolVersion
        if args.count > 1 {
            guard let asked = Int(String(decoding: args[1], as: UTF8.self)) else {
                return answer(RESP.error("ERR Protocol version is not an integer or out of range"))
            }
            guard asked == 2 || asked == 3 else { return answer(RESP.error("NOPROTO unsupported protocol version")) }
            version = asked
        }
        var i = 2
        while i < args.count {
            let option = RedisCommands.upper(args[i])
            if option == "AUTH", i + 2 < args.count {
                guard let password = limits.password else { return answer(RESP.error("ERR AUTH called without any password configured")) }
                authenticated = args[i + 2].elementsEqual(password)
                guard authenticated else { return answer(RESP.error("WRONGPASS invalid username-password pair")) }
                i += 3
            } else if option == "SETNAME", i + 1 < args.count {
                i += 2
            } else {
                return answer(RESP.error("ERR Syntax error in HELLO option '\(String(decoding: args[i], as: UTF8.self))'"))
            }
        }
        guard authenticated else { return answer(RESP.error("NOAUTH HELLO must be called with the client already authenticated")) }
        protocolVersion = version
        let fields: [([UInt8], [UInt8])] = [
            (Array("server".utf8), RESP.bulk(Array("sluice".utf8))), (Array("version".utf8), RESP.bulk(Array("7.0.0".utf8))),
            (Array("proto".utf8), RESP.integer(Int64(version))), (Array("id".utf8), RESP.integer(1)),
            (Array("mode".utf8), RESP.bulk(Array("standalone".utf8))), (Array("role".utf8), RESP.bulk(Array("master".utf8))),
            (Array("modules".utf8), Array("*0\r\n".utf8)),
        ]
        var reply = Array((version == 3 ? "%\(fields.count)\r\n" : "*\(fields.count * 2)\r\n").utf8)
        for (key, value) in fields { reply += RESP.bulk(key) + value }
        answer(reply)
    }

    // MARK: - Replies

    private mutating func settle(_ tag: UInt64, _ bytes: [UInt8], _ actions: inout [Action]) {
        // The pending command holding `tag`: the last one whose first tag is not above it.
        var index = queue.count - 1
        while index > head && tagStarts[index] > tag { index -= 1 }
        guard index >= head, tag >= tagStarts[index] else { return }
        let part = Int(tag - tagStarts[index])
        guard part < queue[index].parts.count else { return }
        queue[index].parts[part] = bytes
        flush(&actions)
    }

    /// Sends every finished command at the head of the queue, in order.
    private mutating func flush(_ actions: inout [Action]) {
        defer {
            if head > 64 && head * 2 > queue.count {
                queue.removeFirst(head)
                tagStarts.removeFirst(head)
                head = 0
            }
        }
        while head < queue.count {
            let first = queue[head]
            let reply: [UInt8]
            if let ready = first.ready {
                reply = ready
            } else {
                guard first.parts.allSatisfy({ $0 != nil }) else { break }
                reply = merged(first)
                if RESP.isError(reply) { errors += 1 }
            }
            actions.append(.reply(reply))
            queue[head] = Pending(parts: [], merge: .asIs) // its bytes go now
            head += 1
            if first.quit { return close(.clientClosed, &actions) }
        }
        if eof && inFlight == 0 { close(.clientClosed, &actions) }
    }

    private func merged(_ p: Pending) -> [UInt8] {
        let parts = p.parts.map { $0! }
        if case .last = p.merge { return parts[parts.count - 1] }
        if let error = parts.first(where: RESP.isError) { return error }
        switch p.merge {
        case .asIs:
            return parts[0]
        case .allOK:
            return RESP.simple("OK")
        case .last:
            return parts[parts.count - 1]
        case .sum:
            let total = parts.reduce(Int64(0)) { sum, part in
                sum + (part.withUnsafeBytes { RESP.integer($0, 1..<part.count - 2) } ?? 0)
            }
            return RESP.integer(total)
        case .values(let positions):
            // Where each value is (part, range), then one buffer written in the keys' order.
            var places = [(part: Int, range: Range<Int>)](repeating: (0, 0..<0), count: positions.reduce(0) { $0 + $1.count })
            var size = 16
            for (p, (part, keys)) in zip(parts, positions).enumerated() {
                guard let elements = RESP.elements(part), elements.count == keys.count else {
                    return RESP.error("ERR a backend answered MGET with something else")
                }
                for (range, key) in zip(elements, keys) { places[key] = (p, range) }
                size += part.count
            }
            var out: [UInt8] = []
            out.reserveCapacity(size)
            RESP.appendHeader(UInt8(ascii: "*"), places.count, to: &out)
            for place in places { out += parts[place.part][place.range] }
            return out
        }
    }

    private mutating func close(_ reason: CloseReason, _ actions: inout [Action]) {
        guard !closing else { return }
        closing = true
        actions.append(.close(reason))
    }
}
