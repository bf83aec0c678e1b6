//! `lab ab`: did a kernel change make a flaky failure rarer (or more
//! common)? The same scenarios run N times on kernel A and on kernel B,
//! interleaved A B A B … so host noise hits both alike; each round is an
//! ordinary `lab run` of the selection on one kernel, A and B of one round
//! with the same fresh seed (a seed-dependent failure hits both alike too).
//! Per scenario: each side's failures (`Verdict::is_failing_attempt`: a
//! known kernel bug counts, it is the bug), the rate with a 95% Wilson
//! interval, and the two-sided p-value of Fisher's exact test. The lab's
//! own errors (`infra`) are never counted: they make the comparison
//! `inconclusive` (exit 3).
//!
//! The ab folder `RESULTS/ab-<id>/` holds `A/<run-id>/…` and `B/<run-id>/…`
//! (ordinary results roots), `ab.json` and `ab.md`, rewritten atomically
//! after every run; `lab ab --analyze DIR` recomputes both from the runs.

pub mod stats;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::plan::attempts::parse_duration;
use crate::plan::selection::SelectArgs;
use crate::record::results::{civil, now_rfc3339, Summary};
use crate::{exit, infra, KernelArgs, LabError};

/// `ab.json`'s layout version.
pub const SCHEMA: u32 = 1;
/// Rounds without `--repeat` or `--until`.
pub const DEFAULT_ROUNDS: u64 = 10;
/// The most rounds of `--until` without `--repeat`.
pub const DEFAULT_MAX_ROUNDS: u64 = 100;
/// The significance threshold without `--alpha`.
pub const DEFAULT_ALPHA: f64 = 0.05;

/// What the comparison is expected to show (`--expect`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// B fails less often than A: some scenario's rate is significantly
    /// lower on B, and none is significantly higher.
    Fixed,
    /// B fails more often: some scenario's rate is significantly higher on B.
    Regressed,
    /// No scenario's rate differs significantly (which is not proof that
    /// none differs: see the power caveat).
    Same,
}

impl Expect {
    fn as_str(self) -> &'static str {
        match self {
            Expect::Fixed => "fixed",
            Expect::Regressed => "regressed",
            Expect::Same => "same",
        }
    }
}

/// `lab ab` options.
#[derive(clap::Args, Debug, Clone)]
pub struct AbArgs {
    /// The two kernels, A (before) then B (after): `debian:SERIES`, a
    /// bzImage or vmlinux, or a build directory (`lab kernel build --out`).
    #[arg(long = "kernel", value_name = "K")]
    pub kernels: Vec<String>,
    /// Rounds: each runs the selection once on A, then once on B (default
    /// 10; with --until, the most rounds, default 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub repeat: Option<u64>,
    /// Keep going, round after round, until some scenario's Fisher p-value
    /// is below 1 - CONFIDENCE (e.g. 0.999: p < 0.001), or --max-time, or
    /// the most rounds.
    #[arg(long, value_name = "CONFIDENCE", value_parser = parse_fraction)]
    pub until: Option<f64>,
    /// Start no round after this long (`90s`, `10m`, `1h`).
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub max_time: Option<Duration>,
    /// Turn the result into the exit status: 0 when it holds, 1 when not
    /// (3 when the lab's own errors leave it inconclusive).
    #[arg(long, value_enum)]
    pub expect: Option<Expect>,
    /// A scenario's rates differ when Fisher's p-value is below this
    /// (default 0.05).
    #[arg(long, value_name = "P", value_parser = parse_fraction)]
    pub alpha: Option<f64>,
    /// Results directory: the ab folder `ab-<id>` is created inside.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Run nothing: recompute ab.json and ab.md from the runs of the ab
    /// folder DIR (e.g. after an interruption, or with another --expect).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kernels", "repeat", "until", "max_time"])]
    pub analyze: Option<PathBuf>,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Scenario files or directories.
    #[arg(required_unless_present = "analyze")]
    pub paths: Vec<PathBuf>,
    /// More `lab run` options for every round, after `--` (`-- -j 2 --cold`).
    #[arg(last = true, value_name = "RUN_OPTIONS")]
    pub run_options: Vec<String>,
}

/// A probability strictly between 0 and 1.
fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x < 1.0 => Ok(x),
        _ => Err(format!(
            "`{s}`: expected a number between 0 and 1, e.g. 0.05 or 0.999"
        )),
    }
}

/// `lab run` options `lab ab` sets itself, per round.
const OWN_RUN_OPTIONS: &[&str] = &[
    "--kernel",
    "--kernel-tree",
    "--vmlinux",
    "--modules",
    "--kernel-src",
    "--kernel-sha256",
    "--results",
    "--seed",
    "--repeat",
    "--until-fail",
    "--max-time",
    "--same-seed",
    "--only",
    "--tags",
    "--exclude",
];

/// Side A or B.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    A,
    B,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::A => "A",
            Side::B => "B",
        }
    }
}

/// One `lab run` of an ab comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Round {
    /// 1-based round.
    pub round: u64,
    pub side: Side,
    /// The kernel as given.
    pub kernel: String,
    /// The run's seed (`lab run --seed`), the same for A and B of a round.
    pub seed: u64,
    /// The run folder, relative to the ab folder (`A/<run-id>`); `None`
    /// when the run left none.
    pub run: Option<String>,
    /// The run's exit status; `None` when unknown (`--analyze` of a folder
    /// not in ab.json).
    pub exit: Option<u8>,
}

