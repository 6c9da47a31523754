/* The per-worker records, declared once for every object that uses them
 * (select_worker reads them; redirect_peer adds redirected bytes). The sockmap
 * object reuses the steering object's map fd, so both see the same memory. */
#ifndef SLUICE_WORKER_LOAD_BPF_H
#define SLUICE_WORKER_LOAD_BPF_H
#include "sluice_abi.h"

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(map_flags, BPF_F_MMAPABLE);
    __uint(max_entries, SLUICE_MAX_WORKERS);
    __type(key, __u32);
    __type(value, struct sluice_worker);
} worker_load SEC(".maps");

#endif
