#ifndef SLUICE_CARES_SHIM_H
#define SLUICE_CARES_SHIM_H
/* Debian's c-ares (libc-ares-dev): the asynchronous resolver behind
 * backends written as hostnames. */
#include <ares.h>
#include <string.h>
#include <sys/socket.h>

/* ARES_GETSOCK_READABLE/WRITABLE are function-like macros, which Swift does
 * not import. */
static inline int sluice_ares_sock_readable(int bits, int index)
{
    return ARES_GETSOCK_READABLE(bits, index) != 0;
}

static inline int sluice_ares_sock_writable(int bits, int index)
{
    return ARES_GETSOCK_WRITABLE(bits, index) != 0;
}

/* Copies a node's address into `storage`; returns its length, or 0 when it
 * is neither IPv4 nor IPv6 or does not fit. */
static inline socklen_t sluice_ares_node_address(const struct ares_addrinfo_node *node, struct sockaddr_storage *storage)
{
    if (!node->ai_addr || (node->ai_family != AF_INET && node->ai_family != AF_INET6))
        return 0;
    if (node->ai_addrlen == 0 || node->ai_addrlen > sizeof(*storage))
        return 0;
    memset(storage, 0, sizeof(*storage));
    memcpy(storage, node->ai_addr, node->ai_addrlen);
    return (socklen_t)node->ai_addrlen;
}
#endif
