//! Helpers shared by the integration tests: run the real `lab` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("arena-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `dst` as a fresh copy of the tree `src` made of hard links (`cp -al`):
/// instant, and safe while whatever edits it replaces files instead of
/// writing through the links.
pub fn hard_link_copy(src: &Path, dst: &Path) {
    let _ = std::fs::remove_dir_all(dst);
    let st = std::process::Command::new("cp")
        .arg("-al")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success(), "cp -al {} {}", src.display(), dst.display());
}

/// Debian's linux-source of the default kernel, unpacked once by `lab
/// kernel source`, and a cache folder `<cache>/NAME/<its version>` (created)
/// for a test's trees and builds: (source, folder).
pub fn kernel_source_cache(name: &str) -> (PathBuf, PathBuf) {
    let src = lab(&["kernel", "source"]);
    assert_eq!(src.status.code(), Some(0));
    let src = PathBuf::from(String::from_utf8_lossy(&src.stdout).trim());
    let version = src.file_name().unwrap().to_string_lossy().into_owned();
    let cache = arena_images::cache::root().join(name).join(version);
    std::fs::create_dir_all(&cache).unwrap();
    (src, cache)
}

/// Run `lab` with `args` from the workspace root.
pub fn lab(args: &[&str]) -> Output {
    lab_env(args, &[])
}

