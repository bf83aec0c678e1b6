//! The kernel developer's loop on a real tree, end to end: Debian's
//! `linux-source-6.12` (`lab kernel source`) as a git history with a bug
//! introduced in `kernel/bpf/arena.c`, built by `lab kernel build` with the
//! smallest bootable config (`--base tiny`), checked (`lab kernel check`),
//! refused before boot when a must-have is missing, booted
//! (`--kernel-tree`), its traces decoded with its vmlinux, debugged with
//! real gdb (`lab boot --gdb`), and bisected (`lab bisect`).
//!
//! The tree and its build directory are cached outside the checkout, keyed
//! by the source version, so after the first (cold) build every build here
//! is incremental. One test: the stages share the tree and its HEAD.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use common::*;

/// Commits on top of the source, with fixed identities and dates so their
/// hashes are the same on every machine and run.
const BRANCH: &str = "arena-lab-test";
const BUG_MARK: &str = "arena-lab test: the bug";

fn git(repo: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .env("GIT_AUTHOR_NAME", "arena lab")
        .env("GIT_AUTHOR_EMAIL", "lab@arena.invalid")
        .env("GIT_COMMITTER_NAME", "arena lab")
        .env("GIT_COMMITTER_EMAIL", "lab@arena.invalid")
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        .output()
        .expect("git");
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// Replaces `file` (never writing through a hard link into the cache).
fn rewrite(file: &Path, text: &str) {
    let tmp = file.with_extension("arena-lab-tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

/// The cached git tree: the source as commit `base`, then on `BRANCH`
/// c1 (comment), c2 (the bug: a user fault on arena page 1 is SIGSEGV),
/// c3, c4 (comments). Returns (tree, base, c2, c4).
fn tree(src: &Path, cache: &Path) -> (PathBuf, String, String, String) {
    let repo = cache.join("tree");
    if !repo.join(".git").is_dir() {
        let tmp = cache.join("tree.tmp");
        // Hard links: fast, and git replaces (never edits) files it checks out.
        hard_link_copy(src, &tmp);
        git(&tmp, &["init", "-q", "-b", "main"]);
        // -f: Debian's tree ignores `/*` in its top .gitignore.
        git(&tmp, &["add", "-A", "-f"]);
        git(&tmp, &["commit", "-q", "-m", "linux-source as unpacked"]);
        std::fs::rename(&tmp, &repo).unwrap();
    }
    git(&repo, &["checkout", "-q", "-f", "main"]);
    let base = git(&repo, &["rev-parse", "main"]);
    let arena_c = repo.join("kernel/bpf/arena.c");
    let original = git(&repo, &["show", "main:kernel/bpf/arena.c"]) + "\n";
    let anchor = "\tkaddr = kbase + (u32)(vmf->address);\n";
    assert!(original.contains(anchor), "arena.c changed shape");
    let buggy = original.replacen(
        anchor,
        &format!("{anchor}\tif (vmf->pgoff == 1)\n\t\treturn VM_FAULT_SIGSEGV; /* {BUG_MARK} */\n"),
        1,
    );
    git(&repo, &["checkout", "-q", "-B", BRANCH, "main"]);
    let mut commits = Vec::new();
    for (i, text) in [
        original.replace("// SPDX", "// c1: a comment\n// SPDX"),
        buggy.replace("// SPDX", "// c1: a comment\n// SPDX"),
        buggy.replace("// SPDX", "// c1: a comment\n// c3: another\n// SPDX"),
        buggy.replace(
            "// SPDX",
            "// c1: a comment\n// c3: another\n// c4: more\n// SPDX",
        ),
    ]
    .iter()
    .enumerate()
    {
        rewrite(&arena_c, text);
        git(
            &repo,
            &[
                "commit",
                "-q",
                "-a",
                "-m",
                &format!("arena: step c{}", i + 1),
            ],
        );
        commits.push(git(&repo, &["rev-parse", "HEAD"]));
    }
    git(&repo, &["checkout", "-q", "-f", "main"]);
    (repo, base, commits[1].clone(), commits[3].clone())
}

/// `lab kernel build REPO --base tiny --out BUILD_DIR -j JOBS`.
fn build_tiny(repo: &Path, build_dir: &Path, jobs: &str) -> std::process::Output {
    lab(&[
        "kernel",
        "build",
        repo.to_str().unwrap(),
        "--base",
        "tiny",
        "--out",
        build_dir.to_str().unwrap(),
        "-j",
        jobs,
    ])
}

/// `nm -S`'s address and size of `symbol`.
fn symbol(vmlinux: &Path, symbol: &str) -> (u64, u64) {
    let o = Command::new("nm").arg("-S").arg(vmlinux).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text
        .lines()
        .find(|l| l.split_whitespace().nth(3) == Some(symbol))
        .unwrap_or_else(|| panic!("{symbol} not in {}", vmlinux.display()));
    let mut w = line.split_whitespace();
    let addr = u64::from_str_radix(w.next().unwrap(), 16).unwrap();
    let size = u64::from_str_radix(w.next().unwrap(), 16).unwrap();
    (addr, size)
}

/// Real gdb in batch mode on `vmlinux`, connected to the stub on `port`
/// (it waits for a stub that is not listening yet, as while QEMU starts),
/// then `commands` in order.
fn gdb_batch(vmlinux: &Path, port: u16, commands: &[&str]) -> std::process::Output {
    let mut c = Command::new("gdb");
    c.args(["-batch", "-nx"]).arg(vmlinux).args([
        "-ex",
        "set tcp connect-timeout 120",
        "-ex",
        &format!("target remote 127.0.0.1:{port}"),
    ]);
    for command in commands {
        c.args(["-ex", command]);
    }
    c.output().unwrap()
}

/// `lab run --gdb=PORT` of the smoke scenario `arena-mmap-readback` on the
/// tree: its VM waits for gdb at the first instruction.
fn smoke_under_gdb(tree_arg: &str, results: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["run", "--backend", "qemu", "--kernel-tree", tree_arg])
        .arg("--results")
        .arg(results)
        .args([&format!("--gdb={port}"), "--only", "arena-mmap-readback"])
        .arg("scenarios/smoke")
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads `stderr` up to the first line containing `marker`: everything
/// read, and that line (empty when the stream ended first).
fn read_until(stderr: &mut impl BufRead, marker: &str) -> (String, String) {
    let mut said = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        said.push_str(&line);
        if line.contains(marker) {
            return (said, line);
        }
        line.clear();
    }
    (said, line)
}

/// Real gdb in batch mode against a halted VM's stub on `port`: breaks at
/// `start_kernel`, prints `rip` and `linux_banner`, then `last` (`kill`,
/// `detach`). Returns its output, having checked the banner.
fn gdb_reads_banner(vmlinux: &Path, port: u16, last: &str) -> String {
    let gdb = gdb_batch(
        vmlinux,
        port,
        &[
            "hbreak start_kernel",
            "continue",
            "info registers rip",
            "x/s &linux_banner",
            "delete",
            last,
        ],
    );
    let out = String::from_utf8_lossy(&gdb.stdout).into_owned();
    assert!(
        out.contains("Linux version 6.12"),
        "gdb: {out}\n{}",
        String::from_utf8_lossy(&gdb.stderr)
    );
    out
}

/// gdb does to a vCPU what QEMU 7.2's nested SVM did (docs/architecture.md,
/// "Machine faults"): at `arena_map_alloc` it sets EFLAGS bit 22, which no
/// CPU sets, and TF, so the kernel's #DB handler prints a register dump
/// with it (`WARNING … exc_debug_kernel`, then goes on). The run must call
/// that attempt a machine fault, run the scenario again (held for gdb
/// again: attach and detach), and take the clean attempt's pass.
fn machine_fault_is_retried(tree_arg: &str, vmlinux: &Path) {
    let port = common::free_port();
    let results = scratch("kernel-loop-machine-fault");
    let mut run = smoke_under_gdb(tree_arg, &results, port);
    let gdb = gdb_batch(
        vmlinux,
        port,
        &[
            "hbreak arena_map_alloc",
            "continue",
            "set $eflags = $eflags | 0x400100",
            "info registers eflags",
            "delete",
            "detach",
        ],
    );
    let out = String::from_utf8_lossy(&gdb.stdout);
    assert!(out.contains("TF"), "gdb: {out}");
    // The retry boots held for gdb again; only then attach (the first VM's
    // stub is the same port).
    let mut stderr = BufReader::new(run.stderr.take().unwrap());
    let (said, line) = read_until(&mut stderr, "running it once more");
    assert!(
        line.contains("corrupted vCPU state: EFLAGS 00400"),
        "lab said: {said}"
    );
    gdb_batch(vmlinux, port, &["detach"]);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(0), "lab said: {said}{rest}");
    let s = &summary(&results)["scenarios"][0];
    assert_eq!(s["verdict"], "pass", "{s}");
    assert_eq!(s["retried_after"]["kind"], "emulator_fault", "{s}");
    assert!(
        s["retried_after"]["title"]
            .as_str()
            .unwrap()
            .contains("exc_debug_kernel"),
        "{s}"
    );
    let first = results.join("latest/arena-mmap-readback/attempt1-console.log");
    let first = std::fs::read_to_string(first).unwrap();
    assert!(first.contains("EFLAGS: 00400"), "{first}");
}

/// A scenario that fails at its last step (a wrong expected value).
const FAILS: &str = "name: gdb-on-fail\nsteps:\n  - arena: { id: a, pages: 4 }\n  - mmap: { arena: a }\n  - touch: { arena: a, page: 0, op: write, value: 7 }\n  - touch: { arena: a, page: 0, op: read, expect: { value: 8 } }\n";

fn gdb_on_fail(tree_arg: &str, vmlinux: &Path) {
    let dir = scratch("kernel-loop-gdb-on-fail");
    let failing = scenario(&dir, "fails", FAILS);
    let later = scenario(
        &dir,
        "zz-later",
        "name: zz-later\nsteps:\n  - sleep: { ms: 1 }\n",
    );
    let results = dir.join("results");
    let port = common::free_port();
    let mut run = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["run", "--backend", "qemu", "--kernel-tree", tree_arg])
        .arg("--results")
        .arg(&results)
        .arg(format!("--gdb-on-fail={port}"))
        .args([&failing, &later])
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the runner to say the failed VM is held.
    let mut stderr = BufReader::new(run.stderr.take().unwrap());
    let (said, line) = read_until(&mut stderr, "is paused with a gdb stub");
    assert!(line.contains("gdb-on-fail failed"), "lab said: {said}");
    let gdb = gdb_batch(
        vmlinux,
        port,
        &["info registers rip", "x/s &linux_banner", "kill"],
    );
    let out = String::from_utf8_lossy(&gdb.stdout);
    assert!(
        out.contains("Linux version 6.12") && out.contains("rip"),
        "gdb: {out}\n{}",
        String::from_utf8_lossy(&gdb.stderr)
    );
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(1), "lab said: {said}");
    let s = summary(&results);
    assert_eq!(s["scenarios"][0]["verdict"], "fail", "{s}");
    assert!(
        s["scenarios"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("expected"),
        "{s}"
    );
    // Nothing starts after the held VM.
    assert_eq!(s["scenarios"][1]["verdict"], "not_run", "{s}");
}

