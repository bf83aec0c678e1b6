//! Bounds (issue 10): a page outside its arena is invalid input, found by
//! `lab run` and `lab validate` before anything boots, with `file:line:column`
//! and the field; a page only known at run time to be outside the arena is a
//! step error in the guest, never a stray access. Before the fix, page 100
//! of a 32-page arena was written into the agent's own memory and read back:
//! a false PASS.

mod common;

use common::*;

/// The scenario: write page 100 of a 32-page arena, read it back.
const PAGE_100_OF_32: &str = "\
name: page-100-of-32
steps:
  - arena: { id: a, pages: 32 }
  - mmap: { arena: a }
  - touch: { arena: a, page: 100, op: write }
  - touch: { arena: a, page: 100, op: read, expect: { pattern: true } }
";

#[test]
fn page_outside_the_arena_is_invalid_input_before_any_boot() {
    let dir = scratch("bounds-run");
    let f = scenario(&dir, "page-100", PAGE_100_OF_32);
    let results = dir.join("results");
    let out = lab_run(&results, &[f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = f.display();
    for line in [
        format!("{file}:5:30: steps[2].touch.page: page 100 is outside arena `a` (32 pages)"),
        format!("{file}:6:30: steps[3].touch.page: page 100 is outside arena `a` (32 pages)"),
    ] {
        assert!(stderr.contains(&line), "missing {line:?} in:\n{stderr}");
    }
    assert!(!results.join("latest").exists(), "a run folder was made");
}

#[test]
fn validate_reports_every_error_in_every_file() {
    let dir = scratch("bounds-validate");
    scenario(&dir, "a", PAGE_100_OF_32);
    scenario(
        &dir,
        "b",
        "name: b\nsteps:\n  - arena: { id: a, pages: 16 }\n  - mmap: { arena: a }\n  - munmap: { arena: a, page: 8, pages: 9 }\n  - processes:\n      count: 2\n      steps:\n        - mmap: { arena: a, same_address: true }\n        - touch: { arena: a, page: 15, count: 2, offset: 4096, op: read }\n",
    );
    scenario(
        &dir,
        "c",
        "name: c\nsteps:\n  - arena: { id: a, pages: 16 }\n  - mmap: { arena: a }\n  - touch: { arena: a, page: 15, offset: 0xff8, op: write }\n",
    );
    let out = lab(&["validate", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let d = dir.display();
    for line in [
        format!("{d}/a.yaml:5:30: steps[2].touch.page: page 100 is outside"),
        format!("{d}/a.yaml:6:30: steps[3].touch.page: page 100 is outside"),
        format!("{d}/b.yaml:5:41: steps[2].munmap.pages: pages 8..17 run past the end of arena `a` (16 pages)"),
        format!("{d}/b.yaml:10:47: steps[3].processes.steps[1].touch.count: pages 15..17 run past the end"),
        format!("{d}/b.yaml:10:58: steps[3].processes.steps[1].touch.offset: offset 0x1000"),
    ] {
        assert!(stderr.contains(&line), "missing {line:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("c.yaml"), "{stderr}");
    assert_eq!(stderr.matches(".yaml:").count(), 5, "{stderr}");
}

/// Boots a VM: the arena libbpf creates from the object has a size only the
/// run knows (1024 pages), so page 1024 passes validation and the agent
/// must refuse it, naming the value and the bound.
#[test]
fn a_page_only_known_at_run_time_to_be_outside_is_a_step_error() {
    let (out, results) = run_yaml(
        "bounds-runtime",
        "name: bounds-runtime\nsteps:\n  - bpf_load: { id: p, object: arena_ops.bpf.o, arena_id: a }\n  - touch: { arena: a, page: 1023, op: write }\n  - touch: { arena: a, page: 1023, op: read, expect: { pattern: true } }\n  - touch: { arena: a, page: 1024, op: write }\n  - touch: { arena: a, page: 1024, op: read, expect: { pattern: true } }\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let sc = &summary(&results)["scenarios"][0];
    assert_eq!(sc["verdict"], "error", "{sc:#}");
    let reason = sc["reason"].as_str().unwrap();
    assert!(
        reason.contains(
            "step 4/5 (touch, bounds-runtime.yaml:6): page 1024 is outside arena `a` (1024 pages)"
        ),
        "{sc:#}"
    );
}
