//! The results folder of a run:
//!
//! ```text
//! <results>/<run-id>/summary.json   machine-readable (docs/results-schema.md), rewritten atomically
//! <results>/<run-id>/junit.xml      one testsuite per scenario directory, one testcase per
//!                                   scenario (+ one per selftest subtest, + one for an abort)
//! <results>/<run-id>/<scenario>/console.log, events.jsonl, vmm.log
//! <results>/latest -> <run-id>
//! ```
//! Every planned scenario is in both files from the first write on, as
//! `not_run` until judged, and `summary.json` carries `"complete": false`
//! until the run has finished normally: a killed or aborted runner never
//! leaves files that look green.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use arena_images::kernel::Kernel;
use arena_protocol::{Hello, StepStatus};

use crate::judge::outcome::VmExit;
use crate::judge::verdict::{Judgement, SessionEnd, Verdict};

/// Version of the `summary.json` layout (docs/results-schema.md); bumped
/// whenever a field changes meaning or type.
pub const SCHEMA: u32 = 1;

/// Reason of a scenario the run has not got to yet: what a killed runner leaves.
pub const PENDING: &str = "pending: the run has not got to it (still running, or killed)";

/// Reason of the scenarios a signal kept from running (or killed).
pub const INTERRUPTED: &str = "interrupted";

/// Reason of the scenarios `--fail-fast` did not start after a failure.
pub const FAIL_FAST: &str = "fail-fast: not started after an earlier scenario failed";

/// Why a run stopped early.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Abort {
    /// The infrastructure error: where it happened and what, on the first
    /// line; a VM that never said hello adds its last console lines.
    pub reason: String,
    /// The scenario it happened in; `None` when it happened while preparing
    /// the run (kernel, backend, agent, BPF objects).
    pub scenario: Option<String>,
}

/// One scenario's entry in the summary.
/// Read back leniently: a field an older `schema: 1` writer did not write
/// takes its default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ScenarioSummary {
    /// Scenario name (also its folder).
    pub name: String,
    /// Name of the directory of its file (`smoke`): JUnit suite `arena-lab.<suite>`.
    pub suite: String,
    /// Source file.
    pub file: PathBuf,
    /// Tags.
    pub tags: Vec<String>,
    /// Seed the scenario ran with.
    pub seed: u64,
    /// Verdict and details.
    #[serde(flatten)]
    pub judgement: Judgement,
    /// Whether its VM booted or was restored from a snapshot, and the
    /// restore's time; `None` when no VM ran.
    #[serde(default)]
    pub start: Option<crate::execute::snapshot::VmStart>,
    /// VM start → agent hello (s), restored or booted; `None` without a
    /// hello.
    pub boot_s: Option<f64>,
    /// VM start → VM end (s); 0 when no VM ran.
    pub duration_s: f64,
    /// How the VM process ended; `None` when no VM ran.
    pub vm_exit: Option<VmExit>,
    /// The agent's hello.
    pub guest: Option<Hello>,
    /// Set when the scenario ran a second time because of the machinery
    /// (a boot that died before the hello, an emulator fault under TCG):
    /// how the first attempt ended (its logs: `attempt1-*`).
    pub retried_after: Option<SessionEnd>,
    /// 1-based attempt number (`--repeat`, `--until-fail`; else 1).
    pub attempt: u64,
    /// The attempt's run seed: `lab run --seed <it>` replays it.
    pub run_seed: u64,
    /// Its results folder relative to the run (`<name>` or `<name>/attempt-<k>`).
    pub dir: String,
    /// The command that replays it, when it did not pass (and ran).
    pub reproduce: Option<String>,
    /// The VM it ran in (after `--vcpus`/`--memory-mib`): `lab repro` uses it.
    pub vm: arena_protocol::scenario::VmSpec,
    /// Host load average and CPU steal while its VM ran, to tell a slow host
    /// from a slow guest; `None` when no VM ran or `/proc` was unreadable.
    pub host_load: Option<crate::judge::outcome::HostLoad>,
}

impl ScenarioSummary {
    /// A scenario not judged yet.
    pub fn pending(name: &str, file: &Path, tags: &[String], seed: u64) -> ScenarioSummary {
        ScenarioSummary {
            name: name.to_owned(),
            suite: suite_of(file),
            file: file.to_owned(),
            tags: tags.to_vec(),
            seed,
            judgement: Judgement::not_run(PENDING),
            start: None,
            boot_s: None,
            duration_s: 0.0,
            vm_exit: None,
            guest: None,
            retried_after: None,
            attempt: 1,
            run_seed: seed,
            dir: name.to_owned(),
            reproduce: None,
            vm: Default::default(),
            host_load: None,
        }
    }
}

impl Default for ScenarioSummary {
    fn default() -> ScenarioSummary {
        ScenarioSummary::pending("", Path::new(""), &[], 0)
    }
}

/// Why a `summary.json` cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file cannot be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The summary.json.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not the lab's JSON.
    #[error("{}: not a lab summary: {why}", path.display())]
    Parse {
        /// The summary.json.
        path: PathBuf,
        /// What serde said.
        why: String,
    },
    /// A layout this lab does not know.
    #[error("{}: summary schema {found}, this lab reads schema {SCHEMA}", path.display())]
    Schema {
        /// The summary.json.
        path: PathBuf,
        /// Its `schema`.
        found: u32,
    },
}

