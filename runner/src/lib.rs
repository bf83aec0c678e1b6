//! arena lab's runner as a library: the `lab` binary (main.rs) is a thin
//! command line over it, and the fuzz crate and integration tests use it.
//!
//! Layers, each using only those below it (`tests/layers.rs` checks):
//!
//! ```text
//! tools/    compare, report, repro, bisect, mutate, bench, nested, kernels, multi-kernel
//! run/      `lab run` and `lab boot`: plan → execute → judge → record, shown by ui
//! ui/       progress on the terminal
//! record/   the results model and the run folder: summary.json, JUnit, KTAP
//! execute/  backends, console capture, one VM session, snapshots, signals
//! judge/    splats, symbols, verdicts, and what a session saw
//! plan/     scenario files, selection, shards, attempts, replay, kernel and images
//! ```

pub mod execute;
pub mod judge;
pub mod plan;
pub mod record;
pub mod run;
pub mod tools;
pub mod ui;

pub use plan::KernelArgs;

use std::path::PathBuf;

/// Exit codes.
pub mod exit {
    /// Every scenario passed.
    pub const PASS: u8 = 0;
    /// At least one scenario failed, errored or timed out.
    pub const FAIL: u8 = 1;
    /// Invalid input: bad YAML, unknown step or field, missing file.
    pub const INVALID: u8 = 2;
    /// Infrastructure: kernel not fetchable or bootable, VM died before hello.
    pub const INFRA: u8 = 3;
    /// SIGINT or SIGTERM stopped the run (128 + SIGINT, as shells report it).
    pub const INTERRUPTED: u8 = 130;
}

/// A failure of the tool itself, classified for the exit code.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The user's input is wrong.
    #[error(transparent)]
    Invalid(#[from] plan::InputError),
    /// A file named by a command-line option is missing: invalid input too.
    #[error("{option} {}: {source}", path.display())]
    MissingFile {
        /// The option, e.g. `--kernel`.
        option: &'static str,
        /// The path given.
        path: PathBuf,
        /// Why it cannot be used.
        source: std::io::Error,
    },
    /// A command-line value that cannot be used (`--history`, `--timeout-scale`,
    /// `lab compare` input): invalid input too.
    #[error("{0}")]
    BadArgs(String),
    /// The lab could not do its job.
    #[error("{}", error_text(&**.0))]
    Infra(Cause),
}

/// Why the lab could not do its job: an error of the layers below (each
/// module's own type), kept whole so [`error_text`] can list its causes.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

impl LabError {
    pub fn code(&self) -> u8 {
        match self {
            LabError::Invalid(_) | LabError::MissingFile { .. } | LabError::BadArgs(_) => {
                exit::INVALID
            }
            LabError::Infra(_) => exit::INFRA,
        }
    }
}

/// Infrastructure errors from anything else; a [`LabError`] carried inside
/// (e.g. `plan` found the user's input wrong) keeps its own class, and so
/// does the user's input ([`plan::InputError`], also inside a
/// [`plan::PrepareError`]).
pub fn infra<E: Into<Cause>>(e: E) -> LabError {
    let e = match e.into().downcast::<LabError>() {
        Ok(own) => return *own,
        Err(e) => e,
    };
    let e = match e.downcast::<plan::InputError>() {
        Ok(input) => return LabError::Invalid(*input),
        Err(e) => e,
    };
    match e.downcast::<plan::PrepareError>() {
        Ok(prepare) => LabError::from(*prepare),
        Err(e) => LabError::Infra(e),
    }
}

impl From<plan::PrepareError> for LabError {
    fn from(e: plan::PrepareError) -> LabError {
        match e {
            plan::PrepareError::Input(input) => LabError::Invalid(input),
            other => LabError::Infra(Box::new(other)),
        }
    }
}

impl From<plan::scenario_file::ScenarioError> for LabError {
    fn from(e: plan::scenario_file::ScenarioError) -> LabError {
        LabError::Invalid(e.into())
    }
}

/// An error and its causes on one line, each text once: errors that already
/// show their cause (`{path}: {source}`) would otherwise print it twice.
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut cause = Some(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
