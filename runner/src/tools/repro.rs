//! `lab repro RESULTS/<run>/<scenario>[/attempt-<k>]`: run one recorded
//! attempt again as a run of its own, from what its run recorded (the
//! exact kernel and its sha256, the copy of the scenario file, the
//! attempt's run seed, the VM shape, the backend and the options that
//! decide verdicts: `replay.rs`), so the same seed makes the same choices.
//! A kernel whose sha256 differs from the recorded one is refused (exit 2)
//! unless `--any-kernel`.

use std::path::{Path, PathBuf};

use crate::judge::verdict::Verdict;
use crate::plan::attempts::{shell_quote, SCENARIO_COPY};
use crate::record::results::{ReadError, ScenarioSummary, Summary};
use crate::{run, LabError};

/// `lab repro` options.
#[derive(clap::Args, Debug)]
pub struct ReproArgs {
    /// A scenario's folder in a run (`results/<run-id>/<name>`, or one
    /// attempt's `.../<name>/attempt-<k>`; a scenario folder with attempts
    /// replays its first failing attempt, else its last).
    pub dir: PathBuf,
    /// Results directory of the new run.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Run even if the kernel is no longer the one that ran (its sha256
    /// differs, e.g. a rebuilt tree): a replay in name only, said so.
    #[arg(long)]
    pub any_kernel: bool,
}

/// Why a folder cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReproError {
    /// No `summary.json` in the folder or the two above it.
    #[error("{0}: not inside a run folder (no summary.json next to or above it)")]
    NoRun(PathBuf),
    /// The summary cannot be read.
    #[error(transparent)]
    BadSummary(#[from] ReadError),
    /// The run has no entry for the folder.
    #[error("{0}: no scenario of its run has this folder")]
    NoEntry(PathBuf),
    /// Recorded before scenario copies or run seeds were kept.
    #[error("{0}: the run did not record {1}; re-run it with this lab first")]
    NotRecorded(PathBuf, &'static str),
}

/// What a replay runs, read from the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Scenario name.
    pub name: String,
    /// Attempt number in the original run.
    pub attempt: u64,
    /// The attempt's run seed.
    pub run_seed: u64,
    /// The seed the agent got.
    pub seed: u64,
    /// The scenario file copy.
    pub file: PathBuf,
    /// The run's recorded replay options (kernel, `--kernel-sha256`,
    /// backend, verdict options): `replay::run_args`.
    pub recorded: Vec<String>,
    /// vCPUs and MiB of the attempt's VM.
    pub vm: arena_protocol::scenario::VmSpec,
}

fn run_folder(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .take(3)
        .find(|d| d.join("summary.json").is_file())
        .map(Path::to_owned)
}

/// The attempt `dir` names, from its run's summary.
pub fn locate(dir: &Path) -> Result<Target, ReproError> {
    let dir = dir.components().collect::<PathBuf>();
    let run = run_folder(&dir).ok_or_else(|| ReproError::NoRun(dir.clone()))?;
    let summary = Summary::read_run(&run)?;
    let rel = dir
        .strip_prefix(&run)
        .map(|r| r.to_string_lossy().into_owned())
        .unwrap_or_default();
    let entries = &summary.scenarios;
    let entry = entries
        .iter()
        .find(|e| e.dir == rel)
        .or_else(|| {
            let attempts: Vec<&ScenarioSummary> =
                entries.iter().filter(|e| e.name == rel).collect();
            attempts
                .iter()
                .find(|e| e.judgement.verdict.is_failure())
                .or_else(|| {
                    attempts
                        .iter()
                        .rev()
                        .find(|e| e.judgement.verdict != Verdict::NotRun)
                })
                .copied()
        })
        .ok_or_else(|| ReproError::NoEntry(dir.clone()))?;
    // Folders and run seeds were recorded together.
    if entry.dir.is_empty() {
        return Err(ReproError::NotRecorded(
            dir,
            "attempt folders and run seeds",
        ));
    }
    let file = run.join(&entry.dir).join(SCENARIO_COPY);
    if !file.is_file() {
        return Err(ReproError::NotRecorded(dir, "a copy of the scenario file"));
    }
    let recorded: Vec<String> = if summary.replay_args.is_empty() {
        // Written before replay options were recorded: the kernel record
        // (pinned, with its sha256) and the backend are all there is.
        let kernel = summary
            .kernel
            .as_ref()
            .ok_or(ReproError::NotRecorded(dir.clone(), "the kernel"))?;
        let mut a = crate::plan::replay::from_kernel_record(kernel, kernel.modules.as_deref());
        if let Some(b) = &summary.backend {
            a.extend(["--backend".into(), b.clone()]);
        }
        a
    } else {
        summary.replay_args.clone()
    };
    Ok(Target {
        name: entry.name.clone(),
        attempt: entry.attempt,
        run_seed: entry.run_seed,
        seed: entry.seed,
        file,
        recorded,
        vm: entry.vm,
    })
}

impl Target {
    /// The `lab run` arguments that replay it, results under `results`;
    /// `any_kernel` drops the recorded `--kernel-sha256`.
    pub fn run_args(&self, results: &Path, any_kernel: bool) -> Vec<String> {
        let mut recorded = self.recorded.clone();
        if any_kernel {
            if let Some(i) = recorded.iter().position(|w| w == "--kernel-sha256") {
                recorded.drain(i..(i + 2).min(recorded.len()));
            }
        }
        let mut a: Vec<String> = vec![
            "run".into(),
            "--results".into(),
            results.to_string_lossy().into_owned(),
        ];
        a.extend(crate::plan::replay::attempt_args(
            &recorded,
            self.run_seed,
            &self.vm,
            &self.name,
            &self.file,
        ));
        a
    }
}