/// [`lab`] with extra environment variables.
pub fn lab_env(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(root())
        .output()
        .expect("run lab");
    eprintln!(
        "lab {}: {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `lab run --results RESULTS ARGS...`.
pub fn lab_run(results: &Path, args: &[&str]) -> Output {
    let mut all = vec!["run", "--results", results.to_str().unwrap()];
    all.extend_from_slice(args);
    lab(&all)
}

/// Write a scenario file.
pub fn scenario(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, yaml).unwrap();
    p
}

/// The latest run's summary.json.
pub fn summary(results: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(results.join("latest/summary.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Write `yaml` as a scenario in a fresh scratch dir, run it with `lab run`
/// and return the output and the results directory.
pub fn run_yaml(test: &str, yaml: &str) -> (Output, PathBuf) {
    let dir = scratch(test);
    let f = scenario(&dir, test, yaml);
    let results = dir.join("results");
    let out = lab_run(&results, &[f.to_str().unwrap()]);
    (out, results)
}

/// The reason of the first scenario in the latest run.
pub fn first_reason(results: &Path) -> String {
    summary(results)["scenarios"][0]["reason"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Whether `scenario` ended as a kernel bug its own YAML documents
/// (`known_issues`, verdict `known_fail`): the lab doing its job, decided by
/// the product, not by a list in the tests. Everything else must pass.
pub fn known_kernel_bug(scenario: &serde_json::Value) -> bool {
    let known = scenario["verdict"] == "known_fail";
    if known {
        eprintln!(
            "known kernel bug, not a lab failure: {}: {} ({})",
            scenario["name"], scenario["reason"], scenario["known_issue"]
        );
        assert!(
            scenario["known_issue"]
                .as_str()
                .is_some_and(|n| !n.is_empty()),
            "known_fail without its note: {scenario}"
        );
    }
    known
}

/// Whether `scenario` was skipped because the kernel lacks a capability
/// its YAML `requires` (the reason names it): the product's decision, on a
/// A scenario whose every boot (five) showed the machine below the kernel
/// failing (`splat::machine_fault`: under `lab nested`, QEMU's emulated SVM
/// now and then hands a vCPU an EFLAGS no CPU can hold): an `error` that
/// is no verdict on the kernel. Callers bound how many they accept.
pub fn machine_fault(scenario: &serde_json::Value) -> bool {
    let reason = scenario["reason"].as_str().unwrap_or_default();
    let fault = scenario["verdict"] == "error"
        && reason.contains("not a kernel verdict")
        && scenario["retried_after"]["kind"] == "emulator_fault";
    if fault {
        eprintln!("MACHINE FAULT (not passed): {}: {reason}", scenario["name"]);
    }
    fault
}

/// kernel older than the scenario. Never a pass.
pub fn skipped_for_capability(scenario: &serde_json::Value) -> bool {
    let skipped = scenario["verdict"] == "skipped";
    if skipped {
        let reason = scenario["reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("this kernel lacks "),
            "skipped without naming a missing capability: {scenario}"
        );
        eprintln!("SKIPPED (not passed): {}: {reason}", scenario["name"]);
    }
    skipped
}

/// Every scenario of the latest run passed, failed only with a known
/// kernel bug, or was skipped for a capability the kernel lacks; returns
/// how many failed with a known bug.
pub fn assert_passed_but_known_bugs(results: &Path) -> usize {
    let s = summary(results);
    let mut known = 0;
    for sc in s["scenarios"].as_array().unwrap() {
        if known_kernel_bug(sc) {
            known += 1;
        } else if !skipped_for_capability(sc) {
            assert_eq!(sc["verdict"], "pass", "{}: {sc}", sc["name"]);
        }
    }
    known
}

/// Runs this test binary's test `test` again inside `lab nested`'s L1,
/// where `/dev/kvm` is real KVM, with `in_l1=1` and `env` set. Checks that
/// L1 came up with `/dev/kvm` and the inner run passed; returns its stdout
/// for the caller's checks of what ran inside.
pub fn rerun_in_l1(in_l1: &str, test: &str, env: &[(&str, &Path)]) -> String {
    let me = std::env::current_exe().unwrap();
    let mut inner = vec!["/usr/bin/env".to_owned(), format!("{in_l1}=1")];
    inner.extend(env.iter().map(|(k, v)| format!("{k}={}", v.display())));
    inner.extend([
        me.to_string_lossy().into_owned(),
        "--exact".into(),
        test.into(),
        "--nocapture".into(),
    ]);
    let mut args = vec!["nested", "--exec", "--"];
    args.extend(inner.iter().map(String::as_str));
    let out = lab(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ready with /dev/kvm"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "the run inside L1 failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A free TCP port on localhost (for a gdb stub).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Write `files` (name, contents) into `dir`.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// The Python of the kcidb-io virtualenv `.ci/install-deps` makes.
pub fn kcidb_python() -> PathBuf {
    let py = arena_images::cache::root().join("venv-kcidb/bin/python");
    assert!(
        py.is_file(),
        "{} missing: run .ci/install-deps (it installs kcidb-io)",
        py.display()
    );
    py
}

/// Validate a KCIDB JSON file with kcidb-io's `LATEST` schema: (valid,
/// the validator's output).
pub fn kcidb_validate(file: &Path) -> (bool, String) {
    let out = Command::new(kcidb_python())
        .args([
            "-c",
            "import kcidb_io, json, sys\n\
             s = kcidb_io.schema.LATEST\n\
             s.validate(json.load(open(sys.argv[1])))\n\
             print(f'valid against kcidb-io schema v{s.major}.{s.minor}')",
        ])
        .arg(file)
        .output()
        .expect("run python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("kcidb-io on {}: {text}", file.display());
    (out.status.success(), text)
}

/// Write `summary` as a run folder `dir` (summary.json, junit.xml,
/// results.ktap) through the library's writer, with a console.log per
/// scenario: a run made without VMs.
pub fn write_run(dir: &Path, summary: &arena_runner::record::results::Summary) {
    std::fs::create_dir_all(dir).unwrap();
    for s in &summary.scenarios {
        let d = dir.join(&s.dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("console.log"), format!("console of {}\n", s.name)).unwrap();
    }
    let rd = arena_runner::record::run_dir::RunDir {
        path: dir.to_owned(),
        id: dir.file_name().unwrap().to_string_lossy().into_owned(),
    };
    rd.write(summary).unwrap();
}
