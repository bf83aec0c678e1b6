//! The own VMM (`--backend kvm`) end to end with Linux under real KVM: a
//! part of `nested.rs`.
//!
//! `lab run --backend kvm` on a catalogue subset plus a crash, a hang and a
//! four-vCPU scenario. Where this host's KVM can run a stock kernel the run
//! is direct; elsewhere (PVM here) it runs in the test's one L1, whose
//! `kvm_amd` runs on QEMU's emulated SVM. Either way it runs: there is no
//! skip. The host builds what the run needs before L1 boots, as `lab nested
//! -- run` would: built in L1, it would be built under TCG.

use std::path::{Path, PathBuf};

use crate::common::*;

/// The scratch folder with the scenario files (the run's results go in it).
const DIR: &str = "ARENA_NESTED_CATALOGUE_DIR";
/// Printed when everything passed (the host checks for it in L1's output).
const PASSED: &str = "nested catalogue: all checks passed";

/// Catalogue scenarios run under the own VMM: every page-fault,
/// SEGV_ON_FAULT and race scenario, plus the smoke set.
fn catalogue_subset() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join("scenarios/arena"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.ends_with(".yaml")
                && (n.starts_with("pf-") || n.starts_with("sof-") || n.starts_with("race-"))
        })
        .map(|n| format!("scenarios/arena/{n}"))
        .collect();
    files.sort();
    files.push("scenarios/smoke".into());
    files
}

/// A step that kills the agent's worker: the crash must become a verdict.
const CRASH: &str = "name: vmm-crash\nsteps:\n  - arena: { id: a, pages: 4 }\n  - mmap: { arena: a }\n  - crash: { signal: SIGSEGV }\n";
/// A step that never ends: the scenario must time out and keep its console.
const HANG: &str = "name: vmm-hang\ntimeout_s: 3\nsteps:\n  - sleep: { ms: 600000 }\n";
/// Four vCPUs (the L1 has two): SMP bring-up through our MP table and MADT.
const SMP4: &str = "name: vmm-smp4\nvm: { vcpus: 4, memory_mib: 512 }\nsteps:\n  - arena: { id: a, pages: 64 }\n  - mmap: { arena: a }\n  - threads:\n      count: 4\n      iterations: 50\n      steps:\n        - touch: { arena: a, page: 0, count: 64, op: write }\n        - touch: { arena: a, page: 0, count: 64, op: read, expect: { pattern: true } }\n  - expect_kernel_log: { contains: ['smp: Brought up 1 node, 4 CPUs'] }\n";

/// `lab run` arguments (without `lab`) for the scenarios, results in `dir`
/// (paths relative to the workspace root, where `lab` runs).
fn run_args(dir: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--backend".into(),
        "kvm".into(),
        "-j".into(),
        "2".into(),
        "--results".into(),
        dir.join("results").to_string_lossy().into_owned(),
    ];
    args.extend(catalogue_subset());
    for name in ["crash", "hang", "smp4"] {
        args.push(
            dir.join(format!("{name}.yaml"))
                .to_string_lossy()
                .into_owned(),
        );
    }
    args
}

/// On the host, before L1 boots (or before [`run`] runs directly): the
/// scenario files, and every cache the run reads (kernel, agent, BPF
/// objects, each scenario's image) warmed, as `lab nested -- run` warms
/// them; the folder, as an environment variable for [`run`].
pub fn prepare() -> Vec<(&'static str, PathBuf)> {
    let dir = scratch("nested-kvm");
    for (name, yaml) in [("crash", CRASH), ("hang", HANG), ("smp4", SMP4)] {
        scenario(&dir, name, yaml);
    }
    // As the lab would parse them in the workspace root.
    let argv = std::iter::once("lab".to_owned()).chain(run_args(&dir).into_iter().map(|a| {
        let p = root().join(&a);
        if a.starts_with("scenarios/") {
            p.to_string_lossy().into_owned()
        } else {
            a
        }
    }));
    let args = arena_runner::run::parse_args(argv).expect("the run's arguments parse");
    arena_runner::run::warm_caches(&args).expect("warm the run's caches");
    vec![(DIR, dir)]
}

/// On the host, after L1: every check passed inside.
pub fn check_report(stdout: &str) {
    assert!(stdout.contains(PASSED), "{stdout}");
}

/// The part itself: the run under real KVM (in L1, or directly).
pub fn run() {
    let dir = std::env::var_os(DIR)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{DIR} is not set"));
    let results = dir.join("results");
    let args = run_args(&dir);
    let full: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab(&full);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The crash and the hang fail the run; nothing else may.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let sum = summary(&results);
    assert_eq!(sum["backend"], "kvm");
    assert_eq!(sum["accelerator"], "kvm");
    let scenarios = sum["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), args.len() - 7 + 1, "every scenario judged");
    let mut machine_faults = 0;
    for s in scenarios {
        let name = s["name"].as_str().unwrap();
        match name {
            "vmm-crash" => {
                assert_eq!(s["verdict"], "fail", "{s}");
                let reason = s["reason"].as_str().unwrap();
                assert!(reason.contains("signal 11 (SIGSEGV)"), "{reason}");
            }
            "vmm-hang" => {
                assert_eq!(s["verdict"], "timeout", "{s}");
                let console = results.join("latest/vmm-hang/console.log");
                assert!(
                    std::fs::read_to_string(console)
                        .unwrap()
                        .contains("running scenario vmm-hang"),
                    "the timed-out scenario keeps its console log"
                );
            }
            _ if known_kernel_bug(s) || skipped_for_capability(s) => {}
            _ if machine_fault(s) => machine_faults += 1,
            _ => assert_eq!(s["verdict"], "pass", "{name}: {s}"),
        }
    }
    // One scenario in the set may lose all five boots to the emulator
    // (seen: three in a row, in a burst); more says the VMM is at fault.
    assert!(
        machine_faults <= 1,
        "{machine_faults} scenarios lost to machine faults"
    );
    assert!(Path::new(&results.join("latest/junit.xml")).is_file());
    println!("{PASSED}");
}
