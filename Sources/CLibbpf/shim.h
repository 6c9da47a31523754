#ifndef SLUICE_CLIBBPF_SHIM_H
#define SLUICE_CLIBBPF_SHIM_H
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#endif
