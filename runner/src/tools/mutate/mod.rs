//! `lab mutate`: would the scenarios notice a bug in the kernel code under
//! test? Each single-point mutant of a file ([`operators`]) is built into
//! the kernel (`lab kernel build`, incremental: one build directory for
//! all) and run through the scenarios (`lab run`, a child process with a
//! time budget); it is killed when a scenario fails on it.
//!
//! The unmutated kernel runs first: a baseline that does not pass makes
//! every verdict meaningless, so the run stops there. The file is mutated
//! only while the kernel builds, journalled ([`journal`]) so the tree gets
//! its original back byte for byte, even after a crash. Outcomes are cached
//! ([`cache`]) and the report ([`report`]) is rewritten after each mutant,
//! so a run cut short goes on where it stopped.
//!
//! Classes, first match wins, in scenario plan order:
//! - killed: a scenario failed (`fail`, `known_fail`), errored without the
//!   lab being at fault (a panic, the VM gone, a step the kernel refused),
//!   or was skipped for a capability the unmutated kernel has;
//! - timeout: the run exceeded the mutant's budget, or a scenario timed out;
//! - error: the lab could not run it (no summary, an aborted run, a VM
//!   that never said hello): reported apart, not cached;
//! - survived: every scenario passed (or was skipped as at the baseline);
//! - build failure: the mutant did not compile (the compiler's error lines kept).

pub mod cache;
pub mod journal;
pub mod operators;
pub mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arena_images::kernel::build::BuildError;
use indicatif::{ProgressBar, ProgressStyle};

use self::cache::{Cache, Class, KeyParts, Outcome};
use self::journal::{Journal, JournalError};
use self::operators::{Mutant, Operator};
use self::report::{Baseline, MutantRecord, Report};
use crate::execute::signals;
use crate::judge::verdict::Verdict;
use crate::plan::scenario_file;
use crate::record::results::Summary;
use crate::tools::kernel_cmd::{self, Base};
use crate::tools::kernel_step::{self, NotPassed};
use crate::{exit, infra, LabError};

/// `lab mutate` options.
#[derive(clap::Args, Debug, Clone)]
pub struct MutateArgs {
    /// The kernel source tree (its file is mutated in place, and always
    /// restored).
    #[arg(long)]
    pub tree: PathBuf,
    /// The file to mutate, relative to the tree.
    #[arg(long, default_value = "kernel/bpf/arena.c")]
    pub file: PathBuf,
    /// Only these operators, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub operators: Vec<Operator>,
    /// At most N mutants, dealt round-robin over the operators and spread
    /// over the file.
    #[arg(long, value_name = "N")]
    pub max: Option<usize>,
    /// Only the mutants with these ids (`--list` shows them), comma-separated.
    #[arg(long = "mutant", value_name = "ID", value_delimiter = ',')]
    pub mutants: Vec<String>,
    /// Print the mutants that would run (id, function, change) and exit.
    #[arg(long)]
    pub list: bool,
    /// Scenario files or directories the mutants must get past.
    #[arg(long, num_args = 1.., required_unless_present = "list")]
    pub scenarios: Vec<PathBuf>,
    /// Folder for mutate.json, mutate.md, mutate.html and each mutant's run.
    #[arg(long, default_value = "results/mutate")]
    pub out: PathBuf,
    /// Build directory (`make O=`; default: OUT/build). It holds the last
    /// mutant's kernel afterwards, until the next `lab kernel build`.
    #[arg(long)]
    pub build_dir: Option<PathBuf>,
    /// Starting config when the build directory has none: tiny rebuilds a
    /// mutant in seconds, defconfig in minutes.
    #[arg(long, value_enum, default_value = "tiny")]
    pub base: Base,
    /// Parallel build jobs, and scenarios run at once (default: the number
    /// of CPUs for the build, 1 for the scenarios).
    #[arg(short, long)]
    pub jobs: Option<usize>,
    /// Build with the detection options (KASAN, lockdep, DEBUG_VM,
    /// kmemleak: `lab kernel build --debug`): a lock removed or a page
    /// leaked then splats instead of waiting for a lucky race.
    #[arg(long)]
    pub debug: bool,
    /// Boot every scenario's VM instead of restoring a snapshot.
    #[arg(long)]
    pub cold: bool,
    /// Seconds one mutant's run may take before it counts as a timeout
    /// (default: 3 × the baseline's run + 60 s).
    #[arg(long, value_name = "S")]
    pub mutant_timeout: Option<u64>,
    /// Exit 1 when the mutation score is below this percentage.
    #[arg(long, value_name = "PERCENT")]
    pub fail_under: Option<f64>,
    /// Outcome cache (default: mutate/outcomes in the lab's cache).
    #[arg(long)]
    pub cache: Option<PathBuf>,
}

