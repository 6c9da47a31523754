#ifndef SLUICE_DATAGRAMS_H
#define SLUICE_DATAGRAMS_H

#include <stddef.h>
#include <sys/socket.h>

/* One datagram of a batch: its bytes, its far end (source when received,
 * destination when sent; unused on a connected socket) and, where the
 * socket asks for packet info, the local address it came to (and is
 * answered from: a wildcard-bound socket must reply from the address the
 * client used). */
struct sluice_datagram {
    void *data;
    size_t capacity;   /* of data, when receiving */
    size_t length;
    struct sockaddr_storage peer;
    socklen_t peer_length;
    struct sockaddr_storage local; /* family 0: none */
    int truncated;     /* MSG_TRUNC: the datagram was larger than capacity */
};

/* Asks for IP_PKTINFO / IPV6_RECVPKTINFO on a socket of `family`. */
int sluice_datagram_want_local(int fd, int family);

/* recvmmsg into up to `count` datagrams, non-blocking. Returns how many
 * (0 when none is waiting), or -1 with errno. */
int sluice_datagram_receive(int fd, struct sluice_datagram *datagrams, unsigned count);

/* sendmmsg of `count` datagrams: to each one's peer, and from its local
 * address when it has one, when `addressed`; as they are on a connected
 * socket otherwise. Returns how many were sent, or -1
 * with errno (for the first). */
int sluice_datagram_send(int fd, struct sluice_datagram *datagrams, unsigned count, int addressed);

#endif
