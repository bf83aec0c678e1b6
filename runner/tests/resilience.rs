//! Runner resilience against a hostile guest and a hostile host: a guest
//! flooding its serial console, the results disk filling up, `kill -9` of
//! the runner. Whatever happens the results folder stays parseable, the
//! summary never claims more than happened, and no VM outlives the runner.
//! Boots real kernels (QEMU/TCG where there is no usable KVM).

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `console_capture::CAP_ENV`.
const CAP_ENV: &str = "ARENA_LAB_CONSOLE_CAP_BYTES";
/// `console_capture::MARKER_MAX`: what the marker block may add to the cap.
const MARKER_MAX: u64 = 16 << 10;
/// Generous bound on one `lab run` here (a slow, shared host): only a
/// guard against hanging forever, never a performance assertion.
const RUN_DEADLINE: Duration = Duration::from_secs(1200);

fn fixture(name: &str) -> PathBuf {
    root().join("runner/tests/fixtures").join(name)
}

/// `lab run --results RESULTS ARGS...` in the background, its output in
/// files beside the results (a pipe nobody reads could block it).
fn spawn_lab(dir: &Path, results: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lab"));
    c.args(["run", "--results", results.to_str().unwrap()])
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(File::create(dir.join("lab.stdout")).unwrap())
        .stderr(File::create(dir.join("lab.stderr")).unwrap());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("start lab")
}

fn output_of(dir: &Path) -> (String, String) {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let (out, err) = (read("lab.stdout"), read("lab.stderr"));
    eprintln!("lab stdout:\n{out}\nlab stderr:\n{err}");
    (out, err)
}

/// Wait for `child`; kill it and fail after [`RUN_DEADLINE`].
fn wait(child: &mut Child, t0: Instant) -> std::process::ExitStatus {
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if t0.elapsed() > RUN_DEADLINE {
            let _ = child.kill();
            panic!("lab run did not end within {RUN_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `/proc/<pid>/status` field in kB (`VmHWM`, `VmRSS`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(&format!("{field}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `(pid, comm)` of the processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let comm = head.split_once(" (").map_or("", |(_, c)| c).to_owned();
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(parent) {
            out.push((pid, comm));
        }
    }
    out
}

/// Whether `pid` still runs (a zombie waiting for its reaper does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
        .unwrap_or(false)
}

/// Well-formed XML, as far as a JUnit consumer needs: a declaration, then
/// elements that nest and close properly, one root.
fn check_xml(text: &str) -> Result<(), String> {
    let body = text
        .strip_prefix("<?xml")
        .and_then(|t| t.split_once("?>"))
        .ok_or("no XML declaration")?
        .1;
    let mut stack: Vec<&str> = Vec::new();
    let mut roots = 0;
    let mut rest = body;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let close = after.find('>').ok_or("unterminated tag")?;
        let tag = &after[..close];
        rest = &after[close + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let top = stack.pop().ok_or(format!("</{name}> closes nothing"))?;
            if top != name.trim() {
                return Err(format!("<{top}> closed by </{name}>"));
            }
        } else {
            let name = tag.split_whitespace().next().ok_or("empty tag")?;
            if stack.is_empty() {
                roots += 1;
            }
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
    }
    if !stack.is_empty() || roots != 1 || !rest.trim().is_empty() {
        return Err(format!(
            "unclosed {stack:?}, {roots} roots, trailing {rest:?}"
        ));
    }
    Ok(())
}

/// A complete KTAP document: header, plan `1..N`, then exactly N top-level
/// results numbered 1..N (nested blocks are indented).
fn check_ktap(text: &str) -> Result<(), String> {
    let mut lines = text.lines();
    if lines.next() != Some("KTAP version 1") {
        return Err("no KTAP header".into());
    }
    let mut plan = None;
    let mut seen = 0;
    for l in lines.filter(|l| !l.starts_with(' ') && !l.starts_with('#')) {
        if let Some(n) = l.strip_prefix("1..") {
            plan = Some(n.parse::<usize>().map_err(|e| format!("plan {l:?}: {e}"))?);
            continue;
        }
        let rest = l
            .strip_prefix("ok ")
            .or_else(|| l.strip_prefix("not ok "))
            .ok_or(format!("not a result line: {l:?}"))?;
        seen += 1;
        let k: usize = rest.split(' ').next().unwrap_or("").parse().unwrap_or(0);
        if k != seen {
            return Err(format!("result {k} where {seen} was due"));
        }
    }
    match plan {
        Some(n) if n == seen => Ok(()),
        _ => Err(format!("plan {plan:?}, {seen} results")),
    }
}

