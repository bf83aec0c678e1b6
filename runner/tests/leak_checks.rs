//! Leak checks with the scenario's memory cgroup, on the real default
//! kernel: the catalogue's leak scenario passes, and the same checks fail
//! when the pages are not given back (the arena still mapped; the map still
//! held by a BPF object) or when the bound is impossible.

mod common;

use common::*;

/// The catalogue scenario's first steps with `tail` after them.
fn faulted_1000_pages_then(tail: &str) -> String {
    format!(
        "name: leak-teeth
tags: [lab_selftest]
timeout_s: 60
steps:
  - memory: {{ baseline: before }}
  - arena: {{ id: a, pages: 1000 }}
  - mmap: {{ arena: a }}
  - touch: {{ arena: a, page: 0, count: 1000, op: write }}
{tail}"
    )
}

#[test]
fn the_leak_scenarios_pass_on_the_default_kernel() {
    let results = scratch("leak-pass");
    let out = lab_run(
        &results,
        &[
            "scenarios/arena/leak-arena-pages-returned.yaml",
            "scenarios/arena/leak-processes-exit-holding-mappings.yaml",
            "scenarios/arena/leak-kernel-wide-counters.yaml",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let s = summary(&results);
    for sc in s["scenarios"].as_array().unwrap() {
        assert_eq!(sc["verdict"], "pass", "{sc}");
        let last = sc["steps"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["kind"], "memory", "{last}");
    }
}

#[test]
fn pages_not_given_back_or_impossible_bounds_fail() {
    for (name, tail, want) in [
        // Still mapped and open: nothing came back.
        (
            "still-mapped",
            "  - memory: { since: before, at_most_kib: 512, within_ms: 500 }\n",
            "changed by more than +512 KiB (still after 500 ms)",
        ),
        // Closed by user space, but a BPF object still holds the map.
        (
            "held-by-bpf",
            "  - bpf_load: { id: p, object: arena_ops.bpf.o, reuse_arena: a }\n  - destroy: { arena: a }\n  - memory: { since: before, at_most_kib: 512, within_ms: 500 }\n",
            "changed by more than +512 KiB (still after 500 ms)",
        ),
        // More than 1000 pages can give.
        (
            "impossible",
            "  - memory: { since: before, at_least_kib: 1000000 }\n",
            "changed by less than +1000000 KiB",
        ),
        // Whole-kernel: 1000 faulted pages are out of MemFree while mapped.
        (
            "meminfo-still-mapped",
            "  - memory: { since: before, meminfo: MemFree, at_least_kib: -1024 }\n",
            "meminfo MemFree",
        ),
        // The signal without the memory controller: the map is held, so
        // none of its 1000 pages came back to the free lists.
        (
            "free-pages-held-by-bpf",
            "  - memory: { baseline: faulted }\n  - bpf_load: { id: p, object: arena_ops.bpf.o, reuse_arena: a }\n  - destroy: { arena: a }\n  - memory: { since: before, vmstat: nr_free_pages, at_least: -512, within_ms: 500 }\n",
            "vmstat nr_free_pages",
        ),
        (
            "vmstat-impossible",
            "  - memory: { since: before, vmstat: nr_free_pages, at_least: 1000000 }\n",
            "changed by less than +1000000",
        ),
    ] {
        let (out, results) = run_yaml(
            &format!("leak-{name}"),
            &faulted_1000_pages_then(tail),
        );
        assert_eq!(out.status.code(), Some(1), "{name}");
        let reason = first_reason(&results);
        assert!(reason.contains("(memory, ") && reason.contains(want), "{name}: {reason}");
    }
}

/// What cannot be evaluated is an error, never a pass: a meminfo field the
/// kernel does not have. What the kernel's config lacks is a named skip,
/// never an error of the lab: kmemleak and fault injection on a kernel
/// built without them (the default kernel).
#[test]
fn unknown_counters_are_errors_and_missing_options_are_named_skips() {
    let (_, results) = run_yaml(
        "leak-no-such-field",
        &faulted_1000_pages_then(
            "  - memory: { since: before, meminfo: NoSuchField, at_most_kib: 0 }\n",
        ),
    );
    let s = summary(&results);
    assert_eq!(s["scenarios"][0]["verdict"], "error", "{s}");
    let reason = first_reason(&results);
    assert!(
        reason.contains("/proc/meminfo has no `NoSuchField`: not in this kernel"),
        "{reason}"
    );
    for (name, tail, want) in [
        (
            "no-kmemleak",
            "  - kmemleak: { action: check }\n",
            "this kernel lacks CONFIG_DEBUG_KMEMLEAK (kmemleak, for kmemleak steps)",
        ),
        (
            "no-fault-injection",
            "  - repeat: { times: 1, steps: [ { fail_allocs: { probability: 10 } } ] }\n",
            "this kernel lacks CONFIG_FAULT_INJECTION",
        ),
    ] {
        let (out, results) = run_yaml(&format!("leak-{name}"), &faulted_1000_pages_then(tail));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: a skip is not a failure"
        );
        let s = summary(&results);
        assert_eq!(s["scenarios"][0]["verdict"], "skipped", "{name}: {s}");
        let reason = first_reason(&results);
        assert!(reason.contains(want), "{name}: {reason}");
    }
}

#[test]
fn a_memory_check_without_its_baseline_is_refused_before_boot() {
    let (out, _) = run_yaml(
        "leak-no-baseline",
        "name: leak-no-baseline\nsteps:\n  - memory: { since: nowhere, at_most_kib: 1 }\n",
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("steps[0].memory.since: no earlier memory step records baseline `nowhere`"),
        "{err}"
    );
}
