//! From what a session observed (and the console log) to a scenario verdict.

use std::fmt;

use serde::{Deserialize, Serialize};

use arena_protocol::scenario::KnownIssue;
use arena_protocol::step_ref::started_label;
use arena_protocol::{GuestMessage, StepStatus};

use crate::judge::outcome::{End, Record, Stop};
use crate::judge::splat;

/// Console lines kept with a scenario that did not pass (summary
/// `console_tail`, JUnit `<system-out>`).
pub const CONSOLE_TAIL_LINES: usize = 50;
/// Longest console line kept in a tail or a splat text: the guest is
/// untrusted and a line without newline could be megabytes.
const MAX_LINE_CHARS: usize = 1000;
/// Lines kept from a splat's first line on (when no end-of-trace marker
/// comes first).
const SPLAT_TEXT_LINES: usize = 40;
/// Splats whose text is kept; a flood of warnings would bloat the summary.
const SPLAT_TEXTS: usize = 3;
/// How a VM that the runner ended after a kernel panic went.
fn kernel_panic_end() -> String {
    format!(
        "was ended by the runner: the kernel panicked and did not reset within {} s",
        crate::judge::outcome::PANIC_GRACE.as_secs()
    )
}
/// Splat kinds after which the kernel is not expected to go on: whatever
/// the scenario then did (errored, stalled, lost its VM, reset, timed out)
/// happened because of the kernel, so the verdict is `fail`.
const FATAL_SPLATS: &[&str] = &["bug", "oops", "gpf", "panic"];

/// A scenario's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every step passed and the kernel log is clean.
    Pass,
    /// An expectation failed or the kernel splatted.
    Fail,
    /// It failed exactly as a kernel bug the scenario documents
    /// (`known_issues`): shown, never green, but not a regression.
    KnownFail,
    /// The scenario could not be carried out.
    Error,
    /// It ran out of time.
    Timeout,
    /// The run never got to it (aborted, killed, or still in progress); the
    /// reason says which. Never green.
    NotRun,
    /// The booted kernel lacks what the scenario `requires`; the reason
    /// names it. Not a pass, and not a failure of the run.
    Skipped,
}

impl Verdict {
    /// Red and news: `fail`, `error` or `timeout` (a documented kernel bug
    /// is not news, a skip or `not_run` did not run).
    pub fn is_failure(self) -> bool {
        matches!(self, Verdict::Fail | Verdict::Error | Verdict::Timeout)
    }

    /// An attempt that did not pass, a documented kernel bug included: what
    /// a failure rate counts and what ends an `--until-fail` loop.
    pub fn is_failing_attempt(self) -> bool {
        self.is_failure() || self == Verdict::KnownFail
    }

    /// It ran and has a kernel verdict or an error (not `not_run`, not
    /// `skipped`).
    pub fn ran(self) -> bool {
        !matches!(self, Verdict::NotRun | Verdict::Skipped)
    }

    /// Passed before (`base`), fails now: what makes `lab compare` exit 1.
    pub fn is_regression_from(self, base: Verdict) -> bool {
        base == Verdict::Pass && self.is_failure()
    }

    /// Failed before, passes now.
    pub fn is_fix_from(self, base: Verdict) -> bool {
        base.is_failure() && self == Verdict::Pass
    }

    /// How much a verdict matters among attempts of one scenario: a
    /// failure over a known kernel bug over a pass over a skip over
    /// `not_run`.
    pub fn severity(self) -> u8 {
        match self {
            Verdict::Timeout => 6,
            Verdict::Error => 5,
            Verdict::Fail => 4,
            Verdict::KnownFail => 3,
            Verdict::Pass => 2,
            Verdict::Skipped => 1,
            Verdict::NotRun => 0,
        }
    }

    /// The summary/JSON spelling (`pass`, ..., `not_run`).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::KnownFail => "known_fail",
            Verdict::Error => "error",
            Verdict::Timeout => "timeout",
            Verdict::NotRun => "not_run",
            Verdict::Skipped => "skipped",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The wire spelling of a step status (`pass`, `fail`, `error`, `timeout`, `skip`).
pub fn status_str(s: StepStatus) -> &'static str {
    match s {
        StepStatus::Pass => "pass",
        StepStatus::Fail => "fail",
        StepStatus::Error => "error",
        StepStatus::Timeout => "timeout",
        StepStatus::Skip => "skip",
    }
}

/// How a VM session ended, as data (the summary's `retried_after`): never
/// the runner's internal representation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SessionEnd {
    /// The agent reported the scenario done.
    Done {
        /// Overall step status.
        status: StepStatus,
        /// The agent's reason ("" on pass).
        reason: String,
    },
    /// The VM never got to the agent's hello.
    NoHello {
        /// What was seen instead.
        reason: String,
    },
    /// The scenario stalled or outlived its hard cap; the VM was killed.
    HostTimeout {
        /// The host-side limit that was hit (s): the stall, or the hard cap.
        limit_s: u64,
        /// Whether the hard cap was hit (the guest was still progressing);
        /// `false`: it stalled.
        #[serde(default)]
        hard_cap: bool,
    },
    /// The VM exited after hello without the agent saying done.
    VmExited {
        /// How the VM process ended.
        status: String,
    },
    /// The guest broke the results protocol.
    Protocol {
        /// What was wrong.
        reason: String,
    },
    /// The console shows the machine below the kernel failed
    /// ([`crate::judge::splat::machine_fault`]): not a kernel verdict.
    EmulatorFault {
        /// The splat's title (`Oops: int3: …`).
        title: String,
        /// 1-based line in that attempt's console log.
        line: usize,
        /// Why it is the machine's doing (absent in older summaries: an
        /// int3 oops under TCG, the only cause then).
        #[serde(default)]
        cause: String,
    },
}

