//! `lab nightly plan|run` on a two-kernel matrix (debian:6.12, the default,
//! and debian:7.2.13, pinned in guest-images/kernels.lock) × the smoke
//! scenarios × 2 shards, as docs/nightly-github-actions.yml runs it: the
//! plan's 4 jobs each run by `lab nightly run --job K`, `lab merge` per
//! kernel, then `lab compare` of the two merged runs; and the bad inputs
//! that are exit 2 naming the matrix file and the field.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const MATRIX: &str = r#"shards = 2

[[kernel]]
name = "debian-6.12"
spec = "debian:6.12"

[[kernel]]
name = "debian-7.2"
spec = "debian:7.2.13"

[[scenarios]]
name = "smoke"
paths = ["scenarios/smoke"]
"#;

/// A scratch folder with `nightly.toml` (`text`) beside a link to the
/// workspace's scenarios (paths are relative to the matrix file).
fn matrix(dir: &Path, name: &str, text: &str) -> PathBuf {
    let link = dir.join("scenarios");
    if !link.exists() {
        std::os::unix::fs::symlink(root().join("scenarios"), &link).unwrap();
    }
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    file
}

/// The run folders (`<run-id>`) under `dir`.
fn runs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("summary.json").is_file() && !p.ends_with("latest"))
        .collect();
    out.sort();
    out
}

/// `lab ARGS` without $GITHUB_RUN_ID: its exit code and stderr.
fn lab_no_ci(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(args)
        .env_remove("GITHUB_RUN_ID")
        .current_dir(root())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("lab {}: {}\n{err}", args.join(" "), out.status);
    (out.status.code(), err)
}

