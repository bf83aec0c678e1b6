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

/// A one-step scenario used by `lab boot`, `lab image` and benchmarks.
pub fn trivial_scenario() -> arena_protocol::Scenario {
    arena_protocol::Scenario {
        name: "boot".into(),
        description: "boot, say hello, power off".into(),
        tags: vec![],
        vm: arena_protocol::scenario::VmSpec::default(),
        timeout_s: 30,
        requires: Vec::new(),
        steps: vec![arena_protocol::scenario::Step::Sleep(
            arena_protocol::scenario::SleepStep {
                ms: 0,
                socket: false,
            },
        )],
        known_issues: Vec::new(),
        lines: Default::default(),
    }
}