/// One side of one scenario.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SideCounts {
    /// Attempts with a kernel verdict (pass, fail, known_fail, timeout, a
    /// scenario error).
    pub attempts: u64,
    /// Of them, failing attempts (known_fail included).
    pub failures: u64,
    /// failures / attempts; `None` without attempts.
    pub rate: Option<f64>,
    /// 95% Wilson interval of the rate.
    pub ci95: [f64; 2],
    /// The lab's own errors: not attempts, and the comparison is inconclusive.
    pub infra: u64,
    /// skipped or not_run: not attempts.
    pub not_attempted: u64,
}

impl SideCounts {
    fn finish(&mut self) {
        self.rate = (self.attempts > 0).then(|| self.failures as f64 / self.attempts as f64);
        let (lo, hi) = stats::wilson(self.failures, self.attempts, stats::Z95);
        self.ci95 = [lo, hi];
    }
}

/// How B's failure rate compares with A's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Difference {
    /// Significantly lower on B.
    BLower,
    /// Significantly higher on B.
    BHigher,
    /// Not significantly different.
    None,
    /// A side has no attempts.
    NotCompared,
}

impl Difference {
    fn text(self) -> &'static str {
        match self {
            Difference::BLower => "B fails less",
            Difference::BHigher => "B fails more",
            Difference::None => "no significant difference",
            Difference::NotCompared => "not compared",
        }
    }
}

/// One scenario's comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub name: String,
    pub a: SideCounts,
    pub b: SideCounts,
    /// Two-sided p-value of Fisher's exact test; `None` when not compared.
    pub p_value: Option<f64>,
    pub difference: Difference,
}

/// The comparison as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overall {
    /// Some scenario fails significantly less on B, none more.
    Fixed,
    /// Some scenario fails significantly more on B, none less.
    Regressed,
    /// Some less, some more.
    Mixed,
    /// No significant difference.
    Same,
    /// The lab's own errors: nothing can be concluded.
    Inconclusive,
    /// No scenario has attempts on both sides.
    NothingCompared,
}

impl Overall {
    fn as_str(self) -> &'static str {
        match self {
            Overall::Fixed => "fixed",
            Overall::Regressed => "regressed",
            Overall::Mixed => "mixed",
            Overall::Same => "same",
            Overall::Inconclusive => "inconclusive",
            Overall::NothingCompared => "nothing_compared",
        }
    }
}

/// An error of the lab itself in one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InfraError {
    pub side: Side,
    /// The run folder (relative), if any.
    pub run: Option<String>,
    /// The scenario, when one scenario's attempt was the lab's error.
    pub scenario: Option<String>,
    /// Its first line.
    pub reason: String,
}

/// What the runs show.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    pub alpha: f64,
    pub scenarios: Vec<Comparison>,
    pub infra: Vec<InfraError>,
    pub verdict: Overall,
    pub expect: Option<Expect>,
    /// Whether `expect` holds (`None` without one, or when inconclusive).
    pub holds: Option<bool>,
    /// `lab ab`'s exit status for this analysis.
    pub exit: u8,
    /// What "same" cannot tell with this few attempts.
    pub caveat: Option<String>,
}

/// `ab.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AbRecord {
    pub schema: u32,
    pub id: String,
    /// A and B, as given.
    pub kernels: [String; 2],
    pub paths: Vec<PathBuf>,
    /// The selection options, as `lab run` options.
    pub selection: Vec<String>,
    /// The extra `lab run` options of every round.
    pub run_options: Vec<String>,
    pub repeat: Option<u64>,
    pub until: Option<f64>,
    pub max_time_s: Option<u64>,
    pub started: String,
    pub wall_s: f64,
    /// Why no further round ran.
    pub stopped: String,
    pub rounds: Vec<Round>,
    pub analysis: Analysis,
}

/// One run as the analysis reads it.
pub struct SideRun {
    pub side: Side,
    /// Relative run folder, for the report.
    pub run: Option<String>,
    pub summary: Option<Summary>,
    pub exit: Option<u8>,
}

