//! `lab compare BASE NEW`: what changed between two runs, for the nightly
//! job to gate on regressions only (a scenario that was already failing
//! yesterday is not news) and for people to read (`compare.md`).
//!
//! Summaries are read as plain JSON rather than into the writer's types so
//! that runs written by older or newer `lab`s (e.g. with `attempts` from
//! `--repeat`) still compare; only `name`, `verdict` and `duration_s` are
//! required of a scenario.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::judge::verdict::Verdict;
use crate::record::results::{ReadError, Summary};

/// Why two runs cannot be compared: bad input (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// A run folder without a readable summary.
    /// A run's summary.json cannot be read.
    #[error(transparent)]
    Summary(#[from] ReadError),
    /// `--history` has fewer than two runs.
    #[error("{}: needs at least two runs with a summary.json, found {found} (looked in {looked})", dir.display())]
    History {
        /// The results root.
        dir: PathBuf,
        /// Runs found.
        found: usize,
        /// The folders looked in (the root and its per-kernel children).
        looked: String,
    },
    /// A `--duration-threshold` that is not a percentage.
    #[error("--duration-threshold {0:?}: expected a percentage such as 50%")]
    Threshold(String),
    /// `--nights` below two.
    #[error("--nights {0}: needs at least 2 (the newest run and one before it)")]
    Nights(usize),
    /// Neither two runs nor `--history` given.
    #[error("give two run folders (BASE NEW) or --history DIR")]
    Usage,
    /// The report could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: arena_images::ImageError,
    },
}

/// `--duration-threshold 50%` as a fraction (0.5); a bare number is a
/// percentage too.
pub fn parse_threshold(s: &str) -> Result<f64, CompareError> {
    let n = s.trim().trim_end_matches('%').trim();
    n.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| v / 100.0)
        .ok_or_else(|| CompareError::Threshold(s.to_owned()))
}

/// One scenario of one run, as far as comparing goes.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    verdict: Verdict,
    duration_s: f64,
    /// Verdicts of its attempts (`--repeat`), when it had more than one.
    attempts: Vec<Verdict>,
    /// Host load while it ran (`host_load`, see [`load_of`]), the highest
    /// of its attempts; `None` when not recorded.
    load: Option<f64>,
    /// How oversubscribed the host was (see [`busy_of`]), the highest of its
    /// attempts; `None` when the host's CPU count was not recorded.
    busy: Option<f64>,
}

/// Below this change of wall time (seconds) a duration change is never
/// news: a sub-second scenario triples on a busy host.
pub const DURATION_FLOOR_S: f64 = 1.0;

/// A scenario's host load: the mean of the 1-minute loadavg at its start
/// and end, divided by the share of CPU time not stolen (steal capped at
/// 90%), and at least 1 (below one runnable task nothing waits).
pub fn load_of(l: &crate::judge::outcome::HostLoad) -> f64 {
    let avg = (l.loadavg_start[0] + l.loadavg_end[0]) / 2.0;
    let steal = l.steal_pct.unwrap_or(0.0).clamp(0.0, 90.0);
    (avg / (1.0 - steal / 100.0)).max(1.0)
}

/// How oversubscribed the host was around a scenario: its [`load_of`]
/// per CPU, at least 1. A sub-second scenario on a host with 3.5 runnable
/// tasks per CPU can take 3.5 times as long though both runs had the same
/// load, so the absolute floor grows with it. `None` when the CPU count
/// was not recorded (summaries before it was).
pub fn busy_of(l: &crate::judge::outcome::HostLoad) -> Option<f64> {
    let cpus = f64::from(l.cpus.filter(|c| *c > 0)?);
    Some((load_of(l) / cpus).max(1.0))
}

/// How much the relative threshold is widened for a pair of runs: the
/// ratio of the busier run's load to the calmer one's (≥ 1), 1 when either
/// load is unknown.
pub fn load_factor(base: Option<f64>, new: Option<f64>) -> f64 {
    match (base, new) {
        (Some(b), Some(n)) if b > 0.0 && n > 0.0 => b.max(n) / b.min(n),
        _ => 1.0,
    }
}

/// The absolute floor for a pair of runs: [`DURATION_FLOOR_S`] times the
/// busier run's [`busy_of`] (1 when unknown).
pub fn duration_floor(busy: [Option<f64>; 2]) -> f64 {
    DURATION_FLOOR_S * busy.iter().flatten().fold(1.0_f64, |a, b| a.max(*b))
}

