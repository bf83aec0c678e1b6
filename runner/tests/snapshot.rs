//! Boot once, restore per scenario, on the real backend (QEMU here): every
//! scenario starts from the shape's snapshot, a scenario that dirties the
//! guest leaves nothing to the next one, `--cold` gives the same verdicts,
//! and a snapshot that is corrupt or does not restore never ends as a wrong
//! verdict. Snapshots go to a scratch folder (`ARENA_LAB_SNAPSHOTS`), so the
//! tests that break them do not disturb others.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

const FIXTURES: &str = "runner/tests/fixtures/snapshot";

/// `lab run --results RESULTS ARGS` with snapshots under `snaps`.
fn run_with(snaps: &Path, results: &Path, args: &[&str]) -> Output {
    let mut all = vec!["run", "--results", results.to_str().unwrap()];
    all.extend_from_slice(args);
    lab_env(&all, &[("ARENA_LAB_SNAPSHOTS", snaps)])
}

/// (name, verdict, start kind, snapshot key) of each scenario of the latest run.
fn starts(results: &Path) -> Vec<(String, String, String, String)> {
    summary(results)["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let field = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            (
                field(&s["name"]),
                field(&s["verdict"]),
                field(&s["start"]["kind"]),
                field(&s["start"]["snapshot"]),
            )
        })
        .collect()
}

#[test]
fn restored_scenarios_are_isolated_and_match_cold_boots() {
    let dir = scratch("snapshot-isolation");
    let snaps = dir.join("snapshots");
    let results = dir.join("results");

    // The check has teeth: in one VM, a changed sysctl is seen.
    let teeth = scenario(
        &dir,
        "teeth",
        "name: teeth
tags: [lab_selftest]
vm: { vcpus: 1, memory_mib: 256 }
timeout_s: 30
steps:
  - sysctl: { path: vm.max_map_count, value: \"1000\" }
  - sysctl: { path: vm.max_map_count, expect: \"65530\" }
",
    );
    let out = run_with(&snaps, &dir.join("teeth"), &[teeth.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        first_reason(&dir.join("teeth")).contains("= 1000, expected 65530"),
        "{}",
        first_reason(&dir.join("teeth"))
    );

    // a-dirty then b-clean, one at a time, from the same snapshot (the
    // teeth run made it); c-other-shape from its own.
    let out = run_with(&snaps, &results, &["-j1", FIXTURES]);
    assert_eq!(out.status.code(), Some(0));
    let restored = starts(&results);
    let names: Vec<&str> = restored.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(names, ["a-dirty", "b-clean", "c-other-shape"]);
    for (name, verdict, kind, key) in &restored {
        assert_eq!(verdict, "pass", "{name}");
        assert_eq!(kind, "restored", "{name}");
        assert_eq!(key.len(), 24, "{name}: {key}");
    }
    assert_eq!(restored[0].3, restored[1].3, "one shape, one snapshot");
    assert_ne!(
        restored[1].3, restored[2].3,
        "another shape, another snapshot"
    );
    let s = summary(&results);
    let b = &s["scenarios"][1];
    assert!(b["start"]["restore_s"].as_f64().unwrap() > 0.0, "{b}");
    // The restored console reads as a cold boot's: the boot, then the scenario.
    let console = std::fs::read_to_string(results.join("latest/b-clean/console.log")).unwrap();
    let boot = console.find("Linux version").expect("boot log kept");
    let ran = console
        .find("running scenario b-clean")
        .expect("scenario log");
    assert!(boot < ran);

    // The same verdicts booting every scenario.
    let cold = dir.join("cold");
    let out = run_with(&snaps, &cold, &["-j1", "--cold", FIXTURES]);
    assert_eq!(out.status.code(), Some(0));
    for ((name, verdict, kind, key), warm) in starts(&cold).iter().zip(&restored) {
        assert_eq!((name, verdict), (&warm.0, &warm.1));
        assert_eq!(kind, "cold", "{name}");
        assert!(key.is_empty(), "{name}");
    }
}

#[test]
fn a_corrupt_snapshot_is_made_again_and_a_broken_one_boots_cold() {
    let dir = scratch("snapshot-corrupt");
    let snaps = dir.join("snapshots");
    let clean = root().join(FIXTURES).join("b-clean.yaml");
    let clean = clean.to_str().unwrap();

    let first = dir.join("first");
    let out = run_with(&snaps, &first, &[clean]);
    assert_eq!(out.status.code(), Some(0));
    let key = starts(&first)[0].3.clone();
    let state = snaps.join(&key).join("state");
    let meta_file = snaps.join(&key).join("meta.json");

    // One flipped byte: the checksum catches it, the snapshot is made again.
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&state, &bytes).unwrap();
    let second = dir.join("second");
    let out = run_with(&snaps, &second, &[clean]);
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "snapshot {key} is unusable (state checksum mismatch): making it again"
        )),
        "{stderr}"
    );
    assert_eq!(starts(&second)[0].2, "restored");

    // A state that passes its checksum but does not restore: another
    // shape's (two vCPUs), with its own checksum, under this key. The
    // scenario boots cold, with the same verdict.
    let other = dir.join("other");
    let other_yaml = root().join(FIXTURES).join("c-other-shape.yaml");
    let out = run_with(&snaps, &other, &[other_yaml.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let other_key = starts(&other)[0].3.clone();
    assert_ne!(other_key, key);
    std::fs::copy(snaps.join(&other_key).join("state"), &state).unwrap();
    let theirs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(snaps.join(&other_key).join("meta.json")).unwrap())
            .unwrap();
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_file).unwrap()).unwrap();
    meta["state_bytes"] = theirs["state_bytes"].clone();
    meta["state_sha256"] = theirs["state_sha256"].clone();
    std::fs::write(&meta_file, serde_json::to_vec(&meta).unwrap()).unwrap();
    let third = dir.join("third");
    let out = run_with(&snaps, &third, &[clean]);
    assert_eq!(out.status.code(), Some(0));
    let s = summary(&third);
    let sc = &s["scenarios"][0];
    assert_eq!(sc["verdict"], "pass", "{sc}");
    assert_eq!(sc["start"]["kind"], "cold", "{sc}");
    assert!(
        sc["start"]["why"]
            .as_str()
            .unwrap()
            .starts_with("the restore failed"),
        "{sc}"
    );
    assert!(!sc["retried_after"].is_null(), "{sc}");
}

