/* Kept apart from shims.c: <linux/tcp.h> (which has tcpi_bytes_acked) and
 * glibc's <netinet/tcp.h> cannot be included together. */
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <stdint.h>
#include "sluice_tcpinfo.h"

int sluice_tcp_progress(int fd, uint64_t *bytes_written, uint8_t *state)
{
    struct tcp_info info;
    socklen_t len = sizeof(info);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0)
        return -1;
    int queued = 0;
    if (ioctl(fd, SIOCOUTQ, &queued) != 0)
        return -1;
    /* Acknowledged by the peer, plus still in the send queue: every byte
     * that has entered this socket for sending. */
    *bytes_written = info.tcpi_bytes_acked + (uint64_t)queued;
    *state = info.tcpi_state;
    return 0;
}

int sluice_tcp_segments_in(int fd, uint32_t *segments, uint32_t *with_data)
{
    struct tcp_info info;
    socklen_t len = sizeof(info);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0)
        return -1;
    *segments = info.tcpi_segs_in;
    *with_data = info.tcpi_data_segs_in;
    return 0;
}

int sluice_unread_bytes(int fd)
{
    int unread = 0;
    return ioctl(fd, SIOCINQ, &unread) == 0 ? unread : -1;
}

int sluice_socket_cookie(int fd, uint64_t *cookie)
{
    socklen_t len = sizeof(*cookie);
    return getsockopt(fd, SOL_SOCKET, SO_COOKIE, cookie, &len);
}
