//! `lab compare` and `lab list --shard`: the nightly gate's pieces that need
//! no VM, plus one real pair of runs in which a scenario flips.

mod common;

use std::path::Path;

use common::*;

/// A run folder with a summary.json holding `scenarios` (name, verdict, duration_s).
fn fake_run(root: &Path, id: &str, scenarios: &[(&str, &str, f64)]) -> std::path::PathBuf {
    let dir = root.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let list: Vec<_> = scenarios
        .iter()
        .map(|(n, v, d)| serde_json::json!({"name": n, "verdict": v, "duration_s": d}))
        .collect();
    let s = serde_json::json!({"schema": 1, "run_id": id, "complete": true, "scenarios": list});
    std::fs::write(dir.join("summary.json"), s.to_string()).unwrap();
    dir
}

#[test]
fn flipped_scenario_is_a_regression_and_exits_1() {
    let root = scratch("compare-synthetic");
    let base = fake_run(
        &root,
        "20260101-000000",
        &[
            ("a", "pass", 10.0),
            ("b", "fail", 5.0),
            ("gone", "pass", 1.0),
        ],
    );
    let new = fake_run(
        &root,
        "20260102-000000",
        &[
            ("a", "timeout", 30.0),
            ("b", "pass", 5.0),
            ("fresh", "pass", 1.0),
        ],
    );
    let out = lab(&["compare", base.to_str().unwrap(), new.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("## Regressions"), "{stdout}");
    assert!(stdout.contains("| a | pass | timeout |"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(new.join("compare.json")).unwrap()).unwrap();
    assert_eq!(json["regressions"][0]["name"], "a");
    assert_eq!(json["fixed"][0]["name"], "b");
    assert_eq!(json["added"][0]["name"], "fresh");
    assert_eq!(json["removed"][0]["name"], "gone");
    assert_eq!(json["durations"][0]["name"], "a");
    assert!(new.join("compare.md").is_file());

    // A run against itself has no regression: exit 0; --out is honoured.
    let out_dir = root.join("report");
    let same = lab(&[
        "compare",
        base.to_str().unwrap(),
        base.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(same.status.code(), Some(0));
    assert!(out_dir.join("compare.json").is_file());
    // --history picks the last two runs (by name; `report` has no summary).
    let hist = lab(&["compare", "--history", root.to_str().unwrap()]);
    assert_eq!(hist.status.code(), Some(1));
}

#[test]
fn bad_compare_input_exits_2() {
    let root = scratch("compare-bad");
    let ok = fake_run(&root, "r1", &[("a", "pass", 1.0)]);
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for args in [
        vec!["compare", ok.to_str().unwrap(), empty.to_str().unwrap()],
        vec!["compare", "--history", empty.to_str().unwrap()],
        vec![
            "compare",
            ok.to_str().unwrap(),
            ok.to_str().unwrap(),
            "--duration-threshold",
            "fast",
        ],
        vec!["compare", ok.to_str().unwrap()],
    ] {
        assert_eq!(lab(&args).status.code(), Some(2), "{args:?}");
    }
}

fn listed(args: &[&str]) -> Vec<String> {
    let out = lab(args);
    assert_eq!(out.status.code(), Some(0));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn list_shards_cover_the_catalogue_exactly_once() {
    let mut all = listed(&["list", "scenarios"]);
    assert!(all.len() > 3);
    let mut shards = listed(&["list", "scenarios", "--shard", "1/2"]);
    let second = listed(&["list", "scenarios", "--shard", "2/2"]);
    assert!(!shards.is_empty() && !second.is_empty());
    shards.extend(second);
    all.sort();
    shards.sort();
    assert_eq!(all, shards);
    // With a history (balanced by time) too.
    let root = scratch("shard-history");
    let timed: Vec<(&str, &str, f64)> = all
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), "pass", 1.0 + (i % 5) as f64 * 7.0))
        .collect();
    fake_run(&root, "20260101-000000", &timed);
    let h = root.to_str().unwrap();
    let mut shards: Vec<String> = (1..=3)
        .flat_map(|i| {
            let s = format!("{i}/3");
            listed(&["list", "scenarios", "--shard", &s, "--history", h])
        })
        .collect();
    shards.sort();
    assert_eq!(all, shards);
    assert_eq!(
        lab(&["list", "scenarios", "--shard", "3/2"]).status.code(),
        Some(2)
    );
}

/// Boots two VMs: the same scenario name passes in BASE and fails in NEW.
#[test]
fn real_runs_where_a_scenario_flips() {
    let dir = scratch("compare-real");
    let good = dir.join("good");
    let bad = dir.join("bad");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::create_dir_all(&bad).unwrap();
    let head = "name: flips\nsteps:\n  - arena: { id: a, pages: 4 }\n  - mmap: { arena: a }\n  - touch: { arena: a, page: 1, op: write, value: 2 }\n";
    let f1 = scenario(
        &good,
        "flips",
        &format!("{head}  - touch: {{ arena: a, page: 1, op: read, expect: {{ value: 2 }} }}\n"),
    );
    let f2 = scenario(
        &bad,
        "flips",
        &format!("{head}  - touch: {{ arena: a, page: 1, op: read, expect: {{ value: 1 }} }}\n"),
    );
    let results = dir.join("results");
    assert_eq!(
        lab_run(&results, &["--quiet", f1.to_str().unwrap()])
            .status
            .code(),
        Some(0)
    );
    // Run ids have a one-second resolution; keep the two apart in time order.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = lab_run(&results, &[f2.to_str().unwrap()]);
    assert_eq!(second.status.code(), Some(1));
    let ktap = std::fs::read_to_string(results.join("latest/results.ktap")).unwrap();
    assert!(ktap.starts_with("KTAP version 1\n"), "{ktap}");
    assert!(ktap.contains("not ok 1 flips # FAIL"), "{ktap}");
    let out = lab(&["compare", "--history", results.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| flips | pass | fail |"), "{stdout}");
}
