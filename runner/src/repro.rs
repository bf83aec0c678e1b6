//! `lab repro RESULTS/<run>/<scenario>[/attempt-<k>]`: run one recorded
//! attempt again as a run of its own, from what its run recorded (the
//! kernel, the copy of the scenario file, the attempt's run seed, the VM
//! shape, the backend), so the same seed makes the same choices.

use std::path::{Path, PathBuf};

use clap::Parser;
use serde_json::Value;

use crate::attempts::{shell_quote, SCENARIO_COPY};
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
}

/// Why a folder cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReproError {
    /// No `summary.json` in the folder or the two above it.
    #[error("{0}: not inside a run folder (no summary.json next to or above it)")]
    NoRun(PathBuf),
    /// The summary cannot be read.
    #[error("{path}: {message}")]
    BadSummary {
        /// summary.json.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
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
    /// `--kernel` and `--modules` of a user kernel; `None`: the default.
    pub kernel: Option<(String, Option<String>)>,
    /// Backend name (`qemu`, `kvm`).
    pub backend: Option<String>,
    /// vCPUs, MiB.
    pub vm: (u64, u64),
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
    let path = run.join("summary.json");
    let bad = |message: String| ReproError::BadSummary {
        path: path.clone(),
        message,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
    let summary: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let rel = dir
        .strip_prefix(&run)
        .map(|r| r.to_string_lossy().into_owned())
        .unwrap_or_default();
    let entries = summary["scenarios"]
        .as_array()
        .ok_or_else(|| bad("no `scenarios` array".into()))?;
    let verdict = |e: &Value| e["verdict"].as_str().unwrap_or("").to_owned();
    let entry = entries
        .iter()
        .find(|e| e["dir"].as_str() == Some(rel.as_str()))
        .or_else(|| {
            let attempts: Vec<&Value> = entries
                .iter()
                .filter(|e| e["name"].as_str() == Some(rel.as_str()))
                .collect();
            let failing = ["fail", "error", "timeout"];
            attempts
                .iter()
                .find(|e| failing.contains(&verdict(e).as_str()))
                .or_else(|| attempts.iter().rev().find(|e| verdict(e) != "not_run"))
                .copied()
        })
        .ok_or_else(|| ReproError::NoEntry(dir.clone()))?;
    let (Some(sub), Some(run_seed)) = (entry["dir"].as_str(), entry["run_seed"].as_u64()) else {
        return Err(ReproError::NotRecorded(
            dir,
            "attempt folders and run seeds",
        ));
    };
    let file = run.join(sub).join(SCENARIO_COPY);
    if !file.is_file() {
        return Err(ReproError::NotRecorded(dir, "a copy of the scenario file"));
    }
    let kernel = &summary["kernel"];
    let kernel = (kernel["origin"]["kind"].as_str() == Some("user")).then(|| {
        (
            kernel["origin"]["path"].as_str().unwrap_or("").to_owned(),
            kernel["modules"].as_str().map(str::to_owned),
        )
    });
    Ok(Target {
        name: entry["name"].as_str().unwrap_or("").to_owned(),
        attempt: entry["attempt"].as_u64().unwrap_or(1),
        run_seed,
        seed: entry["seed"].as_u64().unwrap_or(0),
        file,
        kernel,
        backend: summary["backend"].as_str().map(str::to_owned),
        vm: (
            entry["vm"]["vcpus"].as_u64().unwrap_or(2),
            entry["vm"]["memory_mib"].as_u64().unwrap_or(512),
        ),
    })
}

impl Target {
    /// The `lab run` arguments that replay it, results under `results`.
    pub fn run_args(&self, results: &Path) -> Vec<String> {
        let mut a: Vec<String> = vec!["run".into()];
        if let Some((kernel, modules)) = &self.kernel {
            a.extend(["--kernel".into(), kernel.clone()]);
            if let Some(m) = modules {
                a.extend(["--modules".into(), m.clone()]);
            }
        }
        if let Some(b) = &self.backend {
            a.extend(["--backend".into(), b.clone()]);
        }
        a.extend([
            "--results".into(),
            results.to_string_lossy().into_owned(),
            "--seed".into(),
            self.run_seed.to_string(),
            "--vcpus".into(),
            self.vm.0.to_string(),
            "--memory-mib".into(),
            self.vm.1.to_string(),
            "--only".into(),
            self.name.clone(),
            self.file.to_string_lossy().into_owned(),
        ]);
        a
    }
}

/// Parses `lab run` arguments outside the main command line.
#[derive(Parser)]
#[command(name = "lab")]
struct RunCommand {
    #[command(subcommand)]
    command: RunOnly,
}

#[derive(clap::Subcommand)]
enum RunOnly {
    Run(run::RunArgs),
}

/// `lab repro`.
pub fn repro(args: ReproArgs) -> Result<u8, LabError> {
    let target = locate(&args.dir).map_err(|e| LabError::BadArgs(e.to_string()))?;
    let argv = target.run_args(&args.results);
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
    let parsed = RunCommand::try_parse_from(std::iter::once("lab".to_owned()).chain(argv))
        .map_err(|e| LabError::BadArgs(e.to_string()))?;
    let RunOnly::Run(run_args) = parsed.command;
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
            "kernel": {"origin": {"kind": "user", "path": "/k/bzImage"}, "modules": null},
            "backend": "qemu",
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
        assert_eq!(t.vm, (4, 256));
        // One attempt named directly.
        assert_eq!(locate(&run.join("a/attempt-1/")).unwrap().attempt, 1);
        let t = locate(&run.join("b")).unwrap();
        let args = t.run_args(Path::new("r"));
        let file = run.join("b").join(SCENARIO_COPY);
        let want = [
            "run",
            "--kernel",
            "/k/bzImage",
            "--backend",
            "qemu",
            "--results",
            "r",
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
        assert!(RunCommand::try_parse_from(full).is_ok());
        assert!(matches!(
            locate(&run.join("c")),
            Err(ReproError::NoEntry(_))
        ));
        assert!(matches!(locate(&root), Err(ReproError::NoRun(_))));
        let _ = std::fs::remove_dir_all(&root);
    }
}
