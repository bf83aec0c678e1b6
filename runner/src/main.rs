//! `lab`: arena lab's command line. Maps every outcome to an exit code in one
//! place: 0 all passed, 1 a scenario failed or timed out, 2 invalid input,
//! 3 infrastructure error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use arena_runner::execute::backend::BackendChoice;
use arena_runner::plan::{self, scenario_file, selection, shard};
use arena_runner::run;
use arena_runner::tools::ab;
use arena_runner::tools::{
    bench, bisect, compare, kcidb, kernel_cmd, merge, multi_kernel, mutate, nested, nightly,
    report, repro,
};
use arena_runner::{exit, infra, KernelArgs, LabError};

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

// Parsed once per process: the size of `run`'s options does not matter.
#[allow(clippy::large_enum_variant)]
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
        #[command(flatten)]
        shard: shard::ShardArgs,
        #[command(flatten)]
        select: selection::SelectArgs,
    },
    /// Re-run one scenario of an earlier run exactly: its kernel, its copy
    /// of the scenario file, its seed and VM shape.
    Repro(repro::ReproArgs),
    /// Compare two runs: regressions, fixes, new/removed scenarios, flaky
    /// ones, duration changes. Exit 1 only on regressions.
    Compare {
        /// BASE and NEW run folders (`results/<run-id>`).
        #[arg(num_args = 0..=2)]
        runs: Vec<PathBuf>,
        /// Compare the last two runs under this results root instead.
        #[arg(long, conflicts_with = "runs")]
        history: Option<PathBuf>,
        /// Where compare.json and compare.md go (default: NEW's folder).
        #[arg(long)]
        out: Option<PathBuf>,
        /// List scenarios whose wall time changed by more than this.
        #[arg(long, default_value = "50%")]
        duration_threshold: String,
        /// With --history: each scenario's pass rate over the last N runs of
        /// the newest run's kernel; exit 1 only on a new failure (passed
        /// every earlier night, fails now), never on a flaky one.
        #[arg(long, value_name = "N", requires = "history")]
        nights: Option<usize>,
    },
    /// Write a static HTML report of every run under a results root: the
    /// latest run's verdicts (failures first), history, flaky scenarios, trends.
    Report {
        /// The results root (`results`).
        root: PathBuf,
        /// Output folder for index.html and the trend SVGs.
        #[arg(short, long)]
        out: PathBuf,
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
        /// Start halted with a gdb stub (`--gdb` on port 1234, `--gdb=PORT`) and print
        /// the gdb command to attach; the kernel boots with `nokaslr`.
        #[arg(long, value_name = "PORT", num_args = 0..=1, require_equals = true, default_missing_value = "1234")]
        gdb: Option<u16>,
        /// Extra kernel command line.
        #[arg(last = true)]
        append: Vec<String>,
    },
    /// Compare `lab run` of a trivial scenario with a raw QEMU boot.
    Bench(bench::BenchArgs),
    /// A/B test two kernels: the scenarios N times on each, interleaved A B
    /// A B, then per scenario each side's failure rate (95% interval) and
    /// Fisher's exact p-value. Exit 0 (with --expect: it holds), 1 it does
    /// not, 2 bad input, 3 the lab's own errors (inconclusive).
    Ab(ab::AbArgs),
    /// Run `lab ARGS...` (with `--exec`, any program) inside an L1 Linux guest
    /// with real KVM (nested SVM under QEMU/TCG): exercises the own VMM where
    /// the host has no hardware KVM.
    Nested(nested::NestedArgs),
    /// Find the first commit of a kernel tree at which scenarios fail: `git
    /// bisect run` with each step built by `lab kernel build` and run by
    /// `lab run` (N times with --repeat); build failures are skipped.
    Bisect(bisect::BisectArgs),
    /// One step of `lab bisect` (run by git; not for people).
    #[command(hide = true)]
    BisectStep(bisect::StepArgs),
    /// Mutation testing: would the scenarios notice a bug in the kernel
    /// code under test? Builds and runs each single-point mutant of a file
    /// (default kernel/bpf/arena.c) and reports the score and every
    /// survivor with its diff (mutate.md, .json, .html). Exit 0 when the
    /// report is written, 1 when the baseline fails or the score is under
    /// --fail-under, 2 bad input, 3 a mutant the lab could not judge, 130
    /// interrupted (run it again to go on: outcomes are cached).
    Mutate(mutate::MutateArgs),
    /// One run from the shards of a night (`lab run --shard i/N` runs):
    /// summary.json, junit.xml, results.ktap and the scenario folders, with
    /// `shards` saying which shard ran what. Exit 2 (with the reason) when
    /// they are not one night: different kernels, catalogues, seeds or
    /// shard counts, overlapping or repeated shards, a corrupted summary, or
    /// a planned scenario no shard ran (unless --allow-missing).
    Merge(merge::MergeArgs),
    /// Write a run as KernelCI KCIDB I/O data (schema v5) for `kcidb-submit`:
    /// a checkout and build for the kernel, a test per scenario and per
    /// selftest subtest (`arena.<suite>.<scenario>[.<subtest>]`).
    Kcidb(kcidb::KcidbArgs),
    /// A kernels × scenario sets × shards matrix (nightly.toml) run by the
    /// CI's own matrix: `plan` prints its jobs as JSON, `run --job K` runs
    /// one (docs/nightly.md).
    #[command(subcommand)]
    Nightly(nightly::NightlyCommand),
}

