import CSluice
import Glibc

extension Socket {
    /// Whether a socket has bytes waiting to be read (in its receive queue
    /// or, for a SOCKHASH member, passed to it by the verdict program),
    /// without taking them.
    public static func hasBytesWaiting(_ fd: Int32) -> Bool {
        var byte: UInt8 = 0
        return Glibc.recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) > 0
    }
}