/// The counts, tests and verdict of `runs` at `alpha`.
pub fn analyze(runs: &[SideRun], alpha: f64, expect: Option<Expect>) -> Analysis {
    let mut scenarios: Vec<(String, SideCounts, SideCounts)> = Vec::new();
    let mut infra_errors = Vec::new();
    for r in runs {
        let mut own = Vec::new();
        if let Some(summary) = &r.summary {
            for s in &summary.scenarios {
                let at = match scenarios.iter().position(|(n, _, _)| *n == s.name) {
                    Some(i) => i,
                    None => {
                        scenarios.push((
                            s.name.clone(),
                            SideCounts::default(),
                            SideCounts::default(),
                        ));
                        scenarios.len() - 1
                    }
                };
                let counts = match r.side {
                    Side::A => &mut scenarios[at].1,
                    Side::B => &mut scenarios[at].2,
                };
                let v = s.judgement.verdict;
                if s.judgement.infra {
                    counts.infra += 1;
                    own.push(InfraError {
                        side: r.side,
                        run: r.run.clone(),
                        scenario: Some(s.name.clone()),
                        reason: first_line(&s.judgement.reason),
                    });
                } else if !v.ran() {
                    counts.not_attempted += 1;
                } else {
                    counts.attempts += 1;
                    counts.failures += u64::from(v.is_failing_attempt());
                }
            }
        }
        // A run that stopped for the lab's own reasons without naming a
        // scenario (kernel, backend, image) is one error of that run.
        if own.is_empty() {
            let aborted = r
                .summary
                .as_ref()
                .filter(|s| !s.interrupted)
                .and_then(|s| s.aborted.as_ref())
                .map(|a| first_line(&a.reason));
            let why = match (r.exit, &r.summary, aborted) {
                (Some(exit::INTERRUPTED), _, _) => None,
                (_, _, Some(reason)) => Some(reason),
                (Some(c), _, None) if c != exit::PASS && c != exit::FAIL => {
                    Some(format!("lab run exited {c}"))
                }
                (_, None, None) => Some("the run left no readable summary.json".to_owned()),
                _ => None,
            };
            own.extend(why.map(|reason| InfraError {
                side: r.side,
                run: r.run.clone(),
                scenario: None,
                reason,
            }));
        }
        infra_errors.extend(own);
    }
    let scenarios: Vec<Comparison> = scenarios
        .into_iter()
        .map(|(name, mut a, mut b)| {
            a.finish();
            b.finish();
            compare(name, a, b, alpha)
        })
        .collect();
    decide(scenarios, infra_errors, alpha, expect)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_owned()
}

/// One scenario's test.
pub fn compare(name: String, a: SideCounts, b: SideCounts, alpha: f64) -> Comparison {
    if a.attempts == 0 || b.attempts == 0 {
        return Comparison {
            name,
            a,
            b,
            p_value: None,
            difference: Difference::NotCompared,
        };
    }
    let p = stats::fisher_two_sided(
        a.failures,
        a.attempts - a.failures,
        b.failures,
        b.attempts - b.failures,
    );
    // Rates compared without division: fa/na against fb/nb.
    let lhs = u128::from(b.failures) * u128::from(a.attempts);
    let rhs = u128::from(a.failures) * u128::from(b.attempts);
    let difference = if p >= alpha || lhs == rhs {
        Difference::None
    } else if lhs < rhs {
        Difference::BLower
    } else {
        Difference::BHigher
    };
    Comparison {
        name,
        a,
        b,
        p_value: Some(p),
        difference,
    }
}

/// The verdict, whether `expect` holds, and the exit status.
pub fn decide(
    scenarios: Vec<Comparison>,
    infra_errors: Vec<InfraError>,
    alpha: f64,
    expect: Option<Expect>,
) -> Analysis {
    let lower = scenarios.iter().any(|c| c.difference == Difference::BLower);
    let higher = scenarios
        .iter()
        .any(|c| c.difference == Difference::BHigher);
    let compared = scenarios
        .iter()
        .any(|c| c.difference != Difference::NotCompared);
    let verdict = if !infra_errors.is_empty() {
        Overall::Inconclusive
    } else if !compared {
        Overall::NothingCompared
    } else {
        match (lower, higher) {
            (true, true) => Overall::Mixed,
            (true, false) => Overall::Fixed,
            (false, true) => Overall::Regressed,
            (false, false) => Overall::Same,
        }
    };
    let holds = match (expect, verdict) {
        (None, _) | (_, Overall::Inconclusive) => None,
        (Some(_), Overall::NothingCompared) => Some(false),
        (Some(Expect::Fixed), v) => Some(v == Overall::Fixed),
        (Some(Expect::Regressed), v) => Some(matches!(v, Overall::Regressed | Overall::Mixed)),
        (Some(Expect::Same), v) => Some(v == Overall::Same),
    };
    let exit = match (verdict, holds) {
        (Overall::Inconclusive, _) => exit::INFRA,
        (_, Some(false)) => exit::FAIL,
        _ => exit::PASS,
    };
    let caveat = caveat(&scenarios, alpha, verdict);
    Analysis {
        alpha,
        scenarios,
        infra: infra_errors,
        verdict,
        expect,
        holds,
        exit,
        caveat,
    }
}

/// What "no significant difference" cannot rule out with this few
/// attempts, from the fewest attempts of a compared scenario.
fn caveat(scenarios: &[Comparison], alpha: f64, verdict: Overall) -> Option<String> {
    if !matches!(
        verdict,
        Overall::Same | Overall::Fixed | Overall::Regressed | Overall::Mixed
    ) {
        return None;
    }
    let same: Vec<&Comparison> = scenarios
        .iter()
        .filter(|c| c.difference == Difference::None)
        .collect();
    let c = same.iter().min_by_key(|c| c.a.attempts.min(c.b.attempts))?;
    let (na, nb) = (c.a.attempts, c.b.attempts);
    Some(match stats::min_detectable(na, nb, alpha) {
        Some(k) => format!(
            "no significant difference is not \"the same\": with {na} attempt(s) on A and {nb} on B, \
             a rate falling from {k}/{na} to 0/{nb} would just be significant at p < {alpha}; \
             smaller differences can go unnoticed (more rounds: --repeat, --until)"
        ),
        None => format!(
            "no significant difference is not \"the same\": with {na} attempt(s) on A and {nb} on B, \
             not even {na}/{na} against 0/{nb} would be significant at p < {alpha}; \
             run more rounds (--repeat, --until)"
        ),
    })
}