#[test]
fn plan_run_merge_compare_two_kernels() {
    let dir = scratch("nightly-matrix");
    let m = matrix(&dir, "nightly.toml", MATRIX);
    let m_s = m.to_str().unwrap();

    let out = lab(&["nightly", "plan", m_s]);
    assert_eq!(out.status.code(), Some(0));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let jobs = plan["include"].as_array().unwrap();
    assert_eq!(jobs.len(), 4, "{plan}");
    let expected = [
        (1, "debian-6.12", "1/2"),
        (2, "debian-6.12", "2/2"),
        (3, "debian-7.2", "1/2"),
        (4, "debian-7.2", "2/2"),
    ];
    for (job, (n, kernel, shard)) in jobs.iter().zip(expected) {
        assert_eq!(job["job"], n);
        assert_eq!(job["kernel"], kernel);
        assert_eq!(job["scenarios"], "smoke");
        assert_eq!(job["shard"], shard);
    }
    assert_eq!(
        lab(&["nightly", "plan", m_s]).stdout,
        out.stdout,
        "deterministic"
    );
    let three = lab(&["nightly", "plan", m_s, "--shards", "3"]);
    let three: serde_json::Value = serde_json::from_slice(&three.stdout).unwrap();
    assert_eq!(three["include"].as_array().unwrap().len(), 6);

    // Without --seed or $GITHUB_RUN_ID the shards could not be merged.
    let (code, err) = lab_no_ci(&["nightly", "run", m_s, "--job", "1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--seed"), "{err}");
    let (code, err) = lab_no_ci(&["nightly", "run", m_s, "--job", "5", "--seed", "1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("jobs 1 to 4"), "{err}");

    let results = dir.join("results");
    let r_s = results.to_str().unwrap();
    for job in 1..=4 {
        let k = job.to_string();
        let out = lab(&[
            "nightly",
            "run",
            m_s,
            "--job",
            &k,
            "--seed",
            "20261208",
            "--results",
            r_s,
            "--",
            "-j",
            "1",
        ]);
        assert_eq!(out.status.code(), Some(0), "job {job}");
    }

    let merged = dir.join("merged");
    for kernel in ["debian-6.12", "debian-7.2"] {
        let mut args = vec!["merge".to_owned()];
        for shard in 1..=2 {
            let d = results
                .join(kernel)
                .join("smoke")
                .join(format!("shard-{shard}"));
            let r = runs(&d);
            assert_eq!(r.len(), 1, "{}", d.display());
            args.push(r[0].to_string_lossy().into_owned());
        }
        args.extend([
            "-o".into(),
            merged.join(kernel).to_string_lossy().into_owned(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = lab(&args);
        assert_eq!(out.status.code(), Some(0), "merge {kernel}");
        let text = std::fs::read_to_string(merged.join(kernel).join("summary.json")).unwrap();
        let s: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(s["planned"], 2, "{s}");
        assert_eq!(s["seed"], 20261208u64, "{s}");
        assert_eq!(s["shards"].as_array().map(Vec::len), Some(2), "{s}");
    }

    let out = lab(&[
        "compare",
        merged.join("debian-6.12").to_str().unwrap(),
        merged.join("debian-7.2").to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "no regression 6.12 → 7.2 on smoke"
    );
}

#[test]
fn bad_matrices_are_exit_2_naming_file_and_field() {
    let dir = scratch("nightly-matrix-bad");
    let cases = [
        (
            "channel.toml",
            MATRIX.replace("debian:7.2.13", "debian:seven"),
            ":9:8: kernel[1].spec:",
        ),
        (
            "missing.toml",
            MATRIX.replace("scenarios/smoke", "scenarios/no-such-set"),
            ":13:10: scenarios[0].paths[0]:",
        ),
        (
            "syntax.toml",
            MATRIX.replace("shards = 2", "shards = \"two\""),
            ":1:10: shards:",
        ),
        (
            "unknown.toml",
            MATRIX.replace("spec = \"debian:6.12\"", "kernal = \"debian:6.12\""),
            ":5:1: kernel[0].kernal:",
        ),
        (
            "broken.toml",
            MATRIX.replace("[[scenarios]]", "[[scenarios]"),
            ": (file)",
        ),
    ];
    for (name, text, want) in cases {
        let m = matrix(&dir, name, &text);
        let m_s = m.to_str().unwrap();
        let out = lab(&["nightly", "plan", m_s]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(m_s), "{name}: names the file: {err}");
        if name != "broken.toml" {
            assert!(err.contains(want), "{name}: {want}: {err}");
        }
        let out = lab(&["nightly", "run", m_s, "--job", "1", "--seed", "1"]);
        assert_eq!(out.status.code(), Some(2), "{name}: run");
    }

    // A tree kernel whose tree is missing: exit 2 when its job runs.
    let m = matrix(
        &dir,
        "tree.toml",
        &MATRIX.replace(
            "spec = \"debian:6.12\"",
            "tree = \"no-such-linux\"\ndebug = true",
        ),
    );
    let m_s = m.to_str().unwrap();
    assert_eq!(lab(&["nightly", "plan", m_s]).status.code(), Some(0));
    let out = lab(&["nightly", "run", m_s, "--job", "1", "--seed", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-linux"), "{err}");

    // A tree at an unknown ref, and a git tree that is no kernel tree: exit 2.
    let git = |args: &[&str]| {
        let st = Command::new("git")
            .arg("-C")
            .arg(dir.join("not-linux"))
            .args(["-c", "user.email=lab@example.org", "-c", "user.name=lab"])
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "git {args:?}");
    };
    std::fs::create_dir_all(dir.join("not-linux")).unwrap();
    git(&["init", "-q"]);
    git(&["commit", "-q", "--allow-empty", "-m", "x"]);
    for (r, want) in [
        ("no-such-ref", "git checkout no-such-ref"),
        ("HEAD", "not a kernel source tree"),
    ] {
        let m = matrix(
            &dir,
            "tree.toml",
            &MATRIX.replace(
                "spec = \"debian:6.12\"",
                &format!("tree = \"not-linux\"\nref = \"{r}\""),
            ),
        );
        let out = lab(&[
            "nightly",
            "run",
            m.to_str().unwrap(),
            "--job",
            "1",
            "--seed",
            "1",
        ]);
        assert_eq!(out.status.code(), Some(2), "ref {r}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "ref {r}: {err}");
    }
}

#[test]
fn the_repositorys_matrix_plans_and_the_doc_shows_the_workflow() {
    let out = lab(&["nightly", "plan", "nightly.toml"]);
    assert_eq!(out.status.code(), Some(0));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!plan["include"].as_array().unwrap().is_empty());
    let doc = std::fs::read_to_string(root().join("docs/nightly.md")).unwrap();
    let yml = std::fs::read_to_string(root().join("docs/nightly-github-actions.yml")).unwrap();
    assert!(
        doc.contains(&format!("```yaml\n{yml}```")),
        "docs/nightly.md embeds docs/nightly-github-actions.yml as it is"
    );
    assert!(
        yml.contains("lab nightly plan") && yml.contains("fromJSON(needs.plan.outputs.matrix)")
    );
}
