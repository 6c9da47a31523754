import SluicePosix

/// sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET
/// ("READY=1" once listening, "STOPPING=1" when draining). A no-op when not
/// started by systemd (Type=notify) or a compatible supervisor.
enum SystemdNotify {
    static func send(_ state: String) {
        guard let path = CurrentProcess.environment("NOTIFY_SOCKET"), !path.isEmpty else { return }
        try? UnixSocket.sendDatagram(Array(state.utf8), to: path)
    }
}