/// A scenario that crashes the kernel (sysrq `c`) ends within seconds as a
/// `fail` naming the crash, and the next scenario, restored from the same
/// snapshot, finds a kernel that never crashed.
#[test]
fn a_kernel_crash_does_not_reach_the_next_restored_scenario() {
    let dir = scratch("snapshot-crash");
    let snaps = dir.join("snapshots");
    let files = dir.join("scenarios");
    std::fs::create_dir_all(&files).unwrap();
    let vm = "vm: { vcpus: 1, memory_mib: 256 }\ntimeout_s: 60\n";
    scenario(
        &files,
        "a-crash",
        &format!("name: a-crash\ntags: [lab_selftest]\n{vm}steps:\n  - sysrq: {{ key: c }}\n  - sleep: {{ ms: 60000 }}\n"),
    );
    scenario(
        &files,
        "b-after",
        &format!(
            "name: b-after\ntags: [lab_selftest]\n{vm}steps:\n  - arena: {{ id: a, pages: 4 }}\n  - mmap: {{ arena: a }}\n  - touch: {{ arena: a, page: 0, count: 4, op: write }}\n  - expect_kernel_log: {{ not_contains: ['sysrq', 'Kernel panic', 'Oops'] }}\n"
        ),
    );
    let results = dir.join("results");
    let out = run_with(&snaps, &results, &["-j1", files.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let s = summary(&results);
    let crash = &s["scenarios"][0];
    assert_eq!(crash["verdict"], "fail", "{crash}");
    assert!(
        crash["reason"]
            .as_str()
            .unwrap()
            .starts_with("kernel splat: "),
        "{crash}"
    );
    assert!(crash["duration_s"].as_f64().unwrap() < 15.0, "{crash}");
    let after = &s["scenarios"][1];
    assert_eq!(after["verdict"], "pass", "{after}");
    assert_eq!(after["start"]["kind"], "restored", "{after}");
    assert_eq!(after["start"]["snapshot"], crash["start"]["snapshot"]);
}
