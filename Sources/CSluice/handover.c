#define _GNU_SOURCE
#include "sluice_handover.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

extern char **environ;

ssize_t sluice_send_with_fds(int sock, const void *bytes, size_t length, const int *fds, int count) {
    if (count < 0 || count > SLUICE_HANDOVER_MAX_FDS) { errno = EINVAL; return -1; }
    union {
        char buffer[CMSG_SPACE(sizeof(int) * SLUICE_HANDOVER_MAX_FDS)];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof(control));
    struct iovec iov = { .iov_base = (void *)bytes, .iov_len = length };
    struct msghdr message = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (count > 0) {
        message.msg_control = control.buffer;
        message.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)count);
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)count);
        memcpy(CMSG_DATA(header), fds, sizeof(int) * (size_t)count);
    }
    ssize_t sent;
    do { sent = sendmsg(sock, &message, MSG_NOSIGNAL); } while (sent < 0 && errno == EINTR);
    return sent;
}

ssize_t sluice_receive_with_fds(int sock, void *bytes, size_t capacity_bytes, int *fds, int capacity, int *count) {
    union {
        char buffer[CMSG_SPACE(sizeof(int) * SLUICE_HANDOVER_MAX_FDS)];
        struct cmsghdr align;
    } control;
    struct iovec iov = { .iov_base = bytes, .iov_len = capacity_bytes };
    struct msghdr message = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buffer,
                              .msg_controllen = sizeof(control.buffer) };
    *count = 0;
    ssize_t received;
    do { received = recvmsg(sock, &message, MSG_CMSG_CLOEXEC); } while (received < 0 && errno == EINTR);
    if (received < 0) return -1;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header; header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
        int n = (int)((header->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *passed = (int *)CMSG_DATA(header);
        for (int i = 0; i < n; i++) {
            if (*count < capacity) fds[(*count)++] = passed[i]; else close(passed[i]);
        }
    }
    if (message.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) {
        for (int i = 0; i < *count; i++) close(fds[i]);
        *count = -1;
        errno = EMSGSIZE;
        return -1;
    }
    return received;
}

pid_t sluice_spawn_stdio(const char *path, char *const argv[], char *const envp[], const int stdio[3]) {
    posix_spawnattr_t attributes;
    if (posix_spawnattr_init(&attributes) != 0) return -1;
    sigset_t empty, all;
    sigemptyset(&empty);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attributes, &empty);
    posix_spawnattr_setsigdefault(&attributes, &all);
    posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    for (int target = 0; target < 3; target++) {
        if (stdio[target] >= 0) {
            posix_spawn_file_actions_adddup2(&actions, stdio[target], target);
        } else if (stdio[target] == SLUICE_SPAWN_NULL) {
            posix_spawn_file_actions_addopen(&actions, target, "/dev/null", target == 0 ? O_RDONLY : O_WRONLY, 0);
        }
    }
    /* Nothing but stdin, stdout and stderr: whatever else this process
     * inherited without close-on-exec (a parent's pipes) is not the child's,
     * and a parent waiting for a pipe's end would otherwise wait for it too. */
    posix_spawn_file_actions_addclosefrom_np(&actions, 3);
    pid_t pid;
    int error = posix_spawn(&pid, path, &actions, &attributes, argv, envp ? envp : environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attributes);
    if (error != 0) { errno = error; return -1; }
    return pid;
}

pid_t sluice_spawn(const char *path, char *const argv[]) {
    const int inherited[3] = { SLUICE_SPAWN_INHERIT, SLUICE_SPAWN_INHERIT, SLUICE_SPAWN_INHERIT };
    return sluice_spawn_stdio(path, argv, NULL, inherited);
}