impl From<crate::judge::splat::MachineFault> for SessionEnd {
    fn from(f: crate::judge::splat::MachineFault) -> Self {
        SessionEnd::EmulatorFault {
            title: f.splat.title,
            line: f.splat.line,
            cause: f.cause,
        }
    }
}

impl From<&End> for SessionEnd {
    fn from(end: &End) -> Self {
        match end {
            End::Done { status, reason, .. } => SessionEnd::Done {
                status: *status,
                reason: reason.clone(),
            },
            End::NoHello(reason) => SessionEnd::NoHello {
                reason: reason.clone(),
            },
            End::HostTimeout(t) => SessionEnd::HostTimeout {
                limit_s: t.limit().as_secs(),
                hard_cap: matches!(t.stop, Stop::HardCap(_)),
            },
            End::VmExited(status) => SessionEnd::VmExited {
                status: status.clone(),
            },
            End::KernelPanic => SessionEnd::VmExited {
                status: kernel_panic_end(),
            },
            End::Protocol(reason) => SessionEnd::Protocol {
                reason: reason.clone(),
            },
        }
    }
}

impl fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionEnd::Done { status, reason } if reason.is_empty() => {
                write!(f, "agent done: {}", status_str(*status))
            }
            SessionEnd::Done { status, reason } => {
                write!(f, "agent done: {}: {reason}", status_str(*status))
            }
            SessionEnd::NoHello { reason } => write!(f, "no agent hello: {reason}"),
            SessionEnd::HostTimeout {
                limit_s,
                hard_cap: false,
            } => write!(f, "no progress for {limit_s} s; VM killed"),
            SessionEnd::HostTimeout {
                limit_s,
                hard_cap: true,
            } => write!(f, "hard cap {limit_s} s reached; VM killed"),
            SessionEnd::VmExited { status } => {
                write!(f, "the VM exited ({status}) before the agent finished")
            }
            SessionEnd::Protocol { reason } => write!(f, "results channel: {reason}"),
            SessionEnd::EmulatorFault { title, line, cause } => {
                let cause = match cause.as_str() {
                    "" => "emulator fault under multi-threaded TCG",
                    c => c,
                };
                write!(f, "{cause}: {title} (console line {line})")
            }
        }
    }
}

/// One step's reported outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    /// Position (`0`, `1`, ...).
    pub path: String,
    /// Kind.
    pub kind: String,
    /// Outcome.
    pub status: StepStatus,
    /// What it did and saw.
    pub detail: String,
    /// Guest-side duration.
    pub duration_ms: u64,
    /// When the host learnt the step ended (seconds since VM start).
    pub ended_at_s: f64,
    /// Extras (seed, per-process outcomes...).
    #[serde(skip_serializing_if = "serde_json::Value::is_null", default)]
    pub data: serde_json::Value,
}

/// One upstream selftest result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestcaseRecord {
    /// `test/subtest`.
    pub name: String,
    /// Outcome.
    pub status: StepStatus,
    /// Log lines (failure text).
    pub log: String,
    /// Host-observed seconds since the previous result of the same run of
    /// `test_progs` (or its step's start): approximate, as guest output may
    /// arrive in bursts.
    #[serde(default)]
    pub duration_s: f64,
}

/// A kernel splat found in the console log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplatRecord {
    /// 1-based line in `console.log`.
    pub line: usize,
    /// Which detector matched (`bug`, `warning`, `kasan`, ...).
    pub kind: String,
    /// The line itself without its timestamp: the failure title.
    pub title: String,
    /// The splat's lines (up to the end-of-trace marker, at most 40), for
    /// the first three splats only; `None` for the rest.
    pub text: Option<String>,
    /// The function it happened in (its `RIP:`, else the first trace frame
    /// that is not the reporting machinery), when the text has a trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// `text` with each frame followed by `(file:line)`, decoded with the
    /// kernel's vmlinux (symbols and DWARF); `None` without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoded: Option<String>,
}

/// The judged outcome of one scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Judgement {
    /// Verdict.
    pub verdict: Verdict,
    /// Why, when not pass (the failure title first); "" on pass.
    pub reason: String,
    /// The VM or agent never came up, or the scenario could not be
    /// prepared: an infrastructure error (it aborts the run).
    pub infra: bool,
    /// Steps as reported.
    pub steps: Vec<StepRecord>,
    /// Selftest results.
    pub testcases: Vec<TestcaseRecord>,
    /// Splats found in the console log.
    pub splats: Vec<SplatRecord>,
    /// The last console lines when the verdict is not pass and a console
    /// exists; `None` otherwise.
    pub console_tail: Option<String>,
    /// With `known_fail`: the documented issue's note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_issue: Option<String>,
    /// A stall's diagnosis (what the agent and the kernel showed before
    /// the VM was killed); also written to `diagnosis.txt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<crate::judge::stall::StallDiagnosis>,
}

