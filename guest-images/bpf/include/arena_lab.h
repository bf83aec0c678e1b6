/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Minimal definitions for arena lab's BPF programs: section and map
 * declaration macros understood by libbpf, the arena kfuncs of Linux >= 6.9,
 * the numeric iterator kfuncs, and the context every syscall program takes.
 *
 * Scenarios' own programs (`bpf_load: { source: x.bpf.c }`) are compiled
 * with ARENA_LAB_VMLINUX defined and this header beside the `vmlinux.h` of
 * the kernel under test: it then includes vmlinux.h (every kernel type)
 * and leaves out what vmlinux.h already defines.
 */
#ifndef ARENA_LAB_H
#define ARENA_LAB_H

#ifdef ARENA_LAB_VMLINUX
#include "vmlinux.h"
#else
typedef unsigned char __u8;
typedef unsigned int __u32;
typedef int __s32;
typedef unsigned long long __u64;
typedef long long __s64;
#endif

#define SEC(name) __attribute__((section(name), used))
#define __ksym __attribute__((section(".ksyms")))
#define __weak __attribute__((weak))
/* BTF-described map attributes, as libbpf parses them. */
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
#define __ulong(name, val) enum { ___bpf_concat(__unique_value, __COUNTER__) = val } name
#define ___bpf_concat(a, b) a##b

/* Pointers into the arena (clang's BPF address space 1). */
#define __arena __attribute__((address_space(1)))

#ifndef ARENA_LAB_VMLINUX
#define BPF_MAP_TYPE_ARENA 33
#define BPF_F_MMAPABLE (1U << 10)
#endif
#define NUMA_NO_NODE (-1)
#define PAGE_SIZE 4096

void __arena *bpf_arena_alloc_pages(void *map, void __arena *addr, __u32 page_cnt,
				    int node_id, __u64 flags) __ksym __weak;
void bpf_arena_free_pages(void *map, void __arena *ptr, __u32 page_cnt) __ksym __weak;
/* Linux >= 6.17: keep a range from being allocated. Weak: the object still
 * loads where it is missing, as long as its call is behind bpf_ksym_exists. */
int bpf_arena_reserve_pages(void *map, void __arena *ptr, __u32 page_cnt) __ksym __weak;

/* Whether a weak kfunc resolved (libbpf sets a missing one to 0, and the
 * verifier drops the call behind a false test as dead code). */
#define bpf_ksym_exists(sym) (!!(sym))

/* Open-coded numeric iterator (Linux >= 6.4). */
#ifndef ARENA_LAB_VMLINUX
struct bpf_iter_num {
	__u64 __opaque[1];
} __attribute__((aligned(8)));
#endif
int bpf_iter_num_new(struct bpf_iter_num *it, int start, int end) __ksym __weak;
int *bpf_iter_num_next(struct bpf_iter_num *it) __ksym __weak;
void bpf_iter_num_destroy(struct bpf_iter_num *it) __ksym __weak;

/*
 * Context of every syscall program, run with BPF_PROG_TEST_RUN. The kernel
 * copies it back after the run, so `out` carries results to user space.
 * A tc or raw_tp program (whose context is the packet or the tracepoint's
 * arguments) takes the same struct as its object's only .bss variable,
 * `struct arena_args args;`, which the agent writes before the run and
 * reads back after it. `base` is the arena's user address (0 when the
 * object's arena is not registered with `arena_id` or `reuse_arena`),
 * `arg` the step's `args`, `out` what `expect_out` checks; the program's
 * return value is what `expect_retval` checks.
 * Must match `ProgArgs` in the agent (guest-images/agent/src/steps/bpf.rs).
 */
struct arena_args {
	__u64 base;   /* user address of the arena in the calling process */
	__u64 arg[4]; /* step arguments */
	__u64 out[4]; /* results */
};

#endif
