//! End-to-end: seeds replay (same seed, same recorded choices),
//! `--until-fail` stops at the first failure and prints a reproduce line,
//! and that line (and `lab repro`) replays the failing attempt's seed.

mod common;

use std::path::Path;

use arena_protocol::seed;
use common::*;

const SHUFFLE: &str = "runner/tests/fixtures/repeat/shuffle-replay.yaml";
const ORDER: &str = "runner/tests/fixtures/repeat/order-dependent.yaml";

/// Every `choices` array of the step_ended events of `events.jsonl`, by step path.
fn recorded_choices(events: &Path) -> Vec<(String, serde_json::Value)> {
    std::fs::read_to_string(events)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "step_ended" && !v["data"]["choices"].is_null())
        .map(|v| {
            (
                v["path"].as_str().unwrap().to_owned(),
                v["data"]["choices"].clone(),
            )
        })
        .collect()
}

#[test]
fn the_same_seed_records_the_same_choices() {
    let dir = scratch("repeat-replay");
    let mut runs = Vec::new();
    for n in ["a", "b"] {
        let results = dir.join(n);
        let out = lab_run(&results, &["--seed", "4242", SHUFFLE]);
        assert_eq!(out.status.code(), Some(0));
        runs.push(recorded_choices(
            &results.join("latest/shuffle-replay/events.jsonl"),
        ));
    }
    // Both top-level touches and the threads step recorded their choices.
    let paths: Vec<&str> = runs[0].iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["2", "3", "4"]);
    assert_eq!(runs[0], runs[1]);
    let order = &runs[0][0].1[0]["order"];
    let mut pages: Vec<u64> = serde_json::from_value(order.clone()).unwrap();
    assert_ne!(pages, (0..16).collect::<Vec<_>>(), "not shuffled: {order}");
    pages.sort_unstable();
    assert_eq!(pages, (0..16).collect::<Vec<_>>());
    let threads = &runs[0][2].1[0];
    assert_eq!(threads["start_order"].as_array().unwrap().len(), 3);
    for w in threads["workers"].as_array().unwrap() {
        // Two iterations: two shuffled touches and two jitter values each.
        assert_eq!(w["choices"].as_array().unwrap().len(), 2, "{w}");
        assert_eq!(w["jitter_us"].as_array().unwrap().len(), 2, "{w}");
    }
}

/// Whether `order-dependent` passes under an attempt's run seed: its touch
/// draws the first seed of the scenario's stream, and passes only if the
/// permutation of its two pages starts with page 1 (the unmapped one).
fn order_dependent_passes(run_seed: u64) -> bool {
    let mut stream = seed::scenario_seed(run_seed, "order-dependent");
    seed::permutation(seed::draw(&mut stream), 2)[0] == 1
}

#[test]
fn until_fail_stops_at_the_failure_and_its_reproduce_line_replays_it() {
    // A run seed whose first attempt passes and second fails, so the test
    // knows what to expect (two VMs) instead of waiting for luck.
    let run_seed = (1..)
        .find(|&s| {
            order_dependent_passes(seed::attempt_seed(s, 1))
                && !order_dependent_passes(seed::attempt_seed(s, 2))
        })
        .unwrap();
    let dir = scratch("repeat-until-fail");
    let results = dir.join("first");
    let s = run_seed.to_string();
    let out = lab_run(
        &results,
        &["--seed", &s, "--until-fail", "--max-time", "60s", ORDER],
    );
    assert_eq!(out.status.code(), Some(1));
    let sum = summary(&results);
    let per = &sum["per_scenario"][0];
    assert_eq!(per["attempts"], 2, "{per}");
    assert_eq!(per["failures"], 1);
    assert_eq!(per["failure_rate"], 0.5);
    let failing = &sum["scenarios"][1];
    assert_eq!(failing["attempt"], 2);
    assert_eq!(failing["verdict"], "fail");
    assert_eq!(failing["dir"], "order-dependent/attempt-2");
    assert_eq!(per["failing_seeds"][0], failing["seed"]);
    let reason = failing["reason"].as_str().unwrap();
    assert!(reason.contains("first in the shuffled order"), "{reason}");
    assert!(results
        .join("latest/order-dependent/attempt-2/scenario.yaml")
        .is_file());

    // The reproduce line, run as printed (results elsewhere).
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("reproduce: lab "))
        .expect("a reproduce line");
    let attempt_seed = seed::attempt_seed(run_seed, 2).to_string();
    // The exact kernel (the default Debian kernel, pinned to the release
    // that ran) and its sha256, the backend and the timeouts come along.
    let sha = sum["kernel"]["sha256"].as_str().unwrap();
    let release = sum["kernel"]["release"].as_str().unwrap();
    let pinned = release.split('+').next().unwrap();
    assert!(
        line.starts_with(&format!(
            "run --kernel debian:{pinned} --kernel-sha256 {sha} --backend "
        )),
        "{line}"
    );
    assert!(
        line.ends_with(&format!(
            "--seed {attempt_seed} --vcpus {} --memory-mib {} --only order-dependent {ORDER}",
            failing["vm"]["vcpus"], failing["vm"]["memory_mib"]
        )),
        "{line}"
    );
    let words: Vec<&str> = line.split(' ').collect();
    let again = dir.join("again");
    let mut args = vec![words[0], "--results", again.to_str().unwrap()];
    args.extend_from_slice(&words[1..]);
    let out = lab(&args);
    assert_eq!(out.status.code(), Some(1));
    let replay = summary(&again);
    assert_eq!(replay["scenarios"][0]["seed"], failing["seed"]);
    assert_eq!(replay["scenarios"][0]["verdict"], "fail");

    // `lab repro` of the scenario folder replays its failing attempt.
    let run_dir = std::fs::canonicalize(results.join("latest")).unwrap();
    let repro = dir.join("repro");
    let out = lab(&[
        "repro",
        "--results",
        repro.to_str().unwrap(),
        run_dir.join("order-dependent").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let replay = summary(&repro);
    assert_eq!(replay["scenarios"][0]["seed"], failing["seed"]);
    assert_eq!(replay["scenarios"][0]["verdict"], "fail");

    // A run whose kernel is no longer there as recorded (a rebuilt tree):
    // refused with both digests, exit 2; `--any-kernel` runs it anyway.
    let recorded = run_dir.join("summary.json");
    let text = std::fs::read_to_string(&recorded).unwrap();
    std::fs::write(&recorded, text.replace(sha, &"0".repeat(64))).unwrap();
    let refused = dir.join("refused");
    let folder = run_dir.join("order-dependent");
    let out = lab(&[
        "repro",
        "--results",
        refused.to_str().unwrap(),
        folder.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(sha) && err.contains(&"0".repeat(64)), "{err}");
    let out = lab(&[
        "repro",
        "--any-kernel",
        "--results",
        refused.to_str().unwrap(),
        folder.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
