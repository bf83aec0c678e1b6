//! `lab run` and `lab boot`: prepare once, then run each scenario in its own
//! VM (up to `-j` at a time), judge it and record the results.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::execute::backend::{self, Backend, BackendChoice, Console, GdbStub, GdbWhen, VmSpec};
use crate::execute::console_capture::{CaptureError, ConsoleCapture};
use crate::execute::session::{self, Limits, VmExit};
use crate::execute::signals;
use crate::execute::snapshot::{Snapshots, VmStart};
use crate::judge::splat;
use crate::judge::verdict::{self, Judgement, SessionEnd, Verdict};
use crate::plan::attempts::{plan_attempts, Attempt, RepeatArgs, SCENARIO_COPY};
use crate::plan::scenario_file::{self, ScenarioFile};
use crate::record::attempts;
use crate::record::results::{self, Abort, ScenarioSummary, Summary};
use crate::record::run_dir::RunDir;
use crate::ui::progress::{self, Progress, Verbosity};
use crate::{error_text, exit, infra, plan, Cause, KernelArgs, LabError};

/// `lab run` options.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    kernel: KernelArgs,
    /// Backend.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// Results directory (a run folder is created inside).
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// Seed for randomised steps (default: random, recorded in the results).
    #[arg(long)]
    seed: Option<u64>,
    /// Scenarios run at once, each in its own VM.
    #[arg(short = 'j', long, default_value_t = 1)]
    jobs: usize,
    /// Seconds from VM start to the agent's hello.
    #[arg(long, default_value_t = 120)]
    boot_timeout: u64,
    /// Extra kernel command line.
    #[arg(long, default_value = "")]
    append: String,
    #[command(flatten)]
    shard: crate::plan::shard::ShardArgs,
    /// Stop starting scenarios after the first failure (the rest: `not_run`).
    #[arg(long)]
    fail_fast: bool,
    /// Boot every scenario's VM instead of restoring it from a snapshot of
    /// the booted VM (made once per VM shape, cached; see docs).
    #[arg(long)]
    cold: bool,
    /// Report failures that match a scenario's `known_issues` as plain
    /// failures instead of `known_fail`.
    #[arg(long)]
    no_known_issues: bool,
    /// Boot even if the kernel's config lacks what the lab needs (`lab
    /// kernel check`), e.g. when that config is stale: the agent then says
    /// what is missing, after a boot.
    #[arg(long)]
    no_preflight: bool,
    /// Refuse to run unless the resolved kernel's sha256 is HEX (what the
    /// `reproduce:` lines and `lab repro` pass: a replay on another kernel
    /// is no replay).
    #[arg(long, value_name = "HEX")]
    kernel_sha256: Option<String>,
    /// Debug one scenario (select it with --only): its VM starts halted with
    /// a gdb stub (`--gdb`: port 1234, `--gdb=PORT`), the kernel boots
    /// with `nokaslr`, and every timeout is 1000 times longer.
    #[arg(long, value_name = "PORT", num_args = 0..=1, require_equals = true, default_missing_value = "1234")]
    gdb: Option<u16>,
    /// Keep the first failing scenario's VM for the debugger: VMs boot with
    /// a gdb stub (`--gdb-on-fail`: port 1234, `=PORT`) and `nokaslr`, one
    /// at a time, and when a scenario fails (or stalls) its VM stays up,
    /// paused, until gdb kills it or Ctrl-C; no later scenario starts.
    #[arg(long, value_name = "PORT", num_args = 0..=1, require_equals = true,
          default_missing_value = "1234", conflicts_with = "gdb")]
    gdb_on_fail: Option<u16>,
    /// Multiply every scenario's timeout and the boot timeout (slow hosts).
    #[arg(long, value_name = "X")]
    timeout_scale: Option<f64>,
    /// vCPUs of every scenario's VM, instead of each scenario's own.
    #[arg(long, value_name = "N")]
    vcpus: Option<u32>,
    /// RAM (MiB) of every scenario's VM, instead of each scenario's own.
    #[arg(long, value_name = "M")]
    memory_mib: Option<u32>,
    /// Print only failures and the final line.
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,
    /// Stream each running scenario's serial console.
    #[arg(short, long)]
    verbose: bool,
    #[command(flatten)]
    select: crate::plan::selection::SelectArgs,
    #[command(flatten)]
    repeat: RepeatArgs,
    /// Scenario files or directories.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

/// The guarded value even if a worker panicked while holding the lock:
/// the run's state is still the best record there is, and one panic must
/// not turn every other worker's next lock into another.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A panic's message, for the scenario's reason.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Parses a `lab run` command line: clap's model of `lab run` alone.
#[derive(clap::Parser)]
#[command(name = "lab")]
struct RunCommand {
    #[command(subcommand)]
    command: RunOnly,
}

#[derive(clap::Subcommand)]
enum RunOnly {
    Run(RunArgs),
}

/// `lab run` options from a full argv (`lab run ...`), parsed exactly as
/// the command line would be: for commands that run the lab themselves.
pub fn parse_args<I, T>(argv: I) -> Result<RunArgs, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::Parser;
    let RunOnly::Run(args) = RunCommand::try_parse_from(argv)?.command;
    Ok(args)
}

pub use crate::plan::trivial_scenario;

fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ (u64::from(std::process::id()) << 32)) % 1_000_000_007
}

fn cmdline(append: &str) -> String {
    if append.trim().is_empty() {
        plan::BASE_CMDLINE.to_owned()
    } else {
        format!("{} {}", plan::BASE_CMDLINE, append.trim())
    }
}

/// The backend for `choice` and why it was picked (also printed).
fn pick_backend(choice: BackendChoice) -> Result<(Box<dyn Backend>, String), LabError> {
    let (backend, why) = backend::select(choice).map_err(infra)?;
    eprintln!("lab: backend {why}");
    Ok((backend, why))
}

