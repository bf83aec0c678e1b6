//! `lab ab`: the same kernel twice is `same` (exit 0 with `--expect same`),
//! ab.json and ab.md say what ran; `--analyze` of an ab folder whose A runs
//! are made to fail is `fixed` (and an infra entry makes it inconclusive);
//! bad input is exit 2 on one line before anything boots.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const SCENARIO: &str = "runner/tests/fixtures/repeat/shuffle-replay.yaml";

/// The single `ab-*` folder under `results`.
fn ab_dir(results: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(results)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("ab-"))
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Run folders of one side of an ab folder.
fn runs(dir: &Path, side: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(side))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| !p.is_symlink() && p.is_dir())
        .collect();
    v.sort();
    v
}

/// Rewrite every scenario entry of a run's summary.json with `f`.
fn edit_summary(run: &Path, f: impl Fn(&mut serde_json::Value)) {
    let p = run.join("summary.json");
    let mut s = read_json(&p);
    for e in s["scenarios"].as_array_mut().unwrap() {
        f(e);
    }
    std::fs::write(&p, serde_json::to_string_pretty(&s).unwrap()).unwrap();
}

fn analyze(dir: &Path, expect: &str) -> std::process::Output {
    lab(&["ab", "--analyze", dir.to_str().unwrap(), "--expect", expect])
}

