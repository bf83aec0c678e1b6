// SPDX-License-Identifier: GPL-2.0-only
/*
 * The arena kfuncs' map argument must be a trusted map pointer: a map
 * reached through another map's fields (inner_map_meta) is untrusted (the
 * kernel selftests' verifier_arena.c, iter_maps3:
 * __failure __msg("untrusted_ptr_bpf_map")).
 */
#include "arena_lab.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARENA);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 2);
} arena SEC(".maps");

SEC("iter.s/bpf_map")
int untrusted_map(struct bpf_iter__bpf_map *ctx)
{
	struct bpf_map *map = ctx->map;

	if (!map)
		return 0;
	bpf_arena_alloc_pages(map->inner_map_meta, (void __arena *)0, map->max_entries, 0, 0);
	return 0;
}

char _license[] SEC("license") = "GPL";