/// Where journals live, under the lab's cache: always there, whatever
/// `--cache` says, so any later run finds a mutant left behind.
const JOURNALS: &str = "mutate/journals";
/// Outcomes, under the lab's cache.
const OUTCOMES: &str = "mutate/outcomes";
/// The default budget of a mutant's run: this many baseline runs...
const BUDGET_RUNS: f64 = 3.0;
/// ...plus this (s), for a loaded host.
const BUDGET_SLACK_S: f64 = 60.0;
/// Compiler error lines kept for a build failure.
const BUILD_ERROR_LINES: usize = 12;
/// How long a stopped `lab run` gets to kill its VMs and write its results.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// What every step needs.
struct Ctx<'a> {
    args: &'a MutateArgs,
    exe: PathBuf,
    tree: PathBuf,
    build_dir: PathBuf,
    out: PathBuf,
    scenarios: Vec<PathBuf>,
}

/// How a `lab run` child ended.
struct RunEnd {
    code: Option<i32>,
    results: PathBuf,
    run_s: f64,
    budget_hit: bool,
    interrupted: bool,
}

impl RunEnd {
    fn summary(&self) -> PathBuf {
        self.results.join("latest/summary.json")
    }
}

fn journal_err(e: JournalError) -> LabError {
    match e {
        JournalError::Io { .. } => infra(e),
        other => LabError::BadArgs(other.to_string()),
    }
}

