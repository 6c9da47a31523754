#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include <errno.h>
#include <sys/ioctl.h>
#include <sys/vfs.h>
#include "sluice_shims.h"

int sluice_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    return accept4(fd, addr, len, flags);
}

ssize_t sluice_splice(int fd_in, int fd_out, size_t len, unsigned int flags) {
    return splice(fd_in, NULL, fd_out, NULL, len, flags);
}

int sluice_pipe2(int fds[2], int flags) { return pipe2(fds, flags); }

int sluice_pipe_set_size(int fd, int size) { return fcntl(fd, F_SETPIPE_SZ, size); }

int sluice_set_thread_name(const char *name) {
    char short_name[16];
    strncpy(short_name, name, sizeof(short_name) - 1);
    short_name[sizeof(short_name) - 1] = 0;
    return pthread_setname_np(pthread_self(), short_name);
}

int sluice_fcntl_setfl(int fd, int flags) { return fcntl(fd, F_SETFL, flags); }

static void fill_set(sigset_t *set, const int *signals, int count) {
    sigemptyset(set);
    for (int i = 0; i < count; i++) sigaddset(set, signals[i]);
}

int sluice_block_signals(const int *signals, int count, sigset_t *out) {
    sigset_t set;
    fill_set(&set, signals, count);
    if (out) *out = set;
    return pthread_sigmask(SIG_BLOCK, &set, NULL);
}

int sluice_signalfd(const int *signals, int count) {
    sigset_t set;
    fill_set(&set, signals, count);
    return signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
}

void sluice_ignore_sigpipe(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}

int sluice_is_bpffs(const char *path) {
    struct statfs fs;
    if (statfs(path, &fs) != 0) return -1;
    return fs.f_type == 0xCAFE4A11 /* BPF_FS_MAGIC */;
}

int sluice_dup_cloexec(int fd) { return fcntl(fd, F_DUPFD_CLOEXEC, 0); }

static const int daemon_signals[] = { SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2 };

const int *sluice_daemon_signals(int *count) {
    *count = (int)(sizeof daemon_signals / sizeof daemon_signals[0]);
    return daemon_signals;
}

int sluice_thread_create(pthread_t *thread, void *(*body)(void *), void *argument) {
    sigset_t stop, previous;
    sigemptyset(&stop);
    for (size_t i = 0; i < sizeof daemon_signals / sizeof daemon_signals[0]; i++)
        sigaddset(&stop, daemon_signals[i]);
    pthread_sigmask(SIG_BLOCK, &stop, &previous);
    int rc = pthread_create(thread, NULL, body, argument);
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    return rc;
}
