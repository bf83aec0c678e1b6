// SPDX-License-Identifier: GPL-2.0-only
/*
 * Arena page alloc and free from non-sleepable programs (tc, and raw_tp: a
 * tracing program, run by BPF_PROG_TEST_RUN with preemption off), which Linux
 * 7.x allows (the verifier calls bpf_arena_{alloc,free}_pages_non_sleepable
 * there; frees are deferred through irq_work and a workqueue). 6.12 refuses
 * to load this object (the kfuncs are sleepable-only there), so only
 * scenarios that require the non-sleepable variants load it.
 *
 * A tc program's context is the packet and a raw_tp program's the
 * tracepoint's arguments (read-only), so arguments and results travel in
 * `args` (the object's only .bss variable), which the agent writes before
 * and reads after BPF_PROG_TEST_RUN; same layout as every syscall program's
 * context.
 */
#include "arena_lab.h"

#define ANY_PAGE (~0ULL)

struct {
	__uint(type, BPF_MAP_TYPE_ARENA);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1024);
} arena SEC(".maps");

struct arena_args args;

/* arg0 page (or ANY_PAGE), arg1 count -> out0 user address, out1 page; 0 on success. */
static inline __attribute__((always_inline)) int alloc_from_args(void)
{
	void __arena *want = args.arg[0] == ANY_PAGE ? (void __arena *)0 :
			     (void __arena *)(args.base + args.arg[0] * PAGE_SIZE);
	void __arena *got = bpf_arena_alloc_pages(&arena, want, args.arg[1], NUMA_NO_NODE, 0);

	args.out[0] = (__u64)got;
	args.out[1] = got ? ((__u64)got - args.base) / PAGE_SIZE : ~0ULL;
	return got ? 0 : 1;
}

/* arg0 page, arg1 count: freed later, from irq_work and a workqueue. */
static inline __attribute__((always_inline)) int free_from_args(void)
{
	bpf_arena_free_pages(&arena, (void __arena *)(args.base + args.arg[0] * PAGE_SIZE),
			     args.arg[1]);
	return 0;
}

SEC("tc")
int tc_alloc_pages(void *skb)
{
	return alloc_from_args();
}

SEC("tc")
int tc_free_pages(void *skb)
{
	return free_from_args();
}

/* The same two from a tracing program (raw_tp, not attached: test-run only). */
SEC("raw_tp")
int raw_tp_alloc_pages(void *ctx)
{
	return alloc_from_args();
}

SEC("raw_tp")
int raw_tp_free_pages(void *ctx)
{
	return free_from_args();
}

char _license[] SEC("license") = "GPL";
