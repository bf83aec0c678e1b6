//! A scenario's `known_issues`: a failure that matches one (kernel release
//! glob and reason prefix) is `known_fail` everywhere (summary, JUnit,
//! KTAP, exit code), one that does not stays a failure, and
//! `--no-known-issues` turns them back into failures. Real VMs, real kernel:
//! the failure is a deliberately wrong expectation, so it fails every time.

mod common;

use common::*;

/// A scenario whose read expects the wrong value; `kernel` is its known
/// issue's release glob.
fn wrong_expectation(name: &str, kernel: &str) -> String {
    format!(
        "name: {name}
tags: [smoke]
vm: {{ vcpus: 1, memory_mib: 256 }}
timeout_s: 30
steps:
  - arena: {{ id: a, pages: 4 }}
  - mmap: {{ arena: a }}
  - touch: {{ arena: a, page: 0, op: write, value: 0x2 }}
  - touch: {{ arena: a, page: 0, op: read, expect: {{ value: 0x1 }} }}
known_issues:
  - kernel: \"{kernel}\"
    reason: \"step 4/4 (touch, *): page 0\"
    note: \"test: the expectation is wrong on purpose\"
"
    )
}

fn verdict_of<'a>(s: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    s["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {s}"))
}

#[test]
fn known_failures_are_shown_but_not_red_and_only_where_documented() {
    let dir = scratch("known-issues");
    let files = dir.join("scenarios");
    std::fs::create_dir_all(&files).unwrap();
    // The default kernel is Debian's 6.12: `6.12.*` matches it, `5.*` does not.
    scenario(&files, "known", &wrong_expectation("known", "6.12.*"));
    scenario(
        &files,
        "other-kernel",
        &wrong_expectation("other-kernel", "5.*"),
    );
    let results = dir.join("results");
    let scenarios = files.to_str().unwrap();

    // First: the reason must start with the documented prefix.
    let out = lab_run(&results, &[scenarios]);
    let s = summary(&results);
    let known = verdict_of(&s, "known");
    assert_eq!(known["verdict"], "known_fail", "{known}");
    assert!(
        known["reason"]
            .as_str()
            .unwrap()
            .starts_with("step 4/4 (touch, known.yaml:9): page 0"),
        "the reason stays the failure's own: {known}"
    );
    assert_eq!(
        known["known_issue"],
        "test: the expectation is wrong on purpose"
    );
    assert_eq!(verdict_of(&s, "other-kernel")["verdict"], "fail");
    assert_eq!(s["known_failures"], 1);
    assert_eq!(s["failed"], 1);
    assert_eq!(out.status.code(), Some(1), "an undocumented failure is red");

    // Only the known one: exit 0, JUnit skipped with the note, KTAP XFAIL.
    let out = lab_run(&results, &["--only", "known", scenarios]);
    assert_eq!(out.status.code(), Some(0));
    let junit = std::fs::read_to_string(results.join("latest/junit.xml")).unwrap();
    assert!(junit.contains("failures=\"0\""), "{junit}");
    assert!(
        junit.contains("<skipped message=\"known kernel bug: test: the expectation"),
        "{junit}"
    );
    let ktap = std::fs::read_to_string(results.join("latest/results.ktap")).unwrap();
    assert!(
        ktap.lines().any(|l| l.starts_with("ok 1 known # XFAIL")),
        "{ktap}"
    );

    // --no-known-issues: a failure like any other.
    let out = lab_run(
        &results,
        &["--no-known-issues", "--only", "known", scenarios],
    );
    assert_eq!(out.status.code(), Some(1));
    let s = summary(&results);
    let known = verdict_of(&s, "known");
    assert_eq!(known["verdict"], "fail");
    // Its reproduce line and `lab repro` keep --no-known-issues: a real
    // failure must not replay as `known_fail`, exit 0.
    let line = known["reproduce"].as_str().unwrap();
    assert!(line.contains(" --no-known-issues "), "{line}");
    let run_dir = std::fs::canonicalize(results.join("latest")).unwrap();
    let replayed = dir.join("replayed");
    let out = lab(&[
        "repro",
        "--results",
        replayed.to_str().unwrap(),
        run_dir.join("known").to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(verdict_of(&summary(&replayed), "known")["verdict"], "fail");
}

#[test]
fn a_catch_all_known_issue_is_refused_with_its_line() {
    let dir = scratch("known-issues-bad");
    let f = scenario(&dir, "bad", &wrong_expectation("bad", "*"));
    let out = lab(&["validate", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("known_issues[0].kernel") && err.contains("bad.yaml"),
        "{err}"
    );
}
