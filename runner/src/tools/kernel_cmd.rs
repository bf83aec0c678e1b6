//! `lab kernel config|check|build`: the kernel developer's side of the lab,
//! from a tree to a kernel the lab can boot, and a check of any kernel
//! before a boot is spent on it.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arena_images::kernel::build::{self, BaseConfig, BuildRequest};
use arena_images::kernel::kconfig::{self, Purpose};
use indicatif::{ProgressBar, ProgressStyle};

use crate::plan::preflight;
use crate::plan::scenario_file;
use crate::{exit, infra, plan, KernelArgs, LabError};

/// `lab kernel build` options.
#[derive(clap::Args, Debug, Clone)]
pub struct BuildArgs {
    /// The kernel source tree.
    pub tree: PathBuf,
    /// Also enable the detection options (KASAN, lockdep, DEBUG_VM, kmemleak,
    /// fault injection).
    #[arg(long)]
    pub debug: bool,
    /// Parallel jobs (default: the number of CPUs).
    #[arg(short, long)]
    pub jobs: Option<usize>,
    /// Build directory (`make O=`); default: in the tree.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Starting config when the build directory has no `.config`.
    #[arg(long, value_enum, default_value = "defconfig")]
    pub base: Base,
}

/// `--base`.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum Base {
    /// `make defconfig kvm_guest.config`.
    Defconfig,
    /// `make tinyconfig`: the smallest kernel the lab boots (tests, quick checks).
    Tiny,
}

impl Base {
    /// The `--base` spelling.
    pub fn name(self) -> &'static str {
        match self {
            Base::Defconfig => "defconfig",
            Base::Tiny => "tiny",
        }
    }
}

/// What `args` asks `make` for.
pub fn request(args: &BuildArgs) -> BuildRequest {
    BuildRequest {
        tree: args.tree.clone(),
        out: args.out.clone(),
        debug: args.debug,
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
        base: match args.base {
            Base::Defconfig => BaseConfig::Defconfig,
            Base::Tiny => BaseConfig::Tiny,
        },
    }
}

/// `lab kernel config [--debug]`: the fragment, on stdout.
pub fn config(debug: bool) -> u8 {
    print!("{}", kconfig::fragment(debug));
    exit::PASS
}

/// `lab kernel decode`: the log with its traces decoded, on stdout.
pub fn decode(vmlinux: &Path, file: Option<&Path>) -> Result<u8, LabError> {
    let symbolizer = crate::judge::symbolize::Symbolizer::new(vmlinux)
        .map_err(|e| LabError::BadArgs(e.to_string()))?;
    let text = match file {
        Some(f) => std::fs::read(f).map_err(|source| LabError::MissingFile {
            option: "FILE",
            path: f.to_owned(),
            source,
        })?,
        None => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).map_err(infra)?;
            buf
        }
    };
    print!("{}", symbolizer.decode(&String::from_utf8_lossy(&text)));
    Ok(exit::PASS)
}

/// `lab kernel check`: the full table; exit 2 when a must-have is missing.
/// With `scenarios`, then which of them will run on this kernel, which
/// will be skipped and why, and which depend on what only the boot shows.
pub fn check(kernel: &KernelArgs, scenarios: &[PathBuf]) -> Result<u8, LabError> {
    // Invalid scenarios are invalid input before any kernel is fetched.
    let files = if scenarios.is_empty() {
        Vec::new()
    } else {
        scenario_file::load_paths(scenarios)?
    };
    kernel.check()?;
    let k = plan::kernel(kernel).map_err(infra)?;
    let no_config = |why| LabError::BadArgs(format!("kernel {}: {why}", k.release));
    let (source, cfg) = preflight::config(&k).map_err(no_config)?;
    let p = kconfig::Preflight::new(source, &cfg, k.modules.as_deref());
    println!("kernel {} ({})", k.release, k.boot_image.display());
    print!("{}", p.table());
    if !files.is_empty() {
        let rows: Vec<_> = files
            .iter()
            .map(|f| {
                (
                    f.scenario.name.as_str(),
                    preflight::outlook(&f.scenario, &cfg, &p),
                )
            })
            .collect();
        println!();
        print!("{}", preflight::outlook_table(&rows));
    }
    let missing = p.missing(Purpose::Lab).len() + p.missing(Purpose::Selftests).len();
    Ok(if missing == 0 {
        exit::PASS
    } else {
        exit::INVALID
    })
}

/// `lab kernel build TREE`.
pub fn build(args: &BuildArgs) -> Result<u8, LabError> {
    let req = request(args);
    let started = Instant::now();
    let mut shown = BuildProgress::new();
    let built = build::build(&req, |line| shown.line(line)).map_err(|e| match e {
        build::BuildError::NotATree(_) => LabError::BadArgs(e.to_string()),
        other => infra(other),
    })?;
    shown.finish();
    eprintln!(
        "lab: built {} in {:.0} s{}{}",
        built.release,
        started.elapsed().as_secs_f64(),
        if built.merged_config {
            " (the lab's config fragment was merged)"
        } else {
            ""
        },
        built
            .ccache
            .as_ref()
            .map(|d| format!(" through ccache ({})", d.display()))
            .unwrap_or_default()
    );
    let modules = built
        .modules
        .as_ref()
        .map(|m| format!(" --modules {}", m.display()))
        .unwrap_or_default();
    println!(
        "--kernel {} --vmlinux {}{modules}",
        built.bzimage.display(),
        built.vmlinux.display()
    );
    Ok(exit::PASS)
}

/// Build output: a spinner with the current Kbuild step on a terminal, a
/// line every [`PLAIN_EVERY`] steps otherwise.
struct BuildProgress {
    bar: Option<ProgressBar>,
    steps: u64,
}

/// Without a terminal: one line per this many Kbuild steps.
const PLAIN_EVERY: u64 = 500;

impl BuildProgress {
    fn new() -> BuildProgress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} building [{elapsed}] {pos} steps: {msg}")
                    .expect("valid template"),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        BuildProgress { bar, steps: 0 }
    }

    /// One line of `make` output; Kbuild's steps are `  CC      file`.
    fn line(&mut self, line: &str) {
        if !line.starts_with("  ") {
            return;
        }
        self.steps += 1;
        match &self.bar {
            Some(b) => {
                b.set_position(self.steps);
                b.set_message(line.trim().to_owned());
            }
            None if self.steps.is_multiple_of(PLAIN_EVERY) => {
                eprintln!("lab: kernel build: {} steps ({})", self.steps, line.trim())
            }
            None => {}
        }
    }

    fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}
