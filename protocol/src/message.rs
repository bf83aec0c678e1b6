//! Messages on the results channel (virtio console `hvc0`), one JSON object
//! per line in each direction.

use serde::{Deserialize, Serialize};

use crate::scenario::Scenario;

/// The hard cap on a scenario's run time is this multiple of its
/// `timeout_s`. `timeout_s` bounds a *stall* (no progress); a scenario that
/// keeps progressing on a slow host may run longer, but never past the cap.
/// Shared so the agent's own deadline and the host's agree.
pub const HARD_CAP_FACTOR: u64 = 4;

/// The hard cap (s) for a scenario with `timeout_s`.
pub fn hard_cap_s(timeout_s: u64) -> u64 {
    timeout_s.saturating_mul(HARD_CAP_FACTOR)
}

/// How far the workers of a `processes:`/`threads:` step got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerProgress {
    /// 1-based iteration the slowest running worker is in.
    pub iteration: u64,
    /// Iterations each worker runs (at most; `duration_ms` may end it early).
    pub iterations: u64,
    /// Workers still running.
    pub running: u32,
    /// Workers of the step.
    pub workers: u32,
}

impl std::fmt::Display for WorkerProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "iteration {}/{} in {} of {} workers",
            self.iteration, self.iterations, self.running, self.workers
        )
    }
}

/// A worker process that a signal killed, as PID 1 saw it: typed so the
/// host can place the crash (the step it happened in) without parsing the
/// reason text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerKilled {
    /// The terminating signal's number.
    pub signal: i32,
    /// Its name (`SIGSEGV`).
    pub signal_name: String,
    /// The faulting address the worker's crash handler reported, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<u64>,
}

/// The `done` reason users see: `agent worker killed by signal 11
/// (SIGSEGV) at address 0x1000`.
impl std::fmt::Display for WorkerKilled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "agent worker killed by signal {} ({})",
            self.signal, self.signal_name
        )?;
        match self.addr {
            Some(a) => write!(f, " at address {a:#x}"),
            None => Ok(()),
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Host → guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMessage {
    /// Run this scenario; `seed` makes randomised steps reproducible.
    Run {
        /// The scenario to run.
        scenario: Scenario,
        /// Seed for every random choice the agent makes.
        seed: u64,
        /// After a failing `done`, keep the VM up instead of powering off:
        /// the host pauses it for gdb (`--gdb-on-fail`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        hold_on_failure: bool,
    },
    /// The host's stall clock ran out: PID 1 (not the stuck worker) answers
    /// with a [`GuestMessage::Diagnosis`] of the scenario's tasks and has
    /// the kernel print its blocked tasks and CPU backtraces (sysrq `w`,
    /// `l`) on the console. The host kills the VM afterwards.
    Diagnose,
    /// The VM was just restored from a snapshot taken while the agent waited
    /// for a scenario: every restore of that snapshot starts with the same
    /// kernel RNG state and the same wall clock. The agent mixes `entropy`
    /// into the kernel's pool, sets the wall clock to `unix_time_ns`, and
    /// answers with a fresh [`GuestMessage::Hello`].
    Resume {
        /// Fresh host randomness for the guest kernel's pool.
        entropy: [u64; 4],
        /// The host's wall clock (ns since the Unix epoch).
        unix_time_ns: u64,
    },
}

/// What the agent tells about the guest before it runs anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Agent build version.
    pub agent_version: String,
    /// `uname -r` of the guest kernel.
    pub kernel_release: String,
    /// `/proc/version` of the guest kernel.
    pub kernel_version: String,
    /// `/proc/sys/net/core/bpf_jit_enable` (None if unreadable).
    pub jit_enabled: Option<u32>,
    /// Online CPUs.
    pub cpus: u32,
    /// Milliseconds since the guest kernel started (`/proc/uptime`).
    pub uptime_ms: u64,
}

/// Tasks a [`Diagnosis`] lists at most (the rest are counted).
pub const DIAGNOSIS_MAX_TASKS: usize = 64;
/// Stack frames kept per task.
pub const DIAGNOSIS_MAX_FRAMES: usize = 32;
/// Characters kept of one text field (a name, a frame, a wait channel).
pub const DIAGNOSIS_MAX_TEXT: usize = 200;

