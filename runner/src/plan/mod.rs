//! What to run and on what: scenario files (strict YAML → typed
//! scenarios), selection and shards, attempts and seeds, the replay of an
//! attempt, and the kernel, agent, BPF objects and images a run needs.

pub mod attempts;
mod kernel_args;
pub mod lab_toml;
pub mod matrix;
pub mod own_bpf;
pub mod preflight;
mod prepare;
pub mod replay;
pub mod scenario_file;
pub mod selection;
pub mod shard;

pub use kernel_args::KernelArgs;

use std::path::PathBuf;

/// The user's input cannot be used: what `lab` reports with exit 2.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A scenario file is wrong (its file:line:column and field).
    #[error(transparent)]
    Scenario(#[from] scenario_file::ScenarioError),
    /// A file named by a command-line option is missing.
    #[error("{option} {}: {source}", path.display())]
    MissingFile {
        /// The option, e.g. `--kernel`.
        option: &'static str,
        /// The path given.
        path: PathBuf,
        /// Why it cannot be used.
        source: std::io::Error,
    },
    /// The input cannot be used as given: the kernel's config, a kernel
    /// source of another version.
    #[error("{0}")]
    Refused(String),
}
pub use prepare::*;
