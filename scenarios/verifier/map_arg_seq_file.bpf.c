// SPDX-License-Identifier: GPL-2.0-only
/*
 * The arena kfuncs' map argument must be a map: here a bpf_map iterator
 * passes its seq_file instead (the kernel selftests' verifier_arena.c,
 * iter_maps2: __failure __msg("expected pointer to STRUCT bpf_map")).
 */
#include "arena_lab.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARENA);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 2);
} arena SEC(".maps");

SEC("iter.s/bpf_map")
int seq_file_as_map(struct bpf_iter__bpf_map *ctx)
{
	struct seq_file *seq = ctx->meta->seq;

	bpf_arena_alloc_pages((void *)seq, (void __arena *)0, 1, 0, 0);
	return 0;
}

char _license[] SEC("license") = "GPL";
