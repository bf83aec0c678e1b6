//! End-to-end: the real Debian kernel booted under QEMU runs the smoke
//! scenarios and the failure paths give the documented verdicts and exit codes.

mod common;

use common::*;

#[test]
fn smoke_scenarios_pass_with_junit_and_console_logs() {
    let results = scratch("smoke");
    let out = lab_run(&results, &["scenarios/smoke"]);
    assert_eq!(out.status.code(), Some(0));
    let junit = std::fs::read_to_string(results.join("latest/junit.xml")).unwrap();
    let smoke: Vec<_> = std::fs::read_dir(root().join("scenarios/smoke"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        .collect();
    assert!(!smoke.is_empty());
    for e in &smoke {
        let text = std::fs::read_to_string(e.path()).unwrap();
        let name = text.lines().find_map(|l| l.strip_prefix("name: ")).unwrap();
        assert!(
            junit.contains(&format!("name=\"{name}\"")),
            "{name} missing from junit"
        );
        let console =
            std::fs::read_to_string(results.join("latest").join(name).join("console.log")).unwrap();
        assert!(
            console.contains("Linux version 6."),
            "{name}: no kernel log"
        );
    }
    assert!(junit.contains("failures=\"0\""), "{junit}");
    let s = summary(&results);
    assert_eq!(s["complete"], true);
    assert_eq!(s["backend"], "qemu");
    assert!(s["kernel"]["sha256"].as_str().unwrap().len() == 64);
    assert!(s["kernel"]["release"]
        .as_str()
        .unwrap()
        .starts_with("6.12."));
}

#[test]
fn wrong_expectation_fails_with_expected_vs_actual() {
    let (out, results) = run_yaml(
        "wrong",
        "name: wrong-expectation\nsteps:\n  - arena: { id: a, pages: 4 }\n  - mmap: { arena: a }\n  - touch: { arena: a, page: 1, op: write, value: 2 }\n  - touch: { arena: a, page: 1, op: read, expect: { value: 1 } }\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let s = summary(&results);
    let sc = &s["scenarios"][0];
    assert_eq!(sc["verdict"], "fail");
    let reason = sc["reason"].as_str().unwrap();
    // The fourth of four steps, on line 6 (issue 21: not `step 3`).
    assert!(
        reason.starts_with("step 4/4 (touch, wrong.yaml:6): "),
        "{reason}"
    );
    assert!(reason.contains("expected 0x1, read 0x2"), "{reason}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAIL    wrong-expectation"), "{stdout}");
}

#[test]
fn crashing_step_is_reported_not_lost() {
    // The worker dies of a signal in the middle of a scenario (the `crash`
    // step raises it): the verdict names the signal and the step.
    let (out, results) = run_yaml(
        "crash",
        "name: crash\nsteps:\n  - arena: { id: a, pages: 4 }\n  - mmap: { arena: a }\n  - touch: { arena: a, page: 2, op: write }\n  - crash: { signal: SIGSEGV }\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let reason = first_reason(&results);
    assert!(
        reason.contains("agent worker killed by signal 11 (SIGSEGV)"),
        "{reason}"
    );
    assert!(
        reason.contains("during step 4/4 (crash, crash.yaml:6)"),
        "{reason}"
    );
}

#[test]
fn hanging_step_times_out_and_keeps_the_console_log() {
    let (out, results) = run_yaml(
        "hang",
        "name: hang\ntimeout_s: 3\nsteps:\n  - sleep: { ms: 600000 }\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let s = summary(&results);
    let sc = &s["scenarios"][0];
    assert_eq!(sc["verdict"], "timeout");
    let reason = sc["reason"].as_str().unwrap();
    // Judged a stall (heartbeats came, nothing advanced), not the hard cap.
    assert!(
        reason.contains("at step 1/1 (sleep, hang.yaml:4)"),
        "{reason}"
    );
    assert!(reason.starts_with("stalled for 3 s"), "{reason}");
    assert!(reason.contains("made no progress"), "{reason}");
    // Ended by the limit, not by the 600 s sleep (generous bound: limit + boot + grace).
    assert!(sc["duration_s"].as_f64().unwrap() < 3.0 + 120.0 + 10.0);
    let console = std::fs::read_to_string(results.join("latest/hang/console.log")).unwrap();
    assert!(console.contains("Linux version"), "console log lost");
}

#[test]
fn malformed_yaml_exits_2_naming_file_and_line() {
    let dir = scratch("badyaml");
    let f = scenario(&dir, "bad", "name: bad\nsteps:\n  - frobnicate: { x: 1 }\n");
    let out = lab(&["validate", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}:3", f.display())), "{stderr}");
    assert!(stderr.contains("frobnicate"), "{stderr}");
    // `run` refuses the same file before booting anything.
    let out = lab_run(&dir.join("r"), &[f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let out = lab(&["validate", dir.join("missing.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_kernel_that_is_not_a_kernel_exits_3() {
    let dir = scratch("notkernel");
    let k = dir.join("bzImage");
    std::fs::write(&k, "definitely not a kernel").unwrap();
    let out = lab_run(
        &dir.join("r"),
        &["--kernel", k.to_str().unwrap(), "scenarios/smoke"],
    );
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a Linux kernel image"), "{stderr}");
}

#[test]
fn a_kernel_dying_before_hello_is_retried_twice_then_infrastructure() {
    // No such init: the kernel panics during boot, every time.
    let results = scratch("boot-panic");
    let out = lab_run(
        &results,
        &[
            "--append",
            "rdinit=/nonexistent",
            "scenarios/smoke/arena-mmap-readback.yaml",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    let sc = &summary(&results)["scenarios"][0];
    assert_eq!(sc["verdict"], "error");
    assert_eq!(sc["retried_after"]["kind"], "no_hello");
    let dir = results.join("latest/arena-mmap-readback");
    for kept in [
        "attempt1-console.log",
        "attempt2-console.log",
        "console.log",
    ] {
        let text = std::fs::read_to_string(dir.join(kept)).unwrap();
        assert!(text.contains("Kernel panic"), "{kept}: {text}");
    }
    assert!(
        !dir.join("attempt3-console.log").exists(),
        "three boots at most"
    );
}

#[test]
fn a_kernel_without_its_virtio_modules_fails_fast_naming_the_driver() {
    // Debian's bzImage as a "user kernel" without --modules: virtio_mmio is a
    // module there, so the results channel can never appear.
    let info = lab(&["kernel", "info"]);
    assert_eq!(info.status.code(), Some(0));
    let k: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let bzimage = k["bzimage"].as_str().unwrap().to_owned();
    let results = scratch("no-modules");
    // The preflight reads the config beside it and refuses before any boot.
    let out = lab_run(
        &results,
        &[
            "--kernel",
            &bzimage,
            "scenarios/smoke/arena-mmap-readback.yaml",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "missing CONFIG_VIRTIO_MMIO (a module, and the kernel has no modules directory"
        ),
        "{stderr}"
    );
    assert!(
        !results
            .join("latest/arena-mmap-readback/console.log")
            .exists(),
        "no VM may boot"
    );
    assert_eq!(
        summary(&results)["scenarios"][0]["verdict"],
        "not_run",
        "the refusal is in the results too"
    );
    // Booted anyway, the agent finds out and says so, once.
    let out = lab_run(
        &results,
        &[
            "--no-preflight",
            "--kernel",
            &bzimage,
            "scenarios/smoke/arena-mmap-readback.yaml",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("VIRTIO_MMIO"), "{stderr}");
    // The agent gave up: that boot is never retried. (A retry can only come
    // from a first boot that died before the agent ran, e.g. the TCG
    // text-patching oops; then the first attempt has no agent FATAL line.)
    let dir = results.join("latest/arena-mmap-readback");
    let last = std::fs::read_to_string(dir.join("console.log")).unwrap();
    assert!(last.contains("arena-agent: FATAL"), "{last}");
    if !summary(&results)["scenarios"][0]["retried_after"].is_null() {
        let first = std::fs::read_to_string(dir.join("attempt1-console.log")).unwrap();
        assert!(
            !first.contains("arena-agent: FATAL"),
            "retried after the agent gave up"
        );
    }
}