/// The suite of a scenario file: its directory's name (`scenarios/smoke/x.yaml` → `smoke`).
pub fn suite_of(file: &Path) -> String {
    file.parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .unwrap_or_else(|| "scenarios".to_owned())
}

/// Per-scenario totals over its attempts (`per_scenario` in summary.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerScenario {
    /// Scenario name.
    pub name: String,
    /// Attempts judged (`not_run` ones are not counted).
    pub attempts: u64,
    /// Attempts that failed, errored or timed out.
    pub failures: u64,
    /// `failures / attempts` (0 when nothing ran).
    pub failure_rate: f64,
    /// The seeds of the failing attempts (`seed` of their entries).
    pub failing_seeds: Vec<u64>,
    /// Their attempt numbers.
    pub failing_attempts: Vec<u64>,
}

/// Totals per scenario name, in order of first appearance.
pub fn per_scenario(entries: &[ScenarioSummary]) -> Vec<PerScenario> {
    let mut out: Vec<PerScenario> = Vec::new();
    for e in entries {
        let i = match out.iter().position(|p| p.name == e.name) {
            Some(i) => i,
            None => {
                out.push(PerScenario {
                    name: e.name.clone(),
                    attempts: 0,
                    failures: 0,
                    failure_rate: 0.0,
                    failing_seeds: Vec::new(),
                    failing_attempts: Vec::new(),
                });
                out.len() - 1
            }
        };
        let p = &mut out[i];
        let v = e.judgement.verdict;
        if v.ran() {
            p.attempts += 1;
        }
        // A known kernel bug reproduced is still a failing attempt: its
        // rate is what someone chasing the race wants.
        if v.is_failing_attempt() {
            p.failures += 1;
            p.failing_seeds.push(e.seed);
            p.failing_attempts.push(e.attempt);
        }
    }
    for p in &mut out {
        if p.attempts > 0 {
            p.failure_rate = p.failures as f64 / p.attempts as f64;
        }
    }
    out
}

/// The whole run.
/// Read back leniently (`#[serde(default)]`), so every `schema: 1` file
/// written so far reads: a field added since takes its default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    /// Layout version: [`SCHEMA`].
    pub schema: u32,
    /// Run id (folder name).
    pub run_id: String,
    /// Start time (UTC, RFC 3339).
    pub started: String,
    /// True only once the run has finished normally: every planned scenario
    /// judged and no abort.
    pub complete: bool,
    /// Set when an infrastructure error stopped the run early, or a signal
    /// (then `interrupted` is true too).
    pub aborted: Option<Abort>,
    /// SIGINT/SIGTERM stopped the run (`aborted` says after how many).
    pub interrupted: bool,
    /// `--shard i/N` this run was, `None` for a whole run.
    pub shard: Option<String>,
    /// The catalogue's identity (`record::shards::catalogue`: the selected
    /// scenario files' names and contents, before `--shard`); `None` in
    /// runs written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalogue: Option<String>,
    /// With `--shard`: every scenario selected before the split, so that
    /// `lab merge` knows what the night planned. Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shard_plan: Vec<crate::record::shards::PlannedScenario>,
    /// A run written by `lab merge`: which shard ran what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<Vec<crate::record::shards::ShardPart>>,
    /// Kernel that ran; `None` until (or if never) resolved.
    pub kernel: Option<Kernel>,
    /// Backend name; `None` until picked.
    pub backend: Option<String>,
    /// Accelerator; `None` until the backend is picked.
    pub accelerator: Option<String>,
    /// Why this backend/accelerator; `None` until picked.
    pub backend_reason: Option<String>,
    /// The run's seed.
    pub seed: u64,
    /// Scenarios planned (= `scenarios.len()`).
    pub planned: usize,
    /// Passed scenarios.
    pub passed: usize,
    /// Failed scenarios.
    pub failed: usize,
    /// Scenarios that failed as a documented kernel bug (`known_fail`).
    pub known_failures: usize,
    /// Errored scenarios.
    pub errors: usize,
    /// Timed-out scenarios.
    pub timeouts: usize,
    /// Scenarios not (yet) run.
    pub not_run: usize,
    /// Scenarios skipped: the kernel lacks what they require.
    #[serde(default)]
    pub skipped: usize,
    /// Wall time so far (s).
    pub wall_s: f64,
    /// The `lab run` options that replay this run's kernel (pinned, with
    /// its sha256), backend and verdict-deciding options; `lab repro` and
    /// each `reproduce` line use them. Empty until the kernel is resolved.
    #[serde(default)]
    pub replay_args: Vec<String>,
    /// Every planned scenario, in plan order.
    pub scenarios: Vec<ScenarioSummary>,
    /// Per scenario name: attempts, failures, failure rate, failing seeds.
    pub per_scenario: Vec<PerScenario>,
}

