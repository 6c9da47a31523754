#ifndef SLUICE_CLIBBPF_SHIM_H
#define SLUICE_CLIBBPF_SHIM_H
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>

/* Sets a `const volatile` global of a BPF object between open and load:
 * finds the variable's offset in the .rodata datasec through BTF, patches a
 * copy of the section's initial value and hands it back to libbpf (the
 * pointer libbpf returns is read-only). Returns 0 or a negative errno. */
static inline int sluice_set_rodata(struct bpf_object *obj, const char *name, const void *value, size_t size)
{
    struct bpf_map *map = bpf_object__find_map_by_name(obj, ".rodata");
    struct btf *btf = bpf_object__btf(obj);
    if (!map || !btf)
        return -ENOENT;
    size_t section_size = 0;
    const void *initial = bpf_map__initial_value(map, &section_size);
    if (!initial)
        return -ENOENT;
    int sec_id = btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC);
    if (sec_id < 0)
        return -ENOENT;
    const struct btf_type *sec = btf__type_by_id(btf, sec_id);
    const struct btf_var_secinfo *vars = btf_var_secinfos(sec);
    for (int i = 0; i < btf_vlen(sec); i++) {
        const struct btf_type *var = btf__type_by_id(btf, vars[i].type);
        if (strcmp(btf__name_by_offset(btf, var->name_off), name) != 0)
            continue;
        if (vars[i].size != size || vars[i].offset + size > section_size)
            return -EINVAL;
        void *copy = malloc(section_size);
        if (!copy)
            return -ENOMEM;
        memcpy(copy, initial, section_size);
        memcpy((char *)copy + vars[i].offset, value, size);
        int rc = bpf_map__set_initial_value(map, copy, section_size);
        free(copy);
        return rc;
    }
    return -ENOENT;
}
/* libbpf prints its own warnings to stderr (some misleading, such as
 * "try raising ulimit -l" for a missing capability); the daemon reports
 * every failure itself. SLUICE_LIBBPF_DEBUG=1 brings libbpf's output back,
 * with the verifier log, for debugging. */
static int sluice_libbpf_silent(enum libbpf_print_level level, const char *format, va_list args)
{
    (void)level; (void)format; (void)args;
    return 0;
}

static inline void sluice_libbpf_quiet_unless_debugging(void)
{
    const char *debug = getenv("SLUICE_LIBBPF_DEBUG");
    if (!debug || strcmp(debug, "1") != 0)
        libbpf_set_print(sluice_libbpf_silent);
}
#endif
