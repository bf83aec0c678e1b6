//! The own VMM (`--backend kvm`) end to end with Linux under real KVM.
//!
//! Where this host's KVM can run a stock kernel the scenarios run directly;
//! elsewhere (PVM here) they run through `lab nested`, inside an L1 guest
//! whose `kvm_amd` runs on QEMU's emulated SVM. Either way they run: there is
//! no skip. One L1 boot covers the whole set to keep CI time down.

mod common;

use std::path::Path;

use common::*;

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

#[test]
fn own_vmm_runs_catalogue_crash_timeout_and_smp_under_real_kvm() {
    let dir = scratch("nested-kvm");
    let results = dir.join("results");
    let mut args: Vec<String> = vec![
        "run".into(),
        "--backend".into(),
        "kvm".into(),
        "-j".into(),
        "2".into(),
        "--results".into(),
        results.to_string_lossy().into_owned(),
    ];
    args.extend(catalogue_subset());
    for (name, yaml) in [("crash", CRASH), ("hang", HANG), ("smp4", SMP4)] {
        args.push(scenario(&dir, name, yaml).to_string_lossy().into_owned());
    }
    let direct = vmm::probe::probe().usable;
    let mut full: Vec<&str> = Vec::new();
    if !direct {
        eprintln!("this host's KVM cannot run Linux: running through `lab nested`");
        full.extend(["nested", "--"]);
    }
    full.extend(args.iter().map(String::as_str));
    let out = lab(&full);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !direct {
        assert!(stderr.contains("lab: nested: L1"), "{stderr}");
    }
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
}