/// One task (a process or a thread) of the scenario when it stalled, as
/// PID 1 read it from `/proc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDiagnosis {
    /// Its id (`/proc/PID/task/TID`: a thread's own id).
    pub pid: u32,
    /// Its process (thread group) id.
    pub tgid: u32,
    /// Its parent process.
    pub ppid: u32,
    /// `comm`.
    pub comm: String,
    /// The state letter of `/proc/PID/stat` (`R`, `S`, `D`, `Z`, ...).
    pub state: String,
    /// Its role when it is a worker of a `processes:`/`threads:` step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Its index within the role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// Its worker number across roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<u32>,
    /// The 1-based iteration it was in (a worker that finished: its last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iteration: Option<u64>,
    /// `/proc/PID/wchan` (`0` or empty when running).
    #[serde(default)]
    pub wchan: String,
    /// `/proc/PID/stack` frames, innermost first (`pipe_read+0x2f8/0x440`).
    #[serde(default)]
    pub stack: Vec<String>,
    /// Why there is no stack (no `CONFIG_STACKTRACE`, unreadable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_error: Option<String>,
}

/// What PID 1 saw of a stalled scenario ([`HostMessage::Diagnose`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// The worker and its descendants, with their threads, at most
    /// [`DIAGNOSIS_MAX_TASKS`].
    pub tasks: Vec<TaskDiagnosis>,
    /// Tasks left out past that bound.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub omitted: u32,
    /// The sysrq keys written (`w`, `l`), or why one could not be.
    #[serde(default)]
    pub sysrq: Vec<String>,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// `s` cut to at most [`DIAGNOSIS_MAX_TEXT`] characters.
fn clip_text(s: &mut String) {
    if let Some((i, _)) = s.char_indices().nth(DIAGNOSIS_MAX_TEXT) {
        s.truncate(i);
    }
}

impl Diagnosis {
    /// The same within every bound (the guest is untrusted: the host
    /// applies them again to what it received).
    pub fn bounded(mut self) -> Diagnosis {
        if self.tasks.len() > DIAGNOSIS_MAX_TASKS {
            let extra = self.tasks.len() - DIAGNOSIS_MAX_TASKS;
            self.omitted = self.omitted.saturating_add(extra as u32);
            self.tasks.truncate(DIAGNOSIS_MAX_TASKS);
        }
        for t in &mut self.tasks {
            for s in [&mut t.comm, &mut t.state, &mut t.wchan] {
                clip_text(s);
            }
            if let Some(r) = t.role.as_mut() {
                clip_text(r);
            }
            if let Some(e) = t.stack_error.as_mut() {
                clip_text(e);
            }
            t.stack.truncate(DIAGNOSIS_MAX_FRAMES);
            t.stack.iter_mut().for_each(clip_text);
        }
        self.sysrq.truncate(8);
        self.sysrq.iter_mut().for_each(clip_text);
        self
    }
}

/// Outcome of one step or test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Every expectation held.
    Pass,
    /// An expectation did not hold.
    Fail,
    /// The step could not be carried out (setup problem, not an expectation).
    Error,
    /// The step ran out of time.
    Timeout,
    /// Skipped (selftests that skip themselves).
    Skip,
}

