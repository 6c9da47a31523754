/* The one definition of everything shared between the BPF programs and the
 * daemon. Included by the bpf/ sources and, through the CSluice module, by Swift.
 * Every field is __u64: the mmap stride of an array map is 8 bytes. */
#ifndef SLUICE_ABI_H
#define SLUICE_ABI_H

#include <linux/types.h>

/* Bumped whenever a pinned map's name or layout changes; stored in the `abi`
 * map and checked when a pin directory is opened, so pins from another
 * version are refused (libbpf's pinned-map reuse check compares sizes only).
 * 3: splice_socks/splice_peers/splice_verdict renamed sockmap_socks/
 * sockmap_peers/redirect_peer. 4: sluice_worker.flows, the flow steering
 * stats and udp_flows. 5: sluice_worker padded to two cache lines. */
#define SLUICE_ABI_VERSION 5

#define SLUICE_MAX_WORKERS 64
#define SLUICE_MAX_LISTENERS 64

/* Bits of sluice_worker.flags. */
#define SLUICE_WORKER_DRAINING (1ULL << 0)

/* One entry per worker in the mmap-able `worker_load` array, 128 bytes, so
 * that no two workers' entries share a cache line: a worker writes its own
 * on every loop turn (heartbeat_ns, busy_ns) and select_worker writes
 * `pending` and `charged` on every SYN, from the CPU that took it. */
struct sluice_worker {
    __u64 active;       /* open connections + pending charges: what steering compares */
    __u64 accepted;     /* sockets the worker accepted, total (with those max_connections closed at once) */
    __u64 heartbeat_ns; /* CLOCK_MONOTONIC at the worker's last loop turn */
    __u64 busy_ns;      /* time spent handling events, total */
    __u64 flags;        /* SLUICE_WORKER_* */
    __u64 bytes_in;
    __u64 bytes_out;
    /* Charges taken by select_worker (on a SYN, or on the ACK that completes
     * a syncookie handshake) that no accept has settled yet. Part of
     * `active`, so a burst spreads before any worker has run; the daemon
     * expires charges older than its settle window (a SYN that never
     * completes), so `active` returns to the open count. */
    __u64 pending;
    __u64 charged;      /* charges taken, total */
    __u64 underflows;   /* decrements of `active` that would have gone below zero */
    __u64 flows;        /* open UDP flows (the worker's count) */
    /* New flows select_flow placed here that the worker has not opened
     * yet: one off per flow it opens (never below zero), and back to zero
     * now and then when its sockets are found empty (a placed datagram the
     * kernel dropped is never opened). Compared with `flows` added, so that
     * a burst spreads before any worker has run. */
    __u64 flows_unseen;
    __u64 spare[4];     /* padding to 128 bytes; free for new fields */
};

/* One entry per listener in the mmap-able `listener_load` array, written by
 * the workers (not read by any program: it is pinned so that `sluice status`
 * can show listeners without the daemon). */
struct sluice_listener {
    __u64 active;    /* open connections */
    __u64 accepted;  /* accepted, total */
    __u64 rejected;  /* accepted and closed at once: max_connections reached */
    __u64 no_backend;/* closed because no backend could be reached */
};

/* Steering outcomes, one slot each in the per-CPU `steer_stats` array. */
enum sluice_steer_stat {
    SLUICE_STEER_SELECTED = 0,   /* placed on the least-loaded live worker */
    SLUICE_STEER_FALLBACK = 1,   /* bpf_sk_select_reuseport failed: kernel hash */
    SLUICE_STEER_ALL_STALLED = 2,/* no live worker: kernel hash */
    SLUICE_STEER_STALL_SKIP = 3, /* a stalled or draining worker was passed over */
    SLUICE_STEER_PASSED = 4,     /* neither a SYN nor a pure ACK: kernel hash, uncharged */
    SLUICE_STEER_ACK = 5,        /* a pure ACK reached the listener: a syncookie completion or a stray */
    SLUICE_STEER_ACK_FOLLOWED = 6,/* ... placed on the worker its SYN was charged to (no new charge) */
    SLUICE_STEER_FLOW_PLACED = 7, /* a new UDP flow placed on the live worker with the fewest flows */
    SLUICE_STEER_FLOW_FOLLOWED = 8,/* a datagram of a known flow sent to its worker */
    SLUICE_STEER_NSTATS = 9,
};

/* Key of `udp_flows`: a client's source address as it arrived (an IPv4
 * address in addr[0], the rest zero), port in network order. */
struct sluice_flow_key {
    __u32 addr[4];
    __u16 port;
    __u16 family; /* 4 or 6 */
};

/* Value of the `sockmap_peers` map, keyed by a paired socket's cookie. */
struct sluice_sockmap_peer {
    __u64 peer;     /* cookie of the socket this one's bytes are redirected to */
    __u64 bytes;    /* bytes redirected from this socket, total */
    __u64 worker;   /* index in worker_load of the worker that owns the pair */
    __u64 side;     /* SLUICE_SIDE_*: which of bytes_in / bytes_out to add to */
};

#define SLUICE_SIDE_CLIENT 0 /* bytes from the client: bytes_in */
#define SLUICE_SIDE_BACKEND 1 /* bytes from the backend: bytes_out */

#endif