/// Every result file present in the run folder `run` parses; the summary,
/// if present.
fn check_results(run: &Path) -> Option<serde_json::Value> {
    if let Ok(t) = std::fs::read_to_string(run.join("junit.xml")) {
        check_xml(&t).unwrap_or_else(|e| panic!("junit.xml: {e}\n{t}"));
    }
    if let Ok(t) = std::fs::read_to_string(run.join("results.ktap")) {
        check_ktap(&t).unwrap_or_else(|e| panic!("results.ktap: {e}\n{t}"));
    }
    let text = std::fs::read_to_string(run.join("summary.json")).ok()?;
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("summary.json: {e}\n{text}")))
}

/// The summary claims no more than happened: a scenario is `pass` only if
/// its agent said `done` with `pass`, and the counts match the entries.
fn assert_no_false_pass(run: &Path, s: &serde_json::Value) {
    let scenarios = s["scenarios"].as_array().unwrap();
    let passes = scenarios.iter().filter(|x| x["verdict"] == "pass").count();
    assert_eq!(s["passed"].as_u64(), Some(passes as u64), "{s}");
    for sc in scenarios.iter().filter(|x| x["verdict"] == "pass") {
        let events = run.join(sc["dir"].as_str().unwrap()).join("events.jsonl");
        let done = std::fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|m| m["type"] == "done" && m["status"] == "pass");
        assert!(
            done,
            "{} is pass without the agent's done: {sc}",
            sc["name"]
        );
    }
}

/// A results directory on a tmpfs of `size`, unmounted when dropped.
struct TinyDisk(PathBuf);

impl TinyDisk {
    fn mount(dir: &Path, size: &str) -> TinyDisk {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs to mount a tmpfs (root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TinyDisk(dir.to_owned())
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A guest writing ~4 MB to its console with the cap at 1 MiB: the file
/// keeps the head, one marker and the tail within the cap; the runner's
/// memory does not grow with the flood; the verdict is the guest's.
#[test]
fn a_console_flood_is_capped_and_the_runner_stays_small() {
    let cap: u64 = 1 << 20;
    let dir = scratch("resilience-flood");
    let results = dir.join("results");
    let t0 = Instant::now();
    let mut child = spawn_lab(
        &dir,
        &results,
        &[fixture("resilience-flood.yaml").to_str().unwrap()],
        &[(CAP_ENV, &cap.to_string())],
    );
    let pid = child.id();
    let console = results.join("latest/resilience-flood/console.log");
    // Peak RSS of `lab` when its VM started, and at the end (the peak only
    // grows: the last reading before the exit is the run's peak).
    let (mut at_vm_start, mut peak) = (None, 0);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if let Some(hwm) = status_kib(pid, "VmHWM") {
            peak = hwm;
            if at_vm_start.is_none() && console.exists() {
                at_vm_start = Some(hwm);
            }
        }
        if let Some(s) = check_results(&results.join("latest")) {
            assert_no_false_pass(&results.join("latest"), &s);
        }
        assert!(t0.elapsed() < RUN_DEADLINE, "lab run hangs");
        std::thread::sleep(Duration::from_millis(100));
    };
    let (stdout, _) = output_of(&dir);
    assert_eq!(status.code(), Some(0), "{stdout}");
    let run = results.join("latest");
    let s = check_results(&run).expect("summary.json");
    assert_no_false_pass(&run, &s);
    let sc = &s["scenarios"][0];
    // Honest: the guest's steps all ran and passed, the flood hid no splat
    // and the marker is none.
    assert_eq!(sc["verdict"], "pass", "{sc}");
    assert_eq!(sc["splats"], serde_json::json!([]), "{sc}");
    assert_eq!(
        sc["steps"][0]["detail"], "100000 iterations of 1 step(s) passed",
        "{sc}"
    );

    let text = std::fs::read_to_string(&console).unwrap();
    let size = text.len() as u64;
    assert!(size <= cap + MARKER_MAX, "console.log is {size} bytes");
    assert!(
        text.starts_with("[    0.000000] Linux version"),
        "head lost"
    );
    assert!(text.trim_end().ends_with("reboot: Power down"), "tail lost");
    let markers: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("[arena-lab] console.log capped"))
        .collect();
    assert_eq!(markers.len(), 1, "{markers:?}");
    let dropped: u64 = markers[0]
        .split(": ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {:?}", markers[0]));
    let flood = dropped + size - markers[0].len() as u64 - 1;
    let at_vm_start = at_vm_start.expect("never saw the VM start");
    eprintln!(
        "flood: {flood} bytes written by the guest, {dropped} dropped, console.log {size} bytes; \
         lab VmHWM {at_vm_start} kB at VM start, {peak} kB at the end"
    );
    assert!(flood >= 4 * cap, "the guest wrote only {flood} bytes");
    // Holding the flood in memory even once (the console read whole for the
    // verdict) would cost more than this; the capture holds half the cap.
    assert!(
        (peak - at_vm_start) * 1024 < flood,
        "lab grew by {} kB during a {flood}-byte flood",
        peak - at_vm_start
    );
}