/// `lab mutate`.
pub fn mutate(args: &MutateArgs) -> Result<u8, LabError> {
    let t0 = Instant::now();
    let tree = std::fs::canonicalize(&args.tree).map_err(|source| LabError::MissingFile {
        option: "--tree",
        path: args.tree.clone(),
        source,
    })?;
    if args.file.is_absolute() {
        return Err(LabError::BadArgs(format!(
            "--file {}: give it relative to the tree",
            args.file.display()
        )));
    }
    let file = tree.join(&args.file);
    let rel = args.file.to_string_lossy().into_owned();
    std::fs::metadata(&file).map_err(|source| LabError::MissingFile {
        option: "--file",
        path: file.clone(),
        source,
    })?;
    // The journal first: mutants are made from the original, never from a
    // mutant an earlier run left in the file.
    let (mut journal, restored) =
        Journal::open(&arena_images::cache::root().join(JOURNALS), &file).map_err(journal_err)?;
    if let Some(id) = restored {
        eprintln!("lab mutate: {rel} held mutant {id}, left by an earlier run: restored");
    }
    let original = String::from_utf8(journal.original().to_vec())
        .map_err(|_| LabError::BadArgs(format!("{}: not UTF-8 text", file.display())))?;
    let all = operators::generate(&original, &args.operators);
    let mut generated: BTreeMap<Operator, usize> = BTreeMap::new();
    for m in &all {
        *generated.entry(m.operator).or_default() += 1;
    }
    let selected = pick(&all, args)?;
    if args.list {
        journal.close().map_err(journal_err)?;
        for m in &selected {
            println!("{:<24} {:<28} {}", m.id, m.function, m.description);
        }
        eprintln!(
            "lab mutate: {} of {} mutants of {rel}",
            selected.len(),
            all.len()
        );
        return Ok(exit::PASS);
    }
    let files = scenario_file::load_paths(&args.scenarios)?;
    let mut scenario_set = Vec::new();
    for f in &files {
        let bytes = std::fs::read(&f.path).map_err(infra)?;
        scenario_set.push((f.scenario.name.clone(), bytes));
    }
    std::fs::create_dir_all(&args.out).map_err(infra)?;
    let out = std::fs::canonicalize(&args.out).map_err(infra)?;
    // Absolute: `make -C TREE O=DIR` reads a relative DIR from the tree.
    let build_dir = args.build_dir.clone().unwrap_or_else(|| out.join("build"));
    std::fs::create_dir_all(&build_dir).map_err(infra)?;
    let cx = Ctx {
        args,
        exe: std::env::current_exe().map_err(infra)?,
        build_dir: std::fs::canonicalize(&build_dir).map_err(infra)?,
        tree,
        scenarios: args
            .scenarios
            .iter()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
            .collect(),
        out,
    };
    let cache = Cache::new(
        &args
            .cache
            .clone()
            .unwrap_or_else(|| arena_images::cache::root().join(OUTCOMES)),
    );
    signals::install_signal_handlers();
    let mut keys = Vec::new();
    let mut report = Report {
        schema: report::SCHEMA,
        tree: cx.tree.clone(),
        file: rel.clone(),
        base: config_name(args),
        scenario_paths: args.scenarios.clone(),
        scenarios: files.iter().map(|f| f.scenario.name.clone()).collect(),
        operators: args.operators.clone(),
        max: args.max,
        mutant_budget_s: None,
        baseline: None,
        complete: false,
        interrupted: false,
        wall_s: 0.0,
        score: None,
        counts: Default::default(),
        per_operator: BTreeMap::new(),
        mutants: Vec::new(),
    };
    for m in &selected {
        let diff = m.diff(&original, &rel);
        let key = cache::key(&KeyParts {
            file: &rel,
            original: original.as_bytes(),
            diff: &diff,
            scenarios: &scenario_set,
            base: &config_name(args),
        });
        let outcome = cache.get(&key);
        report.mutants.push(MutantRecord {
            id: m.id.clone(),
            operator: m.operator,
            line: m.line,
            function: m.function.clone(),
            description: m.description.clone(),
            diff,
            cached: outcome.is_some(),
            outcome,
            results: None,
        });
        keys.push(key);
    }
    report.recount(&generated);
    let pending = report
        .mutants
        .iter()
        .filter(|m| m.outcome.is_none())
        .count();
    eprintln!(
        "lab mutate: {} of {} mutants of {rel} ({} from the cache), {} scenario(s); report in {}",
        selected.len(),
        all.len(),
        selected.len() - pending,
        files.len(),
        cx.out.display()
    );
    let mut run = Run {
        cx: &cx,
        journal: &mut journal,
        cache: &cache,
        report: &mut report,
        mutants: &selected,
        keys: &keys,
        original: &original,
        generated: &generated,
    };
    let result = if pending > 0 {
        run.all()
    } else {
        Ok(exit::PASS)
    };
    let closed = journal.close().map_err(journal_err);
    report.wall_s = t0.elapsed().as_secs_f64();
    report.interrupted = result.as_ref().is_ok_and(|c| *c == exit::INTERRUPTED);
    report.recount(&generated);
    report::write(&cx.out, &report).map_err(infra)?;
    let code = result?;
    closed?;
    println!("{}", report::score_line(&report));
    eprintln!(
        "lab mutate: {} in {:.0} s; mutate.md, mutate.json and mutate.html in {}",
        if report.complete { "done" } else { "stopped" },
        report.wall_s,
        cx.out.display()
    );
    Ok(final_code(code, &report, args.fail_under))
}

/// The build's config as the report and the cache key name it: the base,
/// `+debug` with the detection options.
fn config_name(args: &MutateArgs) -> String {
    format!(
        "{}{}",
        args.base.name(),
        if args.debug { "+debug" } else { "" }
    )
}

/// The exit code: an interruption or a baseline that failed first, then
/// lab errors (3), then a score under `--fail-under` (1).
fn final_code(code: u8, report: &Report, fail_under: Option<f64>) -> u8 {
    if code != exit::PASS {
        return code;
    }
    if report.counts.error > 0 {
        return exit::INFRA;
    }
    match (fail_under, report.score) {
        (Some(min), Some(s)) if s * 100.0 < min => exit::FAIL,
        _ => exit::PASS,
    }
}

