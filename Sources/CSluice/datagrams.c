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
        if (addressed) {
            m->msg_name = &d[i].peer;
            m->msg_namelen = d[i].peer_length;
        }
        /* Unaddressed (a connected socket): the source is the socket's own. */
        if (!addressed) {
        } else if (d[i].local.ss_family == AF_INET) {
            m->msg_control = control[i];
            m->msg_controllen = CMSG_SPACE(sizeof(struct in_pktinfo));
            struct cmsghdr *c = CMSG_FIRSTHDR(m);
            c->cmsg_level = IPPROTO_IP;
            c->cmsg_type = IP_PKTINFO;
            c->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
            struct in_pktinfo info;
            memset(&info, 0, sizeof(info));
            info.ipi_spec_dst = ((struct sockaddr_in *)&d[i].local)->sin_addr;
            memcpy(CMSG_DATA(c), &info, sizeof(info));
        } else if (d[i].local.ss_family == AF_INET6) {
            m->msg_control = control[i];
            m->msg_controllen = CMSG_SPACE(sizeof(struct in6_pktinfo));
            struct cmsghdr *c = CMSG_FIRSTHDR(m);
            c->cmsg_level = IPPROTO_IPV6;
            c->cmsg_type = IPV6_PKTINFO;
            c->cmsg_len = CMSG_LEN(sizeof(struct in6_pktinfo));
            struct in6_pktinfo info;
            memset(&info, 0, sizeof(info));
            info.ipi6_addr = ((struct sockaddr_in6 *)&d[i].local)->sin6_addr;
            info.ipi6_ifindex = ((struct sockaddr_in6 *)&d[i].local)->sin6_scope_id;
            memcpy(CMSG_DATA(c), &info, sizeof(info));
        }
    }
    return sendmmsg(fd, msgs, count, MSG_DONTWAIT);
}
