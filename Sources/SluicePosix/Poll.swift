import Glibc

/// poll(2) on a few descriptors that belong to a library with its own
/// sockets (c-ares hands out a fresh set before every wait, so an epoll
/// registration would have to be redone each time). Returns how many have
/// events; EINTR is retried with the same timeout.
public func pollDescriptors(_ fds: inout [pollfd], timeoutMilliseconds: Int32) throws(SystemCallError) -> Int {
    let count = nfds_t(fds.count)
    let ready = try fds.withUnsafeMutableBufferPointer { buffer throws(SystemCallError) in
        try systemCall("poll") { poll(buffer.baseAddress, count, timeoutMilliseconds) }
    }
    return Int(ready)
}
