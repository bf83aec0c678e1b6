//! `lab mutate` on a real 6.12 tree (Debian's `linux-source-6.12`, from
//! `lab kernel source`, shared with kernel_loop), built with the smallest
//! bootable config: three mutants of `kernel/bpf/arena.c`, one that a
//! smoke scenario must kill by a failed expectation, one that crashes the
//! fault path, one that no scenario can notice. Each is really built and
//! booted. The tree's arena.c is byte-identical afterwards, a second run
//! takes every outcome from the cache, and after a SIGKILL mid-build (a
//! mutant left in arena.c) the next run restores the original from its
//! journal before it mutates anything.
//!
//! The tree (hard links into the unpacked source) and its build directory
//! are cached outside the checkout, keyed by the source version: after the
//! first (cold, ~4 min) build, each mutant is an incremental rebuild.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;

/// The smoke scenarios: `arena-mmap-readback` faults pages in and reads
/// them back; `segv-on-fault-unallocated` wants SIGSEGV from an arena
/// created with BPF_F_SEGV_ON_FAULT.
const SCENARIOS: [&str; 2] = [
    "scenarios/smoke/arena-mmap-readback.yaml",
    "scenarios/smoke/segv-on-fault-unallocated.yaml",
];

/// The cached tree: the unpacked source, hard-linked (mutate replaces
/// arena.c, never writes through the link).
fn tree(src: &Path, cache: &Path) -> PathBuf {
    let tree = cache.join("tree");
    if !tree.join("Makefile").is_file() {
        let tmp = cache.join("tree.tmp");
        hard_link_copy(src, &tmp);
        std::fs::rename(&tmp, &tree).unwrap();
    }
    tree
}

/// `lab mutate --list` of the tree: (id, function, change) per line.
fn list(tree: &str) -> Vec<(String, String, String)> {
    let out = lab(&["mutate", "--tree", tree, "--list"]);
    assert_eq!(out.status.code(), Some(0));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut w = l.split_whitespace();
            let id = w.next().unwrap().to_owned();
            let function = w.next().unwrap().to_owned();
            (id, function, w.collect::<Vec<_>>().join(" "))
        })
        .collect()
}

/// The id of the mutant in `function` whose change mentions `needle`.
fn find(all: &[(String, String, String)], prefix: &str, function: &str, needle: &str) -> String {
    all.iter()
        .find(|(id, f, what)| id.starts_with(prefix) && f == function && what.contains(needle))
        .unwrap_or_else(|| panic!("no {prefix} mutant of {function} with {needle}"))
        .0
        .clone()
}

