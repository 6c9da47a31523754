import CAres
import Glibc
import SluiceCore
import SluicePosix

/// What a lookup found: every A and AAAA record, on the port asked for.
struct DNSAnswer: Sendable, Equatable {
    /// In the order c-ares gave them (unsorted: `ARES_AI_NOSORT`).
    var addresses: [SocketAddressSpec]
    /// The smallest TTL of the records; nil when none had one (an answer
    /// from /etc/hosts carries none).
    var ttl: Duration?
}

/// Why a lookup failed: a c-ares status, named and explained.
struct DNSLookupError: Error, Sendable, Equatable, CustomStringConvertible {
    let status: Int32

    /// The resolver was closed (or the lookup cancelled) before an answer:
    /// not the name's fault.
    var isCancelled: Bool { status == ARES_EDESTRUCTION || status == ARES_ECANCELLED }

    /// "NXDOMAIN, no such name (ARES_ENOTFOUND)", "no answer from the nameservers in time (ARES_ETIMEOUT)", ...
    var description: String {
        let names: [Int32: (String, String)] = [
            ARES_ENODATA: ("ENODATA", "no A or AAAA records"),
            ARES_EFORMERR: ("EFORMERR", "the nameserver found the query malformed"),
            ARES_ESERVFAIL: ("ESERVFAIL", "SERVFAIL from the nameserver"),
            ARES_ENOTFOUND: ("ENOTFOUND", "NXDOMAIN, no such name"),
            ARES_ENOTIMP: ("ENOTIMP", "the nameserver does not implement the query"),
            ARES_EREFUSED: ("EREFUSED", "REFUSED by the nameserver"),
            ARES_EBADNAME: ("EBADNAME", "the name cannot be asked for"),
            ARES_ECONNREFUSED: ("ECONNREFUSED", "the nameserver's port is closed"),
            ARES_ETIMEOUT: ("ETIMEOUT", "no answer from the nameservers in time"),
            ARES_ENOMEM: ("ENOMEM", "out of memory"),
            ARES_EDESTRUCTION: ("EDESTRUCTION", "the resolver was closed"),
            ARES_ECANCELLED: ("ECANCELLED", "the lookup was cancelled"),
        ]
        if let (name, text) = names[status] { return "\(text) (ARES_\(name))" }
        return "\(String(cString: ares_strerror(status))) (c-ares status \(status))"
    }
}

/// c-ares' global state, set up once per process before the first channel.
private let aresLibraryStatus: Int32 = ares_library_init(ARES_LIB_INIT_ALL)

/// One c-ares channel, driven by whoever calls `process`: one thread at a
/// time (c-ares channels are not thread-safe). Completions run on that
/// thread, inside `lookup` (answers c-ares has at once, such as
/// /etc/hosts), `process` or `close` (cancelled).
final class DNSResolver {
    /// Tries of each query per nameserver; c-ares doubles the timeout of
    /// every round after the first.
    static let tries: Int32 = 2

    typealias Completion = (Result<DNSAnswer, DNSLookupError>) -> Void

    /// Lookups started and not completed; shared with their callbacks,
    /// which may run while the resolver itself is being deinitialized.
    private final class PendingCount {
        var value = 0
    }

    /// What a lookup needs back in c-ares' C callback.
    private final class PendingLookup {
        let port: UInt16
        let count: PendingCount
        let completion: Completion
        init(port: UInt16, count: PendingCount, completion: @escaping Completion) {
            self.port = port
            self.count = count
            self.completion = completion
        }
    }

    private var channel: ares_channel?
    private let pending = PendingCount()

    /// Lookups started and not yet completed.
    var pendingLookups: Int { pending.value }

    init(settings: ResolveConfig) throws(ServerError) {
        guard aresLibraryStatus == ARES_SUCCESS else {
            throw ServerError("c-ares: ares_library_init: \(DNSLookupError(status: aresLibraryStatus))")
        }
        var options = ares_options()
        // UDP first, and the query again over TCP when the answer comes back
        // truncated: no USEVC, and no IGNTC, with which a headless service of
        // many pods would lose records silently. No EDNS either: an answer
        // beyond 512 bytes takes the TCP path rather than a larger datagram.
        options.flags = 0
        options.timeout = Int32(clamping: max(1, settings.timeout.milliseconds))
        options.tries = Self.tries
        let mask = ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES
        var created: ares_channel?
        let status = ares_init_options(&created, &options, mask)
        guard status == ARES_SUCCESS, let created else {
            throw ServerError("c-ares: ares_init_options: \(DNSLookupError(status: status))")
        }
        channel = created
        if !settings.nameservers.isEmpty {
            // "127.0.0.1:5353,[::1]:53": SocketAddressSpec's text is c-ares' form.
            let list = settings.nameservers.map(\.description).joined(separator: ",")
            let status = ares_set_servers_ports_csv(created, list)
            guard status == ARES_SUCCESS else {
                close()
                throw ServerError("c-ares: nameservers \(list): \(DNSLookupError(status: status))")
            }
        }
    }

    deinit { close() }

