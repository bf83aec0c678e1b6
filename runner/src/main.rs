//! `lab`: arena lab's command line. Maps every outcome to an exit code in one
//! place: 0 all passed, 1 a scenario failed or timed out, 2 invalid input,
//! 3 infrastructure error.

mod backend;
mod bench;
mod nested;
mod plan;
mod results;
mod run;
mod scenario_file;
mod session;
mod splat;
mod verdict;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use backend::BackendChoice;

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
}

/// A failure of the tool itself, classified for the exit code.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The user's input is wrong.
    #[error(transparent)]
    Invalid(#[from] scenario_file::ScenarioError),
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
    /// The lab could not do its job.
    #[error("{}", error_text(.0))]
    Infra(anyhow::Error),
}

impl LabError {
    fn code(&self) -> u8 {
        match self {
            LabError::Invalid(_) | LabError::MissingFile { .. } => exit::INVALID,
            LabError::Infra(_) => exit::INFRA,
        }
    }
}

/// Infrastructure errors from anything else.
pub fn infra<E: Into<anyhow::Error>>(e: E) -> LabError {
    LabError::Infra(e.into())
}

/// An error and its causes on one line, each text once: errors that already
/// show their cause (`{path}: {source}`) would otherwise print it twice.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

#[derive(Parser)]
#[command(
    name = "lab",
    version,
    about = "arena lab: boot a kernel, run BPF arena scenarios, get verdicts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options that pick the kernel.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct KernelArgs {
    /// Kernel to boot (bzImage or vmlinux); default: Debian's newest 6.12.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// lib/modules/<release> of --kernel (with modules.dep), if it is modular.
    #[arg(long)]
    pub modules: Option<PathBuf>,
    /// Source tree of --kernel, for the upstream selftests (default kernel:
    /// Debian's matching linux-source package).
    #[arg(long)]
    pub kernel_src: Option<PathBuf>,
}

impl KernelArgs {
    /// The files these options name exist: a missing one is invalid input
    /// (exit 2), reported before anything is fetched, built or booted.
    pub fn check(&self) -> Result<(), LabError> {
        let given = [
            ("--kernel", &self.kernel),
            ("--modules", &self.modules),
            ("--kernel-src", &self.kernel_src),
        ];
        for (option, path) in given {
            if let Some(path) = path {
                std::fs::metadata(path).map_err(|source| LabError::MissingFile {
                    option,
                    path: path.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run scenario files or directories of them.
    Run(run::RunArgs),
    /// Parse and check scenarios only.
    Validate {
        /// Scenario files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List scenarios: name, tags, description.
    List {
        /// Scenario files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Kernel management.
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// Build the agent and the default guest image (warms the caches).
    Image {
        #[command(flatten)]
        kernel: KernelArgs,
    },
    /// Boot the guest image and stream the serial console (debugging).
    Boot {
        #[command(flatten)]
        kernel: KernelArgs,
        /// Backend.
        #[arg(long, value_enum, default_value = "auto")]
        backend: BackendChoice,
        /// Seconds before the VM is killed.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Extra kernel command line.
        #[arg(last = true)]
        append: Vec<String>,
    },
    /// Compare `lab run` of a trivial scenario with a raw QEMU boot.
    Bench(bench::BenchArgs),
    /// Run `lab ARGS...` inside an L1 Linux guest with real KVM (nested SVM
    /// under QEMU/TCG): exercises the own VMM where the host has no hardware KVM.
    Nested(nested::NestedArgs),
}

#[derive(Subcommand)]
enum KernelCommand {
    /// Fetch the newest (or a given) Debian 6.12 kernel into the cache.
    Fetch {
        /// Patch level, e.g. 117 for 6.12.117.
        #[arg(long)]
        patch: Option<u32>,
    },
    /// Show which kernel a run would use.
    Info {
        #[command(flatten)]
        kernel: KernelArgs,
    },
}

fn validate(paths: &[PathBuf], list: bool) -> Result<u8, LabError> {
    let scenarios = scenario_file::load_paths(paths)?;
    for s in &scenarios {
        if list {
            println!(
                "{:<40} [{}] {}",
                s.scenario.name,
                s.scenario.tags.join(","),
                s.scenario.description.lines().next().unwrap_or("")
            );
        }
    }
    if !list {
        println!("{} scenario(s) valid", scenarios.len());
    }
    Ok(exit::PASS)
}

fn real_main() -> Result<u8, LabError> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Validate { paths } => validate(&paths, false),
        Command::List { paths } => validate(&paths, true),
        Command::Kernel(KernelCommand::Fetch { patch }) => {
            let k = arena_images::kernel::debian::fetch(patch).map_err(infra)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&k).expect("serialisable")
            );
            Ok(exit::PASS)
        }
        Command::Kernel(KernelCommand::Info { kernel }) => {
            kernel.check()?;
            let k = plan::kernel(kernel.kernel.as_ref(), kernel.modules.as_ref()).map_err(infra)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&k).expect("serialisable")
            );
            Ok(exit::PASS)
        }
        Command::Image { kernel } => {
            kernel.check()?;
            let k = plan::kernel(kernel.kernel.as_ref(), kernel.modules.as_ref()).map_err(infra)?;
            let p = plan::prepare(k, kernel.kernel_src.clone()).map_err(infra)?;
            let image = plan::image(&p, &run::trivial_scenario()).map_err(infra)?;
            println!("agent: {}\nimage: {}", p.agent.display(), image.display());
            Ok(exit::PASS)
        }
        Command::Boot {
            kernel,
            backend,
            timeout,
            append,
        } => run::boot(&kernel, backend, timeout, &append.join(" ")),
        Command::Bench(args) => bench::bench(args),
        Command::Nested(args) => nested::nested(args),
    }
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("lab: error: {e}");
            ExitCode::from(e.code())
        }
    }
}