/// `lab run`.
///
/// Invalid input (scenarios, missing files) is refused before a run folder
/// exists (exit 2). From then on every planned scenario is in the results:
/// an infrastructure error (kernel, backend, agent, a guest image, a VM
/// that never says hello) aborts the run, judges what cannot be judged as
/// `not_run` with the reason, and exits 3.
///
/// The steps, in order: `plan_run` (what to run), `open_run` (the run
/// folder and its first summary), `prepare_run` (kernel, backend, images),
/// `Pool::run` (the VMs) and `conclude` (the exit).
pub fn run(mut args: RunArgs) -> Result<u8, LabError> {
    let t0 = Instant::now();
    let plan = plan_run(&mut args)?;
    let verbosity = if args.quiet {
        Verbosity::Quiet
    } else if args.verbose {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    };
    signals::install_signal_handlers();
    let seed = args.seed.unwrap_or_else(random_seed);
    let (run_dir, queue, mut summary) = open_run(&args, &plan, seed)?;
    let Ready {
        backend,
        prepared,
        images,
    } = match prepare_run(&args, &plan.scenarios, &mut summary) {
        Ok(ready) => ready,
        Err(stopped) => return aborted(&run_dir, summary, t0, stopped),
    };
    summary.replay_args = crate::plan::replay::run_args(
        &plan.replay_options,
        &args.kernel,
        &prepared.kernel,
        backend.name(),
    );
    if verbosity != Verbosity::Quiet {
        eprintln!(
            "lab: kernel {} ({}), {} scenario(s), seed {seed}, results in {}",
            prepared.kernel.release,
            prepared.kernel.boot_image.display(),
            plan.scenarios.len(),
            run_dir.path.display()
        );
    }
    run_dir.write(&summary).map_err(infra)?;
    let ctx = run_ctx(&args, backend.as_ref(), &prepared, &run_dir);
    let pool = Pool {
        args: &args,
        ctx: &ctx,
        scenarios: &plan.scenarios,
        images: &images,
        seed,
        t0,
        replay_args: summary.replay_args.clone(),
        progress: Progress::new(summary.planned, verbosity),
        queue: Mutex::new(queue),
        summary: Mutex::new(summary),
        next: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        failed_fast: AtomicBool::new(false),
        started: Instant::now(),
    };
    pool.run();
    pool.progress.finish();
    let failed_fast = pool.failed_fast.load(Ordering::SeqCst);
    let sum = pool
        .summary
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    conclude(&run_dir, sum, t0, verbosity, failed_fast)
}

/// What a run will do, known before anything is written or built.
struct RunPlan {
    /// The scenarios this run (or shard) runs, with `--vcpus` and the like
    /// applied.
    scenarios: Vec<ScenarioFile>,
    /// The whole selection's identity, for `lab merge`.
    catalogue: String,
    /// With `--shard`: every selected scenario, for `lab merge` to complete
    /// the shards with.
    shard_plan: Vec<crate::record::shards::PlannedScenario>,
    /// The options a `reproduce:` line repeats.
    replay_options: crate::plan::replay::Options,
}

/// Step 1, plan: the selected scenarios, this shard's part of them and the
/// command line's overrides. Everything that can be wrong with the user's
/// input is found here, before a run folder exists (exit 2 then), so a
/// refused command line leaves nothing behind.
fn plan_run(args: &mut RunArgs) -> Result<RunPlan, LabError> {
    // An explicit selection runs beside invalid files it leaves out.
    let selected = args.select.load(&args.paths)?;
    for line in selected.skipped_lines() {
        eprintln!("lab: {line}");
    }
    // The catalogue's identity, and with --shard the whole plan: what
    // `lab merge` checks and completes the shards with.
    let catalogue = crate::record::shards::catalogue(
        selected
            .files
            .iter()
            .map(|f| (f.scenario.name.as_str(), f.path.as_path())),
    );
    let shard_plan: Vec<_> = match args.shard.shard {
        Some(_) => selected
            .files
            .iter()
            .map(|f| crate::record::shards::PlannedScenario {
                name: f.scenario.name.clone(),
                file: f.path.clone(),
                tags: f.scenario.tags.clone(),
            })
            .collect(),
        None => Vec::new(),
    };
    let scenarios = args
        .shard
        .apply(
            selected.files,
            |f| f.scenario.name.as_str(),
            crate::record::history::durations,
        )
        .map_err(|e| LabError::BadArgs(e.to_string()))?;
    let replay_options = crate::plan::replay::Options {
        no_known_issues: args.no_known_issues,
        timeout_scale: args.timeout_scale,
        boot_timeout: args.boot_timeout,
        append: args.append.clone(),
    };
    let scenarios = apply_overrides(args, scenarios)?;
    args.kernel.check()?;
    Ok(RunPlan {
        scenarios,
        catalogue,
        shard_plan,
        replay_options,
    })
}

/// Step 2, the run folder: created with a summary in which every planned
/// attempt is pending, and written at once, so that from here on a run
/// that stops for any reason (an abort, a signal, a panic) still leaves
/// every planned scenario in its results. Returns the folder, the queue of
/// attempts and the summary.
fn open_run(
    args: &RunArgs,
    plan: &RunPlan,
    seed: u64,
) -> Result<(RunDir, VecDeque<Attempt>, Summary), LabError> {
    // The user's --results: a folder that cannot be made is their input.
    let run_dir = RunDir::create(&args.results).map_err(|e| LabError::BadArgs(e.to_string()))?;
    let queue = plan_attempts(&plan.scenarios, &args.repeat, seed);
    let planned = queue
        .iter()
        .map(|a| attempts::pending(&plan.scenarios[a.scenario], a))
        .collect();
    let mut summary = Summary::new(&run_dir.id, seed, planned);
    summary.shard = args.shard.shard.map(|s| s.to_string());
    summary.catalogue = Some(plan.catalogue.clone());
    summary.shard_plan = plan.shard_plan.clone();
    run_dir.write(&summary).map_err(infra)?;
    Ok((run_dir, VecDeque::from(queue), summary))
}

