// SPDX-License-Identifier: GPL-2.0
/* Sluice's in-kernel data path: once a client and its backend are paired,
 * every skb that arrives on one is redirected to the other's send queue
 * without waking userspace. Attached as a stream verdict (no parser) to the
 * `sockmap_socks` SOCKHASH. Layout lives in sluice_abi.h. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "sluice_abi.h"

char LICENSE[] SEC("license") = "GPL";

/* Paired sockets, keyed by socket cookie. Sized at load. */
struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, 65536);
    __type(key, __u64);
    __type(value, __u64);
} sockmap_socks SEC(".maps");

/* cookie -> where its bytes go, and how many went. Not preallocated: memory
 * follows the paired connections, not the configured maximum. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(max_entries, 65536);
    __type(key, __u64);
    __type(value, struct sluice_sockmap_peer);
} sockmap_peers SEC(".maps");

#include "worker_load.bpf.h"

SEC("sk_skb/stream_verdict")
int redirect_peer(struct __sk_buff *skb)
{
    /* A FIN arrives as an empty skb. It must never reach a psock backlog:
     * an empty skb there returns 0 from the send step, which the backlog
     * takes for a hard error; it then stops sending and drops every byte
     * still queued for this socket's peer direction (seen: a client that
     * half-closes while its response is still queued loses the rest of
     * it). Redirecting it does that on the peer; passing it does it here
     * whenever redirected bytes are still queued. Dropping it is safe: the
     * FIN has already set RCV_SHUTDOWN, so userspace still reads EOF. */
    if (skb->len == 0)
        return SK_DROP;

    __u64 cookie = bpf_get_socket_cookie(skb);
    struct sluice_sockmap_peer *pair = bpf_map_lookup_elem(&sockmap_peers, &cookie);
    if (!pair)
        return SK_PASS; /* not paired (yet): userspace reads it */

    __sync_fetch_and_add(&pair->bytes, skb->len);
    __u32 worker = (__u32)pair->worker;
    struct sluice_worker *w = bpf_map_lookup_elem(&worker_load, &worker);
    if (w) {
        if (pair->side == SLUICE_SIDE_CLIENT)
            __sync_fetch_and_add(&w->bytes_in, skb->len);
        else
            __sync_fetch_and_add(&w->bytes_out, skb->len);
    }
    return bpf_sk_redirect_hash(skb, &sockmap_socks, &pair->peer, 0);
}