/// The noise rule: a duration change is news only when it is at least
/// [`duration_floor`] and its relative size exceeds `threshold` times
/// the [`load_factor`] of the two runs. The change as a fraction, if news.
pub fn duration_news(
    base_s: f64,
    new_s: f64,
    loads: [Option<f64>; 2],
    busy: [Option<f64>; 2],
    threshold: f64,
) -> Option<f64> {
    if base_s <= 0.0 || (new_s - base_s).abs() < duration_floor(busy) {
        return None;
    }
    let pct = (new_s - base_s) / base_s;
    (pct.abs() > threshold * load_factor(loads[0], loads[1])).then_some(pct)
}

impl Entry {
    fn failed(&self) -> bool {
        self.verdict.is_failure()
    }

    /// Mixed verdicts across repeated attempts.
    fn flaky(&self) -> bool {
        let runs: Vec<Verdict> = self.attempts.iter().copied().filter(|v| v.ran()).collect();
        runs.contains(&Verdict::Pass) && runs.iter().any(|v| *v != Verdict::Pass)
    }
}

/// A run read back.
struct Run {
    dir: PathBuf,
    id: String,
    /// Its kernel's release (`kernel.release`), when the summary has one.
    kernel: Option<String>,
    complete: bool,
    scenarios: BTreeMap<String, Entry>,
}

/// The larger of two optional readings, or whichever is known.
fn max_known(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn read_run(dir: &Path) -> Result<Run, CompareError> {
    let summary = Summary::read_run(dir)?;
    let mut scenarios: BTreeMap<String, Entry> = BTreeMap::new();
    for s in &summary.scenarios {
        let verdict = s.judgement.verdict;
        let load = s.host_load.as_ref().map(load_of);
        let busy = s.host_load.as_ref().and_then(busy_of);
        match scenarios.get_mut(&s.name) {
            // `--repeat`: one entry per attempt. The scenario's verdict is
            // its worst attempt's (a failure anywhere is news), its time the
            // mean of the attempts that ran.
            Some(e) => {
                if e.attempts.is_empty() {
                    e.attempts.push(e.verdict);
                }
                e.attempts.push(verdict);
                e.load = max_known(e.load, load);
                e.busy = max_known(e.busy, busy);
                let ran = e.attempts.iter().filter(|v| **v != Verdict::NotRun).count() as f64;
                if verdict != Verdict::NotRun && ran > 0.0 {
                    e.duration_s += (s.duration_s - e.duration_s) / ran;
                }
                e.verdict = e
                    .attempts
                    .iter()
                    .copied()
                    .max_by_key(|v| v.severity())
                    .unwrap_or(Verdict::NotRun);
            }
            None => {
                scenarios.insert(
                    s.name.clone(),
                    Entry {
                        verdict,
                        duration_s: s.duration_s,
                        attempts: Vec::new(),
                        load,
                        busy,
                    },
                );
            }
        }
    }
    Ok(Run {
        dir: dir.to_owned(),
        id: if summary.run_id.is_empty() {
            dir.display().to_string()
        } else {
            summary.run_id.clone()
        },
        kernel: summary.kernel.as_ref().map(|k| k.release.clone()),
        complete: summary.complete,
        scenarios,
    })
}

/// A scenario whose verdict is listed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Change {
    /// Scenario name.
    pub name: String,
    /// Verdict in BASE (`None` for a new scenario).
    pub base: Option<Verdict>,
    /// Verdict in NEW (`None` for a removed one).
    pub new: Option<Verdict>,
}

/// A scenario whose wall time moved beyond the threshold.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DurationChange {
    /// Scenario name.
    pub name: String,
    /// BASE wall time (s).
    pub base_s: f64,
    /// NEW wall time (s).
    pub new_s: f64,
    /// (new − base) / base, in percent.
    pub change_pct: f64,
    /// The relative threshold was multiplied by this (host load ratio).
    pub load_factor: f64,
}

