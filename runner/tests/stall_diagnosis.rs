//! A stall is diagnosed, not only timed out: when the host's stall clock
//! runs out, PID 1 reports the scenario's tasks (role, state, wait channel,
//! kernel stack) and has the kernel dump its blocked tasks; the verdict
//! says whether the kernel showed the hang, and where the tasks wait.

mod common;

use common::*;

#[test]
fn a_stalled_worker_is_diagnosed_with_its_role_and_where_it_waits() {
    // Two `waiter` processes wait in the kernel (a recv on a socket nobody
    // writes to) far past timeout_s: the host sees no progress for 5 s.
    let (out, results) = run_yaml(
        "stall-diagnosis",
        "name: stall-diagnosis\ntimeout_s: 5\nsteps:\n  - processes:\n      roles:\n        - name: waiter\n          count: 2\n          steps:\n            - sleep: { ms: 600000, socket: true }\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let s = summary(&results);
    let sc = &s["scenarios"][0];
    let reason = sc["reason"].as_str().unwrap();
    let title = reason.lines().next().unwrap();
    assert_eq!(sc["verdict"], "timeout", "{reason}");
    assert!(
        title.starts_with(
            "stalled for 5 s at step 1/1 (processes, stall-diagnosis.yaml:4), iteration 1/1 in 2 of 2 workers"
        ),
        "{title}"
    );
    assert!(title.contains("; no kernel evidence: "), "{title}");
    // It names the workers by role and where they wait (6.12 inlines
    // unix_stream_data_wait into unix_stream_read_generic).
    assert!(
        title.contains("(waiter 0, iteration 1) S in unix_stream_"),
        "{title}"
    );
    assert!(
        title.contains("(waiter 1, iteration 1) S in unix_stream_"),
        "{title}"
    );

    let d = &sc["diagnosis"];
    assert_eq!(d["kernel_evidence"], false, "{d}");
    let tasks = d["guest"]["tasks"].as_array().expect("the agent's tasks");
    let waiters: Vec<&serde_json::Value> = tasks.iter().filter(|t| t["role"] == "waiter").collect();
    assert_eq!(waiters.len(), 2, "{d}");
    for w in &waiters {
        assert_eq!(w["state"], "S", "{w}");
        assert!(
            w["wchan"].as_str().unwrap().starts_with("unix_stream_"),
            "{w}"
        );
        assert_eq!(w["iteration"], 1, "{w}");
        let stack = w["stack"].as_array().unwrap();
        assert!(
            stack
                .iter()
                .any(|f| f.as_str().unwrap().starts_with("sock_recvmsg+")),
            "{w}"
        );
    }
    assert_eq!(d["guest"]["sysrq"], serde_json::json!(["w", "l"]), "{d}");

    let dir = results.join("latest/stall-diagnosis");
    let text = std::fs::read_to_string(dir.join("diagnosis.txt")).unwrap();
    assert!(text.starts_with("finding: no kernel evidence"), "{text}");
    assert!(
        text.contains(" waiter 1, worker 1, iteration 1: state S, wchan unix_stream_"),
        "{text}"
    );
    assert!(text.contains("\n    sock_recvmsg+0x"), "{text}");
    // The kernel's dumps reached the console before the VM was killed.
    let console = std::fs::read_to_string(dir.join("console.log")).unwrap();
    assert!(console.contains("sysrq: Show Blocked State"), "{console}");
    assert!(
        console.contains("kernel hang detectors: hung_task_timeout_secs=5"),
        "{console}"
    );
}