/// Guest → host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuestMessage {
    /// The agent is up and waits for a scenario.
    Hello(Hello),
    /// PID 1 cannot go on (a panic, a missing device); the VM powers off
    /// next. Sent before or after hello, instead of dying silently.
    Fatal {
        /// What went wrong.
        reason: String,
    },
    /// A step started. `path` is the step's 0-based position, e.g. `2`.
    StepStarted {
        /// Step position.
        path: String,
        /// Step kind (YAML key).
        kind: String,
        /// How reasons and progress name it (`step 3/12 (touch, x.yaml:9)`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<crate::StepRef>,
    },
    /// A step ended.
    StepEnded {
        /// Step position.
        path: String,
        /// Step kind (YAML key).
        kind: String,
        /// Outcome.
        status: StepStatus,
        /// What was done and seen; on failure, expected vs. actual.
        detail: String,
        /// Wall time of the step in the guest.
        duration_ms: u64,
        /// Structured extras (per-process outcomes, seed, iterations...).
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        data: serde_json::Value,
    },
    /// One upstream selftest (sub)test result.
    Testcase {
        /// `test` or `test/subtest`.
        name: String,
        /// Outcome.
        status: StepStatus,
        /// Log lines that belong to the test (failure text).
        log: String,
    },
    /// A file for the scenario's results folder (e.g. the raw `test_progs`
    /// output). The host sanitises the name and bounds the size.
    Output {
        /// File name (no directories).
        name: String,
        /// Contents.
        text: String,
    },
    /// A diagnostic line from the agent.
    Log {
        /// The text.
        line: String,
    },
    /// The step `path` is still running: sent at least once a second by
    /// the agent's watchdog, so the host can tell a slow guest (it advances)
    /// from a hung one (it does not).
    Progress {
        /// Step position.
        path: String,
        /// Step kind (YAML key).
        kind: String,
        /// Time in the step so far.
        elapsed_ms: u64,
        /// Nested steps finished so far in the scenario, across all workers:
        /// grows while the guest makes progress inside a step.
        #[serde(default, skip_serializing_if = "is_zero")]
        ticks: u64,
        /// Iterations of a `processes:`/`threads:` step.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workers: Option<WorkerProgress>,
    },
    /// PID 1's answer to [`HostMessage::Diagnose`].
    Diagnosis(Diagnosis),
    /// The scenario is over from the guest's point of view.
    Done {
        /// Overall status of the steps.
        status: StepStatus,
        /// Why, when not passed.
        reason: String,
        /// Set when a signal killed the agent's worker (the `reason` then
        /// says so in words); absent from agents that predate it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        killed: Option<WorkerKilled>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_json_shape() {
        let m = GuestMessage::Done {
            status: StepStatus::Fail,
            reason: "x".into(),
            killed: None,
        };
        let s = serde_json::to_string(&m).unwrap();
        assert_eq!(s, r#"{"type":"done","status":"fail","reason":"x"}"#);
        assert_eq!(serde_json::from_str::<GuestMessage>(&s).unwrap(), m);
    }

    #[test]
    fn a_killed_worker_round_trips_and_reads_as_before() {
        let killed = WorkerKilled {
            signal: 11,
            signal_name: "SIGSEGV".into(),
            addr: Some(0x1000),
        };
        assert_eq!(
            killed.to_string(),
            "agent worker killed by signal 11 (SIGSEGV) at address 0x1000"
        );
        let m = GuestMessage::Done {
            status: StepStatus::Fail,
            reason: killed.to_string(),
            killed: Some(killed),
        };
        let s = serde_json::to_string(&m).unwrap();
        assert!(
            s.ends_with(r#""killed":{"signal":11,"signal_name":"SIGSEGV","addr":4096}}"#),
            "{s}"
        );
        assert_eq!(serde_json::from_str::<GuestMessage>(&s).unwrap(), m);

        let no_addr = WorkerKilled {
            signal: 9,
            signal_name: "SIGKILL".into(),
            addr: None,
        };
        assert_eq!(
            no_addr.to_string(),
            "agent worker killed by signal 9 (SIGKILL)"
        );
        let s = serde_json::to_string(&no_addr).unwrap();
        assert_eq!(s, r#"{"signal":9,"signal_name":"SIGKILL"}"#);
        assert_eq!(serde_json::from_str::<WorkerKilled>(&s).unwrap(), no_addr);
    }

    #[test]
    fn done_from_an_older_agent_has_no_killed_worker() {
        let s = r#"{"type":"done","status":"fail","reason":"agent worker killed by signal 11 (SIGSEGV)"}"#;
        match serde_json::from_str::<GuestMessage>(s).unwrap() {
            GuestMessage::Done { killed, .. } => assert_eq!(killed, None),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn progress_is_small_and_round_trips() {
        let bare = GuestMessage::Progress {
            path: "0".into(),
            kind: "sleep".into(),
            elapsed_ms: 1000,
            ticks: 0,
            workers: None,
        };
        let s = serde_json::to_string(&bare).unwrap();
        assert_eq!(
            s,
            r#"{"type":"progress","path":"0","kind":"sleep","elapsed_ms":1000}"#
        );
        assert_eq!(serde_json::from_str::<GuestMessage>(&s).unwrap(), bare);
        let w = WorkerProgress {
            iteration: 37,
            iterations: 200,
            running: 3,
            workers: 4,
        };
        let full = GuestMessage::Progress {
            path: "3".into(),
            kind: "processes".into(),
            elapsed_ms: 61_000,
            ticks: 1234,
            workers: Some(w),
        };
        let s = serde_json::to_string(&full).unwrap();
        assert!(s.len() < 160, "{s}");
        assert_eq!(serde_json::from_str::<GuestMessage>(&s).unwrap(), full);
        assert_eq!(w.to_string(), "iteration 37/200 in 3 of 4 workers");
    }

    #[test]
    fn resume_is_tagged_and_round_trips() {
        let m = HostMessage::Resume {
            entropy: [1, 2, 3, u64::MAX],
            unix_time_ns: 1_700_000_000_000_000_000,
        };
        let s = serde_json::to_string(&m).unwrap();
        assert!(
            s.starts_with(r#"{"type":"resume","entropy":[1,2,3,18446744073709551615]"#),
            "{s}"
        );
        assert_eq!(serde_json::from_str::<HostMessage>(&s).unwrap(), m);
        // Four words, no more and no fewer.
        let short = r#"{"type":"resume","entropy":[1,2,3],"unix_time_ns":0}"#;
        assert!(serde_json::from_str::<HostMessage>(short).is_err());
    }

    #[test]
    fn diagnose_and_diagnosis_are_tagged_and_bounded() {
        let s = serde_json::to_string(&HostMessage::Diagnose).unwrap();
        assert_eq!(s, r#"{"type":"diagnose"}"#);
        assert_eq!(
            serde_json::from_str::<HostMessage>(&s).unwrap(),
            HostMessage::Diagnose
        );
        let task = TaskDiagnosis {
            pid: 57,
            tgid: 57,
            ppid: 40,
            comm: "arena-agent".into(),
            state: "S".into(),
            role: Some("waiter".into()),
            index: Some(1),
            worker: Some(1),
            iteration: Some(1),
            wchan: "unix_stream_data_wait".into(),
            stack: vec!["unix_stream_data_wait+0x12c/0x1b0".into()],
            stack_error: None,
        };
        let d = Diagnosis {
            tasks: vec![task.clone(); DIAGNOSIS_MAX_TASKS + 3],
            omitted: 2,
            sysrq: vec!["w".into(), "l".into()],
        };
        let m = GuestMessage::Diagnosis(d.clone());
        let s = serde_json::to_string(&m).unwrap();
        assert!(
            s.starts_with(r#"{"type":"diagnosis","tasks":[{"pid":57,"#),
            "{s}"
        );
        assert_eq!(serde_json::from_str::<GuestMessage>(&s).unwrap(), m);
        // A hostile one is cut to the bounds.
        let mut big = task;
        big.comm = "x".repeat(10_000);
        big.stack = vec!["f+0x1/0x2".repeat(100); 1000];
        let b = Diagnosis {
            tasks: vec![big],
            ..d.clone()
        }
        .bounded();
        assert_eq!(b.tasks[0].comm.len(), DIAGNOSIS_MAX_TEXT);
        assert_eq!(b.tasks[0].stack.len(), DIAGNOSIS_MAX_FRAMES);
        assert!(b.tasks[0].stack[0].len() <= DIAGNOSIS_MAX_TEXT);
        let b = d.bounded();
        assert_eq!((b.tasks.len(), b.omitted), (DIAGNOSIS_MAX_TASKS, 5));
    }

    #[test]
    fn hard_cap_is_a_multiple_and_saturates() {
        assert_eq!(hard_cap_s(120), 480);
        assert_eq!(hard_cap_s(u64::MAX), u64::MAX);
    }

    #[test]
    fn step_ended_without_data_parses() {
        let s = r#"{"type":"step_ended","path":"0","kind":"touch","status":"pass","detail":"","duration_ms":3}"#;
        match serde_json::from_str::<GuestMessage>(s).unwrap() {
            GuestMessage::StepEnded { data, .. } => assert!(data.is_null()),
            other => panic!("unexpected {other:?}"),
        }
    }
}
