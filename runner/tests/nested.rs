//! The own VMM with Linux guests under real KVM, from one L1 boot.
//!
//! This host's `/dev/kvm` (PVM) cannot run a stock kernel, so the test boots
//! one L1 with real KVM (`lab nested --exec`, QEMU TCG's emulated SVM) and
//! re-runs itself there (`ARENA_NESTED_PARTS` set) to run three parts, each
//! in its module under `nested/`:
//!
//! - [`hostile`]: the freestanding hostile suite and hostile Linux guests
//!   through `arena-vmm` (always in L1: it lists the files L1's overlay saw
//!   change);
//! - [`gdb`]: the gdb stub on Linux guests, driven by a real gdb;
//! - [`catalogue`]: `lab run --backend kvm` on a catalogue subset plus a
//!   crash, a hang and four vCPUs.
//!
//! Where this host's KVM can run Linux, `gdb` and `catalogue` run directly
//! and only `hostile` goes to L1. Either way every part runs: there is no
//! skip. The host builds and warms what the parts need before L1 boots (in
//! L1 it would be built under TCG into a throw-away overlay). A part that
//! fails does not stop the others: the test runs them all, then fails
//! naming every part that failed.

mod common;

// A test's crate root finds modules beside it, in `tests/`.
#[path = "nested/catalogue.rs"]
mod catalogue;
#[path = "nested/gdb.rs"]
mod gdb;
#[path = "nested/hostile.rs"]
mod hostile;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Instant;

/// This test's name, for re-running it alone inside L1.
const TEST: &str = "hostile_gdb_and_catalogue_share_one_l1_boot";
/// Set inside L1: the parts to run there (comma-separated) instead of
/// booting L1.
const IN_L1: &str = "ARENA_NESTED_PARTS";
/// Starts the line each part's result is reported on.
const RESULT: &str = "nested: part ";

/// Said of a part in L1 that reported neither a pass nor a failure.
const NO_RESULT: &str = "no result (L1 or the inner run ended before it)";