#[test]
fn the_same_kernel_twice_is_the_same_and_a_constructed_fix_is_fixed() {
    let dir = scratch("ab-same");
    let results = dir.join("results");
    let out = lab(&[
        "ab",
        "--kernel",
        "debian:6.12",
        "--kernel",
        "debian:6.12",
        "--repeat",
        "3",
        "--expect",
        "same",
        "--results",
        results.to_str().unwrap(),
        SCENARIO,
    ]);
    assert_eq!(out.status.code(), Some(0));
    let ab = ab_dir(&results);
    let json = read_json(&ab.join("ab.json"));
    let rounds = json["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 6);
    // Interleaved A B A B A B, one seed per round for both sides.
    let sides: Vec<&str> = rounds.iter().map(|r| r["side"].as_str().unwrap()).collect();
    assert_eq!(sides, ["A", "B", "A", "B", "A", "B"]);
    for pair in rounds.chunks(2) {
        assert_eq!(pair[0]["seed"], pair[1]["seed"]);
        assert_eq!(pair[0]["exit"], 0);
        assert!(ab
            .join(pair[0]["run"].as_str().unwrap())
            .join("summary.json")
            .is_file());
        assert!(ab
            .join(pair[1]["run"].as_str().unwrap())
            .join("summary.json")
            .is_file());
    }
    assert_ne!(rounds[0]["seed"], rounds[2]["seed"]);
    let a = &json["analysis"];
    assert_eq!(a["verdict"], "same");
    assert_eq!(a["holds"], true);
    assert_eq!(a["exit"], 0);
    let s = &a["scenarios"][0];
    assert_eq!(s["name"], "shuffle-replay");
    assert_eq!(
        (s["a"]["attempts"].as_u64(), s["b"]["attempts"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(s["p_value"], 1.0);
    assert!(a["caveat"].as_str().unwrap().contains("not even 3/3"));
    let md = std::fs::read_to_string(ab.join("ab.md")).unwrap();
    assert!(
        md.contains("| shuffle-replay | 0/3 | 0% (0%–56%) | 0/3 | 0% (0%–56%) | 1 | no significant difference |"),
        "{md}"
    );
    assert!(md.contains("Expected: same: holds (exit 0)"), "{md}");

    // A fix, built from these runs: every A attempt fails, and each run is
    // there twice (6 attempts a side: 6/6 against 0/6 is p = 0.0022).
    let fix = dir.join("fix");
    hard_link_copy(&ab, &fix);
    for side in ["A", "B"] {
        for run in runs(&fix, side) {
            let copy = run.with_file_name(format!(
                "{}-copy",
                run.file_name().unwrap().to_string_lossy()
            ));
            std::process::Command::new("cp")
                .arg("-r")
                .arg(&run)
                .arg(&copy)
                .status()
                .unwrap();
        }
    }
    for run in runs(&fix, "A") {
        // Replace, not write through the hard link into the original.
        let p = run.join("summary.json");
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, text).unwrap();
        edit_summary(&run, |e| {
            e["verdict"] = "fail".into();
            e["reason"] = "planted".into();
        });
    }
    let out = analyze(&fix, "fixed");
    assert_eq!(out.status.code(), Some(0));
    let json = read_json(&fix.join("ab.json"));
    let s = &json["analysis"]["scenarios"][0];
    assert_eq!(
        (s["a"]["failures"].as_u64(), s["a"]["attempts"].as_u64()),
        (Some(6), Some(6))
    );
    assert_eq!(
        (s["b"]["failures"].as_u64(), s["b"]["attempts"].as_u64()),
        (Some(0), Some(6))
    );
    assert_eq!(s["difference"], "b_lower");
    let p = s["p_value"].as_f64().unwrap();
    assert!((p - 0.002_164_502).abs() < 1e-8, "{p}");
    assert_eq!(json["analysis"]["verdict"], "fixed");
    let md = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(md.contains("Expected: fixed: holds (exit 0)"), "{md}");
    assert_eq!(analyze(&fix, "same").status.code(), Some(1));
    assert_eq!(analyze(&fix, "regressed").status.code(), Some(1));
    // The original folder was not touched.
    assert_eq!(
        read_json(&ab.join("ab.json"))["analysis"]["verdict"],
        "same"
    );

    // One attempt the lab could not carry out: inconclusive, exit 3.
    let b = runs(&fix, "B");
    let p = b[0].join("summary.json");
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, text).unwrap();
    edit_summary(&b[0], |e| {
        e["verdict"] = "error".into();
        e["infra"] = true.into();
        e["reason"] = "the VM never said hello".into();
    });
    let out = analyze(&fix, "fixed");
    assert_eq!(out.status.code(), Some(3));
    let json = read_json(&fix.join("ab.json"));
    assert_eq!(json["analysis"]["verdict"], "inconclusive");
    assert_eq!(
        json["analysis"]["infra"][0]["reason"],
        "the VM never said hello"
    );
    let md = std::fs::read_to_string(fix.join("ab.md")).unwrap();
    assert!(md.contains("Errors of the lab itself"), "{md}");
}

#[test]
fn until_stops_at_the_most_rounds_when_nothing_differs() {
    let dir = scratch("ab-until");
    let results = dir.join("results");
    let out = lab(&[
        "ab",
        "--kernel",
        "debian:6.12",
        "--kernel",
        "debian:6.12",
        "--until",
        "0.999",
        "--repeat",
        "2",
        "--results",
        results.to_str().unwrap(),
        SCENARIO,
        "--",
        "--cold",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let json = read_json(&ab_dir(&results).join("ab.json"));
    assert_eq!(json["rounds"].as_array().unwrap().len(), 4);
    assert_eq!(json["run_options"][0], "--cold");
    let stopped = json["stopped"].as_str().unwrap();
    assert!(stopped.contains("not reached in 2 round(s)"), "{stopped}");
}

/// Exit 2 with one line on stderr (clap's own errors add a hint line),
/// and no ab folder.
fn refused(args: &[&str], says: &str) {
    let name: String = says
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(20)
        .collect();
    let dir = scratch(&format!("ab-bad-{name}"));
    let results = dir.join("results");
    let mut all = vec!["ab", "--results", results.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = lab(&all);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("For more information"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains(says), "{err}");
    assert!(!results.exists() || std::fs::read_dir(&results).unwrap().next().is_none());
}

#[test]
fn bad_input_is_refused_before_anything_runs() {
    refused(
        &["--kernel", "debian:6.12", SCENARIO],
        "lab ab compares two kernels: give --kernel A --kernel B (got 1)",
    );
    refused(
        &[
            "--kernel",
            "debian:6.12",
            "--kernel",
            "debian:6.12",
            "--tags",
            "no-such-tag",
            SCENARIO,
        ],
        "no scenario matches the selection",
    );
    refused(
        &[
            "--kernel",
            "debian:6.12",
            "--kernel",
            "debian:6.12",
            "--only",
            "nope",
            SCENARIO,
        ],
        "--only nope: no such scenario",
    );
    refused(
        &[
            "--kernel",
            "debian:6.12",
            "--kernel",
            "/no/such/bzImage",
            SCENARIO,
        ],
        "/no/such/bzImage",
    );
    refused(
        &[
            "--kernel",
            "debian:6.12",
            "--kernel",
            "debian:6.12",
            SCENARIO,
            "--",
            "--seed",
            "1",
        ],
        "--seed after `--`: lab ab sets it for each round",
    );
    refused(
        &[
            "--kernel",
            "debian:6.12",
            "--kernel",
            "debian:6.12",
            SCENARIO,
            "--",
            "--no-such-option",
        ],
        "lab run options after `--`",
    );
    refused(
        &[
            "--kernel",
            "debian:6.12",
            "--kernel",
            "debian:6.12",
            "--until",
            "1.5",
            SCENARIO,
        ],
        "expected a number between 0 and 1",
    );
}
