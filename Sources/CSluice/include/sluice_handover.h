#ifndef SLUICE_HANDOVER_H
#define SLUICE_HANDOVER_H

#include <stddef.h>
#include <sys/types.h>

/* At most this many descriptors ride on one message (the kernel's SCM_MAX_FD is 253). */
#define SLUICE_HANDOVER_MAX_FDS 250

/* One message on a SOCK_SEQPACKET socket, with `count` descriptors as
 * SCM_RIGHTS. Returns the bytes sent or -1 (errno). */
ssize_t sluice_send_with_fds(int sock, const void *bytes, size_t length, const int *fds, int count);

/* One message; its descriptors (close-on-exec) in `fds`, their number in
 * `*count` (at most `capacity`; more were closed and MSG_CTRUNC makes it -1
 * with EMSGSIZE). Returns the bytes received, 0 at EOF, or -1 (errno). */
ssize_t sluice_receive_with_fds(int sock, void *bytes, size_t capacity_bytes, int *fds, int capacity, int *count);

/* Starts `path` with `argv` and the environment, the signal mask empty and
 * default dispositions, and no descriptor but stdin, stdout and stderr. Returns the pid or
 * -1 (errno). */
pid_t sluice_spawn(const char *path, char *const argv[]);

#define SLUICE_SPAWN_INHERIT (-1)
#define SLUICE_SPAWN_NULL (-2)

/* As sluice_spawn, with `envp` (NULL: this process's environment) and each of
 * stdin, stdout and stderr taken from `stdio`: a descriptor, SLUICE_SPAWN_NULL
 * for /dev/null, or SLUICE_SPAWN_INHERIT. */
pid_t sluice_spawn_stdio(const char *path, char *const argv[], char *const envp[], const int stdio[3]);

#endif