/// The comparison, as written to `compare.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// BASE run id and folder.
    pub base: String,
    /// BASE folder.
    pub base_dir: PathBuf,
    /// NEW run id.
    pub new: String,
    /// NEW folder.
    pub new_dir: PathBuf,
    /// Kernel releases of BASE and NEW: a comparison across kernels (6.12
    /// against 7.2 in one night) shows behaviour differences, not time.
    pub kernels: [Option<String>; 2],
    /// Whether each run finished normally (`complete` in its summary).
    pub base_complete: bool,
    /// See `base_complete`.
    pub new_complete: bool,
    /// pass → fail, error or timeout: the only thing that makes the exit 1.
    pub regressions: Vec<Change>,
    /// fail, error or timeout → pass.
    pub fixed: Vec<Change>,
    /// fail, error or timeout in both.
    pub still_failing: Vec<Change>,
    /// Planned in NEW but not run there (aborted, interrupted, fail-fast).
    pub not_run: Vec<Change>,
    /// Any other change of verdict: `skipped` (a capability one kernel
    /// lacks) or `known_fail` (a documented kernel bug) on one side. Not a
    /// regression; across kernels, these are the behaviour differences.
    #[serde(default)]
    pub other_changes: Vec<Change>,
    /// Only in NEW.
    pub added: Vec<Change>,
    /// Only in BASE.
    pub removed: Vec<Change>,
    /// Mixed verdicts across repeated attempts, in either run.
    pub flaky: Vec<String>,
    /// Threshold used for `durations`, in percent, before the load factor.
    pub duration_threshold_pct: f64,
    /// Changes smaller than this (s) are never listed in `durations`.
    pub duration_floor_s: f64,
    /// Scenarios that ran in both and whose wall time changed more than the threshold.
    pub durations: Vec<DurationChange>,
    /// With `--nights N`: each scenario's record over the last N runs of
    /// NEW's kernel; then only a new failure makes the exit 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<History>,
}

/// What a scenario did over the last nights of one kernel.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    /// Fails now, passed every earlier night it ran: news.
    NewFailure,
    /// Failed some nights and passed others: known to flake.
    Flaky,
    /// Failed every night it ran.
    AlwaysFailing,
    /// Passed every night it ran.
    Passing,
    /// Never ran (skipped or not run every night).
    NeverRan,
}

/// One scenario's pass rate over the nights.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Nightly {
    /// Scenario name.
    pub name: String,
    /// Nights it ran (a verdict other than skipped or not_run).
    pub ran: usize,
    /// Nights it failed (fail, error or timeout; a documented kernel bug
    /// is not a failure).
    pub failed: usize,
    /// `(ran - failed) / ran`, 1 when it never ran.
    pub pass_rate: f64,
    /// The verdict of that record.
    pub record: Record,
}

/// `--nights N`: the last N runs of NEW's kernel, oldest first.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct History {
    /// Nights asked for.
    pub nights: usize,
    /// The kernel release the nights share (NEW's).
    pub kernel: Option<String>,
    /// The runs counted, oldest first.
    pub runs: Vec<String>,
    /// Every scenario of NEW, by name.
    pub scenarios: Vec<Nightly>,
}

impl History {
    /// Scenarios that fail now and passed before.
    pub fn new_failures(&self) -> Vec<&str> {
        self.named(Record::NewFailure)
    }

    fn named(&self, r: Record) -> Vec<&str> {
        self.scenarios
            .iter()
            .filter(|s| s.record == r)
            .map(|s| s.name.as_str())
            .collect()
    }
}

/// The record of each of `latest`'s scenarios over `runs` (oldest first,
/// `latest` last).
fn history(nights: usize, runs: &[Run]) -> History {
    let latest = runs.last().expect("at least one run");
    let scenarios = latest
        .scenarios
        .iter()
        .map(|(name, now)| {
            let verdicts: Vec<Verdict> = runs
                .iter()
                .filter_map(|r| r.scenarios.get(name))
                .map(|e| e.verdict)
                .filter(|v| v.ran())
                .collect();
            let failed = verdicts.iter().filter(|v| v.is_failure()).count();
            let ran = verdicts.len();
            let earlier_failed = failed - usize::from(now.verdict.is_failure());
            let record = match (ran, failed) {
                (0, _) => Record::NeverRan,
                (_, 0) => Record::Passing,
                (r, f) if f == r => {
                    if r == 1 {
                        Record::NewFailure
                    } else {
                        Record::AlwaysFailing
                    }
                }
                _ if now.verdict.is_failure() && earlier_failed == 0 => Record::NewFailure,
                _ => Record::Flaky,
            };
            Nightly {
                name: name.clone(),
                ran,
                failed,
                pass_rate: if ran == 0 {
                    1.0
                } else {
                    (ran - failed) as f64 / ran as f64
                },
                record,
            }
        })
        .collect();
    History {
        nights,
        kernel: latest.kernel.clone(),
        runs: runs.iter().map(|r| r.id.clone()).collect(),
        scenarios,
    }
}

impl Comparison {
    /// Exit code: 1 on regressions, else 0; with `--nights`, 1 only on a
    /// new failure (a flaky scenario failing again is no news).
    pub fn exit_code(&self) -> u8 {
        match &self.history {
            Some(h) => u8::from(!h.new_failures().is_empty()),
            None => u8::from(!self.regressions.is_empty()),
        }
    }
}

