// SPDX-License-Identifier: GPL-2.0-only
/*
 * On Linux 6.12 the arena page kfuncs are sleepable only: a tc program
 * (never sleepable) that allocates is refused. Linux 7.x accepts it (it
 * calls bpf_arena_alloc_pages_non_sleepable there).
 */
#include "arena_lab.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARENA);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 2);
} arena SEC(".maps");

struct arena_args args;

SEC("tc")
int tc_alloc(void *skb)
{
	return bpf_arena_alloc_pages(&arena, (void __arena *)0, 1, NUMA_NO_NODE, 0) ? 0 : 1;
}

char _license[] SEC("license") = "GPL";
