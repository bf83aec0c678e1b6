//! `lab nightly plan|run`: a kernels × scenario sets × shards matrix
//! (`nightly.toml`, [`crate::plan::matrix`]) run by a CI system's own
//! matrix. `plan` prints the jobs as JSON for the CI (`fromJSON` in GitHub
//! Actions); `run --job K` runs one of them as an ordinary `lab run --shard
//! i/N` (after `lab kernel build` for a tree kernel), into
//! `ROOT/<kernel>/<scenarios>/shard-<i>`, so `lab merge` makes each kernel ×
//! scenario set one run. There is no scheduler here: the CI is the engine.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::plan::matrix::{self, KernelSource, Matrix};
use crate::tools::kernel_cmd;
use crate::{exit, LabError};

/// The environment variable a night's seed defaults to.
pub const SEED_ENV: &str = "GITHUB_RUN_ID";

/// `lab nightly` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum NightlyCommand {
    /// Print the matrix's jobs as JSON for a CI matrix:
    /// `{"include": [{"job": 1, "kernel": ..., "scenarios": ..., "shard": "1/N"}, ...]}`
    /// (one line; GitHub Actions: `fromJSON`).
    Plan {
        /// The matrix file (nightly.toml).
        matrix: PathBuf,
        /// Shards per kernel × scenario set (default: the file's `shards`, else 1).
        #[arg(long)]
        shards: Option<usize>,
    },
    /// Run job K of the matrix: `lab kernel build` first for a tree kernel,
    /// then `lab run --kernel … --shard i/N --seed S --results
    /// ROOT/<kernel>/<scenarios>/shard-<i> PATHS…`.
    Run(RunJobArgs),
}

/// `lab nightly run` options.
#[derive(clap::Args, Debug)]
pub struct RunJobArgs {
    /// The matrix file (nightly.toml).
    pub matrix: PathBuf,
    /// The job's number (`job` in `lab nightly plan`'s output).
    #[arg(long)]
    pub job: usize,
    /// Shards per kernel × scenario set: as given to `lab nightly plan`.
    #[arg(long)]
    pub shards: Option<usize>,
    /// The results root.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// The night's seed, the same for every job of a night (default:
    /// $GITHUB_RUN_ID; one of the two is required).
    #[arg(long)]
    pub seed: Option<u64>,
    /// More `lab run` options (after `--`), e.g. `-- -j 2 --tags smoke`.
    #[arg(last = true)]
    pub run_args: Vec<OsString>,
}

fn read(path: &Path) -> Result<Matrix, LabError> {
    matrix::read(path).map_err(|e| LabError::BadArgs(e.to_string()))
}

/// `lab nightly plan` and `lab nightly run`.
pub fn nightly(cmd: &NightlyCommand) -> Result<u8, LabError> {
    match cmd {
        NightlyCommand::Plan { matrix, shards } => {
            let m = read(matrix)?;
            if *shards == Some(0) {
                return Err(LabError::BadArgs("--shards 0: give 1 or more".into()));
            }
            println!("{}", plan_json(&m, *shards));
            Ok(exit::PASS)
        }
        NightlyCommand::Run(args) => run_job(args),
    }
}

/// The CI matrix: `{"include": [job, ...]}`, one line.
pub fn plan_json(m: &Matrix, shards: Option<usize>) -> String {
    serde_json::to_string(&serde_json::json!({ "include": m.jobs(shards) })).expect("serialisable")
}

/// The seed: `--seed`, else `$GITHUB_RUN_ID`.
fn seed(given: Option<u64>, env: Option<String>) -> Result<u64, LabError> {
    if let Some(s) = given {
        return Ok(s);
    }
    match env {
        Some(v) => v.trim().parse().map_err(|_| {
            LabError::BadArgs(format!("${SEED_ENV} is {v:?}, not a number: give --seed"))
        }),
        None => Err(LabError::BadArgs(format!(
            "every job of a night needs the same seed: give --seed or set ${SEED_ENV}"
        ))),
    }
}

/// `lab nightly run MATRIX --job K`.
pub fn run_job(args: &RunJobArgs) -> Result<u8, LabError> {
    let m = read(&args.matrix)?;
    let jobs = m.jobs(args.shards);
    let Some(job) = jobs.iter().find(|j| j.job == args.job) else {
        return Err(LabError::BadArgs(format!(
            "--job {}: {} has jobs 1 to {}",
            args.job,
            args.matrix.display(),
            jobs.len()
        )));
    };
    let seed = seed(args.seed, std::env::var(SEED_ENV).ok())?;
    let kernel = m.kernel(&job.kernel).expect("a job's kernel");
    let set = m
        .scenario_set(&job.scenarios)
        .expect("a job's scenario set");
    let shard_no = job.shard.split('/').next().unwrap_or("1");
    let results = args
        .results
        .join(&job.kernel)
        .join(&job.scenarios)
        .join(format!("shard-{shard_no}"));
    let mut argv: Vec<OsString> = vec!["lab".into(), "run".into()];
    match &kernel.source {
        KernelSource::Spec(spec) => argv.extend(["--kernel".into(), spec.into()]),
        KernelSource::Tree {
            tree,
            git_ref,
            debug,
        } => {
            build_tree(&job.kernel, tree, git_ref.as_deref(), *debug)?;
            argv.extend(["--kernel-tree".into(), tree.into()]);
        }
    }
    argv.extend([
        "--shard".into(),
        job.shard.clone().into(),
        "--seed".into(),
        seed.to_string().into(),
        "--results".into(),
        results.clone().into(),
    ]);
    argv.extend(args.run_args.iter().cloned());
    argv.push("--".into());
    argv.extend(set.paths.iter().map(OsString::from));
    eprintln!(
        "lab: nightly job {}: kernel {}, scenarios {}, shard {}, seed {seed}, results in {}",
        job.job,
        job.kernel,
        job.scenarios,
        job.shard,
        results.display()
    );
    let run = crate::run::parse_args(argv).map_err(|e| LabError::BadArgs(e.to_string()))?;
    crate::run::run(run)
}

/// Check out `git_ref` (detached) in `tree` when given, then `lab kernel
/// build` it; a missing tree or unknown ref is invalid input.
fn build_tree(name: &str, tree: &Path, git_ref: Option<&str>, debug: bool) -> Result<(), LabError> {
    if !tree.is_dir() {
        return Err(LabError::BadArgs(format!(
            "kernel {name}: tree {} is not a folder (check it out before its jobs run)",
            tree.display()
        )));
    }
    if let Some(r) = git_ref {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(tree)
            .args(["-c", "advice.detachedHead=false", "checkout", "--detach", r])
            .output()
            .map_err(crate::infra)?;
        if !out.status.success() {
            return Err(LabError::BadArgs(format!(
                "kernel {name}: git checkout {r} in {}: {}",
                tree.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    eprintln!("lab: nightly: building kernel {name} ({})", tree.display());
    let build = kernel_cmd::BuildArgs {
        tree: tree.to_owned(),
        debug,
        jobs: None,
        out: None,
        base: kernel_cmd::Base::Defconfig,
    };
    kernel_cmd::build(&build).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_is_given_or_from_the_ci_run() {
        assert_eq!(seed(Some(7), Some("9".into())).unwrap(), 7);
        assert_eq!(seed(None, Some("12345678901".into())).unwrap(), 12345678901);
        assert_eq!(seed(None, None).unwrap_err().code(), exit::INVALID);
        assert_eq!(
            seed(None, Some("x".into())).unwrap_err().code(),
            exit::INVALID
        );
    }
}
