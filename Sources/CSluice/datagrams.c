#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include "sluice_datagrams.h"

/* Room for one in6_pktinfo control message (the larger of the two). */
#define CONTROL_SPACE CMSG_SPACE(sizeof(struct in6_pktinfo))
#define BATCH 64

int sluice_datagram_want_local(int fd, int family)
{
    int on = 1;
    if (family == AF_INET6)
        return setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &on, sizeof(on));
    return setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &on, sizeof(on));
}

static void read_local(struct msghdr *msg, struct sockaddr_storage *local)
{
    memset(local, 0, sizeof(*local));
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
            struct in_pktinfo info;
            memcpy(&info, CMSG_DATA(c), sizeof(info));
            struct sockaddr_in *sin = (struct sockaddr_in *)local;
            sin->sin_family = AF_INET;
            sin->sin_addr = info.ipi_addr;
        } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
            struct in6_pktinfo info;
            memcpy(&info, CMSG_DATA(c), sizeof(info));
            struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)local;
            sin6->sin6_family = AF_INET6;
            sin6->sin6_addr = info.ipi6_addr;
            sin6->sin6_scope_id = info.ipi6_ifindex;
        }
    }
}

int sluice_datagram_receive(int fd, struct sluice_datagram *d, unsigned count)
{
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    char control[BATCH][CONTROL_SPACE];
    if (count > BATCH)
        count = BATCH;
    memset(msgs, 0, sizeof(struct mmsghdr) * count);
    for (unsigned i = 0; i < count; i++) {
        iov[i].iov_base = d[i].data;
        iov[i].iov_len = d[i].capacity;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &d[i].peer;
        msgs[i].msg_hdr.msg_namelen = sizeof(d[i].peer);
        msgs[i].msg_hdr.msg_control = control[i];
        msgs[i].msg_hdr.msg_controllen = CONTROL_SPACE;
    }
    int n = recvmmsg(fd, msgs, count, MSG_DONTWAIT, NULL);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
    for (int i = 0; i < n; i++) {
        d[i].length = msgs[i].msg_len;
        d[i].peer_length = msgs[i].msg_hdr.msg_namelen;
        d[i].truncated = (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) != 0;
        read_local(&msgs[i].msg_hdr, &d[i].local);
    }
    return n;
}

/* Sends from `local` (the address the client used), when it has one. */
static void set_source(struct msghdr *m, char *control, const struct sockaddr_storage *local)
{
    int v6 = local->ss_family == AF_INET6;
    if (local->ss_family != AF_INET && !v6)
        return;
    size_t size = v6 ? sizeof(struct in6_pktinfo) : sizeof(struct in_pktinfo);
    m->msg_control = control;
    m->msg_controllen = CMSG_SPACE(size);
    struct cmsghdr *c = CMSG_FIRSTHDR(m);
    c->cmsg_level = v6 ? IPPROTO_IPV6 : IPPROTO_IP;
    c->cmsg_type = v6 ? IPV6_PKTINFO : IP_PKTINFO;
    c->cmsg_len = CMSG_LEN(size);
    if (v6) {
        struct in6_pktinfo info = { .ipi6_addr = ((const struct sockaddr_in6 *)local)->sin6_addr,
                                    .ipi6_ifindex = ((const struct sockaddr_in6 *)local)->sin6_scope_id };
        memcpy(CMSG_DATA(c), &info, sizeof(info));
    } else {
        struct in_pktinfo info = { .ipi_spec_dst = ((const struct sockaddr_in *)local)->sin_addr };
        memcpy(CMSG_DATA(c), &info, sizeof(info));
    }
}

int sluice_datagram_send(int fd, struct sluice_datagram *d, unsigned count, int addressed)
{
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    char control[BATCH][CONTROL_SPACE];
    if (count > BATCH)
        count = BATCH;
    memset(msgs, 0, sizeof(struct mmsghdr) * count);
    memset(control, 0, sizeof(control[0]) * count);
    for (unsigned i = 0; i < count; i++) {
        iov[i].iov_base = d[i].data;
        iov[i].iov_len = d[i].length;
        struct msghdr *m = &msgs[i].msg_hdr;
        m->msg_iov = &iov[i];
        m->msg_iovlen = 1;
        /* Unaddressed (a connected socket): the peer and source are the socket's own. */
        if (addressed) {
            m->msg_name = &d[i].peer;
            m->msg_namelen = d[i].peer_length;
            set_source(m, control[i], &d[i].local);
        }
    }
    return sendmmsg(fd, msgs, count, MSG_DONTWAIT);
}
