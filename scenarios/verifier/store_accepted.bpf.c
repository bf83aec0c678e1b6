// SPDX-License-Identifier: GPL-2.0-only
/*
 * The accepted form of cast_needs_arena.bpf.c: the program allocates from
 * its arena, so its address space casts are allowed; the verifier's log
 * shows the cast it checked.
 */
#include "arena_lab.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARENA);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 2);
} arena SEC(".maps");

/* -> out0 the value stored through the new page; returns 0. */
SEC("syscall")
int store(struct arena_args *ctx)
{
	__u64 __arena *p = bpf_arena_alloc_pages(&arena, (void __arena *)0, 1, NUMA_NO_NODE, 0);

	if (!p)
		return 1;
	*p = 42;
	ctx->out[0] = *p;
	return 0;
}

char _license[] SEC("license") = "GPL";