impl Summary {
    /// The `summary.json` at `path`, through the same types the writer
    /// uses: every reader (compare, report, repro, shards, mutate, bisect)
    /// reads runs this way.
    pub fn read(path: &Path) -> Result<Summary, ReadError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReadError::Io {
            path: path.to_owned(),
            source,
        })?;
        let parse = |why: String| ReadError::Parse {
            path: path.to_owned(),
            why,
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| parse(e.to_string()))?;
        // A missing `schema` is the first layout (its files said nothing).
        let found = value
            .get("schema")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(1);
        if found != u64::from(SCHEMA) {
            return Err(ReadError::Schema {
                path: path.to_owned(),
                found: u32::try_from(found).unwrap_or(u32::MAX),
            });
        }
        if !value
            .get("scenarios")
            .is_some_and(serde_json::Value::is_array)
        {
            return Err(parse("no `scenarios` array".into()));
        }
        serde_json::from_value(value).map_err(|e| parse(e.to_string()))
    }

    /// The summary of the run folder `dir`.
    pub fn read_run(dir: &Path) -> Result<Summary, ReadError> {
        Summary::read(&dir.join("summary.json"))
    }
}

impl Summary {
    /// A run about to start: every scenario pending.
    pub fn new(run_id: &str, seed: u64, scenarios: Vec<ScenarioSummary>) -> Summary {
        let mut s = Summary {
            schema: SCHEMA,
            run_id: run_id.to_owned(),
            started: now_rfc3339(),
            complete: false,
            aborted: None,
            interrupted: false,
            shard: None,
            catalogue: None,
            shard_plan: Vec::new(),
            shards: None,
            kernel: None,
            backend: None,
            accelerator: None,
            backend_reason: None,
            seed,
            planned: scenarios.len(),
            passed: 0,
            failed: 0,
            known_failures: 0,
            errors: 0,
            timeouts: 0,
            not_run: 0,
            skipped: 0,
            wall_s: 0.0,
            replay_args: Vec::new(),
            scenarios,
            per_scenario: Vec::new(),
        };
        s.recount();
        s
    }

    /// Recount the verdicts.
    pub fn recount(&mut self) {
        let count = |v| {
            self.scenarios
                .iter()
                .filter(|s| s.judgement.verdict == v)
                .count()
        };
        self.passed = count(Verdict::Pass);
        self.failed = count(Verdict::Fail);
        self.known_failures = count(Verdict::KnownFail);
        self.errors = count(Verdict::Error);
        self.timeouts = count(Verdict::Timeout);
        self.not_run = count(Verdict::NotRun);
        self.skipped = count(Verdict::Skipped);
        self.planned = self.scenarios.len();
        self.per_scenario = per_scenario(&self.scenarios);
    }

    /// Record that an infrastructure error stops the run: every scenario
    /// not judged yet becomes `not_run` with `aborted: <first line of the
    /// reason>`. The first abort wins.
    pub fn abort(&mut self, reason: &str, scenario: Option<&str>) {
        if self.aborted.is_none() {
            self.aborted = Some(Abort {
                reason: reason.to_owned(),
                scenario: scenario.map(str::to_owned),
            });
        }
        let full = &self.aborted.as_ref().expect("set").reason;
        let reason = format!("aborted: {}", full.lines().next().unwrap_or(""));
        for s in &mut self.scenarios {
            if s.judgement.verdict == Verdict::NotRun {
                s.judgement.reason = reason.clone();
            }
        }
        self.recount();
    }

    /// A signal stops the run: abort with `interrupted (SIG...) after n/N`,
    /// and every scenario not judged is `not_run` with the reason `interrupted`.
    pub fn interrupt(&mut self, signal: &str) {
        self.recount();
        let judged = self.planned - self.not_run;
        self.interrupted = true;
        self.abort(
            &format!(
                "interrupted ({signal}) after {judged}/{} scenario(s)",
                self.planned
            ),
            None,
        );
        self.skip_rest(INTERRUPTED);
    }

    /// Every scenario not judged yet becomes `not_run` with `reason` (e.g.
    /// [`FAIL_FAST`]); the run stays incomplete.
    pub fn skip_rest(&mut self, reason: &str) {
        for s in &mut self.scenarios {
            if s.judgement.verdict == Verdict::NotRun {
                s.judgement.reason = reason.to_owned();
            }
        }
        self.recount();
    }

    /// The run is over: recount and decide `complete`.
    pub fn finish(&mut self, wall_s: f64) {
        self.recount();
        self.wall_s = wall_s;
        self.complete = self.aborted.is_none() && self.not_run == 0;
    }

    /// Every planned scenario passed (or failed only as a documented kernel
    /// bug, or was skipped for a capability the kernel lacks: shown, and
    /// never counted as passed) and the run finished normally.
    pub fn green(&self) -> bool {
        self.complete
            && self.planned > 0
            && self.passed + self.known_failures + self.skipped == self.planned
    }
}

/// UTC civil time from a Unix timestamp: (year, month, day, h, m, s).
pub fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem / 60 % 60) as u32,
        (rem % 60) as u32,
    )
}

/// Now as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// Whether XML can carry `c`. XML 1.0 forbids most C0 controls, U+FFFE and
/// U+FFFF; DEL and the C1 controls are allowed but discouraged (and
/// forbidden raw in XML 1.1), so they go too. The guest writes the console:
/// anything can be in it.
fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r')
        || (c >= ' ' && !('\u{7f}'..='\u{9f}').contains(&c) && c != '\u{fffe}' && c != '\u{ffff}')
}

/// Escape text content for XML, dropping characters XML cannot carry. `>`
/// is escaped too, so `]]>` never appears; `\r` becomes a reference so a
/// parser's line-end normalisation keeps it.
pub fn xml_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().filter(|&c| xml_char(c)) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