impl Default for Judgement {
    fn default() -> Judgement {
        Judgement::not_run("")
    }
}

impl Judgement {
    /// A scenario the run never got to.
    pub fn not_run(reason: impl Into<String>) -> Judgement {
        Judgement::without_vm(Verdict::NotRun, reason, false)
    }

    /// Overrules this judgement when `console` proves the machine under the
    /// kernel failed ([`splat::machine_fault`]): an `error`, never a `pass`
    /// or a kernel `fail`, and no reason to stop the run (it is sporadic,
    /// unlike a kernel that cannot boot). Returns whether it did.
    pub fn overrule_for_machine_fault(&mut self, console: &str, tcg: bool) -> bool {
        let Some(fault) = splat::machine_fault(console, tcg) else {
            return false;
        };
        self.verdict = Verdict::Error;
        self.infra = false;
        self.reason = format!("{}; not a kernel verdict", SessionEnd::from(fault));
        true
    }

    /// A scenario that could not be prepared (no VM ran): an infrastructure error.
    pub fn infra_error(reason: impl Into<String>) -> Judgement {
        Judgement::without_vm(Verdict::Error, reason, true)
    }

    fn without_vm(verdict: Verdict, reason: impl Into<String>, infra: bool) -> Judgement {
        Judgement {
            verdict,
            reason: reason.into(),
            infra,
            steps: Vec::new(),
            testcases: Vec::new(),
            splats: Vec::new(),
            console_tail: None,
            known_issue: None,
            diagnosis: None,
        }
    }

    /// A failure that matches one of `issues` on kernel `release` becomes
    /// `known_fail`, its reason unchanged; anything else stays as it is.
    pub fn apply_known_issues(&mut self, issues: &[KnownIssue], release: &str) {
        if self.verdict != Verdict::Fail {
            return;
        }
        if let Some(k) = issues.iter().find(|k| k.matches(release, &self.reason)) {
            self.verdict = Verdict::KnownFail;
            self.known_issue = Some(k.note.clone());
        }
    }
}

/// At most `MAX_LINE_CHARS` of a console line, without its `\r`.
fn clip(line: &str) -> &str {
    let line = line.trim_end_matches('\r');
    match line.char_indices().nth(MAX_LINE_CHARS) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}