/// `0.5%`-style percentage.
fn pct(x: f64) -> String {
    let p = x * 100.0;
    if p == 0.0 || p == 100.0 || p >= 10.0 {
        format!("{p:.0}%")
    } else {
        format!("{p:.1}%")
    }
}

/// A p-value for people: 4 significant digits, or `< 1e-12`.
fn p_text(p: f64) -> String {
    if p < 1e-12 {
        "< 1e-12".to_owned()
    } else if p < 1e-3 {
        format!("{p:.2e}")
    } else if p >= 0.9999 {
        "1".to_owned()
    } else {
        format!("{p:.4}")
    }
}

fn side_cells(s: &SideCounts) -> String {
    match s.rate {
        Some(r) => format!(
            "{}/{} | {} ({}–{})",
            s.failures,
            s.attempts,
            pct(r),
            pct(s.ci95[0]),
            pct(s.ci95[1])
        ),
        None => format!("0/0 | – ({} not attempted)", s.not_attempted),
    }
}

/// `ab.md`.
pub fn markdown(rec: &AbRecord) -> String {
    let a = &rec.analysis;
    let mut out = format!("# lab ab {}\n\n", rec.id);
    out += &format!("- A: `{}`\n- B: `{}`\n", rec.kernels[0], rec.kernels[1]);
    let rounds = rec.rounds.iter().map(|r| r.round).max().unwrap_or(0);
    out += &format!(
        "- {rounds} round(s), A and B interleaved, {:.0} s; stopped: {}\n",
        rec.wall_s, rec.stopped
    );
    out += &format!(
        "- failure: fail, timeout, a scenario error or known_fail; the lab's own errors are not counted (they make it inconclusive)\n- difference: Fisher's exact test, two-sided, p < {}\n\n",
        a.alpha
    );
    out += "| scenario | A failures | A rate (95% CI) | B failures | B rate (95% CI) | p | difference |\n";
    out += "|---|---|---|---|---|---|---|\n";
    for c in &a.scenarios {
        out += &format!(
            "| {} | {} | {} | {} | {} |\n",
            c.name,
            side_cells(&c.a),
            side_cells(&c.b),
            c.p_value.map_or("–".to_owned(), p_text),
            c.difference.text()
        );
    }
    out += &format!("\n**Verdict: {}**", a.verdict.as_str());
    out += &match a.verdict {
        Overall::Fixed => " (B fails significantly less often, nowhere more)".to_owned(),
        Overall::Regressed => " (B fails significantly more often, nowhere less)".to_owned(),
        Overall::Mixed => " (B fails less in some scenarios, more in others)".to_owned(),
        Overall::Same => format!(" (no scenario's failure rate differs at p < {})", a.alpha),
        Overall::Inconclusive => {
            format!(" ({} error(s) of the lab itself: see below)", a.infra.len())
        }
        Overall::NothingCompared => " (no scenario ran on both kernels)".to_owned(),
    };
    out += "\n";
    if let Some(e) = a.expect {
        out += &format!(
            "\nExpected: {}: {} (exit {})\n",
            e.as_str(),
            match a.holds {
                Some(true) => "holds",
                Some(false) => "does not hold",
                None => "inconclusive",
            },
            a.exit
        );
    }
    if let Some(c) = &a.caveat {
        out += &format!("\nCaveat: {c}.\n");
    }
    if !a.infra.is_empty() {
        out += "\n## Errors of the lab itself (not counted)\n\n";
        for e in &a.infra {
            out += &format!(
                "- {} {}{}: {}\n",
                e.side.name(),
                e.run.as_deref().unwrap_or("(no run folder)"),
                e.scenario
                    .as_ref()
                    .map(|s| format!(" {s}"))
                    .unwrap_or_default(),
                e.reason
            );
        }
    }
    if !rec.rounds.is_empty() {
        out += "\n## Rounds\n\n| round | side | seed | run | exit |\n|---|---|---|---|---|\n";
        for r in &rec.rounds {
            out += &format!(
                "| {} | {} | {} | {} | {} |\n",
                r.round,
                r.side.name(),
                r.seed,
                r.run.as_deref().unwrap_or("–"),
                r.exit.map_or("–".to_owned(), |c| c.to_string())
            );
        }
    }
    out
}

/// Write ab.json and ab.md into `dir`, each atomically.
fn write(dir: &Path, rec: &AbRecord) -> Result<(), LabError> {
    let json = serde_json::to_vec_pretty(rec).expect("serialisable");
    arena_images::write_atomic(&dir.join("ab.md"), markdown(rec).as_bytes()).map_err(infra)?;
    arena_images::write_atomic(&dir.join("ab.json"), &json).map_err(infra)
}

/// The selection as `lab run` options.
fn selection_argv(s: &SelectArgs) -> Vec<String> {
    let mut out = Vec::new();
    for o in &s.only {
        out.extend(["--only".to_owned(), o.clone()]);
    }
    if !s.tags.is_empty() {
        out.extend(["--tags".to_owned(), s.tags.join(",")]);
    }
    for e in &s.exclude {
        out.extend(["--exclude".to_owned(), e.clone()]);
    }
    out
}

/// A kernel argument as `lab run` options: a directory is a build tree.
fn kernel_argv(kernel: &str) -> [String; 2] {
    let opt = if Path::new(kernel).is_dir() {
        "--kernel-tree"
    } else {
        "--kernel"
    };
    [opt.to_owned(), kernel.to_owned()]
}

