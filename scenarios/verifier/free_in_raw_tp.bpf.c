// SPDX-License-Identifier: GPL-2.0-only
/*
 * On Linux 6.12 freeing arena pages is sleepable only as well: a raw_tp
 * program (run with preemption off) that frees is refused.
 */
#include "arena_lab.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARENA);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 2);
} arena SEC(".maps");

struct arena_args args;

SEC("raw_tp")
int raw_tp_free(void *ctx)
{
	bpf_arena_free_pages(&arena, (void __arena *)(args.base), 1);
	return 0;
}

char _license[] SEC("license") = "GPL";