/// The last `n` console lines, each clipped.
pub fn tail(console: &str, n: usize) -> String {
    let lines: Vec<&str> = console.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| clip(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The text of a splat starting at 1-based `line`: up to and including an
/// end-of-trace marker, at most `SPLAT_TEXT_LINES` lines.
fn splat_text(console: &str, line: usize) -> String {
    let mut out = Vec::new();
    for l in console
        .lines()
        .skip(line.saturating_sub(1))
        .take(SPLAT_TEXT_LINES)
    {
        out.push(clip(l));
        if l.contains("---[ end ") {
            break;
        }
    }
    out.join("\n")
}

/// The first line of a host timeout's reason: stalled or capped, where,
/// and how far the guest got by its last `progress`.
fn timeout_reason(
    t: &crate::judge::outcome::HostTimeout,
    open_step: Option<&str>,
    progress: Option<&GuestMessage>,
) -> String {
    let mut at = open_step
        .map(|step| format!(" at {step}"))
        .unwrap_or_default();
    if let Some(GuestMessage::Progress {
        elapsed_ms,
        workers,
        ..
    }) = progress
    {
        match workers {
            Some(w) => at.push_str(&format!(", {w}")),
            None => at.push_str(&format!(", {:.1} s into it", *elapsed_ms as f64 / 1000.0)),
        }
    }
    match t.stop {
        // Heartbeats came after the last advance: the guest runs but does
        // not get anywhere.
        Stop::Stalled(stalled) if t.silent < stalled => format!(
            "stalled for {} s{at}: the guest was alive but made no progress",
            stalled.as_secs()
        ),
        Stop::Stalled(stalled) => format!(
            "stalled for {} s{at}: no message from the guest for {} s",
            stalled.as_secs(),
            t.silent.as_secs()
        ),
        Stop::HardCap(cap) => format!(
            "hard cap {} s reached while still progressing{at}",
            cap.as_secs()
        ),
    }
}

/// Judge a session.
pub fn judge(record: &Record, console: &str) -> Judgement {
    let mut steps = Vec::new();
    let mut testcases = Vec::new();
    // How the open step is named (`step 3/12 (touch, x.yaml:9)`).
    let mut open_step: Option<String> = None;
    // The last `progress` of the open step: how far a timed-out guest got.
    let mut last_progress: Option<&GuestMessage> = None;
    // Arrival of the last step start or selftest result: a result's time
    // is measured from there.
    let mut mark = 0.0;
    for r in &record.messages {
        match &r.message {
            GuestMessage::StepStarted { path, kind, at } => {
                open_step = Some(started_label(path, kind, at.as_ref()));
                last_progress = None;
                mark = r.at;
            }
            GuestMessage::Progress { .. } => last_progress = Some(&r.message),
            GuestMessage::StepEnded {
                path,
                kind,
                status,
                detail,
                duration_ms,
                data,
            } => {
                open_step = None;
                last_progress = None;
                steps.push(StepRecord {
                    path: path.clone(),
                    kind: kind.clone(),
                    status: *status,
                    detail: detail.clone(),
                    duration_ms: *duration_ms,
                    ended_at_s: r.at,
                    data: data.clone(),
                });
            }
            GuestMessage::Testcase { name, status, log } => {
                testcases.push(TestcaseRecord {
                    name: name.clone(),
                    status: *status,
                    log: log.clone(),
                    duration_s: (r.at - mark).max(0.0),
                });
                mark = r.at;
            }
            _ => {}
        }
    }
    let during = open_step
        .as_ref()
        .map(|step| format!(" during {step}"))
        .unwrap_or_default();
    // On lines of their own, so a reason's first line stays a one-line title.
    let last_lines = || format!("\nlast console lines:\n{}", tail(console, 15));
    let mut diagnosis = None;
    let (mut verdict, mut reason, infra) = match &record.end {
        End::Done {
            status,
            reason,
            killed,
        } => {
            let v = match status {
                StepStatus::Pass => Verdict::Pass,
                // Only a scenario whose `requires` the kernel lacks ends so.
                StepStatus::Skip => Verdict::Skipped,
                StepStatus::Fail => Verdict::Fail,
                StepStatus::Error => Verdict::Error,
                StepStatus::Timeout => Verdict::Timeout,
            };
            // A killed worker cannot say where it died: the open step can.
            let reason = match killed {
                Some(_) => format!("{reason}{during}"),
                None => reason.clone(),
            };
            (v, reason, false)
        }
        End::NoHello(why) => {
            // The agent says why it gave up (e.g. no virtio driver): that
            // belongs in the title, not only in the console lines.
            let gave_up = arena_protocol::console::fatal_reason(console)
                .map(clip)
                .filter(|fatal| !why.contains(fatal) && !why.contains("agent gave up"))
                .map(|fatal| format!("; the agent gave up: {fatal}"))
                .unwrap_or_default();
            (
                Verdict::Error,
                format!("{why}{gave_up}{}", last_lines()),
                true,
            )
        }
        End::HostTimeout(t) => {
            // Kernel evidence leads the reason and fails the scenario;
            // without it, where the tasks wait follows the timeout.
            let stall = crate::judge::stall::assess(record, console);
            let timeout = timeout_reason(t, open_step.as_deref(), last_progress);
            let (v, title) = if stall.kernel_evidence {
                (Verdict::Fail, format!("{}; {timeout}", stall.finding))
            } else {
                (Verdict::Timeout, format!("{timeout}; {}", stall.finding))
            };
            diagnosis = Some(stall);
            (v, format!("{title}{}", last_lines()), false)
        }
        End::KernelPanic => (
            Verdict::Error,
            format!(
                "the VM {}{during}, before the agent finished{}",
                kernel_panic_end(),
                last_lines()
            ),
            false,
        ),
        End::VmExited(st) => (
            Verdict::Error,
            format!(
                "the VM exited ({st}){during} before the agent finished{}",
                last_lines()
            ),
            false,
        ),
        End::Protocol(why) => (Verdict::Error, format!("results channel: {why}"), false),
    };
    // Texts (and the function they name) only for the first few: each is
    // a scan of the console, and a flood of warnings can be thousands.
    let splats: Vec<SplatRecord> = splat::detect(console)
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let text = (i < SPLAT_TEXTS).then(|| splat_text(console, s.line));
            SplatRecord {
                function: text.as_deref().and_then(crate::judge::symbolize::culprit),
                text,
                decoded: None,
                line: s.line,
                kind: s.kind.to_owned(),
                title: s.title,
            }
        })
        .collect();
    if let Some(first) = splats.first() {
        if !infra {
            let function = first
                .function
                .as_ref()
                .filter(|f| !first.title.contains(&format!("{f}+")))
                .map(|f| format!(" in {f}"))
                .unwrap_or_default();
            // The task it names, by its role when it is a worker.
            let roles = crate::judge::stall::worker_roles(record);
            let who = crate::judge::stall::splat_pid(&first.title, first.text.as_deref())
                .and_then(|pid| Some(format!(" (PID {pid}: {})", roles.get(&pid)?)))
                .unwrap_or_default();
            let title = format!(
                "kernel splat: {}{who}{function} (console.log:{})",
                first.title, first.line
            );
            reason = if verdict == Verdict::Pass {
                title
            } else {
                format!("{title}; then: {reason}")
            };
            // Any fatal splat, not only the first: a WARNING often comes
            // before the oops it leads to.
            let kernel_died = splats
                .iter()
                .any(|s| FATAL_SPLATS.contains(&s.kind.as_str()));
            if verdict == Verdict::Pass
                || (kernel_died && matches!(verdict, Verdict::Error | Verdict::Timeout))
            {
                verdict = Verdict::Fail;
            }
        }
    }
    let console_tail = (verdict != Verdict::Pass && !console.is_empty())
        .then(|| tail(console, CONSOLE_TAIL_LINES));
    Judgement {
        verdict,
        reason,
        infra,
        steps,
        testcases,
        splats,
        console_tail,
        known_issue: None,
        diagnosis,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::outcome::{HostTimeout, Received};
    use std::time::Duration;

    #[test]
    fn known_issues_turn_only_matching_failures_into_known_fail() {
        let issue = KnownIssue {
            kernel: "6.12.*".into(),
            reason: "kernel splat: BUG: Bad page state".into(),
            note: "documented".into(),
        };
        let judged = |verdict, reason: &str| Judgement {
            verdict,
            ..Judgement::without_vm(verdict, reason, false)
        };
        let mut j = judged(Verdict::Fail, "kernel splat: BUG: Bad page state in x");
        j.apply_known_issues(std::slice::from_ref(&issue), "6.12.117+deb12-amd64");
        assert_eq!(j.verdict, Verdict::KnownFail);
        assert_eq!(j.known_issue.as_deref(), Some("documented"));
        assert_eq!(j.reason, "kernel splat: BUG: Bad page state in x");

        let mut other_kernel = judged(Verdict::Fail, "kernel splat: BUG: Bad page state");
        other_kernel.apply_known_issues(std::slice::from_ref(&issue), "7.2.13+deb14-amd64");
        assert_eq!(other_kernel.verdict, Verdict::Fail);

        // Errors and timeouts are never excused, whatever their text.
        let mut timeout = judged(Verdict::Timeout, "kernel splat: BUG: Bad page state");
        timeout.apply_known_issues(std::slice::from_ref(&issue), "6.12.117");
        assert_eq!(timeout.verdict, Verdict::Timeout);
    }

    #[test]
    fn a_splat_reason_names_the_function_from_its_trace() {
        let console = "[ 1.0] BUG: Bad page state in process init  pfn:05c23\n\
                       [ 1.0] Call Trace:\n[ 1.0]  <TASK>\n[ 1.0]  dump_stack_lvl+0x5d/0x80\n\
                       [ 1.0]  bad_page+0x70/0x110\n[ 1.0]  free_unref_page+0x3a3/0x5a0\n\
                       [ 1.0]  bpf_arena_free_pages+0x12d/0x300\n";
        let j = judge(&record(done(StepStatus::Pass), vec![]), console);
        assert!(
            j.reason.starts_with(
                "kernel splat: BUG: Bad page state in process init  pfn:05c23 in bpf_arena_free_pages (console.log:1)"
            ),
            "{}",
            j.reason
        );
        assert_eq!(
            j.splats[0].function.as_deref(),
            Some("bpf_arena_free_pages")
        );
        assert_eq!(j.splats[0].decoded, None);
    }

    fn record(end: End, messages: Vec<GuestMessage>) -> Record {
        Record::heard(end, messages)
    }

    fn done(status: StepStatus) -> End {
        End::Done {
            status,
            reason: if status == StepStatus::Pass {
                String::new()
            } else {
                "step 2/4 (touch, s.yaml:4): expected X".into()
            },
            killed: None,
        }
    }

    #[test]
    fn clean_pass() {
        let j = judge(
            &record(done(StepStatus::Pass), vec![]),
            "[ 0.1] Linux version 6.12\n",
        );
        assert_eq!(j.verdict, Verdict::Pass);
        assert!(!j.infra);
    }

    #[test]
    fn splat_fails_a_passing_scenario_with_its_title() {
        let console = "boot\n[ 3.2] WARNING: CPU: 1 PID: 7 at kernel/bpf/arena.c:10 f+0x1\n";
        let j = judge(&record(done(StepStatus::Pass), vec![]), console);
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(
            j.reason,
            "kernel splat: WARNING: CPU: 1 PID: 7 at kernel/bpf/arena.c:10 f+0x1 (console.log:2)"
        );
    }

    #[test]
    fn an_oops_bug_gpf_or_panic_fails_whatever_the_vm_did_next() {
        use crate::judge::outcome::Stop;
        // The GPF title is its own kind (`gpf`): it was once judged `error`.
        let gpf = "[ 5.1] Oops: general protection fault, probably for non-canonical \
                   address 0xa5e1a0128a8043b6: 0000 [#1] PREEMPT SMP NOPTI\n\
                   [ 5.1] RIP: 0010:tlb_flush_mmu+0x2a/0x140\n";
        // A WARNING first, the oops after it: the oops still decides.
        let warn_then_bug = "[ 1.0] WARNING: CPU: 0 PID: 9 at mm/x.c:1 f+0x1/0x2\n\
                             [ 1.1] BUG: unable to handle page fault for address: 0\n";
        let panic = "[ 2.0] Kernel panic - not syncing: Fatal exception\n";
        let timeout = HostTimeout {
            stop: Stop::Stalled(Duration::from_secs(120)),
            silent: Duration::from_secs(120),
        };
        let ends = [
            ("exits", End::VmExited("exit status: 0".into())),
            ("resets", End::VmExited("reset".into())),
            ("panics", End::KernelPanic),
            ("stalls", End::HostTimeout(timeout)),
            ("errors", done(StepStatus::Error)),
            ("hits the agent's cap", done(StepStatus::Timeout)),
            ("keeps going", done(StepStatus::Pass)),
            ("fails a step", done(StepStatus::Fail)),
            ("breaks the protocol", End::Protocol("garbage".into())),
        ];
        for console in [gpf, warn_then_bug, panic] {
            for (what, end) in &ends {
                let j = judge(&record(end.clone(), vec![]), console);
                assert_eq!(
                    j.verdict,
                    Verdict::Fail,
                    "VM {what} after {console}: {}",
                    j.reason
                );
                assert!(!j.infra);
                assert!(j.reason.starts_with("kernel splat: "), "{}", j.reason);
            }
        }
        // A warning alone does not turn a lab error into a kernel verdict.
        let j = judge(
            &record(done(StepStatus::Error), vec![]),
            "[ 1.0] WARNING: CPU: 0 PID: 9 at mm/x.c:1 f+0x1/0x2\n",
        );
        assert_eq!(j.verdict, Verdict::Error);
    }

    #[test]
    fn failed_step_keeps_its_reason() {
        let j = judge(&record(done(StepStatus::Fail), vec![]), "");
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(j.reason, "step 2/4 (touch, s.yaml:4): expected X");
    }

    /// The head of a dump whose EFLAGS no CPU can hold (`lab nested`).
    const CORRUPT_DUMP: &str = "[ 0.5] Oops: Oops: 0010 [#1] PREEMPT SMP NOPTI\n\
[ 0.5] RSP: 0000:ffffffff82c03b70 EFLAGS: 04182402\n";

    #[test]
    fn a_machine_fault_is_an_error_never_a_pass_or_a_kernel_fail() {
        for end in [
            done(StepStatus::Pass),
            done(StepStatus::Fail),
            End::NoHello("x".into()),
        ] {
            let mut j = judge(&record(end, vec![]), CORRUPT_DUMP);
            assert!(j.overrule_for_machine_fault(CORRUPT_DUMP, false));
            assert_eq!(j.verdict, Verdict::Error);
            assert!(!j.infra, "sporadic: the run goes on");
            assert!(j.reason.contains("EFLAGS 04182402"), "{}", j.reason);
            assert!(j.reason.ends_with("not a kernel verdict"), "{}", j.reason);
        }
        // A sound dump leaves the kernel's verdict alone.
        let sound = CORRUPT_DUMP.replace("04182402", "00010246");
        let mut j = judge(&record(done(StepStatus::Pass), vec![]), &sound);
        assert!(!j.overrule_for_machine_fault(&sound, false));
        assert_eq!(
            j.verdict,
            Verdict::Fail,
            "the oops still fails the scenario"
        );
    }

    #[test]
    fn no_hello_is_infrastructure() {
        let j = judge(&record(End::NoHello("no hello".into()), vec![]), "a\nb\n");
        assert_eq!(j.verdict, Verdict::Error);
        assert!(j.infra);
        assert_eq!(j.reason, "no hello\nlast console lines:\na\nb");
        let console = "x\narena-agent: FATAL: no results channel: no VIRTIO_MMIO\r\n";
        let j = judge(&record(End::NoHello("closed".into()), vec![]), console);
        assert_eq!(
            j.reason.lines().next(),
            Some("closed; the agent gave up: no results channel: no VIRTIO_MMIO")
        );
        // Said once when the session already reports it.
        let why = "the agent gave up before hello: no results channel: no VIRTIO_MMIO";
        let j = judge(&record(End::NoHello(why.into()), vec![]), console);
        assert_eq!(j.reason.lines().next(), Some(why));
    }

    /// The finding of a stall the agent did not diagnose.
    const NO_DIAGNOSIS: &str =
        "no kernel evidence, and no diagnosis from the agent (it did not answer in time)";

    #[test]
    fn a_stall_with_a_blocked_scenario_task_fails_naming_it() {
        let msgs = vec![
            started(0, "processes"),
            GuestMessage::Diagnosis(arena_protocol::message::Diagnosis {
                tasks: vec![arena_protocol::message::TaskDiagnosis {
                    pid: 57,
                    tgid: 57,
                    ppid: 40,
                    comm: "arena-agent".into(),
                    state: "D".into(),
                    role: Some("faulter".into()),
                    index: Some(2),
                    worker: Some(2),
                    iteration: Some(4),
                    wchan: "folio_wait_bit_common".into(),
                    stack: vec![],
                    stack_error: None,
                }],
                omitted: 0,
                sysrq: vec!["w".into(), "l".into()],
            }),
        ];
        let console = "[ 9.0] sysrq: Show Blocked State
            [ 9.0] task:arena-agent     state:D stack:0     pid:57    tgid:57    ppid:40     flags:0x00004002
            [ 9.0] Call Trace:
[ 9.0]  <TASK>
[ 9.0]  __schedule+0x3c1/0xb60
            [ 9.0]  io_schedule+0x46/0x70
[ 9.0]  folio_wait_bit_common+0x13d/0x350
            [ 9.0]  __do_fault+0x36/0x140
[ 9.0]  </TASK>
";
        let j = judge(&record(stalled(5, 0), msgs), console);
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(
            j.reason.lines().next(),
            Some(
                "task arena-agent:57 (faulter 2) blocked in folio_wait_bit_common ← __do_fault \
                 (sysrq w, console.log:2); stalled for 5 s at step 1/4 (processes, s.yaml:3): the guest was \
                 alive but made no progress"
            )
        );
        let d = j.diagnosis.expect("kept in the judgement");
        assert!(d.kernel_evidence);
        // Old summaries without it still read.
        let mut v = serde_json::to_value(Judgement::not_run("x")).unwrap();
        assert!(v.get("diagnosis").is_none());
        v.as_object_mut().unwrap().remove("diagnosis");
        assert!(serde_json::from_value::<Judgement>(v)
            .unwrap()
            .diagnosis
            .is_none());
    }

    #[test]
    fn a_splat_names_the_worker_by_its_pid() {
        let ended = GuestMessage::StepEnded {
            path: "0".into(),
            kind: "processes".into(),
            status: StepStatus::Pass,
            detail: String::new(),
            duration_ms: 1,
            data: serde_json::json!({"workers": [{"worker": 5, "role": "faulter", "index": 2, "pid": 104}]}),
        };
        let console = "[ 1.0] BUG: Bad page state in process arena-agent  pfn:05c23
\
                       [ 1.0] CPU: 0 UID: 0 PID: 104 Comm: arena-agent Not tainted
\
                       [ 1.0] Call Trace:
[ 1.0]  <TASK>
[ 1.0]  dump_stack_lvl+0x5d/0x80
\
                       [ 1.0]  bad_page+0x70/0x110
[ 1.0]  arena_free_pages+0x12d/0x300
";
        let j = judge(&record(done(StepStatus::Pass), vec![ended]), console);
        assert_eq!(
            j.reason,
            "kernel splat: BUG: Bad page state in process arena-agent  pfn:05c23 (PID 104: faulter 2) in arena_free_pages (console.log:1)"
        );
    }

    fn stalled(secs: u64, silent: u64) -> End {
        End::HostTimeout(HostTimeout {
            stop: Stop::Stalled(Duration::from_secs(secs)),
            silent: Duration::from_secs(silent),
        })
    }

    /// Step `i` (0-based) of a 4-step file `s.yaml` whose steps start on
    /// line 3, as the agent announces it.
    fn started(i: usize, kind: &str) -> GuestMessage {
        GuestMessage::StepStarted {
            path: i.to_string(),
            kind: kind.into(),
            at: Some(arena_protocol::StepRef {
                index: i + 1,
                of: 4,
                kind: kind.into(),
                file: "s.yaml".into(),
                line: Some(3 + i as u32),
            }),
        }
    }

    #[test]
    fn host_timeout_names_the_open_step() {
        let msgs = vec![
            started(2, "sleep"),
            GuestMessage::Progress {
                path: "2".into(),
                kind: "sleep".into(),
                elapsed_ms: 14_500,
                ticks: 0,
                workers: None,
            },
        ];
        let j = judge(&record(stalled(15, 0), msgs.clone()), "x\n");
        assert_eq!(j.verdict, Verdict::Timeout);
        assert_eq!(
            j.reason.lines().next(),
            Some(format!("{}; {NO_DIAGNOSIS}", "stalled for 15 s at step 3/4 (sleep, s.yaml:5), 14.5 s into it: the guest was alive but made no progress").as_str())
        );
        let j = judge(&record(stalled(15, 15), msgs[..1].to_vec()), "x\n");
        assert_eq!(
            j.reason.lines().next(),
            Some(
                format!(
                    "{}; {NO_DIAGNOSIS}",
                    "stalled for 15 s at step 3/4 (sleep, s.yaml:5): no message from the guest for 15 s"
                )
                .as_str()
            )
        );
    }

    #[test]
    fn a_capped_timeout_says_how_far_the_workers_got() {
        let msgs = vec![
            started(3, "processes"),
            GuestMessage::Progress {
                path: "3".into(),
                kind: "processes".into(),
                elapsed_ms: 470_000,
                ticks: 900,
                workers: Some(arena_protocol::WorkerProgress {
                    iteration: 37,
                    iterations: 200,
                    running: 3,
                    workers: 4,
                }),
            },
        ];
        let end = End::HostTimeout(HostTimeout {
            stop: Stop::HardCap(Duration::from_secs(480)),
            silent: Duration::from_millis(300),
        });
        let j = judge(&record(end.clone(), msgs), "x\n");
        assert_eq!(j.verdict, Verdict::Timeout);
        assert_eq!(
            j.reason.lines().next(),
            Some(format!("{}; {NO_DIAGNOSIS}", "hard cap 480 s reached while still progressing at step 4/4 (processes, s.yaml:6), iteration 37/200 in 3 of 4 workers").as_str())
        );
        let end = SessionEnd::from(&end);
        assert_eq!(end.to_string(), "hard cap 480 s reached; VM killed");
    }

    #[test]
    fn a_failing_scenario_keeps_the_console_tail_and_splat_text() {
        let mut console: String = (1..=60).map(|i| format!("line {i}\r\n")).collect();
        console.push_str("[ 3.2] BUG: kernel NULL pointer dereference\r\n");
        console.push_str("Call Trace:\n f+0x1\n---[ end trace 0000000000000000 ]---\nafter\n");
        let j = judge(&record(done(StepStatus::Pass), vec![]), &console);
        assert_eq!(j.verdict, Verdict::Fail);
        let tail = j.console_tail.unwrap();
        assert_eq!(tail.lines().count(), CONSOLE_TAIL_LINES);
        assert!(tail.ends_with("---[ end trace 0000000000000000 ]---\nafter"));
        assert!(!tail.contains('\r'));
        assert_eq!(j.splats.len(), 1);
        assert_eq!(j.splats[0].kind, "bug");
        assert_eq!(j.splats[0].line, 61);
        assert_eq!(
            j.splats[0].text.as_deref(),
            Some(
                "[ 3.2] BUG: kernel NULL pointer dereference\nCall Trace:\n f+0x1\n---[ end trace 0000000000000000 ]---"
            )
        );
        let pass = judge(&record(done(StepStatus::Pass), vec![]), "clean\n");
        assert!(pass.console_tail.is_none());
    }

    #[test]
    fn session_ends_are_data_and_plain_text() {
        let end = SessionEnd::from(&End::NoHello("results channel closed before hello".into()));
        assert_eq!(
            serde_json::to_value(&end).unwrap(),
            serde_json::json!({"kind": "no_hello", "reason": "results channel closed before hello"})
        );
        assert_eq!(
            end.to_string(),
            "no agent hello: results channel closed before hello"
        );
        let done = SessionEnd::from(&End::Done {
            status: StepStatus::Pass,
            reason: String::new(),
            killed: None,
        });
        assert_eq!(done.to_string(), "agent done: pass");
        let timeout = SessionEnd::from(&stalled(40, 2));
        assert_eq!(
            serde_json::to_value(&timeout).unwrap(),
            serde_json::json!({"kind": "host_timeout", "limit_s": 40, "hard_cap": false})
        );
        assert_eq!(timeout.to_string(), "no progress for 40 s; VM killed");
        // Summaries written before the hard cap existed still parse.
        let old: SessionEnd =
            serde_json::from_value(serde_json::json!({"kind": "host_timeout", "limit_s": 40}))
                .unwrap();
        assert_eq!(old, timeout);
    }

    #[test]
    fn a_killed_worker_is_placed_in_its_open_step() {
        let killed = arena_protocol::message::WorkerKilled {
            signal: 11,
            signal_name: "SIGSEGV".into(),
            addr: Some(0x1000),
        };
        let end = End::Done {
            status: StepStatus::Fail,
            reason: killed.to_string(),
            killed: Some(killed),
        };
        let started = started(2, "touch");
        let j = judge(&record(end.clone(), vec![started.clone()]), "");
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(
            j.reason,
            "agent worker killed by signal 11 (SIGSEGV) at address 0x1000 during step 3/4 (touch, s.yaml:5)"
        );
        // An agent that does not name its steps: counted from 1 all the same.
        let bare = GuestMessage::StepStarted {
            path: "2".into(),
            kind: "touch".into(),
            at: None,
        };
        let j = judge(&record(end.clone(), vec![bare]), "");
        assert_eq!(
            j.reason,
            "agent worker killed by signal 11 (SIGSEGV) at address 0x1000 during step 3 (touch)"
        );
        // Between steps there is nothing to add.
        let j = judge(&record(end, vec![]), "");
        assert_eq!(
            j.reason,
            "agent worker killed by signal 11 (SIGSEGV) at address 0x1000"
        );
        // A reason that only reads like it is not placed.
        let end = End::Done {
            status: StepStatus::Fail,
            reason: "agent worker killed by a step's own words".into(),
            killed: None,
        };
        let j = judge(&record(end, vec![started]), "");
        assert_eq!(j.reason, "agent worker killed by a step's own words");
    }

    #[test]
    fn testcases_are_timed_from_their_predecessor() {
        let at = |at: f64, message| Received { at, message };
        let tc = |name: &str| GuestMessage::Testcase {
            name: name.into(),
            status: StepStatus::Pass,
            log: String::new(),
        };
        let mut r = record(done(StepStatus::Pass), vec![]);
        r.messages = vec![
            at(2.0, started(0, "selftest")),
            at(2.5, tc("a/1")),
            at(4.0, tc("a/2")),
        ];
        let j = judge(&r, "");
        let times: Vec<f64> = j.testcases.iter().map(|t| t.duration_s).collect();
        assert_eq!(times, [0.5, 1.5]);
    }

    #[test]
    fn testcases_are_collected() {
        let msgs = vec![GuestMessage::Testcase {
            name: "arena_list/arena_list_1".into(),
            status: StepStatus::Fail,
            log: "boom".into(),
        }];
        let j = judge(&record(done(StepStatus::Fail), msgs), "");
        assert_eq!(j.testcases.len(), 1);
        assert_eq!(j.testcases[0].log, "boom");
    }
}
