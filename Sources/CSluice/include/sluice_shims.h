#ifndef SLUICE_SHIMS_H
#define SLUICE_SHIMS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/ioctl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <fcntl.h>
#include <unistd.h>
#include <errno.h>
#include <pthread.h>
#include "sluice_abi.h"
#include "sluice_tcpinfo.h"
#include "sluice_privileges.h"
#include "sluice_datagrams.h"
#include "sluice_handover.h"

/* Calls that need _GNU_SOURCE or are variadic, declared here so Swift sees them. */
int sluice_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);
ssize_t sluice_splice(int fd_in, int fd_out, size_t len, unsigned int flags);
int sluice_pipe2(int fds[2], int flags);
int sluice_pipe_set_size(int fd, int size);
int sluice_set_thread_name(const char *name);
int sluice_fcntl_setfl(int fd, int flags);
int sluice_dup_cloexec(int fd);
/* 1 if path is on a bpffs, 0 if not, -1 (errno set) if it cannot be examined. */
int sluice_is_bpffs(const char *path);

/* Signal-set helpers: sigset macros do not import. */
int sluice_block_signals(const int *signals, int count, sigset_t *out);
int sluice_signalfd(const int *signals, int count);
void sluice_ignore_sigpipe(void);
/* The signals the daemon takes through its signalfd (INT, TERM, QUIT, HUP,
 * USR1, USR2): one list for the signalfd and for every thread's mask. */
const int *sluice_daemon_signals(int *count);
/* pthread_create with the daemon's signals blocked in the new thread: they
 * are for the control thread's signalfd, and a thread that did not block
 * them would take the signal's default action (often: die) instead. */
int sluice_thread_create(pthread_t *thread, void *(*body)(void *), void *argument);

/* Constants that import badly (enum-typed or macro expressions). */
static const uint32_t SLUICE_EPOLLIN = EPOLLIN;
static const uint32_t SLUICE_EPOLLOUT = EPOLLOUT;
static const uint32_t SLUICE_EPOLLERR = EPOLLERR;
static const uint32_t SLUICE_EPOLLHUP = EPOLLHUP;
static const uint32_t SLUICE_EPOLLRDHUP = EPOLLRDHUP;
static const uint32_t SLUICE_EPOLLONESHOT = EPOLLONESHOT;
static const uint32_t SLUICE_EPOLLET = EPOLLET;
static const uint32_t SLUICE_EPOLLEXCLUSIVE = EPOLLEXCLUSIVE;
static const unsigned int SLUICE_SPLICE_F_MOVE = 1;
static const unsigned int SLUICE_SPLICE_F_NONBLOCK = 2;
static const int SLUICE_SOCK_NONBLOCK = SOCK_NONBLOCK;
static const int SLUICE_SOCK_CLOEXEC = SOCK_CLOEXEC;
static const int SLUICE_SOCK_STREAM = SOCK_STREAM;
static const int SLUICE_SOCK_DGRAM = SOCK_DGRAM;

#endif