/// `lab repro`.
pub fn repro(args: ReproArgs) -> Result<u8, LabError> {
    let target = locate(&args.dir).map_err(|e| LabError::BadArgs(e.to_string()))?;
    let argv = target.run_args(&args.results, args.any_kernel);
    if args.any_kernel {
        eprintln!("lab: --any-kernel: the kernel's sha256 is not checked against the recorded one");
    }
    eprintln!(
        "lab: replaying {} attempt {} (seed {}): lab {}",
        target.name,
        target.attempt,
        target.seed,
        argv.iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let run_args = run::parse_args(std::iter::once("lab".to_owned()).chain(argv))
        .map_err(|e| LabError::BadArgs(e.to_string()))?;
    run::run(run_args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_run(root: &Path) -> PathBuf {
        let run = root.join("20260101-000000");
        for d in ["a/attempt-1", "a/attempt-2", "b"] {
            std::fs::create_dir_all(run.join(d)).unwrap();
            std::fs::write(run.join(d).join(SCENARIO_COPY), "name: x\n").unwrap();
        }
        let entry = |name: &str, dir: &str, attempt: u64, verdict: &str, seed: u64| {
            serde_json::json!({
                "name": name, "dir": dir, "attempt": attempt, "verdict": verdict,
                "seed": seed, "run_seed": seed + 1000,
                "vm": {"vcpus": 4, "memory_mib": 256},
            })
        };
        let summary = serde_json::json!({
            "kernel": null,
            "backend": "qemu",
            "replay_args": ["--kernel", "debian:7.2.13", "--kernel-sha256", "feed",
                            "--backend", "qemu", "--no-known-issues", "--boot-timeout", "120"],
            "scenarios": [
                entry("a", "a/attempt-1", 1, "pass", 1),
                entry("a", "a/attempt-2", 2, "fail", 2),
                entry("b", "b", 1, "pass", 3),
            ],
        });
        std::fs::write(run.join("summary.json"), summary.to_string()).unwrap();
        run
    }

    #[test]
    fn finds_the_attempt_and_builds_the_run() {
        let root = std::env::temp_dir().join(format!("lab-repro-{}", std::process::id()));
        let run = write_run(&root);
        // The scenario folder: its failing attempt.
        let t = locate(&run.join("a")).unwrap();
        assert_eq!((t.attempt, t.seed, t.run_seed), (2, 2, 1002));
        assert_eq!(t.file, run.join("a/attempt-2").join(SCENARIO_COPY));
        assert_eq!((t.vm.vcpus, t.vm.memory_mib), (4, 256));
        // One attempt named directly.
        assert_eq!(locate(&run.join("a/attempt-1/")).unwrap().attempt, 1);
        let t = locate(&run.join("b")).unwrap();
        let args = t.run_args(Path::new("r"), false);
        let file = run.join("b").join(SCENARIO_COPY);
        // The recorded options come whole: the pinned kernel, its sha256,
        // --no-known-issues and the timeouts.
        let want = [
            "run",
            "--results",
            "r",
            "--kernel",
            "debian:7.2.13",
            "--kernel-sha256",
            "feed",
            "--backend",
            "qemu",
            "--no-known-issues",
            "--boot-timeout",
            "120",
            "--seed",
            "1003",
            "--vcpus",
            "4",
            "--memory-mib",
            "256",
            "--only",
            "b",
        ];
        assert_eq!(args[..want.len()], want);
        assert_eq!(args[want.len()], file.to_string_lossy());
        // The parsed arguments are a valid `lab run`.
        let full = std::iter::once("lab".to_owned()).chain(args);
        assert!(run::parse_args(full).is_ok());
        // --any-kernel drops the digest, and only it.
        let any = t.run_args(Path::new("r"), true);
        assert!(!any.iter().any(|w| w == "--kernel-sha256" || w == "feed"));
        assert_eq!(any.len(), want.len() + 1 - 2);
        assert!(matches!(
            locate(&run.join("c")),
            Err(ReproError::NoEntry(_))
        ));
        assert!(matches!(locate(&root), Err(ReproError::NoRun(_))));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn an_old_summary_replays_its_kernel_record_pinned() {
        let root = std::env::temp_dir().join(format!("lab-repro-old-{}", std::process::id()));
        let run = write_run(&root);
        let path = run.join("summary.json");
        let mut summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        summary.as_object_mut().unwrap().remove("replay_args");
        summary["kernel"] = serde_json::json!({
            "origin": {"kind": "debian", "package": "linux-image-6.12.118+deb12-amd64",
                       "version": "6.12.118-1"},
            "boot_image": "/c/vmlinux", "bzimage": null, "vmlinux": null, "modules": null,
            "release": "6.12.118+deb12-amd64", "version": "Linux version 6.12.118",
            "sha256": "beef",
        });
        std::fs::write(&path, summary.to_string()).unwrap();
        let args = locate(&run.join("b"))
            .unwrap()
            .run_args(Path::new("r"), false);
        assert_eq!(
            args[3..9],
            [
                "--kernel",
                "debian:6.12.118",
                "--kernel-sha256",
                "beef",
                "--backend",
                "qemu"
            ]
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
