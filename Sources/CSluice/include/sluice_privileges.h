#ifndef SLUICE_PRIVILEGES_H
#define SLUICE_PRIVILEGES_H
#include <stdint.h>
#include <sys/types.h>

#define SLUICE_CAP_NET_BIND_SERVICE 10
#define SLUICE_CAP_NET_ADMIN 12
#define SLUICE_CAP_SYS_ADMIN 21
#define SLUICE_CAP_BPF 39

/* The calling thread's effective capabilities, one bit per capability. */
int sluice_effective_capabilities(uint64_t *mask);
/* Becomes uid:gid (supplementary groups: gid alone) keeping exactly the
 * capabilities in `keep` (effective and permitted; dropped from the bounding
 * set too). Must run before any other thread starts: capabilities are per
 * thread and threads inherit them. 0 or -1 (errno set). */
int sluice_drop_privileges(uid_t uid, gid_t gid, uint64_t keep);
#endif