#[test]
fn kernel_developer_loop_on_a_tiny_tree() {
    let t0 = Instant::now();
    let (src, cache) = kernel_source_cache("test-kernel-loop");
    let (repo, base, c2, c4) = tree(&src, &cache);
    let build_dir = cache.join("build");
    let jobs = std::thread::available_parallelism()
        .map_or(2, usize::from)
        .to_string();
    eprintln!(
        "stage: tree ready after {:.0} s",
        t0.elapsed().as_secs_f64()
    );

    // Build the good commit (cold the first time, incremental after).
    let t = Instant::now();
    let built = build_tiny(&repo, &build_dir, &jobs);
    assert_eq!(built.status.code(), Some(0));
    let printed = String::from_utf8_lossy(&built.stdout);
    assert!(
        printed.contains("--kernel ") && printed.contains("--vmlinux "),
        "{printed}"
    );
    eprintln!("stage: build took {:.0} s", t.elapsed().as_secs_f64());
    let tree_arg = build_dir.to_str().unwrap();
    let vmlinux = build_dir.join("vmlinux");

    // lab kernel check: the table, every must-have there.
    let check = lab(&["kernel", "check", "--kernel-tree", tree_arg]);
    assert_eq!(check.status.code(), Some(0));
    let table = String::from_utf8_lossy(&check.stdout);
    assert!(
        table.contains(&format!("config: {}", build_dir.join(".config").display())),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("CONFIG_VIRTIO_CONSOLE") && l.contains(" ok ")),
        "{table}"
    );

    // The same kernel with a config lacking VIRTIO_CONSOLE is refused before
    // any boot, naming the option (a copy of the tree's files, config edited).
    let lacking = scratch("kernel-loop-lacking");
    for f in ["Makefile", "Kconfig"] {
        std::fs::write(lacking.join(f), "").unwrap();
    }
    let bz = lacking.join("arch/x86/boot/bzImage");
    std::fs::create_dir_all(bz.parent().unwrap()).unwrap();
    std::fs::copy(build_dir.join("arch/x86/boot/bzImage"), &bz).unwrap();
    let config = std::fs::read_to_string(build_dir.join(".config")).unwrap();
    std::fs::write(
        lacking.join(".config"),
        config.replace(
            "CONFIG_VIRTIO_CONSOLE=y",
            "# CONFIG_VIRTIO_CONSOLE is not set",
        ),
    )
    .unwrap();
    let results = lacking.join("results");
    let refused = lab_run(
        &results,
        &["--kernel", bz.to_str().unwrap(), "scenarios/smoke"],
    );
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("missing CONFIG_VIRTIO_CONSOLE (not set)"),
        "{err}"
    );
    assert!(!results
        .join("latest/arena-mmap-readback/console.log")
        .exists());

    // The good kernel runs the smoke scenarios.
    let results = scratch("kernel-loop-run");
    let run = lab_run(&results, &["--kernel-tree", tree_arg, "scenarios/smoke"]);
    assert_eq!(run.status.code(), Some(0));
    let s = summary(&results);
    assert_eq!(
        s["kernel"]["vmlinux"],
        vmlinux.to_str().unwrap(),
        "{}",
        s["kernel"]
    );

    // Traces decode to function and file:line with its vmlinux, as
    // binutils' addr2line says.
    let (addr, size) = symbol(&vmlinux, "arena_vm_fault");
    let log = scratch("kernel-loop-decode").join("console.log");
    std::fs::write(
        &log,
        format!(
            "[    5.100000] WARNING: CPU: 0 PID: 1 at kernel/bpf/arena.c:1 arena_vm_fault+0x20/{size:#x}\n\
             [    5.100001] RIP: 0010:arena_vm_fault+0x20/{size:#x}\n\
             [    5.100002] Call Trace:\n\
             [    5.100003]  <TASK>\n\
             [    5.100004]  __do_fault+0x31/0x80\n"
        ),
    )
    .unwrap();
    let decoded = lab(&[
        "kernel",
        "decode",
        "--vmlinux",
        vmlinux.to_str().unwrap(),
        log.to_str().unwrap(),
    ]);
    assert_eq!(decoded.status.code(), Some(0));
    let decoded = String::from_utf8_lossy(&decoded.stdout);
    let rip = decoded.lines().find(|l| l.contains("RIP:")).unwrap();
    let a2l = Command::new("addr2line")
        .arg("-e")
        .arg(&vmlinux)
        .arg(format!("{:#x}", addr + 0x20))
        .output()
        .unwrap();
    let a2l = String::from_utf8_lossy(&a2l.stdout);
    let line_no = a2l
        .trim()
        .rsplit(':')
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert!(
        rip.contains(&format!("(kernel/bpf/arena.c:{line_no}")),
        "ours: {rip}\nbinutils: {a2l}"
    );
    let caller = decoded.lines().find(|l| l.contains("__do_fault")).unwrap();
    assert!(caller.contains("(mm/memory.c:"), "{caller}");

    // Real gdb on the QEMU stub: stop at start_kernel, read a register and
    // the kernel's banner by its symbol; `lab boot --gdb`, then `lab run
    // --gdb`, where the scenario goes on to pass once gdb detaches.
    let port = common::free_port();
    let mut vm = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["boot", "--backend", "qemu", "--kernel-tree", tree_arg])
        .args(["--timeout", "300", &format!("--gdb={port}")])
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = gdb_reads_banner(&vmlinux, port, "kill");
    let _ = vm.kill();
    let _ = vm.wait();
    assert!(out.contains("<start_kernel"), "gdb: {out}");

    let port = common::free_port();
    let results = scratch("kernel-loop-gdb-run");
    let run = smoke_under_gdb(tree_arg, &results, port);
    gdb_reads_banner(&vmlinux, port, "detach");
    let run = run.wait_with_output().unwrap();
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // `--gdb-on-fail`: a failing scenario's VM stays up, paused, for gdb;
    // gdb reads it, `kill` ends it, and the run records the failure.
    gdb_on_fail(tree_arg, &vmlinux);

    // A vCPU whose EFLAGS gdb corrupts is a machine fault: retried, and the
    // clean retry's verdict stands.
    machine_fault_is_retried(tree_arg, &vmlinux);

    // Bisect base..c4: the first bad commit is c2, with its failure.
    let results = scratch("kernel-loop-bisect");
    let t = Instant::now();
    let bisect = lab(&[
        "bisect",
        "--tree",
        repo.to_str().unwrap(),
        "--good",
        &base,
        "--bad",
        &c4,
        "--out",
        build_dir.to_str().unwrap(),
        "--base",
        "tiny",
        "-j",
        &jobs,
        "--results",
        results.to_str().unwrap(),
        "scenarios/smoke/arena-mmap-readback.yaml",
    ]);
    assert_eq!(bisect.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&bisect.stdout);
    assert!(
        stdout.starts_with(&format!("first bad commit: {c2} arena: step c2")),
        "{stdout}"
    );
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("bisect.json")).unwrap())
            .unwrap();
    assert_eq!(record["first_bad"], c2.as_str());
    assert!(
        record["failing_output"]
            .as_str()
            .unwrap()
            .contains("arena-mmap-readback: fail"),
        "{record}"
    );
    assert_eq!(
        git(&repo, &["rev-parse", "HEAD"]),
        base,
        "the tree is left where it was"
    );
    eprintln!(
        "stage: bisect took {:.0} s in {} steps",
        t.elapsed().as_secs_f64(),
        record["steps"].as_array().unwrap().len()
    );

    fast_failure_on_oops(&repo, &build_dir, &jobs);
}