/// The `lab run` argv of one round on one side.
fn round_argv(
    kernel: &str,
    results: &Path,
    seed: u64,
    selection: &[String],
    run_options: &[String],
    paths: &[PathBuf],
) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec!["lab".into(), "run".into()];
    argv.extend(kernel_argv(kernel).map(OsString::from));
    argv.extend([
        "--results".into(),
        results.as_os_str().to_owned(),
        "--seed".into(),
        seed.to_string().into(),
    ]);
    let chatty = run_options
        .iter()
        .any(|o| matches!(o.as_str(), "-q" | "--quiet" | "-v" | "--verbose"));
    if !chatty {
        argv.push("--quiet".into());
    }
    argv.extend(selection.iter().map(OsString::from));
    argv.extend(run_options.iter().map(OsString::from));
    argv.push("--".into());
    argv.extend(paths.iter().map(|p| p.as_os_str().to_owned()));
    argv
}

/// The first line of a clap error, without its `error: ` prefix.
fn clap_line(e: &clap::Error) -> String {
    let text = e.to_string();
    first_line(text.trim_start_matches("error: "))
}

/// Refuse what cannot be compared before anything runs (exit 2).
fn check(args: &AbArgs) -> Result<(), LabError> {
    if args.kernels.len() != 2 {
        return Err(LabError::BadArgs(format!(
            "lab ab compares two kernels: give --kernel A --kernel B (got {})",
            args.kernels.len()
        )));
    }
    for k in &args.kernels {
        let ka = if Path::new(k).is_dir() {
            KernelArgs {
                kernel_tree: Some(k.into()),
                ..Default::default()
            }
        } else {
            KernelArgs {
                kernel: Some(k.into()),
                ..Default::default()
            }
        };
        ka.check()?;
    }
    for o in &args.run_options {
        let name = o.split('=').next().unwrap_or("");
        if OWN_RUN_OPTIONS.contains(&name) {
            return Err(LabError::BadArgs(format!(
                "{name} after `--`: lab ab sets it for each round{}",
                if ["--only", "--tags", "--exclude"].contains(&name) {
                    " (give the selection before `--`)"
                } else {
                    ""
                }
            )));
        }
    }
    // The extra options as `lab run` would parse them.
    let trial = round_argv(
        &args.kernels[0],
        &args.results,
        0,
        &selection_argv(&args.select),
        &args.run_options,
        &args.paths,
    );
    crate::run::parse_args(trial)
        .map_err(|e| LabError::BadArgs(format!("lab run options after `--`: {}", clap_line(&e))))?;
    let selected = args.select.load(&args.paths)?;
    if selected.files.is_empty() {
        return Err(LabError::BadArgs(format!(
            "no scenario selected in {}",
            args.paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        )));
    }
    Ok(())
}

/// A fresh seed for round `round`, as `lab run` makes its own.
fn fresh_seed(round: u64) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x =
        t ^ (u64::from(std::process::id()) << 32) ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // splitmix64's finaliser: nearby times give unrelated seeds.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31)) % 1_000_000_007
}

/// Create `<results>/ab-<id>`.
fn create_dir(results: &Path) -> Result<(String, PathBuf), LabError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, mo, d, h, mi, s) = civil(secs);
    let base = format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}");
    std::fs::create_dir_all(results).map_err(infra)?;
    for n in 0.. {
        let id = if n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let path = results.join(format!("ab-{id}"));
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok((id, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(infra(e)),
        }
    }
    unreachable!("an ab folder name is free")
}

/// Where `<root>/latest` points, if anywhere.
fn latest(root: &Path) -> Option<PathBuf> {
    std::fs::read_link(root.join("latest")).ok()
}

