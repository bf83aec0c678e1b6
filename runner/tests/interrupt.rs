//! Ctrl-C during `lab run`: exit 130, the VM gone, the results honest
//! (interrupted, the scenarios `not_run`), never green.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            out.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    out
}

#[test]
fn sigint_kills_the_vm_and_marks_the_run_interrupted() {
    let dir = scratch("interrupt");
    let a = scenario(
        &dir,
        "sleepy",
        "name: sleepy\ntimeout_s: 600\nsteps:\n  - sleep: { ms: 600000 }\n",
    );
    let b = scenario(&dir, "later", "name: later\nsteps:\n  - sleep: { ms: 1 }\n");
    let results = dir.join("results");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["run", "--results", results.to_str().unwrap()])
        .args([a.to_str().unwrap(), b.to_str().unwrap()])
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the sleep step runs in the guest.
    let events = results.join("latest/sleepy/events.jsonl");
    let t0 = Instant::now();
    while !std::fs::read_to_string(&events).is_ok_and(|t| t.contains("step_started")) {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "never got to the step"
        );
        assert!(child.try_wait().unwrap().is_none(), "lab ended early");
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let killed = Instant::now();
    let out = child.wait_with_output().unwrap();
    // The VM is killed, not waited for (its step sleeps for 600 s).
    assert!(
        killed.elapsed() < Duration::from_secs(60),
        "{:?}",
        killed.elapsed()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(out.status.code(), Some(130));
    assert!(stdout.contains("interrupted after 0/2"), "{stdout}");
    let s = summary(&results);
    assert_eq!(s["interrupted"], true);
    assert_eq!(s["complete"], false);
    assert!(s["aborted"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("interrupted (SIGINT)"));
    for sc in s["scenarios"].as_array().unwrap() {
        assert_eq!(sc["verdict"], "not_run");
        assert_eq!(sc["reason"], "interrupted");
    }
    // No VM left: its command line names the scenario's console log.
    let console = results.join("latest/sleepy/console.log");
    let console = std::fs::canonicalize(&console).unwrap_or(console);
    let left = processes_mentioning(console.to_str().unwrap());
    assert!(left.is_empty(), "VMs left: {left:?}");
    let junit = std::fs::read_to_string(results.join("latest/junit.xml")).unwrap();
    assert!(junit.contains("lab-run-aborted"), "{junit}");
    let ktap = std::fs::read_to_string(results.join("latest/results.ktap")).unwrap();
    assert!(ktap.contains("not ok 3 lab-run-aborted"), "{ktap}");
}
