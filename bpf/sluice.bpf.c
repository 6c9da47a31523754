// SPDX-License-Identifier: GPL-2.0
/* Sluice's kernel side: least-loaded worker steering for SO_REUSEPORT groups.
 * One copy of this object is loaded per listener (each has its own
 * worker_socks array); worker_load and steer_stats are shared between copies
 * by reusing the first copy's map fds. Layout lives in sluice_abi.h. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "sluice_abi.h"

char LICENSE[] SEC("license") = "GPL";

/* Set between open and load. */
const volatile __u32 nr_workers = 1;
const volatile __u64 stall_threshold_ns = 200000000ULL;

#include "worker_load.bpf.h"

struct {
    __uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
    __uint(max_entries, SLUICE_MAX_WORKERS);
    __type(key, __u32);
    __type(value, __u64);
} worker_socks SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, SLUICE_STEER_NSTATS);
    __type(key, __u32);
    __type(value, __u64);
} steer_stats SEC(".maps");

/* Per-listener counters for `sluice status` (no program touches them). */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(map_flags, BPF_F_MMAPABLE);
    __uint(max_entries, SLUICE_MAX_LISTENERS);
    __type(key, __u32);
    __type(value, struct sluice_listener);
} listener_load SEC(".maps");

/* Holds SLUICE_ABI_VERSION at index 0: checked before reusing a pin. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} abi SEC(".maps");

/* The worker each recent SYN was charged to, by the connection's hash: a
 * syncookie handshake completes on the ACK, which then goes to the same
 * worker and settles the SYN's charge there instead of taking a second one
 * elsewhere. Entries of handshakes that completed normally (their ACK
 * never comes here) are evicted by the LRU. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, __u32);
    __type(value, __u32);
} syn_owners SEC(".maps");

/* Client address → worker, for the flows of a `mode: udp` listener: every
 * datagram of a flow reaches the worker that holds its backend socket.
 * Entries are added here and removed by the worker when the flow expires;
 * the LRU drops the oldest if the worker never saw a flow's datagram.
 * Sized at open time (1 for stream listeners). */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 1);
    __type(key, struct sluice_flow_key);
    __type(value, __u32);
} udp_flows SEC(".maps");

/* Rotates the starting point of the scan so ties do not always go to worker 0. */
__u32 rotor = 0;

static __always_inline void count(__u32 stat)
{
    __u64 *value = bpf_map_lookup_elem(&steer_stats, &stat);
    if (value)
        *value += 1;
}

/* The worker that gets the connection owns it in the counts: a pending
 * charge here, settled by the worker's accept (which counts `accepted`) or
 * expired by the daemon. `active` goes first: a pending charge the daemon
 * can see (and expire) is always already in `active`. */
static __always_inline void charge(__u32 worker)
{
    struct sluice_worker *w = bpf_map_lookup_elem(&worker_load, &worker);
    if (w) {
        __sync_fetch_and_add(&w->active, 1);
        __sync_fetch_and_add(&w->charged, 1);
        __sync_fetch_and_add(&w->pending, 1);
    }
}

/* Neither draining nor stalled. Signed: a heartbeat written after `now`
 * was read is fresh, not 584 years old. */
static __always_inline int is_live(struct sluice_worker *w, __u64 now)
{
    return !(w->flags & SLUICE_WORKER_DRAINING) && (__s64)(now - w->heartbeat_ns) <= (__s64)stall_threshold_ns;
}

/* A SYN's placement, remembered for its cookie ACK. */
static __always_inline void remember(struct sk_reuseport_md *ctx, __u32 worker, int is_syn)
{
    if (is_syn) {
        __u32 key = ctx->hash;
        bpf_map_update_elem(&syn_owners, &key, &worker, BPF_ANY);
    }
}

/* A cookie ACK goes where its SYN was charged, if that worker is still
 * live and selectable. Returns 1 when placed. */
static __always_inline int follow_syn(struct sk_reuseport_md *ctx, __u64 now)
{
    __u32 key = ctx->hash;
    __u32 *owner = bpf_map_lookup_elem(&syn_owners, &key);
    if (!owner)
        return 0;
    __u32 k = *owner;
    bpf_map_delete_elem(&syn_owners, &key);
    if (k >= SLUICE_MAX_WORKERS)
        return 0;
    struct sluice_worker *w = bpf_map_lookup_elem(&worker_load, &k);
    if (!w || !is_live(w, now) || bpf_sk_select_reuseport(ctx, &worker_socks, &k, 0) != 0)
        return 0;
    count(SLUICE_STEER_ACK_FOLLOWED);
    return 1;
}

/* Fallback placement by the connection's hash, over the slots that hold a
 * socket, so that even a fallback is counted against the worker that gets
 * it. With no socket at all, the kernel's own hash decides (uncounted). */
static __always_inline int place_by_hash(struct sk_reuseport_md *ctx, __u32 n, int is_syn)
{
    if (n == 0)
        return SK_PASS;
    for (__u32 i = 0; i < SLUICE_MAX_WORKERS; i++) {
        if (i >= n)
            break;
        __u32 k = (ctx->hash + i) % n;
        if (bpf_sk_select_reuseport(ctx, &worker_socks, &k, 0) == 0) {
            charge(k);
            remember(ctx, k, is_syn);
            return SK_PASS;
        }
    }
    return SK_PASS;
}

static __always_inline __u32 worker_count(void)
{
    __u32 n = nr_workers;
    return n > SLUICE_MAX_WORKERS ? SLUICE_MAX_WORKERS : n;
}

/* The live worker with the least load (open connections and pending
 * charges, or, `by_flows`, UDP flows and placements not opened yet),
 * starting the scan at a rotating place so that ties spread;
 * SLUICE_MAX_WORKERS when none is live. */