/// `lab ab`.
pub fn ab(args: &AbArgs) -> Result<u8, LabError> {
    if let Some(dir) = &args.analyze {
        return reanalyze(dir, args.expect, args.alpha);
    }
    check(args)?;
    let t0 = Instant::now();
    let alpha = args.alpha.unwrap_or(DEFAULT_ALPHA);
    let max_rounds = args.repeat.unwrap_or(if args.until.is_some() {
        DEFAULT_MAX_ROUNDS
    } else {
        DEFAULT_ROUNDS
    });
    let (id, dir) = create_dir(&args.results)?;
    let selection = selection_argv(&args.select);
    let kernels = [args.kernels[0].clone(), args.kernels[1].clone()];
    let mut rec = AbRecord {
        schema: SCHEMA,
        id: id.clone(),
        kernels: kernels.clone(),
        paths: args.paths.clone(),
        selection: selection.clone(),
        run_options: args.run_options.clone(),
        repeat: args.repeat,
        until: args.until,
        max_time_s: args.max_time.map(|d| d.as_secs()),
        started: now_rfc3339(),
        wall_s: 0.0,
        stopped: "running".to_owned(),
        rounds: Vec::new(),
        analysis: analyze(&[], alpha, args.expect),
    };
    write(&dir, &rec)?;
    eprintln!(
        "lab ab: A {} against B {}, up to {max_rounds} round(s); results in {}",
        kernels[0],
        kernels[1],
        dir.display()
    );
    let mut runs: Vec<SideRun> = Vec::new();
    let mut status = None;
    let mut stopped = format!("{max_rounds} round(s)");
    'rounds: for round in 1..=max_rounds {
        if let Some(d) = args.max_time.filter(|d| t0.elapsed() >= *d) {
            stopped = format!(
                "--max-time {} s reached after {} round(s)",
                d.as_secs(),
                round - 1
            );
            break;
        }
        let seed = fresh_seed(round);
        for (side, kernel) in [(Side::A, &kernels[0]), (Side::B, &kernels[1])] {
            let root = dir.join(side.name());
            let before = latest(&root);
            let argv = round_argv(
                kernel,
                &root,
                seed,
                &selection,
                &args.run_options,
                &args.paths,
            );
            let code = match crate::run::parse_args(argv) {
                Ok(run) => crate::run::run(run).unwrap_or_else(|e| {
                    eprintln!("lab ab: round {round} {}: error: {e}", side.name());
                    e.code()
                }),
                Err(e) => {
                    eprintln!("lab ab: {}", clap_line(&e));
                    exit::INVALID
                }
            };
            let after = latest(&root).filter(|l| Some(l) != before.as_ref());
            let run = after.map(|l| format!("{}/{}", side.name(), l.display()));
            let summary = run
                .as_ref()
                .and_then(|r| Summary::read_run(&dir.join(r)).ok());
            rec.rounds.push(Round {
                round,
                side,
                kernel: kernel.clone(),
                seed,
                run: run.clone(),
                exit: Some(code),
            });
            runs.push(SideRun {
                side,
                run,
                summary,
                exit: Some(code),
            });
            rec.analysis = analyze(&runs, alpha, args.expect);
            rec.wall_s = t0.elapsed().as_secs_f64();
            rec.stopped = format!("running (round {round})");
            write(&dir, &rec)?;
            let stop = match code {
                exit::PASS | exit::FAIL => None,
                exit::INTERRUPTED => Some(("interrupted", exit::INTERRUPTED)),
                exit::INVALID => Some(("lab run refused its input", exit::INVALID)),
                _ => Some(("an error of the lab itself", exit::INFRA)),
            };
            if let Some((why, c)) = stop {
                stopped = format!("{why} in round {round} on {} ({kernel})", side.name());
                status = Some(c);
                break 'rounds;
            }
        }
        eprintln!("lab ab: round {round}: {}", round_line(&rec.analysis));
        if let Some(conf) = args.until {
            if let Some(c) = rec
                .analysis
                .scenarios
                .iter()
                .find(|c| c.p_value.is_some_and(|p| p < 1.0 - conf))
            {
                stopped = format!(
                    "--until {conf}: p < {} for {} after {round} round(s)",
                    1.0 - conf,
                    c.name
                );
                break;
            }
            if round == max_rounds {
                stopped = format!("--until {conf}: not reached in {max_rounds} round(s)");
            }
        }
    }
    rec.stopped = stopped;
    rec.wall_s = t0.elapsed().as_secs_f64();
    write(&dir, &rec)?;
    print!("{}", markdown(&rec));
    eprintln!("lab ab: ab.json and ab.md in {}", dir.display());
    // Invalid input or an interruption says so whatever the analysis.
    Ok(match status {
        Some(c @ (exit::INVALID | exit::INTERRUPTED)) => c,
        _ => rec.analysis.exit,
    })
}

/// `A 1/3 B 0/3` per scenario, for the progress line.
fn round_line(a: &Analysis) -> String {
    a.scenarios
        .iter()
        .map(|c| {
            format!(
                "{}: A {}/{} B {}/{}",
                c.name, c.a.failures, c.a.attempts, c.b.failures, c.b.attempts
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The run folders under `<dir>/<side>`, oldest first (run ids sort by time).
fn run_folders(dir: &Path, side: Side) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir.join(side.name()))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .map(|n| format!("{}/{n}", side.name()))
        .collect();
    out.sort();
    out
}

/// `lab ab --analyze DIR`: ab.json's rounds and every run folder under
/// A/ and B/ (a folder ab.json does not list counts too, exit unknown).
fn reanalyze(dir: &Path, expect: Option<Expect>, alpha: Option<f64>) -> Result<u8, LabError> {
    let old: Option<AbRecord> =
        match std::fs::read(dir.join("ab.json")) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                LabError::BadArgs(format!("{}: {e}", dir.join("ab.json").display()))
            })?),
            Err(_) => None,
        };
    let mut rounds: Vec<Round> = old.as_ref().map(|o| o.rounds.clone()).unwrap_or_default();
    for side in [Side::A, Side::B] {
        for run in run_folders(dir, side) {
            if !rounds
                .iter()
                .any(|r| r.run.as_deref() == Some(run.as_str()))
            {
                let summary = Summary::read_run(&dir.join(&run)).ok();
                rounds.push(Round {
                    round: 0,
                    side,
                    kernel: summary
                        .as_ref()
                        .and_then(|s| s.kernel.as_ref())
                        .map(|k| k.release.clone())
                        .unwrap_or_default(),
                    seed: summary.as_ref().map_or(0, |s| s.seed),
                    run: Some(run),
                    exit: None,
                });
            }
        }
    }
    if rounds.is_empty() {
        return Err(LabError::BadArgs(format!(
            "{}: no ab.json and no run folder under A/ or B/",
            dir.display()
        )));
    }
    let runs: Vec<SideRun> = rounds
        .iter()
        .map(|r| SideRun {
            side: r.side,
            run: r.run.clone(),
            summary: r
                .run
                .as_ref()
                .and_then(|p| Summary::read_run(&dir.join(p)).ok()),
            exit: r.exit,
        })
        .collect();
    let alpha = alpha
        .or(old.as_ref().map(|o| o.analysis.alpha))
        .unwrap_or(DEFAULT_ALPHA);
    let expect = expect.or(old.as_ref().and_then(|o| o.analysis.expect));
    let analysis = analyze(&runs, alpha, expect);
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().trim_start_matches("ab-").to_owned())
        .unwrap_or_default();
    let rec = match old {
        Some(mut o) => {
            o.rounds = rounds;
            o.analysis = analysis;
            o
        }
        None => AbRecord {
            schema: SCHEMA,
            id,
            kernels: [side_kernel(&rounds, Side::A), side_kernel(&rounds, Side::B)],
            paths: Vec::new(),
            selection: Vec::new(),
            run_options: Vec::new(),
            repeat: None,
            until: None,
            max_time_s: None,
            started: String::new(),
            wall_s: 0.0,
            stopped: "recomputed from the run folders (no ab.json)".to_owned(),
            rounds,
            analysis,
        },
    };
    write(dir, &rec)?;
    print!("{}", markdown(&rec));
    eprintln!("lab ab: ab.json and ab.md in {}", dir.display());
    Ok(rec.analysis.exit)
}

