//! `sweep:` end to end: every value's outcome reported by a real guest, a
//! failing value failing the scenario without hiding the others, and a
//! bound broken by one value refused before boot with the template's
//! file:line and the value named.

mod common;

use common::*;

/// Counts 1, 2 and 16 fit a 16-page arena; 17 does not, so expecting it to
/// be allocated must fail, and only for that value.
const ONE_VALUE_FAILS: &str = r#"name: sweep-one-fails
steps:
  - arena: { id: a, pages: 16 }
  - mmap: { arena: a }
  - bpf_load: { id: p, object: arena_ops.bpf.o, reuse_arena: a }
  - sweep:
      over: { count: [1, 17, 2, 16] }
      steps:
        - bpf_run: { object: p, program: alloc_pages, args: [0, "${count}"], expect_retval: 0 }
        - bpf_run: { object: p, program: count_allocated, args: [0, 16], expect_out: ["${count}"] }
        - bpf_run: { object: p, program: free_pages, args: [0, 16] }
"#;

#[test]
fn every_value_is_reported_and_one_failing_value_fails_the_scenario() {
    let (out, results) = run_yaml("sweep-one-fails", ONE_VALUE_FAILS);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failing value must fail the run"
    );
    let s = summary(&results);
    let sc = &s["scenarios"][0];
    assert_eq!(sc["verdict"], "fail", "{sc}");
    let reason = sc["reason"].as_str().unwrap();
    assert!(
        reason.contains("1 of 4 cases failed")
            && reason.starts_with("step 4/4 (sweep, sweep-one-fails.yaml:6): ")
            && reason.contains("count=17: step 1/3 (bpf_run, sweep-one-fails.yaml:9)")
            && reason.contains("passed: count=1, count=2, count=16"),
        "{reason}"
    );
}

#[test]
fn a_passing_sweep_records_each_value_in_the_step_data() {
    let yaml = ONE_VALUE_FAILS
        .replace("sweep-one-fails", "sweep-all-pass")
        .replace("[1, 17, 2, 16]", "[1, 2, 16]");
    let (out, results) = run_yaml("sweep-all-pass", &yaml);
    assert_eq!(out.status.code(), Some(0));
    let s = summary(&results);
    let step = &s["scenarios"][0]["steps"][3];
    assert_eq!(step["kind"], "sweep", "{step}");
    let cases = step["data"]["cases"].as_array().unwrap();
    let counts: Vec<u64> = cases
        .iter()
        .map(|c| {
            assert_eq!(c["status"], "pass", "{c}");
            c["values"]["count"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(counts, [1, 2, 16]);
}

#[test]
fn a_bound_broken_by_one_value_is_refused_before_boot_naming_it() {
    let dir = scratch("sweep-bounds");
    let f = scenario(
        &dir,
        "bad",
        "name: bad\nsteps:\n  - arena: { id: a, pages: 16 }\n  - mmap: { arena: a }\n  - sweep:\n      over: { page: [0, 15, 16] }\n      steps:\n        - touch: { arena: a, page: \"${page}\", op: write }\n",
    );
    let out = lab(&["validate", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:8:")
            && err.contains("steps[2].sweep.steps[0].touch.page")
            && err.contains("with page=16"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}