/// What every scenario's VM shares: the backend, the prepared kernel, the
/// limits, the command line, gdb and snapshots. Built once from the
/// options, so that `run_one` depends on none of them directly; prints the
/// gdb line when a debugger is asked for.
fn run_ctx<'a>(
    args: &RunArgs,
    backend: &'a dyn Backend,
    prepared: &'a plan::Prepared,
    run_dir: &'a RunDir,
) -> RunCtx<'a> {
    let gdb = args
        .gdb
        .map(GdbStub::at_start)
        .or(args.gdb_on_fail.map(|port| GdbStub {
            port,
            when: GdbWhen::OnFailure,
        }));
    match gdb {
        Some(GdbStub {
            port,
            when: GdbWhen::Start,
        }) => print_gdb_line(&prepared.kernel, port, "the VM starts halted"),
        Some(GdbStub { port, .. }) => print_gdb_line(
            &prepared.kernel,
            port,
            "--gdb-on-fail: a failing scenario's VM stays up, paused",
        ),
        None => {}
    }
    RunCtx {
        backend,
        known_issues: !args.no_known_issues,
        prepared,
        run_dir,
        limits: Limits {
            boot: Duration::from_secs(args.boot_timeout),
        },
        // Under gdb, symbols must be where vmlinux says: no KASLR.
        cmdline: cmdline(&format!(
            "{}{}",
            args.append,
            if gdb.is_some() { " nokaslr" } else { "" }
        )),
        gdb,
        // A debugged VM boots: gdb wants to see start_kernel, or a stub
        // set up from the start.
        snapshots: (!args.cold && gdb.is_none())
            .then(|| Snapshots::new(backend, Duration::from_secs(args.boot_timeout))),
    }
}

/// Step 4, the VMs: up to `-j` workers take attempts from one queue, run
/// each, and record it in the shared summary (written after every attempt,
/// so an interrupted run keeps what it did). Shared state lives here, not
/// in closures, so each part of a worker's turn has a name.
struct Pool<'a> {
    args: &'a RunArgs,
    ctx: &'a RunCtx<'a>,
    scenarios: &'a [ScenarioFile],
    /// Guest image of each scenario, in plan order.
    images: &'a [PathBuf],
    seed: u64,
    /// When the run began (the summary's wall time).
    t0: Instant,
    /// What a failed attempt's `reproduce:` line passes.
    replay_args: Vec<String>,
    progress: Progress,
    queue: Mutex<VecDeque<Attempt>>,
    summary: Mutex<Summary>,
    /// The next display key (summary indices move).
    next: AtomicUsize,
    /// Start no more attempts (fail-fast, an infrastructure error).
    stop: AtomicBool,
    /// `--fail-fast` stopped the run: the rest is skipped, not interrupted.
    failed_fast: AtomicBool,
    /// When the first VM was about to start (`--until-fail`'s clock).
    started: Instant,
}

impl Pool<'_> {
    /// Run the workers, the progress display and the signal watcher until
    /// the queue is empty, the run stopped, or a signal came.
    fn run(&self) {
        let watching = AtomicBool::new(true);
        std::thread::scope(|scope| {
            scope.spawn(|| self.progress.watch(&watching));
            scope.spawn(|| signals::stop_vms_on_signal(&watching));
            let workers: Vec<_> = (0..self.args.jobs.clamp(1, 16))
                .map(|_| scope.spawn(|| self.work()))
                .collect();
            for w in workers {
                let _ = w.join();
            }
            watching.store(false, Ordering::SeqCst);
        });
    }

    /// One worker: attempts from the queue until it is empty or the run
    /// stops.
    fn work(&self) {
        loop {
            if self.stop.load(Ordering::SeqCst) || signals::interrupted().is_some() {
                return;
            }
            let Some(a) = lock(&self.queue).pop_front() else {
                return;
            };
            let i = self.next.fetch_add(1, Ordering::SeqCst);
            let file = &self.scenarios[a.scenario];
            self.progress
                .started(i, &file.scenario.name, &self.ctx.run_dir.path.join(&a.dir));
            let s = self.attempt(file, &a);
            self.progress.ended(i, &s);
            if let Some(line) = &s.reproduce {
                self.progress.println(&format!("reproduce: {line}"));
            }
            self.record(file, &a, s);
        }
    }

    /// Run attempt `a` of `file` and judge it. A panic of the lab's own
    /// code is the lab's failure: the scenario is an error (the run then
    /// stops, exit 3, and still writes a complete summary), never a lost
    /// worker.
    fn attempt(&self, file: &ScenarioFile, a: &Attempt) -> ScenarioSummary {
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_one(self.ctx, file, &self.images[a.scenario], a)
        }));
        let mut s = match ran {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let mut s = attempts::pending(file, a);
                s.judgement = Judgement::infra_error(error_text(&e));
                s
            }
            Err(panic) => {
                let mut s = attempts::pending(file, a);
                s.judgement = Judgement::infra_error(format!(
                    "the lab itself panicked while running it: {}",
                    panic_text(panic.as_ref())
                ));
                s
            }
        };
        if signals::interrupted().is_some() {
            // Its VM was killed by the interrupt: not a verdict.
            s.judgement = Judgement::not_run(results::INTERRUPTED);
        }
        if s.judgement.verdict.is_failing_attempt() {
            s.reproduce = Some(crate::plan::replay::line(
                &self.replay_args,
                a.run_seed,
                &s.vm,
                &s.name,
                &file.path,
            ));
        }
        s
    }

    /// Put attempt `a`'s result `s` in the summary and write it; decide
    /// whether the run goes on (`--fail-fast`, an infrastructure error) and
    /// whether `--repeat`/`--until-fail` queue another attempt.
    fn record(&self, file: &ScenarioFile, a: &Attempt, s: ScenarioSummary) {
        let failed = s.judgement.verdict.is_failing_attempt();
        // A known kernel bug does not stop a --fail-fast run
        // (it is no news), but it does end an --until-fail loop.
        let news = s.judgement.verdict.is_failure();
        let mut sum = lock(&self.summary);
        if self.args.fail_fast && news {
            self.stop.store(true, Ordering::SeqCst);
            self.failed_fast.store(true, Ordering::SeqCst);
        }
        if s.judgement.infra {
            // Later scenarios would most likely meet the same fate
            // (each after a boot timeout): stop starting them.
            self.stop.store(true, Ordering::SeqCst);
            let reason = format!("{}: {}", s.name, s.judgement.reason);
            sum.abort(&reason, Some(&s.name));
        }
        let name = s.name.clone();
        let at = attempts::slot(&mut sum.scenarios, &s);
        sum.scenarios[at] = s;
        let next_attempt = self
            .args
            .repeat
            .next(self.seed, &name, a, !failed, self.started);
        if let Some(n) = next_attempt.filter(|_| !self.stop.load(Ordering::SeqCst)) {
            attempts::slot(&mut sum.scenarios, &attempts::pending(file, &n));
            lock(&self.queue).push_back(n);
        }
        sum.recount();
        sum.wall_s = self.t0.elapsed().as_secs_f64();
        if let Err(e) = self.ctx.run_dir.write(&sum) {
            eprintln!("lab: writing results: {e}");
        }
    }
}