/// The environment a part's [`Part::run`] reads, made on the host.
type Env = Vec<(&'static str, PathBuf)>;

/// One part of the test.
struct Part {
    name: &'static str,
    /// Whether it runs directly where the host's KVM can run Linux.
    direct_ok: bool,
    /// On the host, before L1: builds and caches; the part's environment.
    prepare: fn() -> Env,
    /// The part (in L1 or directly); panics on a failed check.
    run: fn(),
    /// On the host, after L1: checks the inner output (stdout and stderr
    /// of everything in L1, as `lab nested` printed it) of a passed part.
    check: fn(&str, &[(&'static str, PathBuf)]),
}

/// In the order they run.
const PARTS: &[Part] = &[
    Part {
        name: "hostile",
        direct_ok: false,
        prepare: hostile::prepare,
        run: hostile::run,
        check: hostile::check_report,
    },
    Part {
        name: "gdb",
        direct_ok: true,
        prepare: gdb::prepare,
        run: gdb::run,
        check: |out, _| gdb::check_report(out),
    },
    Part {
        name: "catalogue",
        direct_ok: true,
        prepare: catalogue::prepare,
        run: catalogue::run,
        check: |out, _| catalogue::check_report(out),
    },
];

#[test]
fn hostile_gdb_and_catalogue_share_one_l1_boot() {
    if let Ok(parts) = std::env::var(IN_L1) {
        inside(&parts);
        return;
    }
    let t = Instant::now();
    let mut failed: Vec<String> = Vec::new();
    // Each part's host side; a part whose preparation failed does not run.
    let mut ready: Vec<(&Part, Env)> = Vec::new();
    for part in PARTS {
        let t = Instant::now();
        match catch_unwind(part.prepare) {
            Ok(env) => {
                eprintln!(
                    "nested: part {}: prepared on the host in {:.1} s",
                    part.name,
                    t.elapsed().as_secs_f64()
                );
                ready.push((part, env));
            }
            Err(_) => {
                eprintln!(
                    "nested: part {}: its preparation on the host FAILED",
                    part.name
                );
                failed.push(format!("{} (preparation on the host)", part.name));
            }
        }
    }
    let direct = vmm::probe::probe().usable;
    let (here, in_l1): (Vec<_>, Vec<_>) = ready
        .into_iter()
        .partition(|(part, _)| direct && part.direct_ok);
    for (part, env) in &here {
        for (k, v) in env {
            std::env::set_var(k, v);
        }
        if !run_part(part) {
            failed.push(part.name.to_owned());
        }
    }
    if !in_l1.is_empty() {
        eprintln!(
            "nested: running {} in one L1 ({})",
            in_l1
                .iter()
                .map(|(p, _)| p.name)
                .collect::<Vec<_>>()
                .join(", "),
            if direct {
                "the hostile part needs L1's overlay"
            } else {
                "this host's KVM cannot run Linux"
            }
        );
        failed.extend(run_in_l1(&in_l1));
    }
    eprintln!(
        "nested: {:.0} s in all ({}), {} part(s) failed",
        t.elapsed().as_secs_f64(),
        if in_l1.is_empty() {
            "no L1"
        } else {
            "one L1 boot"
        },
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "nested parts failed: {} (each part's own panic message is above)",
        failed.join(", ")
    );
}

/// Runs `part` here, timed; whether it passed. Its result line (with
/// [`RESULT`]) goes to stderr, which in L1 is the output the host reads.
fn run_part(part: &Part) -> bool {
    eprintln!("{RESULT}{}: starting", part.name);
    let t = Instant::now();
    let ok = catch_unwind(AssertUnwindSafe(part.run)).is_ok();
    eprintln!(
        "{RESULT}{}: {} in {:.1} s",
        part.name,
        if ok { "passed" } else { "FAILED" },
        t.elapsed().as_secs_f64()
    );
    ok
}

/// Inside L1: every part named in `parts`, each whether or not the ones
/// before it passed; fails naming those that failed.
fn inside(parts: &str) {
    let mut failed = Vec::new();
    for name in parts.split(',') {
        let part = PARTS
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no part {name:?}"));
        if !run_part(part) {
            failed.push(name);
        }
    }
    assert!(
        failed.is_empty(),
        "nested parts failed in L1: {}",
        failed.join(", ")
    );
}

/// Boots one L1 and runs `parts` there (this test binary, re-run with
/// [`IN_L1`] and the parts' environment); what failed: each part that
/// reported no pass or whose output fails its host check, and L1 itself
/// when it did not come up with `/dev/kvm` or the inner run's exit status
/// or libtest summary disagree with its parts passing.
fn run_in_l1(parts: &[(&Part, Env)]) -> Vec<String> {
    let t = Instant::now();
    let names: Vec<&str> = parts.iter().map(|(p, _)| p.name).collect();
    let me = std::env::current_exe().unwrap();
    let mut inner = vec![
        "/usr/bin/env".to_owned(),
        format!("{IN_L1}={}", names.join(",")),
    ];
    for (_, env) in parts {
        inner.extend(env.iter().map(|(k, v)| format!("{k}={}", v.display())));
    }
    inner.extend([
        me.to_string_lossy().into_owned(),
        "--exact".into(),
        TEST.into(),
        "--nocapture".into(),
    ]);
    let mut args = vec!["nested", "--exec", "--"];
    args.extend(inner.iter().map(String::as_str));
    let out = common::lab(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut failed = Vec::new();
    if !stderr.contains("ready with /dev/kvm") {
        eprintln!("nested: L1 did not come up with /dev/kvm:\n{stderr}");
        failed.push("L1 (no /dev/kvm)".to_owned());
    }
    for (part, env) in parts {
        // Anywhere in a line: libtest's `test NAME ... ` has no newline.
        let said = |verdict: &str| {
            let head = format!("{RESULT}{}: {verdict}", part.name);
            stdout.lines().find_map(|l| {
                l.split_once(&head)
                    .map(|(_, rest)| format!("{verdict}{}", rest.trim_end()))
            })
        };
        let Some(passed) = said("passed in ") else {
            eprintln!(
                "nested: part {} in L1: {}",
                part.name,
                said("FAILED").unwrap_or_else(|| NO_RESULT.to_owned())
            );
            failed.push(format!("{} (in L1)", part.name));
            continue;
        };
        eprintln!("nested: part {} in L1: {passed}", part.name);
        if catch_unwind(AssertUnwindSafe(|| (part.check)(&stdout, env))).is_err() {
            failed.push(format!("{} (its report from L1)", part.name));
        }
    }
    if failed.is_empty() {
        // Every part passed: so did the inner run, all of it.
        let whole = catch_unwind(AssertUnwindSafe(|| {
            assert_eq!(out.status.code(), Some(0), "the run inside L1 failed");
            assert!(stdout.contains(&hostile::summary(1)), "{stdout}");
        }));
        if whole.is_err() {
            failed.push("L1 (the inner run)".to_owned());
        }
    }
    eprintln!(
        "nested: one L1 boot for {}: {:.0} s",
        names.join(", "),
        t.elapsed().as_secs_f64()
    );
    failed
}