/// A kernel that oopses in `arena_vm_fault` (a NULL write on page 2's
/// fault, built on a branch of its own): the scenario ends within seconds
/// of the oops line, not at its 120 s timeout, as a `fail` naming the oops.
fn fast_failure_on_oops(repo: &Path, build_dir: &Path, jobs: &str) {
    let arena_c = repo.join("kernel/bpf/arena.c");
    let original = git(repo, &["show", "main:kernel/bpf/arena.c"]) + "\n";
    let anchor = "\tkaddr = kbase + (u32)(vmf->address);\n";
    git(repo, &["checkout", "-q", "-B", "arena-lab-oops", "main"]);
    rewrite(
        &arena_c,
        &original.replacen(
            anchor,
            &format!(
                "{anchor}\tif (vmf->pgoff == 2)\n\t\t*(volatile int *)0 = 0; /* arena-lab test: an oops */\n"
            ),
            1,
        ),
    );
    git(repo, &["commit", "-q", "-a", "-m", "arena: oops on page 2"]);
    let t = Instant::now();
    let built = build_tiny(repo, build_dir, jobs);
    git(repo, &["checkout", "-q", "-f", "main"]);
    assert_eq!(built.status.code(), Some(0));
    eprintln!("stage: oops build took {:.0} s", t.elapsed().as_secs_f64());

    let dir = scratch("kernel-loop-oops");
    let yaml = scenario(
        &dir,
        "oops",
        "name: oops-on-fault
tags: [page_fault]
timeout_s: 120
steps:
  - arena: { id: a, pages: 4 }
  - mmap: { arena: a }
  - touch: { arena: a, page: 2, op: write, value: 0x1 }
",
    );
    let results = dir.join("results");
    let out = lab_run(
        &results,
        &[
            "--kernel-tree",
            build_dir.to_str().unwrap(),
            yaml.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let s = summary(&results);
    let sc = &s["scenarios"][0];
    assert_eq!(sc["verdict"], "fail", "{sc}");
    let reason = sc["reason"].as_str().unwrap();
    assert!(
        reason.contains("BUG: kernel NULL pointer dereference") || reason.contains("Oops"),
        "{reason}"
    );
    let console =
        std::fs::read_to_string(results.join("latest/oops-on-fault/console.log")).unwrap();
    let oops = console
        .find("BUG: kernel NULL pointer dereference")
        .expect("the oops line");
    assert!(console[oops..].contains("Kernel panic - not syncing"));
    let total = sc["duration_s"].as_f64().unwrap();
    eprintln!("stage: oops; the VM was gone {total:.1} s after its start");
    // The oops came after the VM started, so a VM gone within 10 s of its
    // start ended within 10 s of the oops (the timeout is 120 s).
    assert!(
        total < 10.0,
        "the VM ran {total} s: it waited for a timeout"
    );
    // A splat the kernel really printed, decoded with the tree's DWARF: the
    // faulting line in arena.c, and its caller in mm/memory.c.
    let decoded = sc["splats"][0]["decoded"].as_str().unwrap_or_default();
    assert!(
        decoded.contains("arena_vm_fault+") && decoded.contains("(kernel/bpf/arena.c:"),
        "{decoded}"
    );
    assert!(
        decoded.contains("__do_fault+") && decoded.contains("(mm/memory.c:"),
        "{decoded}"
    );
    assert_eq!(sc["splats"][0]["function"], "arena_vm_fault");
}