/// Step 5, the exit: an interrupted run says how far it got (130), an
/// aborted one judges the rest `not_run` (3, or 2 for invalid input),
/// `--fail-fast` skips the rest; then the final results and the totals.
/// One place decides the exit code, so every way a run ends is listed here.
fn conclude(
    run_dir: &RunDir,
    mut sum: Summary,
    t0: Instant,
    verbosity: Verbosity,
    failed_fast: bool,
) -> Result<u8, LabError> {
    if let Some(signal) = signals::interrupted() {
        sum.interrupt(signal);
        println!(
            "interrupted after {}/{}",
            sum.planned - sum.not_run,
            sum.planned
        );
        finish(run_dir, sum, t0, verbosity)?;
        return Ok(exit::INTERRUPTED);
    }
    if let Some(abort) = sum.aborted.clone() {
        let stopped = Stopped {
            abort,
            invalid_input: false,
        };
        return aborted(run_dir, sum, t0, stopped);
    }
    if failed_fast {
        sum.skip_rest(results::FAIL_FAST);
    }
    finish(run_dir, sum, t0, verbosity)
}

/// `--shard` done; now `--vcpus`, `--memory-mib` and `--timeout-scale`
/// override every scenario's VM shape and limits (and the boot timeout), so
/// a nightly on a slower or smaller host can adapt without editing files.
fn apply_overrides(
    args: &mut RunArgs,
    mut scenarios: Vec<ScenarioFile>,
) -> Result<Vec<ScenarioFile>, LabError> {
    if let Some(x) = args.timeout_scale {
        if !(x.is_finite() && x > 0.0) {
            return Err(LabError::BadArgs(format!(
                "--timeout-scale {x}: expected a positive number"
            )));
        }
        let scale = |s: u64| ((s as f64) * x).ceil().max(1.0) as u64;
        args.boot_timeout = scale(args.boot_timeout);
        for f in &mut scenarios {
            f.scenario.timeout_s = scale(f.scenario.timeout_s);
        }
    }
    for (option, value) in [("--vcpus", args.vcpus), ("--memory-mib", args.memory_mib)] {
        if value == Some(0) {
            return Err(LabError::BadArgs(format!(
                "{option} 0: expected at least 1"
            )));
        }
    }
    if args.gdb_on_fail.is_some() {
        if args.jobs > 1 {
            return Err(LabError::BadArgs(format!(
                "--gdb-on-fail holds one failed VM for the debugger: run with -j 1, not -j {}",
                args.jobs
            )));
        }
        // The held VM is the one to look at: nothing starts after it.
        args.fail_fast = true;
    }
    if args.gdb.is_some() {
        if scenarios.len() != 1 || args.repeat.repeated() {
            return Err(LabError::BadArgs(format!(
                "--gdb debugs one VM: select exactly one scenario (--only NAME), once ({} selected)",
                scenarios.len()
            )));
        }
        // A VM stopped in the debugger makes no progress: not a hang.
        const GDB_TIMEOUT_SCALE: u64 = 1000;
        args.boot_timeout = args.boot_timeout.saturating_mul(GDB_TIMEOUT_SCALE);
        for f in &mut scenarios {
            f.scenario.timeout_s = f.scenario.timeout_s.saturating_mul(GDB_TIMEOUT_SCALE);
        }
    }
    for f in &mut scenarios {
        if let Some(v) = args.vcpus {
            f.scenario.vm.vcpus = v;
        }
        if let Some(m) = args.memory_mib {
            f.scenario.vm.memory_mib = m;
        }
    }
    Ok(scenarios)
}

/// What the scenarios of a run need before the first VM.
struct Ready {
    backend: Box<dyn Backend>,
    prepared: plan::Prepared,
    /// Guest image of each scenario, in plan order.
    images: Vec<PathBuf>,
}

impl RunArgs {
    /// The folder run folders are created in (`--results`).
    pub fn results_dir(&self) -> &Path {
        &self.results
    }