/// Escape an attribute value: as [`xml_text`], plus quotes, and tabs and
/// line ends as references (a parser would turn them into spaces).
pub fn xml_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().filter(|&c| xml_char(c)) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

/// A JUnit `message` attribute: the first line, at most 500 characters.
fn message(text: &str) -> String {
    let first = text.lines().next().unwrap_or("");
    xml_attr(&first.chars().take(500).collect::<String>())
}

/// Prefix of every JUnit suite and class name.
const JUNIT_PREFIX: &str = "arena-lab";

/// What a JUnit testcase holds besides its name.
enum Outcome<'a> {
    Pass,
    /// `<failure>`: an expectation did not hold.
    Failure {
        kind: &'a str,
        text: &'a str,
    },
    /// `<error>`: the test could not be carried out, or ran out of time.
    Error {
        kind: &'a str,
        text: &'a str,
    },
    /// `<skipped>`.
    Skipped {
        message: String,
        text: &'a str,
    },
}

#[derive(Default)]
struct Counts {
    tests: usize,
    failures: usize,
    errors: usize,
    skipped: usize,
    time: f64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.tests += o.tests;
        self.failures += o.failures;
        self.errors += o.errors;
        self.skipped += o.skipped;
        self.time += o.time;
    }

    fn attrs(&self) -> String {
        format!(
            "tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\"",
            self.tests, self.failures, self.errors, self.skipped, self.time
        )
    }
}

fn testcase(
    out: &mut String,
    counts: &mut Counts,
    class: &str,
    name: &str,
    time: f64,
    outcome: Outcome,
    system_out: &str,
) {
    counts.tests += 1;
    out.push_str(&format!(
        "    <testcase classname=\"{}\" name=\"{}\" time=\"{time:.3}\"",
        xml_attr(class),
        xml_attr(name)
    ));
    if matches!(outcome, Outcome::Pass) && system_out.is_empty() {
        out.push_str("/>\n");
        return;
    }
    out.push_str(">\n");
    match outcome {
        Outcome::Pass => {}
        Outcome::Failure { kind, text } => {
            counts.failures += 1;
            out.push_str(&format!(
                "      <failure type=\"{kind}\" message=\"{}\">{}</failure>\n",
                message(text),
                xml_text(text)
            ));
        }
        Outcome::Error { kind, text } => {
            counts.errors += 1;
            out.push_str(&format!(
                "      <error type=\"{kind}\" message=\"{}\">{}</error>\n",
                message(text),
                xml_text(text)
            ));
        }
        Outcome::Skipped { message: m, text } => {
            counts.skipped += 1;
            out.push_str(&format!(
                "      <skipped message=\"{}\">{}</skipped>\n",
                message(&m),
                xml_text(text)
            ));
        }
    }
    if !system_out.is_empty() {
        out.push_str(&format!(
            "      <system-out>{}</system-out>\n",
            xml_text(system_out)
        ));
    }
    out.push_str("    </testcase>\n");
}

/// `<system-out>` of a scenario that did not pass: the console's last lines
/// and the text of the first splats.
fn scenario_output(s: &ScenarioSummary) -> String {
    let j = &s.judgement;
    let mut out = String::new();
    if let Some(tail) = &j.console_tail {
        out.push_str(&format!(
            "console.log, last {} lines:\n{tail}\n",
            tail.lines().count()
        ));
    }
    for splat in &j.splats {
        // Decoded (function+off (file:line)) where the vmlinux allowed it.
        if let Some(text) = splat.decoded.as_ref().or(splat.text.as_ref()) {
            out.push_str(&format!(
                "\nkernel splat at console.log:{}:\n{text}\n",
                splat.line
            ));
        }
    }
    out
}

/// The testcases of one scenario: itself, then its selftest results.
fn scenario_cases(out: &mut String, counts: &mut Counts, class: &str, s: &ScenarioSummary) {
    let j = &s.judgement;
    let text = if j.reason.is_empty() {
        j.verdict.as_str()
    } else {
        j.reason.as_str()
    };
    let outcome = match j.verdict {
        Verdict::Pass => Outcome::Pass,
        Verdict::Fail => Outcome::Failure { kind: "fail", text },
        // It failed, as documented: visible in CI, not red.
        Verdict::KnownFail => Outcome::Skipped {
            message: format!(
                "known kernel bug: {}",
                j.known_issue.as_deref().unwrap_or("")
            ),
            text,
        },
        Verdict::Error => Outcome::Error {
            kind: if j.infra { "infrastructure" } else { "error" },
            text,
        },
        Verdict::Timeout => Outcome::Error {
            kind: "timeout",
            text,
        },
        Verdict::NotRun => Outcome::Skipped {
            message: format!("not run: {text}"),
            text,
        },
        Verdict::Skipped => Outcome::Skipped {
            message: format!("skipped: {text}"),
            text,
        },
    };
    let system_out = if j.verdict == Verdict::Pass {
        String::new()
    } else {
        scenario_output(s)
    };
    testcase(
        out,
        counts,
        class,
        &s.name,
        s.duration_s,
        outcome,
        &system_out,
    );
    // Selftest results run inside the scenario: their time is already in it.
    counts.time += s.duration_s;
    let sub_class = format!("{class}.{}", s.name);
    for t in &j.testcases {
        let log = if t.log.is_empty() {
            "no log"
        } else {
            t.log.as_str()
        };
        let outcome = match t.status {
            StepStatus::Pass => Outcome::Pass,
            StepStatus::Fail => Outcome::Failure {
                kind: "fail",
                text: log,
            },
            StepStatus::Error => Outcome::Error {
                kind: "error",
                text: log,
            },
            StepStatus::Timeout => Outcome::Error {
                kind: "timeout",
                text: log,
            },
            StepStatus::Skip => Outcome::Skipped {
                message: "skipped by test_progs".into(),
                text: &t.log,
            },
        };
        testcase(out, counts, &sub_class, &t.name, t.duration_s, outcome, "");
    }
}

