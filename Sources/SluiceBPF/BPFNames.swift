import CSluice

/// Every BPF program and map Sluice names, spelled as in bpf/*.bpf.c (and so
/// as bpftool and the pin directory show them): the one place the daemon,
/// `sluice status` and the tests take them from. Programs are verbs, maps
/// are nouns, at most 15 characters (the kernel's object name limit).
public enum BPFProgram: String, Sendable, CaseIterable {
    /// SK_REUSEPORT: picks the least-loaded live worker (bpf/sluice.bpf.c).
    case selectWorker = "select_worker"
    /// SK_REUSEPORT for UDP: a flow's datagrams to its worker, a new flow to the one with the fewest.
    case selectFlow = "select_flow"
    /// SK_SKB stream verdict: redirects a paired socket's bytes to its peer (bpf/sockmap.bpf.c).
    case redirectPeer = "redirect_peer"
}

public enum BPFMap: String, Sendable, CaseIterable {
    /// `struct sluice_worker` per worker, mmap-able.
    case workerLoad = "worker_load"
    /// `struct sluice_listener` per listener, mmap-able.
    case listenerLoad = "listener_load"
    /// REUSEPORT_SOCKARRAY: slot k = worker k's listening socket (one per listener).
    case workerSocks = "worker_socks"
    /// SYN owner per flow, so a syncookie ACK follows its SYN.
    case synOwners = "syn_owners"
    /// Per-CPU steering outcomes (`enum sluice_steer_stat`).
    case steerStats = "steer_stats"
    /// One u64: SLUICE_ABI_VERSION of the daemon that created the maps.
    case abi = "abi"
    /// LRU hash: a UDP client's address → the worker that holds its flow.
    case udpFlows = "udp_flows"
    /// SOCKHASH of paired sockets, keyed by socket cookie.
    case sockmapSocks = "sockmap_socks"
    /// cookie → `struct sluice_sockmap_peer`.
    case sockmapPeers = "sockmap_peers"
}

/// The programs and maps of the steering object (bpf/sluice.bpf.c); checked
/// after open so a mismatched build fails loudly instead of at attach time.
public enum SluiceBPFLayout {
    public static let programs: [BPFProgram] = [.selectWorker, .selectFlow]
    public static let maps: [BPFMap] = [.workerLoad, .listenerLoad, .workerSocks, .synOwners, .steerStats, .abi, .udpFlows]
    public static let abiVersion = UInt64(SLUICE_ABI_VERSION)
}

/// The programs and maps of the sockmap object (bpf/sockmap.bpf.c).
public enum SockmapBPFLayout {
    public static let programs: [BPFProgram] = [.redirectPeer]
    public static let maps: [BPFMap] = [.sockmapSocks, .sockmapPeers, .workerLoad]
}

/// Where an instance's maps are pinned: `/sys/fs/bpf/sluice/<instance>/`.
/// The ABI version is not in the path (a pin directory is found by instance
/// name alone); it is in the `abi` map, checked by `PinnedInstance.open`.
public enum PinLayout {
    public static let root = "/sys/fs/bpf/sluice"
    /// The steering maps pinned for `sluice status` and bpftool.
    public static let pinnedMaps: [BPFMap] = [.workerLoad, .listenerLoad, .steerStats, .abi]
    /// The sockmap maps pinned beside them, for bpftool.
    public static let pinnedSockmapMaps: [BPFMap] = [.sockmapSocks, .sockmapPeers]

    public static func directory(instance: String, root: String = root) -> String { "\(root)/\(instance)" }
}
