// SPDX-License-Identifier: GPL-2.0-only
/*
 * Syscall programs that exercise a BPF arena the way scenarios need: page
 * allocation and free through the kfuncs, reads and writes at page offsets,
 * an allocation census, and data structures (a linked list, a hash table)
 * that user space then walks natively through its mmap of the arena.
 *
 * Page numbers in arguments are relative to the arena start; `base` is the
 * arena's user address, so `base + page * PAGE_SIZE` is the user address of
 * the page, which the kfuncs and (after clang's address space cast) loads
 * and stores understand.
 */
#include "arena_lab.h"

/* Sentinel for "let the kernel pick the page" in alloc_pages. */
#define ANY_PAGE (~0ULL)
/* Upper bound of the loops (the verifier wants bounded iteration counts). */
#define MAX_ITEMS 4096
/* Hash table buckets (one page of bucket heads). */
#define HTAB_BUCKETS 64

struct {
	__uint(type, BPF_MAP_TYPE_ARENA);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1024);
} arena SEC(".maps");

/*
 * Programs that touch arena memory without calling an arena kfunc must still
 * reference the map, or the verifier rejects their address space casts.
 */
#define USES_ARENA() asm volatile("" : : "r"(&arena) : "memory")

static void __arena *page_addr(struct arena_args *ctx, __u64 page)
{
	return (void __arena *)(ctx->base + page * PAGE_SIZE);
}

/* arg0 page (or ANY_PAGE), arg1 count -> out0 user address, out1 page; returns 0 on success. */
SEC("syscall")
int alloc_pages(struct arena_args *ctx)
{
	void __arena *want = ctx->arg[0] == ANY_PAGE ? (void __arena *)0 : page_addr(ctx, ctx->arg[0]);
	void __arena *got = bpf_arena_alloc_pages(&arena, want, ctx->arg[1], NUMA_NO_NODE, 0);

	ctx->out[0] = (__u64)got;
	ctx->out[1] = got ? ((__u64)got - ctx->base) / PAGE_SIZE : ~0ULL;
	return got ? 0 : 1;
}

/*
 * arg0 page (or ANY_PAGE), arg1 count, arg2 NUMA node (as an int:
 * 0xffffffff is NUMA_NO_NODE) -> out0 user address, out1 page; 0 on success.
 */
SEC("syscall")
int alloc_pages_node(struct arena_args *ctx)
{
	void __arena *want = ctx->arg[0] == ANY_PAGE ? (void __arena *)0 : page_addr(ctx, ctx->arg[0]);
	void __arena *got = bpf_arena_alloc_pages(&arena, want, ctx->arg[1], (int)ctx->arg[2], 0);

	ctx->out[0] = (__u64)got;
	ctx->out[1] = got ? ((__u64)got - ctx->base) / PAGE_SIZE : ~0ULL;
	return got ? 0 : 1;
}

/* arg0 page, arg1 count. */
SEC("syscall")
int free_pages(struct arena_args *ctx)
{
	bpf_arena_free_pages(&arena, page_addr(ctx, ctx->arg[0]), ctx->arg[1]);
	return 0;
}

/* arg0 page, arg1 count, arg2 value, arg3 byte offset: store value in each page. */
SEC("syscall")
int write_pages(struct arena_args *ctx)
{
	struct bpf_iter_num it;
	int *i;

	USES_ARENA();
	bpf_iter_num_new(&it, 0, ctx->arg[1] < MAX_ITEMS ? ctx->arg[1] : MAX_ITEMS);
	while ((i = bpf_iter_num_next(&it))) {
		__u64 __arena *p = (__u64 __arena *)(ctx->base + (ctx->arg[0] + *i) * PAGE_SIZE +
						      (ctx->arg[3] & (PAGE_SIZE - 8)));
		*p = ctx->arg[2];
	}
	bpf_iter_num_destroy(&it);
	return 0;
}

/* arg0 page, arg1 byte offset -> out0 the u64 there (0 if unallocated). */
SEC("syscall")
int read_page(struct arena_args *ctx)
{
	__u64 __arena *p = (__u64 __arena *)(page_addr(ctx, ctx->arg[0]) + (ctx->arg[1] & (PAGE_SIZE - 8)));

	USES_ARENA();
	ctx->out[0] = *p;
	return 0;
}

/*
 * arg0 first page, arg1 count -> out0 pages of the range that are allocated.
 * A page is free if allocating exactly it succeeds (then it is freed again).
 */
SEC("syscall")
int count_allocated(struct arena_args *ctx)
{
	struct bpf_iter_num it;
	__u64 used = 0;
	int *i;

	bpf_iter_num_new(&it, 0, ctx->arg[1] < MAX_ITEMS ? ctx->arg[1] : MAX_ITEMS);
	while ((i = bpf_iter_num_next(&it))) {
		void __arena *p = page_addr(ctx, ctx->arg[0] + *i);
		void __arena *got = bpf_arena_alloc_pages(&arena, p, 1, NUMA_NO_NODE, 0);

		if (got)
			bpf_arena_free_pages(&arena, got, 1);
		else
			used++;
	}
	bpf_iter_num_destroy(&it);
	ctx->out[0] = used;
	return 0;
}