fn properties(summary: &Summary) -> String {
    let mut props = vec![
        ("run_id", summary.run_id.clone()),
        ("seed", summary.seed.to_string()),
    ];
    if let Some(k) = &summary.kernel {
        props.push(("kernel_release", k.release.clone()));
        props.push(("kernel_sha256", k.sha256.clone()));
    }
    if let Some(b) = &summary.backend {
        props.push(("backend", b.clone()));
    }
    let mut out = String::from("    <properties>\n");
    for (name, value) in props {
        out.push_str(&format!(
            "      <property name=\"{name}\" value=\"{}\"/>\n",
            xml_attr(&value)
        ));
    }
    out.push_str("    </properties>\n");
    out
}

fn testsuite(out: &mut String, summary: &Summary, name: &str, counts: &Counts, cases: &str) {
    out.push_str(&format!(
        "  <testsuite name=\"{}\" {} timestamp=\"{}\">\n{}{cases}  </testsuite>\n",
        xml_attr(name),
        counts.attrs(),
        xml_attr(&summary.started),
        properties(summary),
    ));
}

/// JUnit XML: one `<testsuite name="arena-lab.<dir>">` per scenario
/// directory, in plan order, with one testcase per scenario and one per
/// selftest result. `fail` is a `<failure>`; `error` and `timeout` are
/// `<error>`s; `not_run` is a `<skipped>` (and counted as skipped only).
/// A run that is not complete gets one more suite, `arena-lab.run`, whose
/// testcase `lab-run-aborted` (or `lab-run-incomplete` for a runner still
/// going or killed) is an `<error>`: a JUnit consumer that ignores skips
/// still sees the run red.
pub fn junit(summary: &Summary) -> String {
    let mut suites: Vec<(&str, Vec<&ScenarioSummary>)> = Vec::new();
    for s in &summary.scenarios {
        match suites.iter_mut().find(|(name, _)| *name == s.suite) {
            Some((_, list)) => list.push(s),
            None => suites.push((&s.suite, vec![s])),
        }
    }
    let mut body = String::new();
    let mut total = Counts::default();
    for (suite, scenarios) in suites {
        let name = format!("{JUNIT_PREFIX}.{suite}");
        let (mut cases, mut counts) = (String::new(), Counts::default());
        for s in scenarios {
            scenario_cases(&mut cases, &mut counts, &name, s);
        }
        testsuite(&mut body, summary, &name, &counts, &cases);
        total.add(&counts);
    }
    if !summary.complete {
        let name = format!("{JUNIT_PREFIX}.run");
        let (mut cases, mut counts) = (String::new(), Counts::default());
        let judged = summary.planned - summary.not_run;
        let (case, kind, text) = match &summary.aborted {
            Some(a) => (
                "lab-run-aborted",
                "aborted",
                format!(
                    "{}\n{judged} of {} scenario(s) judged, {} not run",
                    a.reason, summary.planned, summary.not_run
                ),
            ),
            None if summary
                .scenarios
                .iter()
                .any(|s| s.judgement.reason == FAIL_FAST) =>
            {
                (
                    "lab-run-incomplete",
                    "fail-fast",
                    format!(
                        "--fail-fast stopped the run after a failure: {judged} of {} scenario(s) judged",
                        summary.planned
                    ),
                )
            }
            None => (
                "lab-run-incomplete",
                "incomplete",
                format!(
                    "the run has not finished (still running, or killed): {judged} of {} scenario(s) judged",
                    summary.planned
                ),
            ),
        };
        let outcome = Outcome::Error { kind, text: &text };
        testcase(
            &mut cases,
            &mut counts,
            &name,
            case,
            summary.wall_s,
            outcome,
            "",
        );
        counts.time = summary.wall_s;
        testsuite(&mut body, summary, &name, &counts, &cases);
        total.add(&counts);
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"{JUNIT_PREFIX}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\">\n{body}</testsuites>\n",
        total.tests, total.failures, total.errors, total.skipped, summary.wall_s,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::outcome::{End, Received, Record};
    use crate::judge::verdict::{judge, TestcaseRecord};
    use arena_images::kernel::KernelOrigin;
    use arena_protocol::GuestMessage;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    fn scenario(name: &str, suite: &str, judgement: Judgement) -> ScenarioSummary {
        let mut s = ScenarioSummary::pending(
            name,
            &PathBuf::from(format!("scenarios/{suite}/{name}.yaml")),
            &["smoke".into()],
            1,
        );
        s.judgement = judgement;
        if s.judgement.verdict != Verdict::NotRun {
            s.boot_s = Some(1.0);
            s.duration_s = 2.0;
            s.vm_exit = Some(VmExit::Exited(ExitStatus::from_raw(0)));
        }
        s
    }

    fn judged(verdict: Verdict, reason: &str) -> Judgement {
        let mut j = Judgement::not_run(reason);
        j.verdict = verdict;
        j
    }

    fn kernel() -> Kernel {
        Kernel {
            origin: KernelOrigin::User { path: "/k".into() },
            boot_image: "/k".into(),
            elf_without_pvh: false,
            bzimage: None,
            vmlinux: None,
            modules: None,
            release: "6.12".into(),
            version: "Linux version 6.12".into(),
            sha256: "0".into(),
        }
    }

    fn summary(run_id: &str, scenarios: Vec<ScenarioSummary>) -> Summary {
        let mut s = Summary::new(run_id, 1, scenarios);
        s.kernel = Some(kernel());
        s.backend = Some("qemu".into());
        s.accelerator = Some("tcg".into());
        s.backend_reason = Some("no KVM".into());
        s.finish(1.0);
        s
    }

    /// Checks what an XML 1.0 parser would: only allowed characters, every
    /// `&` a known reference, attribute values quoted without `<`, no
    /// `]]>` in text, and tags that nest.
    fn assert_well_formed(x: &str) {
        for c in x.chars() {
            assert!(xml_char(c), "character U+{:04X} in XML", c as u32);
        }
        assert!(!x.contains("]]>"), "]]> in XML");
        for (i, _) in x.match_indices('&') {
            let rest = &x[i..];
            let ok = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;", "&#"]
                .iter()
                .any(|e| rest.starts_with(e));
            assert!(ok, "bare & at {}", &rest[..rest.len().min(20)]);
        }
        let body = x
            .strip_prefix("<?xml")
            .and_then(|r| r.split_once("?>"))
            .unwrap()
            .1;
        let mut stack: Vec<String> = Vec::new();
        let mut rest = body;
        while let Some(open) = rest.find('<') {
            let close = rest[open..].find('>').expect("unterminated tag") + open;
            let tag = &rest[open + 1..close];
            assert!(
                tag.matches('"').count() & 1 == 0 && !tag.contains('<'),
                "bad tag <{tag}>"
            );
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "unbalanced </{name}>");
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().unwrap().to_owned());
            }
            rest = &rest[close + 1..];
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
    }

    fn attr<'a>(x: &'a str, element: &str, name: &str) -> &'a str {
        let start = x.find(&format!("<{element} ")).unwrap();
        let tag = &x[start..start + x[start..].find('>').unwrap()];
        let key = format!(" {name}=\"");
        let v = &tag[tag.find(&key).unwrap() + key.len()..];
        &v[..v.find('"').unwrap()]
    }

    #[test]
    fn junit_counts_errors_failures_and_skips_apart() {
        let mut s = summary(
            "r",
            vec![
                scenario("ok", "smoke", judged(Verdict::Pass, "")),
                scenario("bad", "smoke", judged(Verdict::Fail, "expected 1, got 2")),
                scenario("broken", "smoke", judged(Verdict::Error, "step 0: ENOENT")),
                scenario(
                    "slow",
                    "smoke",
                    judged(Verdict::Timeout, "no result within 40 s"),
                ),
                scenario("later", "smoke", Judgement::not_run(PENDING)),
            ],
        );
        s.abort("slow: the VM hung", Some("slow"));
        s.finish(9.0);
        assert!(!s.complete);
        assert_eq!(
            (s.passed, s.failed, s.errors, s.timeouts, s.not_run),
            (1, 1, 1, 1, 1)
        );
        let x = junit(&s);
        assert_well_formed(&x);
        // 5 scenarios + the abort; error + timeout + abort are errors.
        assert_eq!(attr(&x, "testsuites", "tests"), "6");
        assert_eq!(attr(&x, "testsuites", "failures"), "1");
        assert_eq!(attr(&x, "testsuites", "errors"), "3");
        assert_eq!(attr(&x, "testsuites", "skipped"), "1");
        assert!(x.contains("<failure type=\"fail\" message=\"expected 1, got 2\">"));
        assert!(x.contains("<error type=\"error\" message=\"step 0: ENOENT\">"));
        assert!(x.contains("<error type=\"timeout\" message=\"no result within 40 s\">"));
        assert!(
            x.contains("<skipped message=\"not run: aborted: slow: the VM hung\">"),
            "{x}"
        );
        assert!(x.contains("name=\"lab-run-aborted\""));
        assert!(x.contains("<error type=\"aborted\" message=\"slow: the VM hung\">"));
    }

    #[test]
    fn junit_suites_are_named_by_directory_and_stable_across_runs() {
        let make = |id: &str| {
            summary(
                id,
                vec![
                    scenario("a", "smoke", judged(Verdict::Pass, "")),
                    scenario("b", "selftests", judged(Verdict::Pass, "")),
                    scenario("c", "smoke", judged(Verdict::Pass, "")),
                ],
            )
        };
        let suites = |x: &str| -> Vec<String> {
            x.match_indices("<testsuite name=\"")
                .map(|(i, m)| {
                    let v = &x[i + m.len()..];
                    v[..v.find('"').unwrap()].to_owned()
                })
                .collect()
        };
        let (one, two) = (
            junit(&make("20260101-000000")),
            junit(&make("20260102-000000")),
        );
        assert_eq!(suites(&one), ["arena-lab.smoke", "arena-lab.selftests"]);
        assert_eq!(suites(&one), suites(&two));
        assert!(one.contains("<testcase classname=\"arena-lab.smoke\" name=\"a\" time=\"2.000\"/>"));
        assert!(one.contains("<property name=\"run_id\" value=\"20260101-000000\"/>"));
        assert!(
            !one.contains("arena-lab.run"),
            "a complete green run has no run-level case"
        );
        assert_eq!(attr(&one, "testsuites", "errors"), "0");
    }

    #[test]
    fn junit_escapes_hostile_console_text() {
        let hostile =
            "a\u{0}b\u{1b}[31mred\u{7}</system-out>]]><x y=\"1\">&amp;\u{fffe}\u{85}\r\nend";
        let mut j = judged(Verdict::Fail, &format!("kernel splat: {hostile}\nmore"));
        j.console_tail = Some(hostile.into());
        j.testcases = vec![TestcaseRecord {
            name: format!("arena/{hostile}"),
            status: StepStatus::Fail,
            log: hostile.into(),
            duration_s: 0.25,
        }];
        let x = junit(&summary("r", vec![scenario("s", "smoke", j)]));
        assert_well_formed(&x);
        assert!(
            x.contains("ab[31mred&lt;/system-out&gt;]]&gt;&lt;x y=\"1\"&gt;&amp;amp;&#13;\nend")
        );
        assert!(x.contains("message=\"kernel splat: ab[31mred&lt;/system-out&gt;]]&gt;&lt;x y=&quot;1&quot;&gt;&amp;amp;\""), "{x}");
        assert!(x.contains("<system-out>console.log, last 2 lines:\nab[31mred"));
        assert_eq!(xml_text("a\u{1}b\u{1b}[0mc\n"), "ab[0mc\n");
        assert_eq!(xml_attr("a\tb\nc"), "a&#9;b&#10;c");
    }

    #[test]
    fn junit_not_run_pending_and_times() {
        let mut tc = judged(Verdict::Pass, "");
        tc.testcases = vec![
            TestcaseRecord {
                name: "arena_list/arena_list_1".into(),
                status: StepStatus::Pass,
                log: String::new(),
                duration_s: 0.5,
            },
            TestcaseRecord {
                name: "arena_htab/arena_htab_llvm".into(),
                status: StepStatus::Fail,
                log: "test_arena_htab:FAIL:x".into(),
                duration_s: 1.25,
            },
            TestcaseRecord {
                name: "arena_atomics/skipped".into(),
                status: StepStatus::Skip,
                log: String::new(),
                duration_s: 0.0,
            },
        ];
        // What a killed runner leaves: one judged scenario, the rest pending.
        let mut s = Summary::new(
            "r",
            1,
            vec![
                scenario("selftests-arena", "selftests", tc),
                scenario("later", "selftests", Judgement::not_run(PENDING)),
            ],
        );
        s.wall_s = 3.0;
        let x = junit(&s);
        assert_well_formed(&x);
        assert!(x.contains(
            "<testcase classname=\"arena-lab.selftests.selftests-arena\" name=\"arena_list/arena_list_1\" time=\"0.500\"/>"
        ));
        assert!(x.contains("name=\"arena_htab/arena_htab_llvm\" time=\"1.250\">"));
        assert!(x.contains(">test_arena_htab:FAIL:x</failure>"));
        assert!(x.contains("<skipped message=\"skipped by test_progs\">"));
        assert!(x.contains(&format!("<skipped message=\"not run: {PENDING}\">")));
        assert!(x.contains("name=\"lab-run-incomplete\" time=\"3.000\""));
        // 2 scenarios + 3 subtests + the incomplete run.
        assert_eq!(attr(&x, "testsuites", "tests"), "6");
        assert_eq!(attr(&x, "testsuites", "failures"), "1");
        assert_eq!(attr(&x, "testsuites", "errors"), "1");
        assert_eq!(attr(&x, "testsuites", "skipped"), "2");
        for (i, _) in x.match_indices("<testcase ") {
            assert!(x[i..].split('>').next().unwrap().contains(" time=\""));
        }
    }

    #[test]
    fn abort_marks_the_rest_not_run_and_never_complete() {
        let mut s = Summary::new(
            "r",
            1,
            vec![
                scenario("a", "smoke", judged(Verdict::Pass, "")),
                scenario("b", "smoke", Judgement::not_run(PENDING)),
            ],
        );
        s.abort("kernel: no kernel package: x", None);
        s.abort("second", Some("b"));
        s.finish(1.0);
        assert!(!s.complete && !s.green());
        assert_eq!(
            s.aborted.as_ref().unwrap().reason,
            "kernel: no kernel package: x"
        );
        assert_eq!(
            s.scenarios[1].judgement.reason,
            "aborted: kernel: no kernel package: x"
        );
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["schema"], 1);
        assert_eq!(v["complete"], false);
        assert_eq!(v["not_run"], 1);
        assert_eq!(
            v["aborted"],
            serde_json::json!({"reason": "kernel: no kernel package: x", "scenario": null})
        );
        assert_eq!(v["scenarios"][1]["verdict"], "not_run");
    }

    fn strings<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::String(s) => out.push(s),
            serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            serde_json::Value::Object(o) => o.iter().for_each(|(k, v)| {
                out.push(k);
                strings(v, out)
            }),
            _ => {}
        }
    }

    #[test]
    fn summary_is_schema_1_without_debug_text() {
        let record = |end: End, messages: Vec<GuestMessage>| Record {
            hello: None,
            boot_s: Some(1.0),
            messages: messages
                .into_iter()
                .map(|message| Received { at: 1.5, message })
                .collect(),
            end,
            vm_exit: Some(VmExit::Exited(ExitStatus::from_raw(0))),
            total_s: 2.0,
            host_load: None,
        };
        let console = "boot\n[ 2.0] WARNING: CPU: 0 PID: 1 at kernel/bpf/arena.c:1 f\nend\n";
        let pass = judge(
            &record(
                End::Done {
                    status: StepStatus::Pass,
                    reason: String::new(),
                    killed: None,
                },
                vec![],
            ),
            "",
        );
        let splat = judge(
            &record(
                End::Done {
                    status: StepStatus::Pass,
                    reason: String::new(),
                    killed: None,
                },
                vec![GuestMessage::Testcase {
                    name: "arena_list/1".into(),
                    status: StepStatus::Fail,
                    log: "FAIL".into(),
                }],
            ),
            console,
        );
        let no_hello = judge(
            &record(
                End::NoHello("results channel closed before hello".into()),
                vec![],
            ),
            console,
        );
        let timeout = judge(
            &record(
                End::HostTimeout(crate::judge::outcome::HostTimeout {
                    stop: crate::judge::outcome::Stop::Stalled(std::time::Duration::from_secs(3)),
                    silent: std::time::Duration::from_secs(3),
                }),
                vec![],
            ),
            console,
        );
        let exited = judge(
            &record(End::VmExited("signal: 9 (SIGKILL)".into()), vec![]),
            console,
        );
        let mut retried = scenario("retried", "smoke", no_hello);
        retried.retried_after = Some(SessionEnd::from(&End::NoHello(
            "results channel closed before hello".into(),
        )));
        let mut s = summary(
            "r",
            vec![
                scenario("pass", "smoke", pass),
                scenario("splat", "smoke", splat),
                retried,
                scenario("timeout", "smoke", timeout),
                scenario("exited", "smoke", exited),
                scenario(
                    "image",
                    "selftests",
                    Judgement::infra_error("guest image: no source"),
                ),
                scenario("later", "selftests", Judgement::not_run(PENDING)),
            ],
        );
        s.abort("image: guest image: no source", Some("image"));
        s.finish(5.0);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(SCHEMA, 1);
        assert_eq!(v["scenarios"][2]["retried_after"]["kind"], "no_hello");
        assert_eq!(v["scenarios"][1]["splats"][0]["kind"], "warning");
        let mut all = Vec::new();
        strings(&v, &mut all);
        for s in all {
            for debug in [
                "{ ",
                "Some(",
                "None",
                "NoHello",
                "Done {",
                "HostTimeout",
                "VmExited(",
                "Pass",
                "\"\"",
            ] {
                assert!(
                    !s.contains(debug),
                    "Debug text {debug:?} in summary string {s:?}"
                );
            }
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(1_795_000_000), (2026, 11, 18, 11, 6, 40));
    }

    #[test]
    fn suites_come_from_the_directory() {
        assert_eq!(suite_of(Path::new("scenarios/smoke/a.yaml")), "smoke");
        assert_eq!(suite_of(Path::new("/tmp/x/a.yaml")), "x");
        assert_eq!(suite_of(Path::new("a.yaml")), "scenarios");
    }

    #[test]
    fn run_dir_and_latest_link() {
        use crate::record::run_dir::RunDir;
        let root = std::env::temp_dir().join(format!("arena-results-{}", std::process::id()));
        let a = RunDir::create(&root).unwrap();
        let b = RunDir::create(&root).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(
            std::fs::read_link(root.join("latest")).unwrap(),
            PathBuf::from(&b.id)
        );
        b.write(&summary(
            "r",
            vec![scenario("s", "smoke", judged(Verdict::Pass, ""))],
        ))
        .unwrap();
        let text = std::fs::read_to_string(b.path.join("summary.json")).unwrap();
        assert!(text.contains("\"complete\": true"));
        assert!(b.path.join("junit.xml").is_file());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn per_scenario_totals() {
        let mut entries = Vec::new();
        for (k, v) in [Verdict::Pass, Verdict::Fail, Verdict::Pass, Verdict::NotRun]
            .into_iter()
            .enumerate()
        {
            let mut e = ScenarioSummary::pending("a", Path::new("a.yaml"), &[], 100 + k as u64);
            e.attempt = k as u64 + 1;
            e.judgement.verdict = v;
            entries.push(e);
        }
        let p = per_scenario(&entries);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].attempts, 3);
        assert_eq!(p[0].failures, 1);
        assert_eq!(p[0].failing_seeds, [101]);
        assert_eq!(p[0].failing_attempts, [2]);
        assert!((p[0].failure_rate - 1.0 / 3.0).abs() < 1e-9);
    }
}
