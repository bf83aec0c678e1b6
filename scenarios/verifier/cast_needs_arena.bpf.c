// SPDX-License-Identifier: GPL-2.0-only
/*
 * A program that dereferences an arena pointer (clang emits an
 * addr_space_cast before the access) must use an arena map itself: here
 * the object has one, but this program never references it.
 */
#include "arena_lab.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARENA);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 2);
} arena SEC(".maps");

SEC("syscall")
int cast_without_arena(struct arena_args *ctx)
{
	__u64 __arena *p = (__u64 __arena *)ctx->base;

	*p = 1;
	return 0;
}

char _license[] SEC("license") = "GPL";