fn side_kernel(rounds: &[Round], side: Side) -> String {
    rounds
        .iter()
        .find(|r| r.side == side && !r.kernel.is_empty())
        .map_or_else(|| "?".to_owned(), |r| r.kernel.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::verdict::{Judgement, Verdict};
    use crate::record::results::ScenarioSummary;

    fn counts(failures: u64, attempts: u64) -> SideCounts {
        let mut c = SideCounts {
            attempts,
            failures,
            ..Default::default()
        };
        c.finish();
        c
    }

    fn cmp(name: &str, a: (u64, u64), b: (u64, u64)) -> Comparison {
        compare(name.into(), counts(a.0, a.1), counts(b.0, b.1), 0.05)
    }

    fn infra_error() -> InfraError {
        InfraError {
            side: Side::B,
            run: None,
            scenario: None,
            reason: "VM never said hello".into(),
        }
    }

    #[test]
    fn the_difference_needs_significance_and_a_direction() {
        assert_eq!(cmp("x", (9, 10), (0, 10)).difference, Difference::BLower);
        assert_eq!(cmp("x", (0, 10), (9, 10)).difference, Difference::BHigher);
        assert_eq!(cmp("x", (3, 4), (1, 4)).difference, Difference::None);
        assert_eq!(cmp("x", (0, 10), (0, 10)).difference, Difference::None);
        let none = cmp("x", (0, 0), (1, 10));
        assert_eq!(none.difference, Difference::NotCompared);
        assert_eq!(none.p_value, None);
    }

    #[test]
    fn expectations_become_exit_statuses() {
        let fixed = || vec![cmp("race", (9, 10), (0, 10)), cmp("ok", (0, 10), (0, 10))];
        let a = decide(fixed(), vec![], 0.05, Some(Expect::Fixed));
        assert_eq!(
            (a.verdict, a.holds, a.exit),
            (Overall::Fixed, Some(true), 0)
        );
        let a = decide(fixed(), vec![], 0.05, Some(Expect::Same));
        assert_eq!((a.holds, a.exit), (Some(false), 1));
        let a = decide(fixed(), vec![], 0.05, Some(Expect::Regressed));
        assert_eq!((a.holds, a.exit), (Some(false), 1));
        // Without an expectation the report is the result.
        assert_eq!(decide(fixed(), vec![], 0.05, None).exit, 0);
        // A stricter alpha does not see it: same.
        let strict: Vec<Comparison> = fixed()
            .into_iter()
            .map(|c| compare(c.name, c.a, c.b, 1e-5))
            .collect();
        let a = decide(strict, vec![], 1e-5, Some(Expect::Same));
        assert_eq!((a.verdict, a.exit), (Overall::Same, 0));
        // A fix elsewhere does not hide a regression; a regression fails "fixed".
        let mixed = vec![cmp("a", (9, 10), (0, 10)), cmp("b", (0, 10), (9, 10))];
        let a = decide(mixed.clone(), vec![], 0.05, Some(Expect::Regressed));
        assert_eq!((a.verdict, a.exit), (Overall::Mixed, 0));
        assert_eq!(decide(mixed, vec![], 0.05, Some(Expect::Fixed)).exit, 1);
    }

    #[test]
    fn the_labs_own_errors_make_it_inconclusive() {
        let a = decide(
            vec![cmp("race", (9, 10), (0, 10))],
            vec![infra_error()],
            0.05,
            Some(Expect::Fixed),
        );
        assert_eq!(
            (a.verdict, a.holds, a.exit),
            (Overall::Inconclusive, None, 3)
        );
        assert_eq!(decide(vec![], vec![infra_error()], 0.05, None).exit, 3);
    }

    #[test]
    fn nothing_compared_holds_no_expectation() {
        let a = decide(
            vec![cmp("x", (0, 0), (0, 0))],
            vec![],
            0.05,
            Some(Expect::Same),
        );
        assert_eq!((a.verdict, a.exit), (Overall::NothingCompared, 1));
    }

    #[test]
    fn same_comes_with_its_power_caveat() {
        let a = decide(
            vec![cmp("x", (0, 10), (0, 10))],
            vec![],
            0.05,
            Some(Expect::Same),
        );
        let c = a.caveat.unwrap();
        assert!(c.contains("from 5/10 to 0/10"), "{c}");
        let a = decide(vec![cmp("x", (0, 3), (0, 3))], vec![], 0.05, None);
        assert!(a.caveat.unwrap().contains("not even 3/3"));
    }

    fn summary(entries: &[(&str, Verdict, bool)]) -> Summary {
        let scenarios = entries
            .iter()
            .map(|(name, v, infra)| {
                let mut s = ScenarioSummary::pending(name, Path::new("x.yaml"), &[], 1);
                s.judgement = Judgement::not_run("");
                s.judgement.verdict = *v;
                s.judgement.infra = *infra;
                s.judgement.reason = if *infra {
                    "no hello\nmore".into()
                } else {
                    String::new()
                };
                s
            })
            .collect();
        let mut s = Summary::new("r", 1, scenarios);
        s.finish(1.0);
        s
    }

    fn run(side: Side, entries: &[(&str, Verdict, bool)], exit: u8) -> SideRun {
        SideRun {
            side,
            run: Some(format!("{}/r", side.name())),
            summary: Some(summary(entries)),
            exit: Some(exit),
        }
    }

    #[test]
    fn summaries_are_counted_by_verdict() {
        use Verdict::*;
        let runs = vec![
            run(
                Side::A,
                &[("s", KnownFail, false), ("t", Skipped, false)],
                1,
            ),
            run(Side::B, &[("s", Pass, false), ("t", Skipped, false)], 0),
            run(Side::A, &[("s", Timeout, false), ("t", NotRun, false)], 1),
            run(Side::B, &[("s", Error, false), ("t", Skipped, false)], 1),
        ];
        let a = analyze(&runs, 0.05, None);
        assert!(a.infra.is_empty());
        let s = &a.scenarios[0];
        assert_eq!(
            (s.a.failures, s.a.attempts, s.b.failures, s.b.attempts),
            (2, 2, 1, 2)
        );
        let t = &a.scenarios[1];
        assert_eq!(
            (t.a.not_attempted, t.b.not_attempted, t.difference),
            (2, 2, Difference::NotCompared)
        );
        assert_eq!(a.verdict, Overall::Same);
    }

    #[test]
    fn infra_entries_and_failed_runs_are_reported_not_counted() {
        use Verdict::*;
        let mut runs = vec![
            run(Side::A, &[("s", Fail, false)], 1),
            run(Side::B, &[("s", Error, true)], 3),
        ];
        let a = analyze(&runs, 0.05, Some(Expect::Fixed));
        assert_eq!(a.scenarios[0].b.infra, 1);
        assert_eq!(a.scenarios[0].b.attempts, 0);
        assert_eq!(a.infra.len(), 1);
        assert_eq!(a.infra[0].reason, "no hello");
        assert_eq!(a.exit, 3);
        // A run that left no summary and exited 3 is one error.
        runs[1] = SideRun {
            side: Side::B,
            run: None,
            summary: None,
            exit: Some(3),
        };
        let a = analyze(&runs, 0.05, None);
        assert_eq!(a.infra.len(), 1);
        assert_eq!(a.infra[0].reason, "lab run exited 3");
        // An interrupted run is no error of the lab.
        runs[1].exit = Some(exit::INTERRUPTED);
        assert!(analyze(&runs, 0.05, None).infra.is_empty());
    }

    #[test]
    fn rounds_run_the_selection_with_the_rounds_seed() {
        let argv = round_argv(
            "debian:6.12",
            Path::new("/r/A"),
            42,
            &["--only".into(), "x".into()],
            &["-j".into(), "2".into()],
            &[PathBuf::from("s.yaml")],
        );
        let argv: Vec<String> = argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            argv.join(" "),
            "lab run --kernel debian:6.12 --results /r/A --seed 42 --quiet --only x -j 2 -- s.yaml"
        );
        assert!(crate::run::parse_args(&argv).is_ok());
        assert_eq!(kernel_argv(".")[0], "--kernel-tree");
    }

    #[test]
    fn markdown_has_the_table_and_the_verdict() {
        let rec = AbRecord {
            schema: SCHEMA,
            id: "x".into(),
            kernels: ["a".into(), "b".into()],
            paths: vec![],
            selection: vec![],
            run_options: vec![],
            repeat: Some(10),
            until: None,
            max_time_s: None,
            started: String::new(),
            wall_s: 1.0,
            stopped: "10 round(s)".into(),
            rounds: vec![],
            analysis: decide(
                vec![cmp("race", (9, 10), (0, 10))],
                vec![],
                0.05,
                Some(Expect::Fixed),
            ),
        };
        let md = markdown(&rec);
        assert!(
            md.contains(
                "| race | 9/10 | 90% (60%–98%) | 0/10 | 0% (0%–28%) | 1.19e-4 | B fails less |"
            ),
            "{md}"
        );
        assert!(md.contains("**Verdict: fixed**"));
        assert!(md.contains("Expected: fixed: holds (exit 0)"));
    }
}
