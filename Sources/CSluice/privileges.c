#define _GNU_SOURCE
#include <grp.h>
#include <linux/capability.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <errno.h>
#include "sluice_privileges.h"

static int capget_raw(struct __user_cap_header_struct *h, struct __user_cap_data_struct *d) {
    return (int)syscall(SYS_capget, h, d);
}

static int capset_raw(struct __user_cap_header_struct *h, struct __user_cap_data_struct *d) {
    return (int)syscall(SYS_capset, h, d);
}

int sluice_effective_capabilities(uint64_t *mask) {
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2] = {{0}};
    if (capget_raw(&header, data) != 0) return -1;
    *mask = ((uint64_t)data[1].effective << 32) | data[0].effective;
    return 0;
}

int sluice_drop_privileges(uid_t uid, gid_t gid, uint64_t keep) {
    /* Keep the permitted set across setuid, then narrow it by hand. */
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0) return -1;
    for (int cap = 0; cap < 64; cap++) {
        if (!(keep & (1ULL << cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) return -1;
    }
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    if (setgroups(1, &gid) != 0) return -1;
    if (setresgid(gid, gid, gid) != 0) return -1;
    if (setresuid(uid, uid, uid) != 0) return -1;
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2] = {{0}};
    data[0].effective = data[0].permitted = (uint32_t)keep;
    data[1].effective = data[1].permitted = (uint32_t)(keep >> 32);
    if (capset_raw(&header, data) != 0) return -1;
    if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0) return -1;
    return 0;
}
