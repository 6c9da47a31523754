import Atomics
import Glibc
import Logging
import SluiceCore
import SluicePosix

/// A client accepted on a listener that takes a PROXY header, until the
/// header is in: no backend is chosen or connected before.
final class AwaitingHeader {
    let id: UInt64
    let listener: RuntimeListener
    let fd: Int32
    let peer: SocketAddress
    var timer: TimerID?
    /// In the worker's epoll (oneshot): the header was not whole at the first read.
    var registered = false

    init(id: UInt64, listener: RuntimeListener, fd: Int32, peer: SocketAddress) {
        self.id = id
        self.listener = listener
        self.fd = fd
        self.peer = peer
    }
}

// The PROXY protocol: the header read from clients (peeked, parsed, then
// exactly its bytes taken, so whatever follows stays in the socket for the
// data path), and the header written to backends.
extension Worker {
    func awaitHeader(_ listener: RuntimeListener, client fd: Int32, peer: SocketAddress) {
        let waiting = AwaitingHeader(id: nextSessionID, listener: listener, fd: fd, peer: peer)
        nextSessionID += 1
        awaitingHeaders[waiting.id] = waiting
        let deadline = monotonicMilliseconds().saturatingAdd(listener.config.proxyProtocol.timeout.milliseconds)
        waiting.timer = timers.schedule(at: deadline, .proxyHeader(id: waiting.id))
        // The listener defers accepting until the first bytes are in
        // (TCP_DEFER_ACCEPT), so the header is usually whole already: the
        // socket joins epoll only when it is not.
        headerReadable(waiting.id)
    }

    func headerReadable(_ id: UInt64) {
        guard let waiting = awaitingHeaders[id] else { return }
        let buffer = takeBuffer()
        defer { var scratch = Carrier(buffer: buffer); releaseCarrier(&scratch) }
        let n = Glibc.recv(waiting.fd, buffer.baseAddress, buffer.count, Int32(MSG_PEEK | MSG_DONTWAIT))
        if n < 0 && (errno == EAGAIN || errno == EINTR) {
            rearmHeader(waiting)
            return
        }
        guard n > 0 else {
            rejectHeader(waiting, n == 0 ? "closed before its PROXY header was complete" : errnoDescription(errno))
            return
        }
        let bytes = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
        switch ProxyHeaderParser.parse(bytes, accept: waiting.listener.config.proxyProtocol.accept) {
        case .incomplete where n == buffer.count:
            rejectHeader(waiting, "PROXY header longer than \(buffer.count) bytes")
        case .incomplete:
            rearmHeader(waiting)
        case .invalid(let reason):
            rejectHeader(waiting, reason)
        case .complete(let header):
            // Exactly the header's bytes: what follows is the client's.
            guard Glibc.recv(waiting.fd, buffer.baseAddress, header.length, Int32(MSG_DONTWAIT)) == header.length else {
                rejectHeader(waiting, "the PROXY header could not be taken whole")
                return
            }
            finishAwaiting(waiting)
            if waiting.registered { epoll.remove(waiting.fd) }
            // The kernel hands a socket's queued packets to the sockmap's verdict
            // program whole, the bytes already read included: with bytes behind
            // the header still queued, this connection stays out of the sockmap.
            let named = header.isProxied ? header.source.flatMap(SocketAddress.init(proxy:)) : nil
            start(waiting.listener, client: waiting.fd, address: named ?? waiting.peer, header: header,
                  sockmapSafe: !Socket.hasBytesWaiting(waiting.fd))
        }
    }

    func headerTimedOut(_ id: UInt64) {
        guard let waiting = awaitingHeaders[id] else { return }
        waiting.timer = nil
        rejectHeader(waiting, "no complete PROXY header within \(waiting.listener.config.proxyProtocol.timeout)")
    }

    private func rearmHeader(_ waiting: AwaitingHeader) {
        let token = Self.proxyHeaderKind | waiting.id
        do {
            if waiting.registered { try epoll.modify(waiting.fd, [.readable, .oneShot], token: token) } else {
                try epoll.add(waiting.fd, [.readable, .oneShot], token: token)
                waiting.registered = true
            }
        } catch {
            rejectHeader(waiting, "epoll: \(error)")
        }
    }

    private func finishAwaiting(_ waiting: AwaitingHeader) {
        awaitingHeaders.removeValue(forKey: waiting.id)
        if let timer = waiting.timer { _ = timers.cancel(timer) }
        waiting.timer = nil
    }

    /// Closed, counted and logged; no backend was ever asked.
    func rejectHeader(_ waiting: AwaitingHeader, _ reason: String) {
        finishAwaiting(waiting)
        closeDescriptor(waiting.fd)
        waiting.listener.counters.release(.active)
        releaseActive()
        waiting.listener.proxyHeaderRejected.wrappingIncrement(ordering: .relaxed)
        let now = monotonicMilliseconds()
        guard now &- lastHeaderRejectionLog >= 1000 else { return } // a flood does not flood the log
        lastHeaderRejectionLog = now
        logger.warning("closed a connection without a valid PROXY header", metadata: [
            "listener": "\(waiting.listener.name)", "client": "\(waiting.peer)", "reason": "\(reason)",
            "rejected_so_far": "\(waiting.listener.proxyHeaderRejected.load(ordering: .relaxed))",
        ])
    }

    /// Writes the pool's PROXY header on a just-connected backend socket;
    /// returns an errno when it could not go whole (a fresh socket's send
    /// buffer always takes a few hundred bytes, so a short write is a failure).
    func sendProxyHeader(_ version: ProxySend, to backend: Int32, client: Int32, address: SocketAddress,
                         received: ProxyHeader?) -> Int32? {
        guard version != .off else { return nil }
        let destination = received?.isProxied == true ? received?.destination : (try? Socket.localAddress(client))?.proxyAddress
        let header = ProxyHeader.encode(version, source: address.proxyAddress, destination: destination, tlvs: received?.tlvs ?? [])
        let sent = header.withUnsafeBytes { Glibc.send(backend, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
        return sent == header.count ? nil : (sent < 0 ? errno : EAGAIN)
    }
}

extension SocketAddress {
    /// An inet or inet6 address a PROXY header names; nil for a unix one.
    init?(proxy: ProxyAddress) {
        guard proxy.family != .unix, let text = proxy.text else { return nil }
        self.init(ip: text, port: proxy.port)
    }

    var proxyAddress: ProxyAddress? {
        switch family {
        case AF_INET: return ProxyAddress(family: .inet, address: ipBytes, port: port)
        case AF_INET6: return ProxyAddress(family: .inet6, address: ipBytes, port: port)
        default: return nil
        }
    }
}