#[test]
fn mutants_of_arena_c_killed_survived_and_cached() {
    let t0 = Instant::now();
    let (src, cache) = kernel_source_cache("test-mutate");
    let tree = tree(&src, &cache);
    let tree_arg = tree.to_str().unwrap();
    let arena_c = tree.join("kernel/bpf/arena.c");
    let before = std::fs::read(&arena_c).unwrap();

    let all = list(tree_arg);
    assert!(all.len() > 100, "{} mutants", all.len());
    // Without the SEGV_ON_FAULT check, a fault allocates a page where the
    // scenario expects SIGSEGV: a failed expectation.
    let segv = find(&all, "delete_stmt", "arena_vm_fault", "BPF_F_SEGV_ON_FAULT");
    // `if (!page)`: an unpopulated page is "already there", NULL.
    let null_page = find(&all, "flip_cmp", "arena_vm_fault", "if (page)");
    // GFP_NOWAIT for the VMA bookkeeping: the same, bar memory pressure.
    let nowait = find(&all, "change_gfp", "remember_vma", "GFP_KERNEL");
    let mutants = format!("{segv},{null_page},{nowait}");

    let dir = scratch("mutate");
    let out = dir.join("report");
    let outcomes = dir.join("outcomes");
    let build_dir = cache.join("build");
    let jobs = std::thread::available_parallelism()
        .map_or(2, usize::from)
        .to_string();
    let mut args: Vec<&str> = vec![
        "mutate",
        "--tree",
        tree_arg,
        "--build-dir",
        build_dir.to_str().unwrap(),
        "--base",
        "tiny",
        "-j",
        &jobs,
        "--out",
        out.to_str().unwrap(),
        "--cache",
        outcomes.to_str().unwrap(),
        "--mutant",
        &mutants,
        "--scenarios",
    ];
    args.extend(SCENARIOS);
    eprintln!(
        "stage: tree ready after {:.0} s",
        t0.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let first = lab(&args);
    let first_s = t.elapsed().as_secs_f64();
    assert_eq!(first.status.code(), Some(0));
    assert_eq!(
        std::fs::read(&arena_c).unwrap(),
        before,
        "arena.c is byte-identical afterwards"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("mutate.json")).unwrap()).unwrap();
    let outcome = |id: &str| {
        report["mutants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("{id} not in {report}"))
            .clone()
    };
    let killed = outcome(&segv);
    assert_eq!(killed["outcome"]["class"], "killed", "{killed}");
    assert_eq!(
        killed["outcome"]["scenario"], "segv-on-fault-unallocated",
        "{killed}"
    );
    assert_eq!(killed["outcome"]["verdict"], "fail", "{killed}");
    assert!(killed["outcome"]["build_s"].as_f64().unwrap() > 0.0);
    assert!(killed["outcome"]["run_s"].as_f64().unwrap() > 0.0);
    let crashed = outcome(&null_page);
    assert_eq!(crashed["outcome"]["class"], "killed", "{crashed}");
    let survived = outcome(&nowait);
    assert_eq!(survived["outcome"]["class"], "survived", "{survived}");
    assert!(survived["diff"]
        .as_str()
        .unwrap()
        .contains("+\tvml = kmalloc(sizeof(*vml), GFP_NOWAIT);"));
    assert_eq!(report["counts"]["killed"], 2);
    assert_eq!(report["counts"]["survived"], 1);
    assert!((report["score"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert!(report["baseline"]["passed"].as_u64().unwrap() == 2);
    let md = std::fs::read_to_string(out.join("mutate.md")).unwrap();
    assert!(md.contains(&format!("### `{nowait}`")), "{md}");
    assert!(md.contains("GFP_NOWAIT"), "{md}");
    let html = std::fs::read_to_string(out.join("mutate.html")).unwrap();
    assert!(html.contains("mutation score 66.7 %"), "{html}");
    eprintln!("stage: first run took {first_s:.0} s");

    // Again: every outcome from the cache, nothing built or booted.
    let t = Instant::now();
    let second = lab(&args);
    let second_s = t.elapsed().as_secs_f64();
    assert_eq!(second.status.code(), Some(0));
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("mutate.json")).unwrap()).unwrap();
    for m in again["mutants"].as_array().unwrap() {
        assert_eq!(m["cached"], true, "{m}");
    }
    assert!(again["baseline"].is_null(), "no baseline needed");
    assert_eq!(again["counts"], report["counts"]);
    assert_eq!(std::fs::read(&arena_c).unwrap(), before);
    assert!(second_s < 20.0, "the cached run took {second_s} s");
    eprintln!("stage: cached run took {second_s:.1} s");

    // A crash while a mutant is in arena.c: SIGKILL to `lab mutate` and its
    // make. The next run restores the original from the journal, then
    // mutates that (an equivalent mutant: it survives).
    let equivalent = find(
        &all,
        "loosen_cmp",
        "arena_free_pages",
        "full_uaddr >= uaddr_end",
    );
    let mut crash_args = args.clone();
    let at = crash_args.iter().position(|a| *a == mutants).unwrap();
    crash_args[at] = &equivalent;
    let t = Instant::now();
    killed_mid_build(&crash_args, &equivalent);
    assert_ne!(
        std::fs::read(&arena_c).unwrap(),
        before,
        "the crash left the mutant"
    );
    let rerun = lab(&crash_args);
    assert_eq!(rerun.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&rerun.stderr).contains(&format!(
            "held mutant {equivalent}, left by an earlier run: restored"
        )),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert_eq!(std::fs::read(&arena_c).unwrap(), before);
    let after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("mutate.json")).unwrap()).unwrap();
    assert_eq!(after["mutants"][0]["id"], equivalent.as_str());
    assert_eq!(
        after["mutants"][0]["outcome"]["class"], "survived",
        "{after}"
    );
    eprintln!(
        "stage: crash and restore took {:.0} s; whole test {:.0} s",
        t.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

/// Runs `lab ARGS` in a process group of its own and SIGKILLs the group
/// (lab and its make) once the journal records mutant `id` in the file.
fn killed_mid_build(args: &[&str], id: &str) {
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(args)
        .current_dir(root())
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let journals = arena_images::cache::root().join("mutate/journals");
    let recorded = || {
        std::fs::read_dir(&journals)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|d| std::fs::read_to_string(d.path().join("journal.json")).ok())
            .any(|j| j.contains(&format!("\"{id}\"")))
    };
    let t = Instant::now();
    while !recorded() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "lab mutate ended first"
        );
        assert!(t.elapsed().as_secs() < 600, "no mutant in 600 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    let pgid = child.id() as i32;
    // SAFETY: kill(2) of the process group of our own, unreaped child.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    let _ = child.wait();
}