/// An inner `lab` command line as `lab nested` needs to know it.
fn nested_inner(args: &[String]) -> Option<nested::Inner> {
    let cli =
        Cli::try_parse_from(std::iter::once("lab").chain(args.iter().map(String::as_str))).ok()?;
    Some(match cli.command {
        Command::Run(r) => nested::Inner::Run(Box::new(r)),
        Command::Boot { kernel, .. } | Command::Image { kernel } => nested::Inner::Boots(kernel),
        Command::Bench(b) => nested::Inner::Boots(b.kernel),
        _ => nested::Inner::Other,
    })
}

#[derive(Subcommand)]
enum KernelCommand {
    /// Fetch the newest (or a given) Debian kernel of a series into the cache.
    Fetch {
        /// Series: 6.12 (default; the host's apt), 7.2 or newest (sid, through
        /// the lab's own apt state under the cache directory).
        #[arg(long, default_value = "6.12")]
        series: arena_images::kernel::debian::Channel,
        /// Patch level, e.g. 117 for 6.12.117.
        #[arg(long)]
        patch: Option<u32>,
    },
    /// Show which kernel a run would use.
    Info {
        #[command(flatten)]
        kernel: KernelArgs,
    },
    /// Check a kernel's config against what the lab needs (and what makes
    /// it find more bugs): the full table. Exit 2 when a must-have is missing.
    Check {
        #[command(flatten)]
        kernel: KernelArgs,
        /// Also list which of these scenarios (files or directories) will
        /// run on this kernel, which will be skipped and why, and which are
        /// checked at boot (kfuncs, kernel symbols).
        #[arg(long, value_name = "PATH", num_args = 1..)]
        scenarios: Vec<PathBuf>,
    },
    /// Print the config fragment the lab needs (for merge_config.sh).
    Config {
        /// Add the detection options: KASAN, lockdep, DEBUG_VM, kmemleak, fault
        /// injection.
        #[arg(long)]
        debug: bool,
    },
    /// Fetch the source tree of one of Debian's kernels (`linux-source-*`,
    /// unpacked once into the cache) and print its path: a tree to patch
    /// and build with `lab kernel build`.
    Source {
        #[command(flatten)]
        kernel: KernelArgs,
    },
    /// Decode stack traces in a console log (or stdin) with a vmlinux's
    /// symbols and DWARF: each `func+0xoff/0xsize` frame gets its
    /// `(file:line)`, as scripts/decode_stacktrace.sh does.
    Decode {
        /// The vmlinux the log's kernel was built as.
        #[arg(long)]
        vmlinux: PathBuf,
        /// The log (default: stdin).
        file: Option<PathBuf>,
    },
    /// Build a kernel tree for the lab: merge the fragment into its config,
    /// build bzImage and vmlinux (and modules), print the options to run it.
    Build(kernel_cmd::BuildArgs),
}