fn compare_runs(base: &Run, new: &Run, threshold: f64) -> Comparison {
    let mut c = Comparison {
        base: base.id.clone(),
        base_dir: base.dir.clone(),
        new: new.id.clone(),
        new_dir: new.dir.clone(),
        kernels: [base.kernel.clone(), new.kernel.clone()],
        base_complete: base.complete,
        new_complete: new.complete,
        regressions: vec![],
        other_changes: vec![],
        fixed: vec![],
        still_failing: vec![],
        not_run: vec![],
        added: vec![],
        removed: vec![],
        flaky: vec![],
        duration_threshold_pct: threshold * 100.0,
        duration_floor_s: DURATION_FLOOR_S,
        durations: vec![],
        history: None,
    };
    let change = |name: &str, b: Option<&Entry>, n: Option<&Entry>| Change {
        name: name.to_owned(),
        base: b.map(|e| e.verdict),
        new: n.map(|e| e.verdict),
    };
    for (name, n) in &new.scenarios {
        let b = base.scenarios.get(name);
        if n.flaky() || b.is_some_and(Entry::flaky) {
            c.flaky.push(name.clone());
        }
        let Some(b) = b else {
            c.added.push(change(name, None, Some(n)));
            continue;
        };
        let ch = change(name, Some(b), Some(n));
        if n.verdict == Verdict::NotRun {
            c.not_run.push(ch);
        } else if n.verdict.is_regression_from(b.verdict) {
            c.regressions.push(ch);
        } else if n.verdict.is_fix_from(b.verdict) {
            c.fixed.push(ch);
        } else if b.failed() && n.failed() {
            c.still_failing.push(ch);
        } else if b.verdict != n.verdict && b.verdict != Verdict::NotRun {
            c.other_changes.push(ch);
        }
        if b.verdict != Verdict::NotRun && n.verdict != Verdict::NotRun {
            let loads = [b.load, n.load];
            let busy = [b.busy, n.busy];
            if let Some(pct) = duration_news(b.duration_s, n.duration_s, loads, busy, threshold) {
                c.durations.push(DurationChange {
                    name: name.clone(),
                    base_s: b.duration_s,
                    new_s: n.duration_s,
                    change_pct: (pct * 1000.0).round() / 10.0,
                    load_factor: (load_factor(b.load, n.load) * 100.0).round() / 100.0,
                });
            }
        }
    }
    for (name, b) in &base.scenarios {
        if !new.scenarios.contains_key(name) {
            c.removed.push(change(name, Some(b), None));
        }
    }
    c
}

