//! A run that cannot look green by mistake: an aborted run still lists every
//! planned scenario with a verdict and a reason, JUnit carries the abort as
//! an error, and input errors exit 2 with one line. None of these boot a VM.

mod common;

use std::path::Path;

use common::*;

/// The default kernel's `lab kernel info` (fetches it on a first run).
fn default_kernel() -> serde_json::Value {
    let info = lab(&["kernel", "info"]);
    assert_eq!(info.status.code(), Some(0));
    serde_json::from_slice(&info.stdout).unwrap()
}

/// `lab: error:` lines of a run's stderr.
fn error_lines(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.starts_with("lab: error:"))
        .map(str::to_owned)
        .collect()
}

/// Scenario names in `dir`, from their `name:` lines.
fn names_in(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        .map(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("name: "))
                .unwrap()
                .trim()
                .to_owned()
        })
        .collect();
    names.sort();
    names
}

/// The `<testcase name="NAME" ...>...</testcase>` element (or the self-closed one).
fn testcase<'a>(junit: &'a str, name: &str) -> &'a str {
    let start = junit
        .find(&format!("name=\"{name}\""))
        .unwrap_or_else(|| panic!("{name} missing from junit:\n{junit}"));
    let start = junit[..start].rfind("<testcase ").unwrap();
    let rest = &junit[start..];
    let head_end = rest.find('>').unwrap();
    if rest[..head_end].ends_with('/') {
        &rest[..=head_end]
    } else {
        &rest[..rest.find("</testcase>").unwrap()]
    }
}

#[test]
fn a_kernel_without_reachable_source_aborts_and_lists_every_scenario() {
    // The Debian vmlinux under another name is a "user kernel": no
    // linux-source package is looked for, and there is no --kernel-src.
    let k = default_kernel();
    let dir = scratch("no-source");
    let kernel = dir.join("vmlinux-without-source");
    std::os::unix::fs::symlink(k["vmlinux"].as_str().unwrap(), &kernel).unwrap();
    let results = dir.join("results");
    let out = lab_run(
        &results,
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--modules",
            k["modules"].as_str().unwrap(),
            "scenarios/smoke",
            "scenarios/selftests",
        ],
    );
    // A user kernel without --kernel-src is the user's input to fix: 2.
    assert_eq!(out.status.code(), Some(2));
    let errors = error_lines(&out.stderr);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("lab: error: run aborted: "),
        "{errors:?}"
    );
    assert!(errors[0].contains("--kernel-src"), "{errors:?}");

    let s = summary(&results);
    assert_eq!(s["schema"], 1);
    assert_eq!(s["complete"], false);
    let reason = s["aborted"]["reason"].as_str().unwrap();
    assert!(reason.contains("--kernel-src"), "{reason}");
    let (smoke, selftests) = (names_in("scenarios/smoke"), names_in("scenarios/selftests"));
    let scenarios = s["scenarios"].as_array().unwrap();
    assert_eq!(s["planned"], smoke.len() + selftests.len());
    assert_eq!(scenarios.len(), smoke.len() + selftests.len());
    for sc in scenarios {
        let verdict = sc["verdict"].as_str().unwrap();
        assert!(["error", "not_run"].contains(&verdict), "{sc}");
        assert!(
            sc["reason"].as_str().unwrap().contains("--kernel-src"),
            "{sc}"
        );
    }
    assert_eq!(
        s["not_run"].as_u64().unwrap() + s["errors"].as_u64().unwrap(),
        scenarios.len() as u64
    );

    let junit = std::fs::read_to_string(results.join("latest/junit.xml")).unwrap();
    assert!(
        junit.contains("<testsuite name=\"arena-lab.smoke\""),
        "{junit}"
    );
    assert!(
        junit.contains("<testsuite name=\"arena-lab.selftests\""),
        "{junit}"
    );
    assert!(!junit.contains("errors=\"0\" skipped=\"0\""), "{junit}");
    for name in &selftests {
        let case = testcase(&junit, name);
        let failing = case.contains("<error ") || case.contains("<failure ");
        let not_run = case.contains("<skipped message=\"not run: aborted: ");
        assert!(failing || not_run, "{case}");
        assert!(case.contains("--kernel-src"), "{case}");
    }
    for name in &smoke {
        let case = testcase(&junit, name);
        assert!(!case.ends_with("/>"), "{name} looks passed: {case}");
    }
    let abort = testcase(&junit, "lab-run-aborted");
    assert!(abort.contains("<error type=\"aborted\""), "{abort}");
    assert!(abort.contains("--kernel-src"), "{abort}");
}

