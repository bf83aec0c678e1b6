//! `lab bisect`: the first commit of a kernel tree at which scenarios fail.
//!
//! `git bisect run` drives it, with this same binary as the step script
//! (`lab bisect-step`): each step builds the checked-out commit with
//! `lab kernel build` (incremental, one build directory for all steps) and
//! runs the scenarios, `--repeat N` times for races. A step answers git with
//! 0 (good: every attempt passed), 1 (bad: a failure), or 125 (skip: the
//! build failed, or the lab could not run it). Known issues are not applied:
//! a bisection hunts exactly such a failure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::tools::kernel_cmd::Base;
use crate::{exit, infra, tools::kernel_step, LabError};

/// `lab bisect` options.
#[derive(clap::Args, Debug, Clone)]
pub struct BisectArgs {
    /// The kernel source tree: a git work tree with no uncommitted changes.
    #[arg(long)]
    pub tree: PathBuf,
    /// A commit where the scenarios pass.
    #[arg(long)]
    pub good: String,
    /// A commit where they fail.
    #[arg(long)]
    pub bad: String,
    /// Build directory shared by every step (`make O=`; default: a folder
    /// in the results directory, so the tree stays clean).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Starting config of the build directory when it has none.
    #[arg(long, value_enum, default_value = "defconfig")]
    pub base: Base,
    /// Parallel build jobs (default: the number of CPUs).
    #[arg(short, long)]
    pub jobs: Option<usize>,
    /// Run the scenarios N times per step: a race that fails 1 time in 5
    /// wants N of 10 or more, or a good commit looks good by luck.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub repeat: u64,
    /// Results directory: each step's run, `bisect-steps.jsonl`, `bisect.json`.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Only the scenario with this name.
    #[arg(long)]
    pub only: Option<String>,
    /// Scenario files or directories.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// What one step found, one line of `bisect-steps.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Step {
    /// The commit tested.
    pub commit: String,
    /// `good`, `bad` or `skip`.
    pub outcome: String,
    /// Why (the build error, or the failing scenarios' reasons).
    pub detail: String,
}

/// `bisect.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// The first bad commit, if git found one.
    pub first_bad: Option<String>,
    /// Its subject line.
    pub subject: Option<String>,
    /// What failed there.
    pub failing_output: Option<String>,
    /// Every step, in order.
    pub steps: Vec<Step>,
    /// Wall time (s).
    pub wall_s: f64,
}

const STEPS_FILE: &str = "bisect-steps.jsonl";