/// Markdown for people (also printed).
pub fn markdown(c: &Comparison) -> String {
    let mut out = format!("# lab compare: {} → {}\n\n", c.base, c.new);
    if let [Some(b), Some(n)] = &c.kernels {
        if b != n {
            out.push_str(&format!("Kernels differ: {b} → {n}.\n\n"));
        }
    }
    out.push_str(&format!(
        "{} regression(s), {} fixed, {} still failing, {} not run, {} new, {} removed, {} flaky, {} duration change(s) beyond {}% (× host load ratio) and {} s\n",
        c.regressions.len(),
        c.fixed.len(),
        c.still_failing.len(),
        c.not_run.len(),
        c.added.len(),
        c.removed.len(),
        c.flaky.len(),
        c.durations.len(),
        c.duration_threshold_pct,
        c.duration_floor_s
    ));
    for (run, complete) in [(&c.base, c.base_complete), (&c.new, c.new_complete)] {
        if !complete {
            out.push_str(&format!(
                "\n**Run {run} is not complete** (aborted, interrupted, fail-fast, or still running).\n"
            ));
        }
    }
    let verdict = |v: &Option<Verdict>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let section = |out: &mut String, title: &str, list: &[Change]| {
        if list.is_empty() {
            return;
        }
        out.push_str(&format!(
            "\n## {title}\n\n| scenario | base | new |\n|---|---|---|\n"
        ));
        for ch in list {
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                ch.name,
                verdict(&ch.base),
                verdict(&ch.new)
            ));
        }
    };
    if let Some(h) = &c.history {
        let news = h.new_failures();
        out.push_str(&format!(
            "\n## Over the last {} night(s) of {} ({} found)\n\n{} new failure(s){}; flaky: {}\n",
            h.nights,
            h.kernel.as_deref().unwrap_or("the same kernel"),
            h.runs.len(),
            news.len(),
            if news.is_empty() {
                String::new()
            } else {
                format!(": {}", news.join(", "))
            },
            {
                let f = h.named(Record::Flaky);
                if f.is_empty() {
                    "none".to_owned()
                } else {
                    f.join(", ")
                }
            }
        ));
        let shown: Vec<&Nightly> = h.scenarios.iter().filter(|s| s.failed > 0).collect();
        if !shown.is_empty() {
            out.push_str(
                "\n| scenario | failed | ran | pass rate | record |\n|---|---|---|---|---|\n",
            );
            for s in shown {
                out.push_str(&format!(
                    "| {} | {} | {} | {:.0}% | {} |\n",
                    s.name,
                    s.failed,
                    s.ran,
                    s.pass_rate * 100.0,
                    serde_json::to_value(s.record)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                ));
            }
        }
    }
    section(&mut out, "Regressions", &c.regressions);
    section(&mut out, "Fixed", &c.fixed);
    section(&mut out, "Still failing", &c.still_failing);
    section(&mut out, "Not run in NEW", &c.not_run);
    section(
        &mut out,
        "Other verdict changes (skipped, known kernel bugs)",
        &c.other_changes,
    );
    section(&mut out, "New scenarios", &c.added);
    section(&mut out, "Removed scenarios", &c.removed);
    if !c.flaky.is_empty() {
        out.push_str("\n## Flaky (mixed verdicts across attempts)\n\n");
        for f in &c.flaky {
            out.push_str(&format!("- {f}\n"));
        }
    }
    if !c.durations.is_empty() {
        out.push_str(&format!(
            "\n## Duration changes beyond {}% and {} s\n\nNoise rule: a change under {} s (times the host's runnable tasks per CPU \
             when above 1) is never listed; the {}% threshold is multiplied by the ratio of the two runs' host load \
             (1-minute loadavg around the scenario, corrected for steal, at least 1).\n\n\
             | scenario | base (s) | new (s) | change | load ratio |\n|---|---|---|---|---|\n",
            c.duration_threshold_pct,
            c.duration_floor_s,
            c.duration_floor_s,
            c.duration_threshold_pct
        ));
        for d in &c.durations {
            out.push_str(&format!(
                "| {} | {:.2} | {:.2} | {:+.1}% | {:.2} |\n",
                d.name, d.base_s, d.new_s, d.change_pct, d.load_factor
            ));
        }
    }
    out
}

/// What `lab compare` was asked.
pub struct Request<'a> {
    /// BASE and NEW run folders, or none with `history`.
    pub runs: &'a [PathBuf],
    /// A results root: compare its last two runs.
    pub history: Option<&'a Path>,
    /// Where compare.json and compare.md go (default: NEW's folder).
    pub out: Option<&'a Path>,
    /// `--duration-threshold`, as given.
    pub threshold: &'a str,
    /// `--nights N` (with `history`): pass rates over the last N runs of
    /// the newest run's kernel.
    pub nights: Option<usize>,
}

/// Compare, write `compare.json` and `compare.md`, and return the result
/// and the folder written to.
pub fn compare(req: &Request) -> Result<(Comparison, PathBuf), CompareError> {
    let threshold = parse_threshold(req.threshold)?;
    let (base, new) = match (req.runs, req.history) {
        ([base, new], None) => (base.clone(), new.clone()),
        ([], Some(dir)) => {
            let runs = crate::record::history::run_folders(dir).map_err(|source| {
                CompareError::Summary(ReadError::Io {
                    path: dir.to_owned(),
                    source,
                })
            })?;
            match runs.as_slice() {
                [.., base, new] => (base.clone(), new.clone()),
                _ => {
                    let looked = crate::record::history::kernel_roots(dir)
                        .map(|(_, l)| l)
                        .unwrap_or_else(|_| vec![dir.to_owned()]);
                    let looked: Vec<String> =
                        looked.iter().map(|p| p.display().to_string()).collect();
                    return Err(CompareError::History {
                        dir: dir.to_owned(),
                        found: runs.len(),
                        looked: looked.join(", "),
                    });
                }
            }
        }
        _ => return Err(CompareError::Usage),
    };
    let mut c = compare_runs(&read_run(&base)?, &read_run(&new)?, threshold);
    if let (Some(n), Some(dir)) = (req.nights, req.history) {
        if n < 2 {
            return Err(CompareError::Nights(n));
        }
        // The same kernel only: a root may hold several kernels' nights.
        let latest = read_run(&new)?;
        let mut same: Vec<Run> = Vec::new();
        for folder in crate::record::history::run_folders(dir)
            .unwrap_or_default()
            .iter()
            .rev()
        {
            if same.len() == n {
                break;
            }
            if let Ok(r) = read_run(folder) {
                if r.kernel == latest.kernel {
                    same.push(r);
                }
            }
        }
        same.reverse();
        c.history = Some(history(n, &same));
    }
    let out = req.out.map(Path::to_owned).unwrap_or(new);
    let write = |name: &str, bytes: &[u8]| {
        let path = out.join(name);
        arena_images::write_atomic(&path, bytes)
            .map_err(|source| CompareError::Write { path, source })
    };
    write(
        "compare.json",
        &serde_json::to_vec_pretty(&c).expect("serialisable"),
    )?;
    write("compare.md", markdown(&c).as_bytes())?;
    Ok((c, out))
}

