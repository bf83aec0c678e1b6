//! Debian's 7.2 (from sid, through the lab's own apt state) as a kernel,
//! pinned by the kernel lock `guest-images/kernels.lock`: the smoke
//! scenarios under QEMU/TCG, the catalogue and 7.2's selftests on exactly
//! the locked kernel (`--kernel debian:7.2.13 --kernel-sha256 <locked>`),
//! never whatever sid has moved on to. A run with the locked kernel in the
//! cache makes no apt call; without it, that exact version is fetched (about
//! 125 MB; 23 s measured) or the test fails saying why it cannot be.
//!
//! Refreshing the lock (newest 7.2 from sid's refreshed lists, newest 6.12
//! from the host's) is explicit: `ARENA_LAB_REFRESH_KERNEL_LOCK=1 cargo test
//! --release -p arena-runner --test debian_7_2` rewrites the lock, then runs
//! these tests on it.

mod common;

use std::sync::OnceLock;

use arena_images::kernel::lock::{self, Lock, Locked};
use arena_images::kernel::Kernel;
use common::*;

/// The lock, refreshed first (once per test binary) when
/// `ARENA_LAB_REFRESH_KERNEL_LOCK=1`.
fn kernel_lock() -> &'static Lock {
    static LOCK: OnceLock<Lock> = OnceLock::new();
    LOCK.get_or_init(|| {
        let path = root().join(lock::PATH_IN_REPO);
        if std::env::var_os("ARENA_LAB_REFRESH_KERNEL_LOCK").is_some_and(|v| v == "1") {
            let before = std::fs::read_to_string(&path).unwrap_or_default();
            let new = lock::refresh(&path, &["7.2", "6.12"])
                .unwrap_or_else(|e| panic!("refreshing {}: {e}", path.display()));
            let after = new.render();
            eprintln!(
                "kernel lock {}: {}\n{after}",
                path.display(),
                if before == after {
                    "unchanged"
                } else {
                    "REWRITTEN (review and commit it)"
                }
            );
            return new;
        }
        Lock::load(&path).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// The locked kernel of `series`, in the cache and checked against the
/// lock's sha256 (fetched at exactly that version if missing), or a panic
/// saying why it cannot be had.
fn locked(series: &str) -> (Locked, Kernel) {
    let l = kernel_lock()
        .get(series)
        .unwrap_or_else(|e| panic!("{e}"))
        .clone();
    let k = lock::resolve(&l).unwrap_or_else(|e| panic!("kernel lock: {e}"));
    (l, k)
}

/// `--kernel debian:X.Y.Z --kernel-sha256 <locked>`: the lab refuses any
/// other kernel (exit 2).
fn kernel_args(l: &Locked) -> Vec<String> {
    vec![
        "--kernel".into(),
        format!("debian:{}", l.spec()),
        "--kernel-sha256".into(),
        l.sha256.clone(),
    ]
}

/// The kernel a run's summary names is the locked one.
fn assert_ran_locked(s: &serde_json::Value, l: &Locked) {
    let k = &s["kernel"];
    assert_eq!(k["sha256"], l.sha256.as_str(), "not the locked kernel: {k}");
    assert_eq!(k["release"], l.release.as_str(), "{k}");
    assert_eq!(k["origin"]["package"], l.package.as_str(), "{k}");
    assert_eq!(k["origin"]["version"], l.version.as_str(), "{k}");
}

#[test]
fn locked_7_2_then_smoke_catalogue_and_selftests_pass_on_it() {
    let (l, k) = locked("7.2");
    assert!(k.release.starts_with("7.2."), "{k:?}");
    assert_eq!(l.suite.as_deref(), Some("sid"));
    assert!(l.package.starts_with("linux-binary-7.2."));
    assert!(l
        .other_packages
        .iter()
        .any(|p| p.starts_with("linux-modules-7.2.")));
    assert!(l.version.starts_with("7.2."));

    // The smoke set, the catalogue and 7.2's own selftests (built from
    // linux-source-7.2 at the kernel's version, with the newest clang):
    // green, with every selftest result in the JUnit and none failed.
    let results = scratch("debian-7.2");
    let mut args = kernel_args(&l);
    args.extend(["scenarios/smoke", "scenarios/arena", "scenarios/selftests"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab_run(&results, &args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_passed_but_known_bugs(&results);
    let s = summary(&results);
    assert_eq!(s["complete"], true);
    assert_ran_locked(&s, &l);
    let junit = std::fs::read_to_string(results.join("latest/junit.xml")).unwrap();
    for test in [
        "arena_spin_lock/arena_spin_lock_1\"",
        "arena_strsearch/arena_strsearch\"",
        "arena_direct_value/one_past_end\"",
        "verifier_arena_globals1",
        "name=\"libarena\"",
        // Ruled out by NR_CPUS, yet listed subtest by subtest (33 on 7.2.13).
        "name=\"libarena/test_buddy_alloc\"",
        "name=\"libarena/parallel_test_spmc_burst\"",
        "name=\"libarena_asan/asan_test_buddy_uaf\"",
    ] {
        assert!(junit.contains(test), "{test} not in the JUnit");
    }
    let libarena_subtests =
        junit.matches("name=\"libarena/").count() + junit.matches("name=\"libarena_asan/").count();
    assert!(
        libarena_subtests >= 30,
        "{libarena_subtests} libarena subtests"
    );
    let selftests: Vec<&serde_json::Value> = s["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|sc| sc["suite"] == "selftests")
        .collect();
    assert_eq!(selftests.len(), 2);
    for sc in selftests {
        for t in sc["testcases"].as_array().unwrap() {
            assert!(t["status"] == "pass" || t["status"] == "skip", "{t}");
        }
    }
}

#[test]
fn unknown_debian_channel_is_invalid_input() {
    let results = scratch("debian-bad");
    let out = lab_run(&results, &["--kernel", "debian:latest", "scenarios/smoke"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown Debian kernel channel"), "{stderr}");
}

/// A kernel that is not the locked one is refused, naming both digests:
/// by the lab (`--kernel-sha256`, exit 2, before any boot) and by the lock.
#[test]
fn a_kernel_other_than_the_locked_one_is_refused() {
    let (l, _) = locked("7.2");
    let results = scratch("debian-wrong-sha");
    let wrong = "0".repeat(64);
    let spec = format!("debian:{}", l.spec());
    let out = lab_run(
        &results,
        &[
            "--kernel",
            &spec,
            "--kernel-sha256",
            &wrong,
            "scenarios/smoke",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&l.sha256) && stderr.contains(&wrong),
        "{stderr}"
    );

    let mut other = l.clone();
    other.sha256 = wrong.clone();
    let err = lock::resolve(&other).unwrap_err().to_string();
    assert!(
        err.contains(&l.sha256) && err.contains(&wrong) && err.contains("refusing it"),
        "{err}"
    );
    assert!(err.contains(lock::REFRESH_COMMAND), "{err}");
}

/// A scenario's `requires`: on 7.2, which has `bpf_arena_reserve_pages`,
/// the 7.x catalogue scenario runs and passes; on 6.12 (the default series) it is
/// skipped with the missing kfunc named (JUnit `<skipped>`, summary
/// `skipped`, KTAP `# SKIP`), never passed, and the run stays green. A
/// requirement every kernel meets runs the scenario.
#[test]
fn capability_gated_scenarios_run_only_where_the_kernel_has_them() {
    let dir = scratch("capabilities");
    let present = scenario(
        &dir,
        "has-arena-vm-fault",
        "name: has-arena-vm-fault
tags: [lab_selftest]
requires:
  - kallsyms: arena_vm_fault
steps:
  - arena: { id: a, pages: 1 }
",
    );
    let reserve = "scenarios/arena/ba-reserve-pages.yaml";
    let violation = "scenarios/arena/pf-bpf-violation-reported.yaml";
    let nonsleepable = "scenarios/arena/ba-nonsleepable-alloc-free.yaml";
    let present = present.to_str().unwrap();
    let files = [reserve, violation, nonsleepable, present];

    let (l72, _) = locked("7.2");
    let (l612, _) = locked("6.12");
    let run_on = |results: &std::path::Path, l: &Locked| {
        let mut args = kernel_args(l);
        args.extend(files.map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = lab_run(results, &args);
        assert_eq!(out.status.code(), Some(0));
        let s = summary(results);
        assert_ran_locked(&s, l);
        s
    };

    let new = dir.join("7.2");
    let s = run_on(&new, &l72);
    for sc in s["scenarios"].as_array().unwrap() {
        assert_eq!(sc["verdict"], "pass", "{sc}");
    }

    let old = dir.join("6.12");
    let s = run_on(&old, &l612);
    assert_eq!(
        (s["skipped"].as_u64(), s["passed"].as_u64()),
        (Some(3), Some(1)),
        "{s}"
    );
    let lacks: Vec<&str> = s["scenarios"].as_array().unwrap()[..3]
        .iter()
        .map(|sc| {
            assert_eq!(sc["verdict"], "skipped", "{sc}");
            sc["reason"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        lacks,
        [
            "this kernel lacks kfunc bpf_arena_reserve_pages",
            "this kernel lacks kernel symbol bpf_prog_report_arena_violation",
            "this kernel lacks kernel symbol bpf_arena_alloc_pages_non_sleepable",
        ]
    );
    let junit = std::fs::read_to_string(old.join("latest/junit.xml")).unwrap();
    assert!(junit.contains(
        "<skipped message=\"skipped: this kernel lacks kfunc bpf_arena_reserve_pages\">"
    ));
    let ktap = std::fs::read_to_string(old.join("latest/results.ktap")).unwrap();
    assert!(ktap.contains("ok 1 ba-reserve-pages # SKIP this kernel lacks kfunc"));

    // The nightly's cross-kernel comparison (docs/nightly.md): 6.12 → 7.2
    // names both kernels and shows the scenario only 7.2 runs.
    let out = lab(&[
        "compare",
        old.join("latest").to_str().unwrap(),
        new.join("latest").to_str().unwrap(),
        "--out",
        dir.join("kernels").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let md = std::fs::read_to_string(dir.join("kernels/compare.md")).unwrap();
    assert!(md.contains("Kernels differ: 6.12."), "{md}");
    assert!(md.contains("→ 7.2."), "{md}");
}

/// `lab run --kernel debian:6.12.N --kernel debian:7.2.N` (the locked
/// kernels): one results root per kernel, an index naming them, and the
/// later kernel's run compared with the first's, verdict changes included
/// (a capability 6.12 lacks).
#[test]
fn one_run_over_two_kernels_compares_them() {
    // --kernel-sha256 names one kernel: with two, each run's summary is
    // checked against the lock instead.
    let (l612, _) = locked("6.12");
    let (l72, _) = locked("7.2");
    let results = scratch("two-kernels");
    let old = format!("debian:{}", l612.spec());
    let new = format!("--kernel=debian:{}", l72.spec());
    let out = lab(&[
        "run",
        "--kernel",
        &old,
        &new,
        "--results",
        results.to_str().unwrap(),
        "scenarios/smoke",
        "scenarios/arena/ba-reserve-pages.yaml",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results.join("kernels.json")).unwrap()).unwrap();
    let kernels = index["kernels"].as_array().unwrap();
    assert_eq!(kernels.len(), 2, "{index}");
    let labels = [
        format!("debian-{}", l612.spec()),
        format!("debian-{}", l72.spec()),
    ];
    for (k, (label, l)) in kernels.iter().zip(labels.iter().zip([&l612, &l72])) {
        assert_eq!(k["exit"], 0, "{k}");
        assert_ran_locked(&summary(&results.join(label)), l);
    }
    let md = std::fs::read_to_string(results.join(&labels[1]).join("latest/compare.md")).unwrap();
    assert!(md.contains("Kernels differ: 6.12."), "{md}");
    assert!(md.contains("| ba-reserve-pages | skipped | pass |"), "{md}");
    // Options naming one kernel's files are ambiguous with two kernels.
    let out = lab(&[
        "run",
        "--kernel",
        "debian:6.12",
        "--kernel",
        "debian:7.2",
        "--vmlinux",
        "/x",
        "scenarios/smoke",
    ]);
    assert_eq!(out.status.code(), Some(2));
}
