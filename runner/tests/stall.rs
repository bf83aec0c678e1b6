//! A slow host is not a hung guest: `timeout_s` bounds a stall, so a
//! scenario that keeps progressing may run longer than it (up to the hard
//! cap), and its summary records the host's load.

mod common;

use common::*;

#[test]
fn a_progressing_scenario_outlives_timeout_s() {
    // 8 × 0.7 s = 5.6 s of steps against timeout_s 3: every step start and
    // end is progress, and no stall reaches 3 s.
    let sleeps: String = (0..8).map(|_| "  - sleep: { ms: 700 }\n").collect();
    let (out, results) = run_yaml(
        "progressing",
        &format!("name: progressing\ntimeout_s: 3\nsteps:\n{sleeps}"),
    );
    let s = summary(&results);
    let sc = &s["scenarios"][0];
    assert_eq!(sc["verdict"], "pass", "{}", sc["reason"]);
    assert_eq!(out.status.code(), Some(0));
    let steps = sc["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 8);
    let slept: u64 = steps
        .iter()
        .map(|st| st["duration_ms"].as_u64().unwrap())
        .sum();
    assert!(slept > 3000, "steps took {slept} ms");
    let load = &sc["host_load"];
    assert_eq!(load["loadavg_start"].as_array().unwrap().len(), 3);
    assert_eq!(load["loadavg_end"].as_array().unwrap().len(), 3);
    assert!(load["steal_pct"].as_f64().unwrap() >= 0.0);
}

#[test]
fn a_worker_loop_past_timeout_s_sends_progress_and_passes() {
    // One step of ~5 s against timeout_s 3: only the iterations counted in
    // `progress` keep it from being judged a stall.
    let (out, results) = run_yaml(
        "progress-workers",
        "name: progress-workers\ntimeout_s: 3\nsteps:\n  - processes:\n      count: 2\n      iterations: 1000000\n      duration_ms: 5000\n      steps:\n        - sleep: { ms: 50 }\n",
    );
    let s = summary(&results);
    let sc = &s["scenarios"][0];
    assert_eq!(sc["verdict"], "pass", "{}", sc["reason"]);
    assert_eq!(out.status.code(), Some(0));
    let events =
        std::fs::read_to_string(results.join("latest/progress-workers/events.jsonl")).unwrap();
    let progress: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|m| m["type"] == "progress")
        .collect();
    assert!(progress.len() >= 3, "{events}");
    let last = progress.last().unwrap();
    assert_eq!(last["kind"], "processes");
    assert_eq!(last["workers"]["workers"], 2);
    assert!(last["ticks"].as_u64().unwrap() > 10, "{last}");
}

#[test]
fn a_scenario_that_progresses_forever_ends_at_the_hard_cap() {
    // timeout_s 2: hard cap 8 s. The workers keep progressing for 60 s, so
    // no stall is seen; the agent ends the step at the cap and says how far
    // the workers got.
    let (out, results) = run_yaml(
        "capped",
        "name: capped\ntimeout_s: 2\nsteps:\n  - threads:\n      count: 2\n      iterations: 1000000\n      duration_ms: 60000\n      steps:\n        - sleep: { ms: 50 }\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let s = summary(&results);
    let sc = &s["scenarios"][0];
    assert_eq!(sc["verdict"], "timeout");
    let reason = sc["reason"].as_str().unwrap();
    assert!(
        reason
            .starts_with("step 1/1 (threads, capped.yaml:4): hard cap 8 s reached while still running, iteration "),
        "{reason}"
    );
    assert!(reason.contains("of 2 workers"), "{reason}");
    // Past timeout_s, well short of the 60 s the workers would have run.
    let took = sc["duration_s"].as_f64().unwrap();
    assert!(took < 8.0 + 40.0, "{took}");
}