/// One kernel root's comparison (or why there is none).
pub type KernelComparison = (PathBuf, Result<(Comparison, PathBuf), CompareError>);

/// `compare` for each kernel of a `--history` root: a root whose children
/// are per-kernel roots (`lab run --kernel A --kernel B`) compares each
/// kernel's last two runs; any other request is `compare` itself. Each
/// result comes with the kernel root it is about.
pub fn compare_each(req: &Request) -> Result<Vec<KernelComparison>, CompareError> {
    let dir = match (req.runs, req.history) {
        ([], Some(dir)) => dir,
        _ => return Ok(vec![(PathBuf::new(), compare(req))]),
    };
    let roots = crate::record::history::kernel_roots(dir)
        .map(|(roots, _)| roots)
        .unwrap_or_default();
    if roots.len() < 2 && roots.iter().all(|r| r == dir) {
        return Ok(vec![(dir.to_owned(), compare(req))]);
    }
    Ok(roots
        .into_iter()
        .map(|root| {
            let one = Request {
                history: Some(&root),
                ..*req
            };
            let c = compare(&one);
            (root, c)
        })
        .collect())
}

/// The verdict over a list of run folders of one kernel, oldest first, for
/// `lab report`: the last two compared, and with three or more, the
/// `--nights` record over all of them.
pub fn verdict_of(dirs: &[PathBuf], threshold: f64) -> Result<Comparison, CompareError> {
    let [.., base, new] = dirs else {
        return Err(CompareError::History {
            dir: dirs.first().cloned().unwrap_or_default(),
            found: dirs.len(),
            looked: String::new(),
        });
    };
    let mut c = compare_runs(&read_run(base)?, &read_run(new)?, threshold);
    if dirs.len() >= 3 {
        let runs: Vec<Run> = dirs.iter().filter_map(|d| read_run(d).ok()).collect();
        c.history = Some(history(runs.len(), &runs));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(verdict: &str, d: f64) -> Entry {
        Entry {
            verdict: serde_json::from_value(serde_json::json!(verdict)).unwrap(),
            duration_s: d,
            attempts: vec![],
            load: None,
            busy: None,
        }
    }

    fn run(id: &str, list: &[(&str, Entry)]) -> Run {
        Run {
            dir: PathBuf::from(id),
            id: id.into(),
            kernel: None,
            complete: true,
            scenarios: list
                .iter()
                .map(|(n, e)| (n.to_string(), e.clone()))
                .collect(),
        }
    }

    #[test]
    fn classifies_every_kind_of_change() {
        let mut flaky = entry("fail", 5.0);
        flaky.attempts = vec![Verdict::Pass, Verdict::Fail];
        let base = run(
            "b",
            &[
                ("regress", entry("pass", 10.0)),
                ("fix", entry("fail", 10.0)),
                ("still", entry("timeout", 10.0)),
                ("slower", entry("pass", 10.0)),
                ("gone", entry("pass", 1.0)),
                ("skipped", entry("pass", 1.0)),
                ("flaky", entry("fail", 5.0)),
            ],
        );
        let new = run(
            "n",
            &[
                ("regress", entry("error", 10.0)),
                ("fix", entry("pass", 10.0)),
                ("still", entry("fail", 10.0)),
                ("slower", entry("pass", 16.0)),
                ("added", entry("fail", 1.0)),
                ("skipped", entry("not_run", 0.0)),
                ("flaky", flaky),
            ],
        );
        let c = compare_runs(&base, &new, 0.5);
        let names = |l: &[Change]| l.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&c.regressions), ["regress"]);
        assert_eq!(names(&c.fixed), ["fix"]);
        assert_eq!(names(&c.still_failing), ["flaky", "still"]);
        assert_eq!(names(&c.added), ["added"]);
        assert_eq!(names(&c.removed), ["gone"]);
        assert_eq!(names(&c.not_run), ["skipped"]);
        assert_eq!(c.flaky, ["flaky"]);
        assert_eq!(c.durations.len(), 1);
        assert_eq!(c.durations[0].change_pct, 60.0);
        assert_eq!(c.exit_code(), 1);
        let md = markdown(&c);
        assert!(md.contains("## Regressions\n\n| scenario | base | new |\n|---|---|---|\n| regress | pass | error |"), "{md}");
    }

    /// Across kernels: a capability only one has, a kernel bug only one
    /// shows. Listed, never regressions.
    #[test]
    fn skips_and_known_bugs_are_other_changes_with_both_kernels_named() {
        let mut base = run(
            "b",
            &[
                ("reserve", entry("skipped", 0.3)),
                ("race", entry("pass", 2.0)),
                ("same", entry("pass", 1.0)),
            ],
        );
        base.kernel = Some("6.12.117+deb12-amd64".into());
        let mut new = run(
            "n",
            &[
                ("reserve", entry("pass", 0.3)),
                ("race", entry("known_fail", 2.0)),
                ("same", entry("pass", 1.0)),
            ],
        );
        new.kernel = Some("7.2.13+deb14-amd64".into());
        let c = compare_runs(&base, &new, 0.5);
        let names: Vec<&str> = c.other_changes.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["race", "reserve"]);
        assert!(c.regressions.is_empty() && c.fixed.is_empty());
        assert_eq!(c.exit_code(), 0);
        let md = markdown(&c);
        assert!(md.contains("Kernels differ: 6.12.117+deb12-amd64 → 7.2.13+deb14-amd64."));
        assert!(md.contains("| reserve | skipped | pass |"), "{md}");
    }

    #[test]
    fn repeated_entries_are_one_flaky_scenario() {
        let dir = std::env::temp_dir().join(format!("arena-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Written by an early schema-1 lab: no `schema`, most fields absent.
        let v = serde_json::json!({"run_id": "r", "complete": true, "scenarios": [
            {"name": "x", "verdict": "pass", "duration_s": 2.0, "attempt": 1},
            {"name": "x", "verdict": "fail", "duration_s": 4.0, "attempt": 2},
            {"name": "y", "verdict": "pass", "duration_s": 1.0},
        ]});
        std::fs::write(dir.join("summary.json"), v.to_string()).unwrap();
        let r = read_run(&dir).unwrap();
        let x = &r.scenarios["x"];
        assert_eq!(x.verdict, Verdict::Fail);
        assert_eq!(x.duration_s, 3.0);
        assert!(x.flaky());
        assert!(!r.scenarios["y"].flaky());
        // Another layout is refused, naming the file and both schemas.
        std::fs::write(
            dir.join("summary.json"),
            r#"{"schema": 2, "scenarios": []}"#,
        )
        .unwrap();
        let e = read_run(&dir).err().expect("schema 2 refused").to_string();
        assert!(
            e.contains("summary schema 2, this lab reads schema 1"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn nights_tell_a_new_failure_from_a_flaky_one() {
        let night = |id: &str, list: &[(&str, &str)]| {
            let entries: Vec<(&str, Entry)> =
                list.iter().map(|(n, v)| (*n, entry(v, 1.0))).collect();
            run(id, &entries)
        };
        let runs = [
            night(
                "1",
                &[
                    ("new", "pass"),
                    ("flaky", "fail"),
                    ("red", "fail"),
                    ("skip", "skipped"),
                ],
            ),
            night(
                "2",
                &[
                    ("new", "pass"),
                    ("flaky", "pass"),
                    ("red", "error"),
                    ("skip", "skipped"),
                ],
            ),
            night(
                "3",
                &[
                    ("new", "timeout"),
                    ("flaky", "fail"),
                    ("red", "fail"),
                    ("skip", "skipped"),
                ],
            ),
        ];
        let h = history(3, &runs);
        let rec = |n: &str| h.scenarios.iter().find(|s| s.name == n).unwrap().clone();
        assert_eq!(rec("new").record, Record::NewFailure);
        assert_eq!(
            (rec("flaky").record, rec("flaky").failed, rec("flaky").ran),
            (Record::Flaky, 2, 3)
        );
        assert!((rec("flaky").pass_rate - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(rec("red").record, Record::AlwaysFailing);
        assert_eq!(rec("skip").record, Record::NeverRan);
        assert_eq!(h.new_failures(), ["new"]);
        // Only a new failure is news: without it, exit 0 even with
        // regressions against the night before.
        let mut c = compare_runs(&runs[1], &runs[2], 0.5);
        assert_eq!(c.exit_code(), 1);
        c.history = Some(h.clone());
        assert_eq!(c.exit_code(), 1);
        let mut quiet = h;
        quiet.scenarios.retain(|s| s.name != "new");
        c.history = Some(quiet);
        assert_eq!(c.exit_code(), 0, "flaky failing again is no news");
        let md = markdown(&c);
        assert!(md.contains("| flaky | 2 | 3 | 33% | flaky |"), "{md}");
    }

    /// Host load widens the relative threshold; under the floor nothing is
    /// news.
    #[test]
    fn duration_noise_floor_follows_host_load() {
        let loaded = |l: f64| {
            load_of(&crate::judge::outcome::HostLoad {
                loadavg_start: [l, l, l],
                loadavg_end: [l, l, l],
                steal_pct: Some(0.0),
                cpus: None,
            })
        };
        // Seen by a user: 0.60 → 2.07 s (+245%) while the host ran a
        // full test suite (load 1 → 5): no longer news.
        let mut base = entry("pass", 0.60);
        base.load = Some(loaded(1.0));
        let mut new = entry("pass", 2.07);
        new.load = Some(loaded(5.0));
        let c = compare_runs(
            &run("b", &[("segv-on-fault-unallocated", base)]),
            &run("n", &[("segv-on-fault-unallocated", new)]),
            0.5,
        );
        assert!(c.durations.is_empty(), "{:?}", c.durations);
        // A sub-second change is never news, whatever its ratio.
        assert_eq!(
            duration_news(0.2, 0.9, [None, None], [None, None], 0.5),
            None
        );
        // A real slowdown at the same load still is: 10 → 30 s.
        let mut base = entry("pass", 10.0);
        base.load = Some(loaded(2.0));
        let mut new = entry("pass", 30.0);
        new.load = Some(loaded(2.2));
        let c = compare_runs(
            &run("b", &[("slow", base)]),
            &run("n", &[("slow", new)]),
            0.5,
        );
        assert_eq!(c.durations.len(), 1);
        assert_eq!(c.durations[0].change_pct, 200.0);
        assert!(markdown(&c).contains("| slow | 10.00 | 30.00 | +200.0% | 1.10 |"));
        // And so is a slowdown bigger than the load explains: 5× load, 10×
        // time.
        assert!(duration_news(3.0, 30.0, [Some(1.0), Some(5.0)], [None, None], 0.5).is_some());
        // Steal counts as load: 50% stolen doubles it.
        let stolen = crate::judge::outcome::HostLoad {
            loadavg_start: [2.0; 3],
            loadavg_end: [2.0; 3],
            steal_pct: Some(50.0),
            cpus: None,
        };
        assert_eq!(load_of(&stolen), 4.0);
        assert_eq!(busy_of(&stolen), None, "CPU count not recorded");
    }

    /// Seen in a two-night run beside two other jobs (load 7 on 2 CPUs in
    /// both nights, load ratio 1.01): 0.90 → 2.35 s. An oversubscribed host
    /// raises the absolute floor; the same change on an idle host is news.
    #[test]
    fn an_oversubscribed_host_raises_the_floor() {
        let host = |l: f64, cpus| crate::judge::outcome::HostLoad {
            loadavg_start: [l; 3],
            loadavg_end: [l; 3],
            steal_pct: Some(0.0),
            cpus,
        };
        let with = |load: &crate::judge::outcome::HostLoad, d: f64| {
            let mut e = entry("pass", d);
            e.load = Some(load_of(load));
            e.busy = busy_of(load);
            e
        };
        let busy = host(7.0, Some(2));
        assert_eq!(busy_of(&busy), Some(3.5));
        assert_eq!(busy_of(&host(7.0, Some(64))), Some(1.0));
        let c = compare_runs(
            &run("b", &[("sof", with(&busy, 0.90))]),
            &run("n", &[("sof", with(&host(7.1, Some(2)), 2.35))]),
            0.5,
        );
        assert!(c.durations.is_empty(), "{:?}", c.durations);
        let idle = host(0.5, Some(2));
        let c = compare_runs(
            &run("b", &[("sof", with(&idle, 0.90))]),
            &run("n", &[("sof", with(&idle, 2.35))]),
            0.5,
        );
        assert_eq!(c.durations.len(), 1, "an idle host: news");
        // Old summaries (no CPU count) keep the 1 s floor.
        assert_eq!(duration_floor([None, None]), DURATION_FLOOR_S);
    }

    #[test]
    fn thresholds() {
        assert_eq!(parse_threshold("50%").unwrap(), 0.5);
        assert_eq!(parse_threshold("20").unwrap(), 0.2);
        assert!(parse_threshold("fast").is_err());
        assert!(parse_threshold("-5%").is_err());
    }
}