/// The results disk fills up mid-run (the console of a chatty guest on a
/// 256 KiB tmpfs): exit 3 with one `lab: error:` line naming the full disk,
/// every result file present parses, nothing is `pass`.
#[test]
fn a_full_results_disk_ends_the_run_with_exit_3_and_parseable_results() {
    let dir = scratch("resilience-disk");
    let results = dir.join("results");
    let _disk = TinyDisk::mount(&results, "256k");
    let t0 = Instant::now();
    let mut child = spawn_lab(
        &dir,
        &results,
        &[fixture("resilience-disk.yaml").to_str().unwrap()],
        &[],
    );
    let status = wait(&mut child, t0);
    let (_, stderr) = output_of(&dir);
    assert_eq!(status.code(), Some(3), "{stderr}");
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(last.starts_with("lab: error: "), "{last}");
    assert!(last.contains("No space left on device"), "{last}");
    let run = results.join("latest");
    let s = check_results(&run).expect("the first summary.json was written before the disk filled");
    assert_eq!(s["complete"], false, "{s}");
    assert_no_false_pass(&run, &s);
    assert_eq!(s["passed"], 0, "{s}");
    // No truncated result file under any name the runner writes.
    for e in std::fs::read_dir(&run).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "summary.json" {
            let t = std::fs::read_to_string(e.path()).unwrap();
            assert!(serde_json::from_str::<serde_json::Value>(&t).is_ok(), "{t}");
        }
    }
}

/// Where the runner is killed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum KillAt {
    /// While the first scenario's VM boots: nothing has finished.
    FirstBoot,
    /// The first scenario finished and recorded, the second's VM booting.
    SecondBoot,
}

/// `kill -9` of `lab run` at two points: every result file present parses
/// (also read continuously while it runs), nothing unfinished is `pass`,
/// and the VM it was booting dies with it.
#[test]
fn kill_9_leaves_parseable_results_no_false_pass_and_no_vm() {
    for at in [KillAt::FirstBoot, KillAt::SecondBoot] {
        let dir = scratch(&format!("resilience-kill-{at:?}"));
        let mut files = Vec::new();
        for name in ["r-first", "r-second", "r-third"] {
            let yaml = format!("name: {name}\nsteps:\n  - sleep: {{ ms: 1 }}\n");
            files.push(scenario(&dir, name, &yaml).to_str().unwrap().to_owned());
        }
        let results = dir.join("results");
        let args: Vec<&str> = files.iter().map(String::as_str).collect();
        let t0 = Instant::now();
        let mut child = spawn_lab(&dir, &results, &args, &[]);
        let pid = child.id();
        let run = results.join("latest");
        let booting = match at {
            KillAt::FirstBoot => "r-first",
            KillAt::SecondBoot => "r-second",
        };
        let vms = loop {
            assert!(
                child.try_wait().unwrap().is_none(),
                "lab ended before the kill point"
            );
            assert!(t0.elapsed() < RUN_DEADLINE, "never got to {at:?}");
            if let Some(s) = check_results(&run) {
                assert_no_false_pass(&run, &s);
            }
            let console = run.join(booting).join("console.log");
            let hello = std::fs::read_to_string(run.join(booting).join("events.jsonl"))
                .is_ok_and(|t| t.contains("\"hello\""));
            let vms: Vec<(u32, String)> = children_of(pid)
                .into_iter()
                .filter(|(_, comm)| comm.starts_with("qemu") || comm.starts_with("arena-vmm"))
                .collect();
            if console.exists() && !hello && !vms.is_empty() {
                break vms;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
        let st = child.wait().unwrap();
        assert_eq!(st.code(), None, "{st}");
        output_of(&dir);
        // The VM dies with the runner (PR_SET_PDEATHSIG), not later.
        let killed = Instant::now();
        while vms.iter().any(|(p, _)| alive(*p)) && killed.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let left: Vec<_> = vms.iter().filter(|(p, _)| alive(*p)).collect();
        assert!(left.is_empty(), "{at:?}: VMs outlived the runner: {left:?}");

        let s = check_results(&run).expect("summary.json");
        assert_no_false_pass(&run, &s);
        assert_eq!(s["complete"], false, "{s}");
        assert_eq!(s["aborted"], serde_json::Value::Null, "{s}");
        let verdicts: Vec<&str> = s["scenarios"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["verdict"].as_str().unwrap())
            .collect();
        let expect = match at {
            KillAt::FirstBoot => ["not_run", "not_run", "not_run"],
            KillAt::SecondBoot => ["pass", "not_run", "not_run"],
        };
        assert_eq!(verdicts, expect, "{at:?}: {s}");
        for sc in &s["scenarios"].as_array().unwrap()[usize::from(at == KillAt::SecondBoot)..] {
            let reason = sc["reason"].as_str().unwrap();
            assert!(reason.starts_with("pending"), "{at:?}: {sc}");
        }
    }
}