    /// Destroys the channel and its sockets; lookups still pending complete
    /// with a cancelled error first. Idempotent.
    func close() {
        guard let channel else { return }
        self.channel = nil
        ares_destroy(channel)
    }

    /// Starts a lookup of every A and AAAA record of `host`; the answer's
    /// addresses carry `port`. A closed resolver completes at once, cancelled.
    func lookup(host: String, port: UInt16, completion: @escaping Completion) {
        guard let channel else { return completion(.failure(DNSLookupError(status: ARES_EDESTRUCTION))) }
        var hints = ares_addrinfo_hints()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        // Unsorted: 1.18 sorts by connecting a UDP socket to every address;
        // the caller sorts the set itself.
        hints.ai_flags = ARES_AI_NOSORT
        // Released in the callback, which c-ares calls exactly once, also
        // for a lookup cut short by ares_destroy.
        let box = Unmanaged.passRetained(PendingLookup(port: port, count: pending, completion: completion))
        pending.value += 1
        ares_getaddrinfo(channel, host, nil, &hints, { argument, status, _, result in
            let lookup = Unmanaged<PendingLookup>.fromOpaque(argument!).takeRetainedValue()
            let outcome = DNSResolver.outcome(status: status, result: result, port: lookup.port)
            if let result { ares_freeaddrinfo(result) }
            lookup.count.value -= 1
            lookup.completion(outcome)
        }, box.toOpaque())
    }

    /// Turns a callback's status and nodes into an answer or an error.
    private static func outcome(status: Int32, result: UnsafeMutablePointer<ares_addrinfo>?, port: UInt16)
        -> Result<DNSAnswer, DNSLookupError> {
        guard status == ARES_SUCCESS else { return .failure(DNSLookupError(status: status)) }
        var answer = DNSAnswer(addresses: [], ttl: nil)
        var node = result?.pointee.nodes
        while let current = node {
            var storage = sockaddr_storage()
            let length = sluice_ares_node_address(current, &storage)
            if length > 0 {
                let ip = SocketAddress(storage: storage, length: length).ipText
                answer.addresses.append(SocketAddressSpec(host: ip, port: port, family: current.pointee.ai_family == AF_INET6 ? .inet6 : .inet))
                if current.pointee.ai_ttl > 0 {
                    let ttl = Duration.seconds(current.pointee.ai_ttl)
                    answer.ttl = min(answer.ttl ?? ttl, ttl)
                }
            }
            node = current.pointee.ai_next
        }
        guard !answer.addresses.isEmpty else { return .failure(DNSLookupError(status: ARES_ENODATA)) }
        return .success(answer)
    }

    /// Waits up to `timeoutMilliseconds` (less when a query times out
    /// sooner) for the channel's sockets, and for `wakeup` when given, then
    /// lets c-ares read, write and expire what is due. Returns whether
    /// `wakeup` became readable.
    @discardableResult
    func process(timeoutMilliseconds: Int32, wakeup: Int32? = nil) -> Bool {
        guard let channel else { return false }
        var sockets = [ares_socket_t](repeating: ARES_SOCKET_BAD, count: Int(ARES_GETSOCK_MAXNUM))
        let bits = ares_getsock(channel, &sockets, ARES_GETSOCK_MAXNUM)
        var fds: [pollfd] = []
        for index in 0..<Int32(ARES_GETSOCK_MAXNUM) {
            let readable = sluice_ares_sock_readable(bits, index) != 0
            let writable = sluice_ares_sock_writable(bits, index) != 0
            guard readable || writable else { break }
            fds.append(pollfd(fd: sockets[Int(index)], events: Int16((readable ? POLLIN : 0) | (writable ? POLLOUT : 0)), revents: 0))
        }
        let aresCount = fds.count
        if let wakeup { fds.append(pollfd(fd: wakeup, events: Int16(POLLIN), revents: 0)) }

        var limit = timeval(tv_sec: Int(timeoutMilliseconds / 1000), tv_usec: Int(timeoutMilliseconds % 1000) * 1000)
        var next = timeval()
        let wait = ares_timeout(channel, &limit, &next).map { Int32($0.pointee.tv_sec * 1000 + ($0.pointee.tv_usec + 999) / 1000) }
            ?? timeoutMilliseconds
        let ready = (try? pollDescriptors(&fds, timeoutMilliseconds: max(0, min(wait, timeoutMilliseconds)))) ?? 0

        var handled = false
        for entry in fds.prefix(aresCount) where entry.revents != 0 {
            let errorOrHangup = entry.revents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0
            let read = entry.revents & Int16(POLLIN) != 0 || errorOrHangup ? entry.fd : ARES_SOCKET_BAD
            let write = entry.revents & Int16(POLLOUT) != 0 ? entry.fd : ARES_SOCKET_BAD
            ares_process_fd(channel, read, write)
            handled = true
            // A completion may have closed the resolver.
            if self.channel == nil { return false }
        }
        // Without socket events, this call expires the queries that are due.
        if !handled { ares_process_fd(channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD) }
        guard ready > 0, wakeup != nil, let last = fds.last else { return false }
        return last.revents & Int16(POLLIN) != 0
    }
}