fn git(tree: &Path, args: &[&str]) -> Result<String, LabError> {
    let o = Command::new("git")
        .arg("-C")
        .arg(tree)
        .args(args)
        .output()
        .map_err(|e| infra(format!("running git: {e}")))?;
    if !o.status.success() {
        return Err(LabError::BadArgs(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

/// `lab bisect`.
pub fn bisect(args: &BisectArgs) -> Result<u8, LabError> {
    let t0 = Instant::now();
    let tree = std::fs::canonicalize(&args.tree).map_err(|source| LabError::MissingFile {
        option: "--tree",
        path: args.tree.clone(),
        source,
    })?;
    if !git(&tree, &["status", "--porcelain", "--untracked-files=no"])?.is_empty() {
        return Err(LabError::BadArgs(format!(
            "{}: uncommitted changes; commit or stash them before bisecting",
            tree.display()
        )));
    }
    let good = git(
        &tree,
        &[
            "rev-parse",
            "--verify",
            &format!("{}^{{commit}}", args.good),
        ],
    )?;
    let bad = git(
        &tree,
        &["rev-parse", "--verify", &format!("{}^{{commit}}", args.bad)],
    )?;
    std::fs::create_dir_all(&args.results).map_err(infra)?;
    let results = std::fs::canonicalize(&args.results).map_err(infra)?;
    let out = match &args.out {
        Some(o) => o.clone(),
        None => results.join("bisect-build"),
    };
    let steps_file = results.join(STEPS_FILE);
    let _ = std::fs::remove_file(&steps_file);
    let start_ref = git(&tree, &["rev-parse", "--abbrev-ref", "HEAD"])?;
    git(&tree, &["bisect", "start", &bad, &good])?;
    let exe = std::env::current_exe().map_err(infra)?;
    let mut step = Command::new("git");
    step.arg("-C")
        .arg(&tree)
        .args(["bisect", "run"])
        .arg(exe)
        .arg("bisect-step")
        .arg("--out")
        .arg(&out)
        .arg("--results")
        .arg(&results)
        .arg("--repeat")
        .arg(args.repeat.to_string())
        .arg("--base")
        .arg(args.base.name());
    if let Some(j) = args.jobs {
        step.arg("--jobs").arg(j.to_string());
    }
    if let Some(o) = &args.only {
        step.arg("--only").arg(o);
    }
    step.arg("--tree").arg(&tree).arg("--");
    for p in &args.paths {
        step.arg(
            std::fs::canonicalize(p).map_err(|source| LabError::MissingFile {
                option: "scenario path",
                path: p.clone(),
                source,
            })?,
        );
    }
    let run = step.output().map_err(infra);
    let log = git(&tree, &["bisect", "log"]).unwrap_or_default();
    // Always leave the tree as it was, whatever happened.
    let _ = git(&tree, &["bisect", "reset", &start_ref]);
    let run = run?;
    let text = String::from_utf8_lossy(&run.stdout).into_owned();
    let first_bad = text
        .lines()
        .find_map(|l| l.strip_suffix(" is the first bad commit"))
        .map(str::to_owned);
    let steps: Vec<Step> = std::fs::read_to_string(&steps_file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let subject = first_bad
        .as_ref()
        .and_then(|c| git(&tree, &["log", "-1", "--format=%s", c]).ok());
    let failing_output = first_bad.as_ref().and_then(|c| {
        steps
            .iter()
            .rev()
            .find(|s| &s.commit == c && s.outcome == "bad")
            .map(|s| s.detail.clone())
    });
    let outcome = Outcome {
        first_bad: first_bad.clone(),
        subject: subject.clone(),
        failing_output: failing_output.clone(),
        steps,
        wall_s: t0.elapsed().as_secs_f64(),
    };
    arena_images::write_atomic(
        &results.join("bisect.json"),
        serde_json::to_string_pretty(&outcome)
            .expect("serialisable")
            .as_bytes(),
    )
    .map_err(infra)?;
    let _ = arena_images::write_atomic(&results.join("bisect.log"), log.as_bytes());
    match first_bad {
        Some(c) => {
            println!(
                "first bad commit: {c} {}\n{}",
                subject.unwrap_or_default(),
                failing_output.unwrap_or_default()
            );
            eprintln!(
                "lab: bisect took {:.0} s, {} step(s); bisect.json in {}",
                outcome.wall_s,
                outcome.steps.len(),
                results.display()
            );
            Ok(exit::PASS)
        }
        None => Err(infra(format!(
            "git bisect found no first bad commit:\n{}{}",
            text.lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n"),
            String::from_utf8_lossy(&run.stderr)
                .lines()
                .rev()
                .take(5)
                .map(|l| format!("\n{l}"))
                .collect::<String>()
        ))),
    }
}

/// `lab bisect-step` (run by `git bisect run`; not for people).
#[derive(clap::Args, Debug, Clone)]
pub struct StepArgs {
    #[arg(long)]
    tree: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    results: PathBuf,
    #[arg(long)]
    repeat: u64,
    #[arg(long, value_enum)]
    base: Base,
    #[arg(long)]
    jobs: Option<usize>,
    #[arg(long)]
    only: Option<String>,
    #[arg(last = true, required = true)]
    paths: Vec<PathBuf>,
}

/// git bisect run's answers.
const GOOD: u8 = 0;
const BAD: u8 = 1;
const SKIP: u8 = 125;

/// One bisection step; its exit code is git's answer.
pub fn step(args: &StepArgs) -> u8 {
    let commit = git(&args.tree, &["rev-parse", "HEAD"]).unwrap_or_default();
    let record = |outcome: &str, detail: String| {
        eprintln!("lab bisect: {commit}: {outcome}");
        let line = serde_json::to_string(&Step {
            commit: commit.clone(),
            outcome: outcome.to_owned(),
            detail,
        })
        .expect("serialisable");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(args.results.join(STEPS_FILE))
        {
            let _ = writeln!(f, "{line}");
        }
    };
    let build = kernel_step::build_args(&args.tree, &args.out, args.base, args.jobs, false);
    if let Err(e) = crate::tools::kernel_cmd::build(&build) {
        record("skip", format!("build failed: {e}"));
        return SKIP;
    }
    let mut extra: Vec<std::ffi::OsString> =
        vec!["--repeat".into(), args.repeat.to_string().into()];
    if let Some(o) = &args.only {
        extra.extend(["--only".into(), o.into()]);
    }
    let argv = kernel_step::run_argv(&args.out, &args.results.join("runs"), &extra, &args.paths);
    let code = match crate::run::parse_args(argv) {
        Ok(run) => crate::run::run(run).unwrap_or_else(|e| {
            eprintln!("lab: error: {e}");
            e.code()
        }),
        Err(e) => {
            eprintln!("lab bisect: {e}");
            exit::INVALID
        }
    };
    let reasons = kernel_step::not_passed(&args.results.join("runs/latest/summary.json"))
        .map(|l| kernel_step::reasons(&l))
        .unwrap_or_default();
    match code {
        exit::PASS => {
            record("good", String::new());
            GOOD
        }
        exit::FAIL => {
            record("bad", reasons);
            BAD
        }
        // Interrupted: make git bisect stop, not skip.
        exit::INTERRUPTED => exit::INTERRUPTED,
        other => {
            record("skip", format!("lab run exited {other}: {reasons}"));
            SKIP
        }
    }
}