/// The mutants `--mutant` or `--max` choose.
fn pick(all: &[Mutant], args: &MutateArgs) -> Result<Vec<Mutant>, LabError> {
    if args.mutants.is_empty() {
        return Ok(operators::select(all, args.max));
    }
    let unknown: Vec<&String> = args
        .mutants
        .iter()
        .filter(|id| !all.iter().any(|m| &m.id == *id))
        .collect();
    if !unknown.is_empty() {
        return Err(LabError::BadArgs(format!(
            "--mutant: no mutant {} (`lab mutate --list` shows them)",
            unknown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(args
        .mutants
        .iter()
        .filter_map(|id| all.iter().find(|m| &m.id == id).cloned())
        .collect())
}

/// The loop over the pending mutants.
struct Run<'a> {
    cx: &'a Ctx<'a>,
    journal: &'a mut Journal,
    cache: &'a Cache,
    report: &'a mut Report,
    mutants: &'a [Mutant],
    keys: &'a [String],
    original: &'a str,
    generated: &'a BTreeMap<Operator, usize>,
}

impl Run<'_> {
    fn all(&mut self) -> Result<u8, LabError> {
        let cx = self.cx;
        let pending: Vec<usize> = (0..self.mutants.len())
            .filter(|&i| self.report.mutants[i].outcome.is_none())
            .collect();
        let shown = Shown::new(pending.len() as u64 + 1);
        shown.phase("baseline: building");
        let baseline = match baseline(cx, &shown)? {
            Ok(b) => b,
            Err(code) => return Ok(code),
        };
        let budget = cx.args.mutant_timeout.map_or_else(
            || BUDGET_RUNS * baseline.run_s + BUDGET_SLACK_S,
            |s| s as f64,
        );
        shown.line(&format!(
            "baseline: build {:.0} s, run {:.0} s, {} passed; budget per mutant run {budget:.0} s",
            baseline.build_s, baseline.run_s, baseline.passed
        ));
        let skipped_at_baseline: BTreeSet<String> = baseline.skipped.iter().cloned().collect();
        self.report.baseline = Some(baseline);
        self.report.mutant_budget_s = Some(budget);
        self.save()?;
        shown.advance();
        for i in pending {
            if signals::interrupted().is_some() {
                shown.finish();
                return Ok(exit::INTERRUPTED);
            }
            let m = &self.mutants[i];
            let dir = cx.out.join("mutants").join(&m.id);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(infra)?;
            shown.phase(&format!("{}: building", m.id));
            let mutated = m.apply(self.original);
            let applied = self
                .journal
                .apply(&m.id, mutated.as_bytes())
                .map_err(journal_err)?;
            let t = Instant::now();
            let built = build(cx, &shown);
            let build_s = t.elapsed().as_secs_f64();
            applied.restore().map_err(journal_err)?;
            if signals::interrupted().is_some() {
                shown.finish();
                return Ok(exit::INTERRUPTED);
            }
            let outcome = match built {
                Err(BuildError::Failed { errors, .. }) => Outcome {
                    class: Class::BuildFailure,
                    scenario: None,
                    verdict: None,
                    reason: errors
                        .lines()
                        .take(BUILD_ERROR_LINES)
                        .collect::<Vec<_>>()
                        .join("\n"),
                    build_s,
                    run_s: 0.0,
                },
                Err(other) => return Err(infra(other)),
                Ok(()) => {
                    shown.phase(&format!("{}: running", m.id));
                    let end = run_scenarios(cx, &dir, Some(budget))?;
                    if end.interrupted {
                        shown.finish();
                        return Ok(exit::INTERRUPTED);
                    }
                    self.report.mutants[i].results = Some(end.results.clone());
                    let mut o = classify(&end, budget, &skipped_at_baseline);
                    o.build_s = build_s;
                    o
                }
            };
            if let Err(e) = self.cache.put(&self.keys[i], &outcome) {
                shown.line(&format!("lab mutate: caching {}: {e}", m.id));
            }
            shown.line(&format!(
                "{:<13} {} (build {:.0} s, run {:.0} s){}",
                outcome.class.name(),
                m.id,
                outcome.build_s,
                outcome.run_s,
                match (&outcome.scenario, &outcome.verdict) {
                    (Some(s), Some(v)) => format!(": {s} {v}"),
                    _ => String::new(),
                }
            ));
            self.report.mutants[i].outcome = Some(outcome);
            self.save()?;
            shown.advance();
        }
        shown.finish();
        Ok(exit::PASS)
    }

    fn save(&mut self) -> Result<(), LabError> {
        self.report.recount(self.generated);
        report::write(&self.cx.out, self.report).map_err(infra)
    }
}

/// Builds the unmutated kernel and runs it: `Err(code)` when it did not
/// pass (said on stderr) or the run was interrupted.
fn baseline(cx: &Ctx, shown: &Shown) -> Result<Result<Baseline, u8>, LabError> {
    let t = Instant::now();
    match build(cx, shown) {
        Ok(()) => {}
        Err(BuildError::Failed { errors, .. }) => {
            return Err(LabError::BadArgs(format!(
                "the unmutated tree does not build:\n{errors}"
            )))
        }
        Err(other) => return Err(infra(other)),
    }
    let build_s = t.elapsed().as_secs_f64();
    shown.phase("baseline: running");
    let dir = cx.out.join("baseline");
    let _ = std::fs::remove_dir_all(&dir);
    let end = run_scenarios(cx, &dir, None)?;
    if end.interrupted {
        shown.finish();
        return Ok(Err(exit::INTERRUPTED));
    }
    let Some(list) = kernel_step::not_passed(&end.summary()) else {
        return Err(infra(format!(
            "the baseline's `lab run` exited {:?} without a summary (see {})",
            end.code,
            dir.join("run.log").display()
        )));
    };
    let red: Vec<NotPassed> = list
        .iter()
        .filter(|s| s.verdict != Verdict::Skipped)
        .cloned()
        .collect();
    if !red.is_empty() || end.code != Some(0) {
        shown.finish();
        eprintln!(
            "lab mutate: the unmutated kernel does not pass the scenarios, so no mutant can be judged; \
             fix or drop these first (results in {}):\n{}",
            end.results.display(),
            kernel_step::reasons(&red)
        );
        return Ok(Err(exit::FAIL));
    }
    let skipped: Vec<String> = list.into_iter().map(|s| s.name).collect();
    let total = Summary::read(&end.summary()).map_or(0, |s| s.planned);
    Ok(Ok(Baseline {
        build_s,
        run_s: end.run_s,
        passed: total.saturating_sub(skipped.len()),
        skipped,
    }))
}

/// `lab kernel build` of the tree into the build directory, its steps
/// shown as they go.
fn build(cx: &Ctx, shown: &Shown) -> Result<(), BuildError> {
    let args = kernel_step::build_args(
        &cx.tree,
        &cx.build_dir,
        cx.args.base,
        cx.args.jobs,
        cx.args.debug,
    );
    let req = kernel_cmd::request(&args);
    arena_images::kernel::build::build(&req, |line| {
        if let Some(step) = line.strip_prefix("  ") {
            shown.detail(step.trim());
        }
    })
    .map(|_| ())
}

/// `lab run` of the scenarios on the built kernel, in a child process with
/// its output in `DIR/run.log`, its results in `DIR/results` and its
/// snapshots in `DIR/snapshots` (removed after: no other kernel can use
/// them). Stopped (SIGTERM, then SIGKILL) past `budget` seconds or when
/// `lab mutate` itself is asked to stop.
fn run_scenarios(cx: &Ctx, dir: &Path, budget: Option<f64>) -> Result<RunEnd, LabError> {
    std::fs::create_dir_all(dir).map_err(infra)?;
    let results = dir.join("results");
    let snapshots = dir.join("snapshots");
    let log = std::fs::File::create(dir.join("run.log")).map_err(infra)?;
    let mut extra: Vec<OsString> = vec!["--quiet".into()];
    if let Some(j) = cx.args.jobs {
        extra.extend(["-j".into(), j.to_string().into()]);
    }
    if cx.args.cold {
        extra.push("--cold".into());
    }
    let argv = kernel_step::run_argv(&cx.build_dir, &results, &extra, &cx.scenarios);
    let t = Instant::now();
    let mut child = Command::new(&cx.exe)
        .args(&argv[1..])
        .env(crate::execute::snapshot::ROOT_ENV, &snapshots)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(infra)?)
        .stderr(log)
        .spawn()
        .map_err(infra)?;
    let mut budget_hit = false;
    let mut interrupted = false;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(infra)? {
            break st;
        }
        if signals::interrupted().is_some() {
            interrupted = true;
            break stop(&mut child)?;
        }
        if budget.is_some_and(|b| t.elapsed().as_secs_f64() > b) {
            budget_hit = true;
            break stop(&mut child)?;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = std::fs::remove_dir_all(&snapshots);
    Ok(RunEnd {
        code: status.code(),
        results,
        run_s: t.elapsed().as_secs_f64(),
        budget_hit,
        interrupted: interrupted || status.code() == Some(i32::from(exit::INTERRUPTED)),
    })
}

/// SIGTERM to a `lab run` (it kills its VMs and writes its results), and
/// SIGKILL if it is not gone within [`STOP_GRACE`].
fn stop(child: &mut Child) -> Result<std::process::ExitStatus, LabError> {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) of our own child, not yet reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let t = Instant::now();
    while t.elapsed() < STOP_GRACE {
        if let Some(st) = child.try_wait().map_err(infra)? {
            return Ok(st);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    child.wait().map_err(infra)
}

/// Verdicts that kill a mutant whatever the lab's part: the kernel
/// misbehaved.
const KILLING: &[Verdict] = &[Verdict::Fail, Verdict::KnownFail];

/// A mutant's class from its run (see the module's doc for the order).
fn classify(end: &RunEnd, budget: f64, skipped_at_baseline: &BTreeSet<String>) -> Outcome {
    let outcome = |class, s: Option<&NotPassed>, reason: String| Outcome {
        class,
        scenario: s.map(|s| s.name.clone()),
        verdict: s.map(|s| s.verdict.to_string()),
        reason,
        build_s: 0.0,
        run_s: end.run_s,
    };
    let list = kernel_step::not_passed(&end.summary());
    let all = list.as_deref().unwrap_or_default();
    let kills = |s: &&NotPassed| {
        KILLING.contains(&s.verdict)
            || (s.verdict == Verdict::Error && !s.infra)
            || (s.verdict == Verdict::Skipped && !skipped_at_baseline.contains(&s.name))
    };
    if let Some(s) = all.iter().find(kills) {
        return outcome(Class::Killed, Some(s), s.reason.clone());
    }
    if end.budget_hit {
        return outcome(
            Class::Timeout,
            None,
            format!("the run took longer than the mutant budget of {budget:.0} s"),
        );
    }
    if let Some(s) = all.iter().find(|s| s.verdict == Verdict::Timeout) {
        return outcome(Class::Timeout, Some(s), s.reason.clone());
    }
    let Some(list) = list.as_ref() else {
        return outcome(
            Class::Error,
            None,
            format!("`lab run` exited {:?} without a summary", end.code),
        );
    };
    if let Some(s) = list.iter().find(|s| s.verdict != Verdict::Skipped) {
        return outcome(Class::Error, Some(s), s.reason.clone());
    }
    if end.code != Some(0) {
        return outcome(
            Class::Error,
            None,
            format!("`lab run` exited {:?}", end.code),
        );
    }
    outcome(Class::Survived, None, "every scenario passed".to_owned())
}

/// Progress: a bar on a terminal, plain lines otherwise.
struct Shown {
    bar: Option<ProgressBar>,
    phase: std::sync::Mutex<String>,
}

impl Shown {
    fn new(len: u64) -> Shown {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(len);
            b.set_style(
                ProgressStyle::with_template("{bar:20} {pos}/{len} [{elapsed}] {msg}")
                    .expect("valid template"),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Shown {
            bar,
            phase: std::sync::Mutex::new(String::new()),
        }
    }

    /// What is being done now (`flip_cmp-l338c12: building`).
    fn phase(&self, what: &str) {
        *self.phase.lock().expect("lock") = what.to_owned();
        match &self.bar {
            Some(b) => b.set_message(what.to_owned()),
            None => eprintln!("lab mutate: {what}"),
        }
    }

    /// A detail of the phase (a build step), on the bar only.
    fn detail(&self, what: &str) {
        if let Some(b) = &self.bar {
            b.set_message(format!("{} ({what})", self.phase.lock().expect("lock")));
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(b) => b.println(text),
            None => eprintln!("lab mutate: {text}"),
        }
    }

    fn advance(&self) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_with(summary: Option<&str>, code: i32, budget_hit: bool) -> (RunEnd, PathBuf) {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "arena-mutate-classify-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let results = dir.join("results");
        std::fs::create_dir_all(results.join("latest")).unwrap();
        if let Some(s) = summary {
            std::fs::write(results.join("latest/summary.json"), s).unwrap();
        }
        (
            RunEnd {
                code: Some(code),
                results,
                run_s: 5.0,
                budget_hit,
                interrupted: false,
            },
            dir,
        )
    }

    fn class_of(summary: Option<&str>, code: i32, budget_hit: bool) -> Outcome {
        let (end, dir) = end_with(summary, code, budget_hit);
        let skipped: BTreeSet<String> = ["old".to_owned()].into_iter().collect();
        let o = classify(&end, 100.0, &skipped);
        let _ = std::fs::remove_dir_all(dir);
        o
    }

    #[test]
    fn classification_follows_the_documented_order() {
        let pass = r#"{"scenarios":[{"name":"a","verdict":"pass"},{"name":"old","verdict":"skipped","reason":"lacks x"}]}"#;
        assert_eq!(class_of(Some(pass), 0, false).class, Class::Survived);
        let failed = r#"{"scenarios":[{"name":"a","verdict":"timeout","reason":"t"},{"name":"b","verdict":"fail","reason":"step 2: got 0\nmore"}]}"#;
        let o = class_of(Some(failed), 1, false);
        assert_eq!(
            (
                o.class,
                o.scenario.as_deref(),
                o.verdict.as_deref(),
                o.reason.as_str()
            ),
            (Class::Killed, Some("b"), Some("fail"), "step 2: got 0")
        );
        let panicked = r#"{"scenarios":[{"name":"a","verdict":"error","reason":"the VM panicked","infra":false}]}"#;
        assert_eq!(class_of(Some(panicked), 1, false).class, Class::Killed);
        let lost_kfunc = r#"{"scenarios":[{"name":"a","verdict":"skipped","reason":"this kernel lacks kfunc k"}]}"#;
        assert_eq!(class_of(Some(lost_kfunc), 0, false).class, Class::Killed);
        let timed_out =
            r#"{"scenarios":[{"name":"a","verdict":"timeout","reason":"no result within 40 s"}]}"#;
        assert_eq!(class_of(Some(timed_out), 1, false).class, Class::Timeout);
        let o = class_of(Some(pass), 130, true);
        assert_eq!(o.class, Class::Timeout);
        assert!(o.reason.contains("budget of 100 s"), "{}", o.reason);
        let no_hello =
            r#"{"scenarios":[{"name":"a","verdict":"error","reason":"no hello","infra":true}]}"#;
        assert_eq!(class_of(Some(no_hello), 3, false).class, Class::Error);
        assert_eq!(class_of(None, 3, false).class, Class::Error);
    }

    #[test]
    fn exit_codes_put_errors_before_the_score() {
        let mut r = Report {
            schema: report::SCHEMA,
            tree: "/t".into(),
            file: "f.c".into(),
            base: "tiny".into(),
            scenario_paths: vec![],
            scenarios: vec![],
            operators: vec![],
            max: None,
            mutant_budget_s: None,
            baseline: None,
            complete: true,
            interrupted: false,
            wall_s: 0.0,
            score: Some(0.5),
            counts: Default::default(),
            per_operator: BTreeMap::new(),
            mutants: vec![],
        };
        assert_eq!(final_code(exit::PASS, &r, None), exit::PASS);
        assert_eq!(final_code(exit::PASS, &r, Some(60.0)), exit::FAIL);
        assert_eq!(final_code(exit::PASS, &r, Some(50.0)), exit::PASS);
        r.counts.error = 1;
        assert_eq!(final_code(exit::PASS, &r, Some(60.0)), exit::INFRA);
        assert_eq!(final_code(exit::INTERRUPTED, &r, None), exit::INTERRUPTED);
    }
}