fn validate(
    paths: &[PathBuf],
    list: bool,
    shard: &shard::ShardArgs,
    select: &selection::SelectArgs,
) -> Result<u8, LabError> {
    let scenarios = if list {
        // An explicit selection lists beside invalid files it leaves out.
        let selected = select.load(paths)?;
        for line in selected.skipped_lines() {
            eprintln!("lab: {line}");
        }
        selected.files
    } else {
        scenario_file::load_paths(paths)?
    };
    let scenarios = shard
        .apply(
            scenarios,
            |f| f.scenario.name.as_str(),
            arena_runner::record::history::durations,
        )
        .map_err(|e| LabError::BadArgs(e.to_string()))?;
    for s in &scenarios {
        if list {
            println!(
                "{:<40} {:<50} [{}] {}",
                s.scenario.name,
                s.path.display(),
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
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let kernels = multi_kernel::kernels_of_run(&argv);
    if kernels.len() > 1 {
        return multi_kernel::run_each(&argv, &kernels);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Validate { paths } => {
            validate(&paths, false, &Default::default(), &Default::default())
        }
        Command::List {
            paths,
            shard,
            select,
        } => validate(&paths, true, &shard, &select),
        Command::Repro(args) => repro::repro(args),
        Command::Compare {
            runs,
            history,
            out,
            duration_threshold,
            nights,
        } => {
            let req = compare::Request {
                runs: &runs,
                history: history.as_deref(),
                out: out.as_deref(),
                threshold: &duration_threshold,
                nights,
            };
            let all = compare::compare_each(&req).map_err(|e| LabError::BadArgs(e.to_string()))?;
            let (mut worst, several, mut failed) = (0, all.len() > 1, None);
            for (root, result) in all {
                match result {
                    Ok((c, dir)) => {
                        if several {
                            println!("# kernel folder {}\n", root.display());
                        }
                        print!("{}", compare::markdown(&c));
                        eprintln!("lab: compare.json and compare.md in {}", dir.display());
                        worst = worst.max(c.exit_code());
                    }
                    Err(e) if several => {
                        eprintln!("lab: {e}");
                        failed.get_or_insert(e);
                    }
                    Err(e) => failed = Some(e),
                }
            }
            match failed {
                Some(e) => Err(LabError::BadArgs(e.to_string())),
                None => Ok(worst),
            }
        }
        Command::Ab(args) => ab::ab(&args),
        Command::Report { root, out } => {
            let index = report::report(&root, &out).map_err(|e| {
                if e.is_input() {
                    LabError::BadArgs(e.to_string())
                } else {
                    infra(e)
                }
            })?;
            println!("{}", index.display());
            Ok(exit::PASS)
        }
        Command::Kernel(KernelCommand::Fetch { series, patch }) => {
            let k = arena_images::kernel::debian::fetch_with(series, patch, true).map_err(infra)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&k).expect("serialisable")
            );
            Ok(exit::PASS)
        }
        Command::Kernel(KernelCommand::Info { kernel }) => {
            kernel.check()?;
            let k = plan::kernel(&kernel).map_err(infra)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&k).expect("serialisable")
            );
            Ok(exit::PASS)
        }
        Command::Kernel(KernelCommand::Check { kernel, scenarios }) => {
            kernel_cmd::check(&kernel, &scenarios)
        }
        Command::Kernel(KernelCommand::Config { debug }) => Ok(kernel_cmd::config(debug)),
        Command::Kernel(KernelCommand::Decode { vmlinux, file }) => {
            kernel_cmd::decode(&vmlinux, file.as_deref())
        }
        Command::Kernel(KernelCommand::Source { kernel }) => {
            kernel.check()?;
            let k = plan::kernel(&kernel).map_err(infra)?;
            eprintln!(
                "lab: linux-source of {} (unpacked once, then cached)",
                k.release
            );
            let tree = arena_images::selftests::debian_tree_for(&k).map_err(|e| match e {
                arena_images::ImageError::NoKernelPackage(_) => LabError::BadArgs(e.to_string()),
                other => infra(other),
            })?;
            println!("{}", tree.display());
            Ok(exit::PASS)
        }
        Command::Kernel(KernelCommand::Build(args)) => kernel_cmd::build(&args),
        Command::Image { kernel } => {
            kernel.check()?;
            let k = plan::kernel(&kernel).map_err(infra)?;
            let p = plan::prepare(k, &kernel).map_err(infra)?;
            let image = plan::image(&p, &run::trivial_scenario()).map_err(infra)?;
            println!("agent: {}\nimage: {}", p.agent.display(), image.display());
            Ok(exit::PASS)
        }
        Command::Boot {
            kernel,
            backend,
            timeout,
            gdb,
            append,
        } => run::boot(&kernel, backend, timeout, &append.join(" "), gdb),
        Command::Bench(args) => bench::bench(args),
        Command::Nested(args) => nested::nested(args, nested_inner),
        Command::Bisect(args) => bisect::bisect(&args),
        Command::BisectStep(args) => Ok(bisect::step(&args)),
        Command::Mutate(args) => mutate::mutate(&args),
        Command::Merge(args) => merge::merge_cmd(&args),
        Command::Kcidb(args) => kcidb::kcidb(&args),
        Command::Nightly(cmd) => nightly::nightly(&cmd),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infra_keeps_a_carried_invalid_input_and_nothing_else() {
        let carried = LabError::BadArgs("kernel-src is 6.13".into());
        assert_eq!(infra(carried).code(), exit::INVALID);
        let refused = arena_runner::plan::InputError::Refused("kernel-src is 6.13".into());
        let prepare = arena_runner::plan::PrepareError::Input(refused);
        assert_eq!(infra(prepare).code(), exit::INVALID);
        assert_eq!(infra("disk on fire").code(), exit::INFRA);
    }
}