/* A bump allocator over whole arena pages, for the data structures. */
static void __arena *bump_next;
static __u32 bump_left;

static void __arena *bump_alloc(__u32 size)
{
	void __arena *p;

	if (bump_left < size) {
		bump_next = bpf_arena_alloc_pages(&arena, (void __arena *)0, 1, NUMA_NO_NODE, 0);
		if (!bump_next)
			return (void __arena *)0;
		bump_left = PAGE_SIZE;
	}
	p = bump_next;
	bump_next += size;
	bump_left -= size;
	return p;
}

struct list_node {
	struct list_node __arena *next;
	__u64 value;
};

/*
 * arg0 n: build a list of n nodes with values 1..n, newest first.
 * out0 head (a user address), out1 sum of values, out2 nodes built.
 */
SEC("syscall")
int list_build(struct arena_args *ctx)
{
	struct list_node __arena *head = (void __arena *)0;
	struct bpf_iter_num it;
	__u64 sum = 0, built = 0;
	int *i;

	bpf_iter_num_new(&it, 0, ctx->arg[0] < MAX_ITEMS ? ctx->arg[0] : MAX_ITEMS);
	while ((i = bpf_iter_num_next(&it))) {
		struct list_node __arena *n = bump_alloc(sizeof(*n));

		if (!n)
			break;
		n->value = *i + 1;
		n->next = head;
		head = n;
		sum += *i + 1;
		built++;
	}
	bpf_iter_num_destroy(&it);
	ctx->out[0] = (__u64)head;
	ctx->out[1] = sum;
	ctx->out[2] = built;
	return built == ctx->arg[0] ? 0 : 1;
}

struct htab_node {
	struct htab_node __arena *next;
	__u64 key;
	__u64 value;
};

struct htab {
	struct htab_node __arena *buckets[HTAB_BUCKETS];
};

/*
 * arg0 n: insert keys 0..n-1 with value key*key+1 into a chained hash table
 * whose bucket array is one arena page. out0 table (user address), out1 sum
 * of values, out2 entries.
 */
SEC("syscall")
int htab_build(struct arena_args *ctx)
{
	struct htab __arena *t = bpf_arena_alloc_pages(&arena, (void __arena *)0, 1, NUMA_NO_NODE, 0);
	struct bpf_iter_num it;
	__u64 sum = 0, built = 0;
	int *i;

	if (!t)
		return 1;
	bpf_iter_num_new(&it, 0, ctx->arg[0] < MAX_ITEMS ? ctx->arg[0] : MAX_ITEMS);
	while ((i = bpf_iter_num_next(&it))) {
		struct htab_node __arena *n = bump_alloc(sizeof(*n));
		__u32 b = ((__u32)*i * 2654435761u) % HTAB_BUCKETS;

		if (!n)
			break;
		n->key = *i;
		n->value = (__u64)*i * *i + 1;
		n->next = t->buckets[b];
		t->buckets[b] = n;
		sum += n->value;
		built++;
	}
	bpf_iter_num_destroy(&it);
	ctx->out[0] = (__u64)t;
	ctx->out[1] = sum;
	ctx->out[2] = built;
	return built == ctx->arg[0] ? 0 : 1;
}

/*
 * An arena global: libbpf places it in the arena itself (in the .addr_space.1
 * section, relocated into the arena map), so user space sees it through its
 * mapping of the arena.
 */
__u64 __arena arena_hits;

/* arg0 amount: arena_hits += amount. out0 new value, out1 its user address. */
SEC("syscall")
int bump_global(struct arena_args *ctx)
{
	arena_hits += ctx->arg[0];
	ctx->out[0] = arena_hits;
	ctx->out[1] = (__u64)&arena_hits;
	return 0;
}

/*
 * arg0 page, arg1 count: bpf_arena_reserve_pages -> out0 its errno (0 on
 * success: EBUSY for a range with allocated pages, EINVAL past the arena's
 * end); returns 0 on success, 1 on failure, 2 where the kernel lacks it.
 */
SEC("syscall")
int reserve_pages(struct arena_args *ctx)
{
	int ret;

	if (!bpf_ksym_exists(bpf_arena_reserve_pages))
		return 2;
	ret = bpf_arena_reserve_pages(&arena, page_addr(ctx, ctx->arg[0]), ctx->arg[1]);
	ctx->out[0] = ret < 0 ? (__u64)-ret : 0;
	return ret ? 1 : 0;
}

char _license[] SEC("license") = "GPL";
