//! From what a session observed (and the console log) to a scenario verdict.

use serde::{Deserialize, Serialize};

use arena_protocol::{GuestMessage, StepStatus};

use crate::session::{End, Record};
use crate::splat::{self, Splat};

/// A scenario's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every step passed and the kernel log is clean.
    Pass,
    /// An expectation failed or the kernel splatted.
    Fail,
    /// The scenario could not be carried out.
    Error,
    /// It ran out of time.
    Timeout,
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
}

/// The judged outcome of one scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Judgement {
    /// Verdict.
    pub verdict: Verdict,
    /// Why, when not pass (the failure title first).
    pub reason: String,
    /// The VM or agent never came up: an infrastructure error.
    pub infra: bool,
    /// Steps as reported.
    pub steps: Vec<StepRecord>,
    /// Selftest results.
    pub testcases: Vec<TestcaseRecord>,
    /// Splats found in the console log: (line, title).
    pub splats: Vec<(usize, String)>,
}

fn tail(console: &str, n: usize) -> String {
    let lines: Vec<&str> = console.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Judge a session.
pub fn judge(record: &Record, console: &str) -> Judgement {
    let mut steps = Vec::new();
    let mut testcases = Vec::new();
    let mut open_step: Option<(String, String)> = None;
    for r in &record.messages {
        match &r.message {
            GuestMessage::StepStarted { path, kind } => {
                open_step = Some((path.clone(), kind.clone()))
            }
            GuestMessage::StepEnded {
                path,
                kind,
                status,
                detail,
                duration_ms,
                data,
            } => {
                open_step = None;
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
            GuestMessage::Testcase { name, status, log } => testcases.push(TestcaseRecord {
                name: name.clone(),
                status: *status,
                log: log.clone(),
            }),
            _ => {}
        }
    }
    let during = open_step
        .as_ref()
        .map(|(p, k)| format!(" during step {p} ({k})"))
        .unwrap_or_default();
    let last_lines = || format!("; last console lines:\n{}", tail(console, 15));
    let (mut verdict, mut reason, infra) = match &record.end {
        End::Done { status, reason } => {
            let v = match status {
                StepStatus::Pass | StepStatus::Skip => Verdict::Pass,
                StepStatus::Fail => Verdict::Fail,
                StepStatus::Error => Verdict::Error,
                StepStatus::Timeout => Verdict::Timeout,
            };
            let reason = if v == Verdict::Fail && reason.starts_with("agent worker killed") {
                format!("{reason}{during}")
            } else {
                reason.clone()
            };
            (v, reason, false)
        }
        End::NoHello(why) => (Verdict::Error, format!("{why}{}", last_lines()), true),
        End::HostTimeout(limit) => (
            Verdict::Timeout,
            format!(
                "no result within {} s{during}{}",
                limit.as_secs(),
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
    let splats: Vec<Splat> = splat::detect(console);
    if let Some(first) = splats.first() {
        if !infra {
            let title = format!("kernel splat: {} (console.log:{})", first.title, first.line);
            reason = if verdict == Verdict::Pass {
                title
            } else {
                format!("{title}; then: {reason}")
            };
            if verdict == Verdict::Pass {
                verdict = Verdict::Fail;
            }
        }
    }
    Judgement {
        verdict,
        reason,
        infra,
        steps,
        testcases,
        splats: splats.into_iter().map(|s| (s.line, s.title)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Received;

    fn record(end: End, messages: Vec<GuestMessage>) -> Record {
        Record {
            hello: None,
            boot_s: Some(1.0),
            messages: messages
                .into_iter()
                .map(|message| Received { at: 1.0, message })
                .collect(),
            end,
            vm_exit: String::new(),
            total_s: 2.0,
        }
    }

    fn done(status: StepStatus) -> End {
        End::Done {
            status,
            reason: if status == StepStatus::Pass {
                String::new()
            } else {
                "step 1 (touch): expected X".into()
            },
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
    fn failed_step_keeps_its_reason() {
        let j = judge(&record(done(StepStatus::Fail), vec![]), "");
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(j.reason, "step 1 (touch): expected X");
    }

    #[test]
    fn no_hello_is_infrastructure() {
        let j = judge(&record(End::NoHello("no hello".into()), vec![]), "a\nb\n");
        assert_eq!(j.verdict, Verdict::Error);
        assert!(j.infra);
        assert!(j.reason.contains("last console lines:\na\nb"));
    }

    #[test]
    fn host_timeout_names_the_open_step() {
        let msgs = vec![GuestMessage::StepStarted {
            path: "2".into(),
            kind: "sleep".into(),
        }];
        let j = judge(
            &record(End::HostTimeout(std::time::Duration::from_secs(15)), msgs),
            "x\n",
        );
        assert_eq!(j.verdict, Verdict::Timeout);
        assert!(
            j.reason
                .starts_with("no result within 15 s during step 2 (sleep)"),
            "{}",
            j.reason
        );
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
