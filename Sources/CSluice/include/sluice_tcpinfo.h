#ifndef SLUICE_TCPINFO_H
#define SLUICE_TCPINFO_H
#include <stdint.h>

#define SLUICE_TCP_ESTABLISHED 1

/* Bytes that have entered fd's send path (tcpi_bytes_acked + SIOCOUTQ) and
 * its TCP state. 0 or -1 (errno set). */
int sluice_tcp_progress(int fd, uint64_t *bytes_written, uint8_t *state);
/* Segments fd has received, and how many of them carried data (tcpi_segs_in,
 * tcpi_data_segs_in). 0 or -1 (errno set). */
int sluice_tcp_segments_in(int fd, uint32_t *segments, uint32_t *with_data);
/* Bytes in fd's receive queue not read yet (SIOCINQ), or -1 (errno set). */
int sluice_unread_bytes(int fd);
/* SO_COOKIE: the kernel's stable id of a socket. 0 or -1 (errno set). */
int sluice_socket_cookie(int fd, uint64_t *cookie);
#endif