static __always_inline __u32 least_loaded(__u64 now, int by_flows)
{
    __u32 n = worker_count();
    __u32 start = __sync_fetch_and_add(&rotor, 1);
    __u32 best = SLUICE_MAX_WORKERS;
    __u64 best_load = ~0ULL;
    for (__u32 i = 0; i < SLUICE_MAX_WORKERS; i++) {
        if (i >= n)
            break;
        __u32 k = (start + i) % n;
        struct sluice_worker *w = bpf_map_lookup_elem(&worker_load, &k);
        if (!w)
            continue;
        if (!is_live(w, now)) {
            count(SLUICE_STEER_STALL_SKIP);
            continue;
        }
        __u64 load = by_flows ? w->flows + w->flows_unseen : w->active;
        if (load < best_load) {
            best_load = load;
            best = k;
        }
    }
    return best;
}

/* TCP flags at offset 13 of the header; the reuseport context's data
 * starts at the transport header. */
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

SEC("sk_reuseport")
int select_worker(struct sk_reuseport_md *ctx)
{
    /* A SYN starts a connection. A pure ACK that reaches the listener
     * lookup is a syncookie handshake completing (the connection is created
     * on the socket chosen now, not on the SYN's) or a stray that the
     * kernel will answer with a reset: both are placed and charged, and the
     * stray's charge expires. A handshake with a request socket completes
     * in the established table and never comes here, so neither does a
     * retransmitted SYN that matches one. */
    __u8 flags = 0;
    if (ctx->ip_protocol != 6 /* TCP */ || bpf_skb_load_bytes(ctx, 13, &flags, 1) < 0) {
        count(SLUICE_STEER_PASSED);
        return SK_PASS;
    }
    int is_syn = (flags & (TCP_SYN | TCP_ACK | TCP_RST)) == TCP_SYN;
    int is_ack = (flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN)) == TCP_ACK;
    if (!is_syn && !is_ack) {
        count(SLUICE_STEER_PASSED);
        return SK_PASS;
    }
    __u64 now = bpf_ktime_get_ns();
    if (is_ack) {
        count(SLUICE_STEER_ACK);
        if (follow_syn(ctx, now))
            return SK_PASS;
    }

    __u32 best = least_loaded(now, 0);
    if (best == SLUICE_MAX_WORKERS) {
        /* Nobody is live: spread by the connection's hash, as the kernel would. */
        count(SLUICE_STEER_ALL_STALLED);
        return place_by_hash(ctx, worker_count(), is_syn);
    }
    if (bpf_sk_select_reuseport(ctx, &worker_socks, &best, 0) < 0) {
        /* The chosen worker's socket is gone (closed listener, empty slot). */
        count(SLUICE_STEER_FALLBACK);
        return place_by_hash(ctx, worker_count(), is_syn);
    }
    charge(best);
    remember(ctx, best, is_syn);
    count(SLUICE_STEER_SELECTED);
    return SK_PASS;
}

/* The client's address and port of a datagram: the network header through
 * load_bytes_relative, the UDP header at the context's data. */
static __always_inline int flow_key(struct sk_reuseport_md *ctx, struct sluice_flow_key *key)
{
    if (ctx->eth_protocol == bpf_htons(0x0800 /* ETH_P_IP */)) {
        key->family = 4;
        if (bpf_skb_load_bytes_relative(ctx, 12, &key->addr[0], 4, BPF_HDR_START_NET) < 0)
            return -1;
    } else if (ctx->eth_protocol == bpf_htons(0x86DD /* ETH_P_IPV6 */)) {
        key->family = 6;
        if (bpf_skb_load_bytes_relative(ctx, 8, &key->addr[0], 16, BPF_HDR_START_NET) < 0)
            return -1;
    } else {
        return -1;
    }
    return bpf_skb_load_bytes(ctx, 0, &key->port, 2);
}

SEC("sk_reuseport")
int select_flow(struct sk_reuseport_md *ctx)
{
    struct sluice_flow_key key = {};
    if (ctx->ip_protocol != 17 /* UDP */ || flow_key(ctx, &key) < 0) {
        count(SLUICE_STEER_PASSED);
        return SK_PASS;
    }
    /* A known flow stays on its worker, stalled or not: that worker holds
     * its backend socket. Only a worker that is gone (its socket out of the
     * array) loses it. */
    __u32 *owner = bpf_map_lookup_elem(&udp_flows, &key);
    if (owner) {
        __u32 k = *owner;
        if (k < SLUICE_MAX_WORKERS && bpf_sk_select_reuseport(ctx, &worker_socks, &k, 0) == 0) {
            count(SLUICE_STEER_FLOW_FOLLOWED);
            return SK_PASS;
        }
    }
    __u32 best = least_loaded(bpf_ktime_get_ns(), 1);
    /* Nobody live, or the chosen socket gone: the kernel's hash decides,
     * and the flow is not remembered (its next datagram is placed anew). */
    if (best == SLUICE_MAX_WORKERS) {
        count(SLUICE_STEER_ALL_STALLED);
        return SK_PASS;
    }
    if (bpf_sk_select_reuseport(ctx, &worker_socks, &best, 0) < 0) {
        count(SLUICE_STEER_FALLBACK);
        return SK_PASS;
    }
    bpf_map_update_elem(&udp_flows, &key, &best, BPF_ANY);
    struct sluice_worker *chosen = bpf_map_lookup_elem(&worker_load, &best);
    if (chosen)
        __sync_fetch_and_add(&chosen->flows_unseen, 1);
    count(SLUICE_STEER_FLOW_PLACED);
    return SK_PASS;
}