    /// The scenario files and directories given.
    #[cfg(test)]
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

/// Builds what `args` would need before its first VM (kernel, agent, BPF
/// objects, every scenario's image), for `lab nested`, which runs the same
/// arguments where building would be slow and thrown away. Invalid scenarios
/// are left for the run itself to report.
pub fn warm_caches(args: &RunArgs) -> Result<(), plan::PrepareError> {
    let Ok(scenarios) = scenario_file::load_paths(&args.paths) else {
        return Ok(());
    };
    let kernel = plan::kernel(&args.kernel)?;
    let prepared = plan::prepare(kernel, &args.kernel)?;
    for f in &scenarios {
        // A scenario whose image cannot be built fails in the run, with its verdict.
        let _ = plan::scenario_image(&prepared, f);
    }
    Ok(())
}

/// Step 3, prepare: the kernel, the backend, the agent and BPF objects, and
/// every scenario's guest image (so a missing selftest source stops the run
/// before any VM boots, not halfway through it). Fills the summary as it goes; a failure comes back as the abort,
/// with the failing scenario's own verdict already recorded.
fn prepare_run(
    args: &RunArgs,
    scenarios: &[ScenarioFile],
    summary: &mut Summary,
) -> Result<Ready, Stopped> {
    let stage = |what: &str, e: plan::PrepareError| stopped(what, &e, e.is_invalid_input());
    let kernel = plan::kernel(&args.kernel).map_err(|e| stage("kernel", e))?;
    summary.kernel = Some(kernel.clone());
    if let Some(want) = args.kernel_sha256.as_deref() {
        if !want.eq_ignore_ascii_case(&kernel.sha256) {
            return Err(Stopped {
                invalid_input: true,
                abort: Abort {
                    reason: format!(
                        "--kernel-sha256: the kernel {} has sha256 {}, not the recorded {want}: \
                         refusing to replay on another kernel (lab repro --any-kernel runs it anyway)",
                        kernel.boot_image.display(),
                        kernel.sha256
                    ),
                    scenario: None,
                },
            });
        }
    }
    // Before any boot: a kernel that lacks what the lab needs is refused
    // with the options named, instead of a boot timeout.
    if !args.no_preflight {
        let needs_btf = scenarios.iter().any(|f| plan::uses_selftests(&f.scenario));
        crate::plan::preflight::require(&kernel, needs_btf)
            .map_err(|e| stopped("kernel preflight", &e, true))?;
    }
    let (backend, why) = pick_backend(args.backend).map_err(|e| match e {
        LabError::Infra(e) => stopped("backend", &*e, false),
        other => Stopped {
            invalid_input: other.code() == exit::INVALID,
            abort: Abort {
                reason: format!("backend: {other}"),
                scenario: None,
            },
        },
    })?;
    summary.backend = Some(backend.name().into());
    summary.accelerator = Some(backend.accelerator().into());
    summary.backend_reason = Some(why);
    let mut prepared =
        plan::prepare(kernel, &args.kernel).map_err(|e| stage("preparing the guest", e))?;
    prepared.kernel.boot_image = backend
        .boot_file(&prepared.kernel)
        .map_err(|e| stopped("kernel", &*Cause::from(e), false))?;
    let mut images = Vec::with_capacity(scenarios.len());
    for (i, f) in scenarios.iter().enumerate() {
        match plan::scenario_image(&prepared, f) {
            Ok(image) => images.push(image),
            Err(e) => {
                let reason = format!("guest image: {}", error_text(&e));
                let name = &f.scenario.name;
                // Its first attempt carries the verdict.
                let i = summary
                    .scenarios
                    .iter()
                    .position(|s| &s.name == name)
                    .unwrap_or(i);
                summary.scenarios[i].judgement = Judgement::infra_error(reason.clone());
                print_line(&summary.scenarios[i]);
                return Err(Stopped {
                    invalid_input: e.is_invalid_input(),
                    abort: Abort {
                        reason: format!("{name}: {reason}"),
                        scenario: Some(name.clone()),
                    },
                });
            }
        }
    }
    Ok(Ready {
        backend,
        prepared,
        images,
    })
}

/// A run that stopped before its first VM.
struct Stopped {
    abort: Abort,
    /// The user's input was wrong (exit 2), not the lab's machinery (exit 3).
    invalid_input: bool,
}

/// A run stopped at preparation step `what` by `e`; `invalid_input`: the
/// user's input is at fault (exit 2), not the lab's machinery (exit 3).
fn stopped(what: &str, e: &(dyn std::error::Error + 'static), invalid_input: bool) -> Stopped {
    Stopped {
        invalid_input,
        abort: Abort {
            reason: format!("{what}: {}", error_text(e)),
            scenario: None,
        },
    }
}

/// End an aborted run: every scenario not judged becomes `not_run` with the
/// reason, the results say so, and the exit is an infrastructure error, or
/// invalid input when that is what stopped it.
fn aborted(
    run_dir: &RunDir,
    mut sum: Summary,
    t0: Instant,
    stopped: Stopped,
) -> Result<u8, LabError> {
    let abort = stopped.abort;
    sum.abort(&abort.reason, abort.scenario.as_deref());
    finish(run_dir, sum, t0, Verbosity::Normal)?;
    let message = format!("run aborted: {}", abort.reason);
    Err(if stopped.invalid_input {
        LabError::BadArgs(message)
    } else {
        infra(message)
    })
}

/// Write the final results, print the totals, and give the exit code of a
/// run that was not aborted.
fn finish(
    run_dir: &RunDir,
    mut sum: Summary,
    t0: Instant,
    verbosity: Verbosity,
) -> Result<u8, LabError> {
    sum.finish(t0.elapsed().as_secs_f64());
    for s in sum
        .scenarios
        .iter()
        .filter(|s| s.judgement.verdict == Verdict::NotRun)
    {
        println!("NOT RUN {}", s.name);
    }
    run_dir.write(&sum).map_err(infra)?;
    let mut totals = format!(
        "{} passed, {} failed",
        sum.passed,
        sum.failed + sum.errors + sum.timeouts
    );
    if sum.timeouts > 0 {
        totals.push_str(&format!(" ({} timed out)", sum.timeouts));
    }
    if sum.known_failures > 0 {
        totals.push_str(&format!(
            ", {} known kernel bug(s) (known_fail)",
            sum.known_failures
        ));
    }
    if sum.skipped > 0 {
        totals.push_str(&format!(
            ", {} skipped (the kernel lacks what they require)",
            sum.skipped
        ));
    }
    if sum.not_run > 0 {
        totals.push_str(&format!(", {} not run", sum.not_run));
    }
    println!("{totals}");
    if verbosity != Verbosity::Quiet {
        eprintln!(
            "lab: wall time {:.2} s; results {}",
            sum.wall_s,
            run_dir.path.display()
        );
    }
    Ok(if sum.green() { exit::PASS } else { exit::FAIL })
}

fn print_line(s: &ScenarioSummary) {
    println!("{}", progress::result_lines(s));
}

struct RunCtx<'a> {
    backend: &'a dyn Backend,
    /// Apply the scenarios' `known_issues` (off: `--no-known-issues`).
    known_issues: bool,
    prepared: &'a plan::Prepared,
    run_dir: &'a RunDir,
    limits: Limits,
    cmdline: String,
    /// `--gdb`, `--gdb-on-fail`: the VMs' gdb stub.
    gdb: Option<GdbStub>,
    /// Where scenarios start from snapshots (not `--cold`, not `--gdb`).
    snapshots: Option<Snapshots<'a>>,
}

/// Why a scenario could not be run or judged: the scenario is then an
/// infrastructure error, never a verdict.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Creating the scenario's results folder.
    #[error("{}: {source}", path.display())]
    Io {
        /// The folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Copying the scenario file (or its own BPF sources) beside its
    /// results, for `lab repro`.
    #[error("copying {} to {}: {source}", from.display(), to.display())]
    Copy {
        /// The scenario file, or the folder of its BPF sources.
        from: PathBuf,
        /// Where it goes.
        to: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The console's capture failed (a console cut short could hide a
    /// splat); the error names the file.
    #[error(transparent)]
    Console(#[from] CaptureError),
}

impl RunError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
        move |source| RunError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// The lab's own tests make `run_one` panic for the scenario named here
/// (`runner/tests/honest_results.rs`): a panic must still leave a complete
/// summary and exit 3.
const PANIC_HOOK_ENV: &str = "ARENA_LAB_TEST_PANIC_IN";

fn run_one(
    ctx: &RunCtx,
    file: &ScenarioFile,
    image: &Path,
    attempt: &Attempt,
) -> Result<ScenarioSummary, RunError> {
    if std::env::var(PANIC_HOOK_ENV).is_ok_and(|n| n == file.scenario.name) {
        panic!(
            "{PANIC_HOOK_ENV} asked for a panic in {}",
            file.scenario.name
        );
    }
    let s = &file.scenario;
    let dir = ctx
        .run_dir
        .scenario_dir(&attempt.dir)
        .map_err(RunError::io(&ctx.run_dir.path.join(&attempt.dir)))?;
    // `lab repro` runs this copy: the file may change or go afterwards.
    let copy = dir.join(SCENARIO_COPY);
    std::fs::copy(&file.path, &copy).map_err(|source| RunError::Copy {
        from: file.path.clone(),
        to: copy.clone(),
        source,
    })?;
    // ... and its own BPF sources, at the same places beside it.
    if let Some(from) = file.path.parent() {
        let from = if from.as_os_str().is_empty() {
            Path::new(".")
        } else {
            from
        };
        plan::own_bpf::copy_sources(s, from, &dir).map_err(|source| RunError::Copy {
            from: from.to_owned(),
            to: dir.clone(),
            source,
        })?;
    }
    let console_log = dir.join("console.log");
    let spec = VmSpec {
        kernel: ctx.prepared.kernel.boot_image.clone(),
        initrd: Some(image.to_owned()),
        cmdline: ctx.cmdline.clone(),
        vcpus: s.vm.vcpus,
        memory_mib: s.vm.memory_mib,
        console: Console::File(console_log.clone()),
        channel: None,
        gdb: ctx.gdb,
        snapshot: None,
    };
    // From the shape's snapshot where there is one; retries boot cold.
    let (mut spec, mut start) = (spec, VmStart::Cold { why: None });
    if let Some(snapshots) = &ctx.snapshots {
        match snapshots.for_spec(&spec) {
            Ok(snap) => {
                spec.snapshot = Some(snap.restore_role());
                start = VmStart::Restored {
                    snapshot: snap.meta.key.clone(),
                    restore_s: None,
                };
            }
            Err(why) => start = VmStart::Cold { why: Some(why) },
        }
    }
    let boot = |spec: VmSpec| {
        let limits = match spec.snapshot {
            // A restore that does not answer soon will not: boot cold then.
            Some(_) => Limits {
                boot: ctx.limits.boot.min(RESTORE_LIMIT),
            },
            None => ctx.limits,
        };
        let (record, capture) = session::run(
            ctx.backend,
            spec,
            s,
            attempt.seed,
            limits,
            &dir.join("events.jsonl"),
            &dir.join("vmm.log"),
        );
        // The console is complete once its capture has drained the pipe;
        // bounded; a capture that failed (disk full) is an error, not a
        // verdict. No capture: no VM was started, no console.
        let console = capture.map_or(Ok(String::new()), ConsoleCapture::read_for_verdict)?;
        Ok::<_, RunError>((record, console))
    };
    let (mut record, mut console) = boot(spec.clone())?;
    let mut retried_after = None;
    let tcg = ctx.backend.accelerator() == "tcg";
    for attempt in 1.. {
        let restored = spec.snapshot.is_some();
        let Some(cause) = retry_cause(&record, &console, tcg, restored) else {
            break;
        };
        if attempt > retries_for(&cause) {
            break;
        }
        if restored {
            spec.snapshot = None;
            start = VmStart::Cold {
                why: Some(format!("the restore failed: {}", cause)),
            };
        }
        if signals::interrupted().is_some() {
            break;
        }
        // Once more, keeping this attempt's files beside the new ones.
        for f in ["console.log", "events.jsonl", "vmm.log"] {
            let _ = std::fs::rename(dir.join(f), dir.join(format!("attempt{attempt}-{f}")));
        }
        eprintln!(
            "lab: {}: {cause}; running it once more (that attempt kept as attempt{attempt}-*)",
            s.name
        );
        retried_after.get_or_insert(cause);
        (record, console) = boot(spec.clone())?;
    }
    save_outputs(&dir, &record);
    let mut judgement = verdict::judge(&record, &console);
    if ctx.known_issues {
        judgement.apply_known_issues(&s.known_issues, &ctx.prepared.kernel.release);
    }
    decode_splats(&mut judgement, ctx.prepared.kernel.vmlinux.as_deref());
    write_diagnosis(&dir, &judgement, ctx.prepared.kernel.vmlinux.as_deref());
    // In the last attempt too: still the machine's doing.
    judgement.overrule_for_machine_fault(&console, tcg);
    if let VmStart::Restored { restore_s, .. } = &mut start {
        *restore_s = record.boot_s;
    }
    Ok(ScenarioSummary {
        judgement,
        start: Some(start),
        boot_s: record.boot_s,
        duration_s: record.total_s,
        vm_exit: record.vm_exit,
        guest: record.hello,
        retried_after,
        host_load: record.host_load,
        ..attempts::pending(file, attempt)
    })
}

/// Decodes each recorded splat's trace with the kernel's vmlinux, when it
/// has symbols and DWARF (a build tree's; Debian's unpacked one has
/// neither). Loaded only for a scenario that splatted: most never do.
fn decode_splats(judgement: &mut Judgement, vmlinux: Option<&Path>) {
    if judgement.splats.iter().all(|s| s.text.is_none()) {
        return;
    }
    let Some(vmlinux) = vmlinux else { return };
    let symbolizer = match crate::judge::symbolize::Symbolizer::new(vmlinux) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lab: stack traces stay raw: {e}");
            return;
        }
    };
    for s in &mut judgement.splats {
        s.decoded = s.text.as_deref().map(|t| symbolizer.decode(t));
    }
}

/// A stall's diagnosis as `diagnosis.txt` in the scenario's folder, its
/// stacks decoded when the kernel's vmlinux has symbols and DWARF.
fn write_diagnosis(dir: &Path, judgement: &Judgement, vmlinux: Option<&Path>) {
    let Some(d) = &judgement.diagnosis else {
        return;
    };
    let symbolizer = vmlinux.and_then(|v| crate::judge::symbolize::Symbolizer::new(v).ok());
    let decode = symbolizer
        .as_ref()
        .map(|s| move |text: &str| s.decode(text));
    let text = d.text(decode.as_ref().map(|f| f as &dyn Fn(&str) -> String));
    let _ = arena_images::write_atomic(&dir.join("diagnosis.txt"), text.as_bytes());
}

/// How many times a scenario runs again because of the machinery
/// ([`retry_cause`]): a kernel that really cannot boot costs three boots.
/// A console that proves the machine failed ([`splat::machine_fault`]) gets
/// more: under `lab nested` those come in bursts (one CI run saw the same
/// scenario's boot corrupted three times in a row while the other VM ran a
/// race), and it says nothing about the kernel.
fn retries_for(cause: &SessionEnd) -> u32 {
    match cause {
        SessionEnd::EmulatorFault { .. } => 4,
        _ => 2,
    }
}

/// How long a restored VM gets to say hello (a cold boot gets
/// `--boot-timeout`): measured at ~0.1 s under TCG, so this is for loaded
/// hosts; past it the scenario boots cold instead.
const RESTORE_LIMIT: Duration = Duration::from_secs(30);

/// Why a scenario's VM is worth one more run, if it is: a fault of the
/// machinery, not a verdict on the kernel.
///
/// - The VM ended on its own before the agent said hello: the kernel died
///   during boot. Under multi-threaded TCG that happens now and then to
///   stock kernels (a live text patch racing another vCPU). A boot that
///   hangs is not retried, nor one where the agent itself gave up (e.g. no
///   virtio console driver).
/// - The console shows the machine failed ([`splat::machine_fault`]: a
///   register dump with impossible EFLAGS; under TCG, the int3 oops of
///   live text patching) at any time, before or after the hello.
///
/// The summary records the cause (`retried_after`); the first attempt's
/// logs stay as `attempt1-*`.
fn retry_cause(
    record: &session::Record,
    console: &str,
    tcg: bool,
    restored: bool,
) -> Option<SessionEnd> {
    if restored && record.hello.is_none() {
        // A snapshot problem is never a verdict: boot cold.
        return Some(SessionEnd::from(&record.end));
    }
    if let Some(fault) = splat::machine_fault(console, tcg) {
        return Some(SessionEnd::from(fault));
    }
    let agent_gave_up = arena_protocol::console::fatal_reason(console).is_some();
    let ended_itself = matches!(record.vm_exit, Some(VmExit::Exited(_)));
    (record.hello.is_none() && ended_itself && !agent_gave_up)
        .then(|| SessionEnd::from(&record.end))
}

/// Files the guest sent (`output` messages), written into the scenario's
/// folder under a sanitised name; never outside it, never over a lab file.
fn save_outputs(dir: &std::path::Path, record: &session::Record) {
    for r in &record.messages {
        if let arena_protocol::GuestMessage::Output { name, text } = &r.message {
            let safe: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let reserved = ["console.log", "events.jsonl", "vmm.log"];
            if safe.is_empty() || safe.starts_with('.') || reserved.contains(&safe.as_str()) {
                continue;
            }
            let _ = arena_images::write_atomic(&dir.join(format!("guest-{safe}")), text.as_bytes());
        }
    }
}

/// Says how to attach gdb to a VM with its stub on `port`, after `what`
/// (stderr: stdout may be the guest's console).
fn print_gdb_line(kernel: &arena_images::kernel::Kernel, port: u16, what: &str) {
    let vmlinux = kernel
        .vmlinux
        .as_ref()
        .map_or_else(|| "vmlinux".to_owned(), |v| v.display().to_string());
    eprintln!("lab: {what}; attach with:\n  gdb {vmlinux} -ex 'target remote 127.0.0.1:{port}'");
}

/// `lab boot`: the default image, serial console on stdout; with `gdb`, the
/// VM starts halted with a gdb stub on that port.
pub fn boot(
    kernel: &KernelArgs,
    choice: BackendChoice,
    timeout: u64,
    append: &str,
    gdb: Option<u16>,
) -> Result<u8, LabError> {
    kernel.check()?;
    let k = plan::kernel(kernel).map_err(infra)?;
    let (backend, _) = pick_backend(choice)?;
    if gdb.is_some() && !backend.has_gdb_stub() {
        return Err(LabError::BadArgs(format!(
            "--gdb: the {} backend has no gdb stub yet; use --backend qemu",
            backend.name()
        )));
    }
    let prepared = plan::prepare(k, kernel).map_err(infra)?;
    let scenario = trivial_scenario();
    let image = plan::image(&prepared, &scenario).map_err(infra)?;
    let boot_file = backend.boot_file(&prepared.kernel).map_err(infra)?;
    let spec = VmSpec {
        kernel: boot_file,
        initrd: Some(image),
        // Debugging a boot wants the whole log, whatever a backend's boot
        // log level (the own VMM's is 5); the user's --append still wins.
        // Under gdb, symbols must be where vmlinux says: no KASLR.
        cmdline: cmdline(&format!(
            "loglevel=7{} {append}",
            if gdb.is_some() { " nokaslr" } else { "" }
        )),
        vcpus: scenario.vm.vcpus,
        memory_mib: scenario.vm.memory_mib,
        console: Console::Stdout,
        channel: None,
        gdb: gdb.map(GdbStub::at_start),
        snapshot: None,
    };
    if let Some(port) = gdb {
        print_gdb_line(&prepared.kernel, port, "the VM starts halted");
        eprintln!("lab: (the VM is killed after {timeout} s; --timeout to change)");
    }
    let scratch = std::env::temp_dir().join(format!("arena-lab-boot-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(infra)?;
    let (record, _) = session::run(
        backend.as_ref(),
        spec,
        &scenario,
        0,
        Limits {
            boot: Duration::from_secs(timeout),
        },
        &scratch.join("events.jsonl"),
        &scratch.join("vmm.log"),
    );
    let vmm_log = std::fs::read_to_string(scratch.join("vmm.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&scratch);
    let vm_exit = record
        .vm_exit
        .as_ref()
        .map_or_else(|| "never started".to_owned(), VmExit::to_string);
    eprintln!("\nlab: {}; VM {vm_exit}", SessionEnd::from(&record.end));
    if !vmm_log.trim().is_empty() {
        eprintln!("lab: backend stderr:\n{}", vmm_log.trim_end());
    }
    Ok(match record.hello {
        Some(h) => {
            eprintln!(
                "lab: agent hello after {:.2} s: {}",
                record.boot_s.unwrap_or(0.0),
                serde_json::to_string(&h).expect("serialisable")
            );
            exit::PASS
        }
        None => exit::INFRA,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arena_protocol::Scenario;

    fn loaded(names: &[&str]) -> Vec<ScenarioFile> {
        names
            .iter()
            .map(|n| ScenarioFile {
                path: PathBuf::from(format!("{n}.yaml")),
                scenario: Scenario {
                    name: (*n).to_owned(),
                    ..trivial_scenario()
                },
            })
            .collect()
    }

    #[test]
    fn machine_faults_get_more_retries_than_other_boot_deaths() {
        let fault = SessionEnd::EmulatorFault {
            title: "Oops".into(),
            line: 1,
            cause: "corrupted vCPU state".into(),
        };
        let died = SessionEnd::NoHello {
            reason: "closed".into(),
        };
        assert_eq!(retries_for(&fault), 4);
        assert_eq!(retries_for(&died), 2);
    }

    #[test]
    fn gdb_debugs_exactly_one_scenario_with_timeouts_stretched() {
        let mut args = parse_args(["lab", "run", "--gdb", "x.yaml"]).unwrap();
        assert_eq!(args.gdb, Some(1234));
        let err = apply_overrides(&mut args, loaded(&["a", "b"])).unwrap_err();
        assert!(err.to_string().contains("exactly one scenario"), "{err}");
        let one = apply_overrides(&mut args, loaded(&["a"])).unwrap();
        assert_eq!(one[0].scenario.timeout_s, 30 * 1000);
        assert_eq!(args.boot_timeout, 120 * 1000);
        let mut args = parse_args(["lab", "run", "--gdb=4321", "--repeat", "2", "x.yaml"]).unwrap();
        assert_eq!(args.gdb, Some(4321));
        assert!(apply_overrides(&mut args, loaded(&["a"])).is_err());
    }
}
