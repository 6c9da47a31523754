// SPDX-License-Identifier: GPL-2.0
/* Sluice's kernel side: least-loaded worker steering for SO_REUSEPORT groups.
 * One copy of this object is loaded per listener (each has its own
 * worker_socks array); worker_load and steer_stats are shared between copies
 * by reusing the first copy's map fds. Layout lives in sluice_abi.h. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
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

/* Rotates the starting point of the scan so ties do not always go to worker 0. */
__u32 rotor = 0;

static __always_inline void count(__u32 stat)
{
    __u64 *value = bpf_map_lookup_elem(&steer_stats, &stat);
    if (value)
        *value += 1;
}

/* The worker that gets the connection owns it in the counts: +1 here, -1
 * by the worker when the connection closes. */
static __always_inline void charge(__u32 worker)
{
    struct sluice_worker *w = bpf_map_lookup_elem(&worker_load, &worker);
    if (w) {
        __sync_fetch_and_add(&w->active, 1);
        __sync_fetch_and_add(&w->accepted, 1);
    }
}

/* Fallback placement by the connection's hash, over the slots that hold a
 * socket, so that even a fallback is counted against the worker that gets
 * it. With no socket at all, the kernel's own hash decides (uncounted). */
static __always_inline int place_by_hash(struct sk_reuseport_md *ctx, __u32 n)
{
    if (n == 0)
        return SK_PASS;
    for (__u32 i = 0; i < SLUICE_MAX_WORKERS; i++) {
        if (i >= n)
            break;
        __u32 k = (ctx->hash + i) % n;
        if (bpf_sk_select_reuseport(ctx, &worker_socks, &k, 0) == 0) {
            charge(k);
            return SK_PASS;
        }
    }
    return SK_PASS;
}

SEC("sk_reuseport")
int select_worker(struct sk_reuseport_md *ctx)
{
    /* Only a SYN starts a connection; stray and cookie ACKs must not move counters. */
    __u8 flags = 0;
    /* Offset 13 of the TCP header holds the flags; the reuseport context's
     * data starts at the transport header. */
    if (ctx->ip_protocol != 6 /* TCP */ || bpf_skb_load_bytes(ctx, 13, &flags, 1) < 0 || (flags & 0x12) != 0x02) {
        count(SLUICE_STEER_NOT_SYN);
        return SK_PASS;
    }

    __u64 now = bpf_ktime_get_ns();
    __u32 n = nr_workers;
    if (n > SLUICE_MAX_WORKERS)
        n = SLUICE_MAX_WORKERS;
    __u32 start = __sync_fetch_and_add(&rotor, 1);
    __u32 best = SLUICE_MAX_WORKERS;
    __u64 best_active = ~0ULL;

    for (__u32 i = 0; i < SLUICE_MAX_WORKERS; i++) {
        if (i >= n)
            break;
        __u32 k = (start + i) % n;
        struct sluice_worker *w = bpf_map_lookup_elem(&worker_load, &k);
        if (!w)
            continue;
        /* Signed: a heartbeat written after `now` was read is fresh, not 584 years old. */
        if ((w->flags & SLUICE_WORKER_DRAINING) || (__s64)(now - w->heartbeat_ns) > (__s64)stall_threshold_ns) {
            count(SLUICE_STEER_STALL_SKIP);
            continue;
        }
        if (w->active < best_active) {
            best_active = w->active;
            best = k;
        }
    }

    if (best == SLUICE_MAX_WORKERS) {
        /* Nobody is live: spread by the connection's hash, as the kernel would. */
        count(SLUICE_STEER_ALL_STALLED);
        return place_by_hash(ctx, n);
    }
    if (bpf_sk_select_reuseport(ctx, &worker_socks, &best, 0) < 0) {
        /* The chosen worker's socket is gone (closed listener, empty slot). */
        count(SLUICE_STEER_FALLBACK);
        return place_by_hash(ctx, n);
    }
    charge(best);
    count(SLUICE_STEER_SELECTED);
    return SK_PASS;
}