#[test]
fn a_missing_kernel_file_is_invalid_input_in_one_line() {
    let dir = scratch("missing-kernel");
    let results = dir.join("results");
    let missing = dir.join("no-such-bzImage");
    let missing = missing.to_str().unwrap();
    let out = lab_run(&results, &["--kernel", missing, "scenarios/smoke"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("lab: error: --kernel {missing}: ")),
        "{stderr}"
    );
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
    assert!(!results.exists(), "invalid input must not start a run");
    let out = lab(&["kernel", "info", "--kernel", missing]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn an_abort_while_preparing_still_accounts_for_every_scenario() {
    // --modules without a modules.dep: the kernel cannot be prepared.
    let k = default_kernel();
    let dir = scratch("no-modules-dep");
    let results = dir.join("results");
    let out = lab_run(
        &results,
        &[
            "--kernel",
            k["vmlinux"].as_str().unwrap(),
            "--modules",
            dir.to_str().unwrap(),
            "scenarios/smoke",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    let errors = error_lines(&out.stderr);
    assert_eq!(errors.len(), 1, "{errors:?}");
    // The cause is said once, not `X: X`.
    assert_eq!(
        errors[0].matches("--modules must be").count(),
        1,
        "{errors:?}"
    );
    let s = summary(&results);
    assert_eq!(s["complete"], false);
    assert!(s["kernel"].is_null());
    assert!(s["aborted"]["scenario"].is_null());
    assert!(s["aborted"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("kernel: "));
    let scenarios = s["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), names_in("scenarios/smoke").len());
    assert!(scenarios.iter().all(|sc| sc["verdict"] == "not_run"));
    let junit = std::fs::read_to_string(results.join("latest/junit.xml")).unwrap();
    assert!(testcase(&junit, "lab-run-aborted").contains("<error "));
    assert!(Path::new(&results.join("latest")).exists());
}

/// A panic in the lab's own code while a scenario runs (forced through the
/// lab's test hook) still leaves a complete summary: that scenario an
/// error naming the panic, the rest judged or `not_run` with the abort's
/// reason, and exit 3. Before, the poisoned summary lock took every other
/// worker down and `lab` ended without a summary.
#[test]
fn a_panicking_worker_leaves_a_complete_summary_and_exit_3() {
    let results = scratch("honest-panic").join("results");
    let out = lab_env(
        &[
            "run",
            "--results",
            results.to_str().unwrap(),
            "-j",
            "2",
            "--only",
            "arena-mmap-readback",
            "scenarios/smoke",
            "scenarios/arena",
        ],
        &[("ARENA_LAB_TEST_PANIC_IN", Path::new("arena-mmap-readback"))],
    );
    assert_eq!(out.status.code(), Some(3));
    let s = summary(&results);
    assert_eq!(s["planned"], 1, "{s}");
    let sc = &s["scenarios"][0];
    assert_eq!(sc["verdict"], "error", "{sc}");
    let reason = sc["reason"].as_str().unwrap();
    assert!(reason.contains("the lab itself panicked"), "{reason}");
    assert!(s["aborted"]["reason"]
        .as_str()
        .unwrap()
        .contains("panicked"));
    assert_eq!(s["complete"], false);
    let junit = std::fs::read_to_string(results.join("latest/junit.xml")).unwrap();
    assert!(junit.contains("lab-run-aborted"), "{junit}");
}
