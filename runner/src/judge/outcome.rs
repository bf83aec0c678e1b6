//! What one VM session saw, as the judge takes it: the agent's messages
//! with their arrival times, how the session ended, how the VM process
//! ended, and the host's load meanwhile. `execute::session` produces it;
//! `judge::verdict` turns it into a verdict.

use std::fmt;
use std::process::ExitStatus;
use std::time::Duration;

use arena_protocol::message::WorkerKilled;
use arena_protocol::{GuestMessage, Hello, StepStatus};
use serde::{Deserialize, Serialize, Serializer};

/// How long a kernel that printed a panic gets to reset the VM itself
/// (`panic=-1`) before the runner ends it: a kernel whose reboot path
/// hangs (seen: a tiny config with `reboot=k` on microvm) must not hold the
/// scenario until its timeout.
pub const PANIC_GRACE: Duration = Duration::from_secs(2);
/// How a session ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// The agent said it is done.
    Done {
        /// Its status.
        status: StepStatus,
        /// Its reason.
        reason: String,
        /// Set when a signal killed the agent's worker.
        killed: Option<WorkerKilled>,
    },
    /// The VM never got to the agent's hello.
    NoHello(String),
    /// The scenario stalled or outlived its hard cap; the VM was killed.
    HostTimeout(HostTimeout),
    /// The VM exited after hello without the agent saying done.
    VmExited(String),
    /// The kernel panicked (its console said so) and the VM did not go
    /// down on its own within [`PANIC_GRACE`]: the runner ended it.
    KernelPanic,
    /// The guest broke the protocol.
    Protocol(String),
}

impl End {
    /// A failure with the VM possibly still up: what `--gdb-on-fail`
    /// keeps for the debugger (the agent failed, or the guest stalled).
    pub fn is_failure(&self) -> bool {
        match self {
            End::Done { status, .. } => {
                matches!(
                    status,
                    StepStatus::Fail | StepStatus::Error | StepStatus::Timeout
                )
            }
            End::HostTimeout(_) | End::Protocol(_) => true,
            End::NoHello(_) | End::VmExited(_) | End::KernelPanic => false,
        }
    }
}

/// Why the host stopped waiting for the guest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// No progress for this long (the scenario's `timeout_s` or more).
    Stalled(Duration),
    /// The hard cap was reached although the guest kept progressing.
    HardCap(Duration),
}

/// A host-side timeout: why, and whether the guest was still talking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostTimeout {
    /// What ended the wait.
    pub stop: Stop,
    /// Time since the last message of any kind (a `progress` heartbeat
    /// included): short means alive but not advancing, long means wedged.
    pub silent: Duration,
}

impl HostTimeout {
    /// The limit that was hit.
    pub fn limit(&self) -> Duration {
        match self.stop {
            Stop::Stalled(stalled) => stalled,
            Stop::HardCap(cap) => cap,
        }
    }
}

/// Host load around a scenario: a slow scenario on a busy host is not the
/// guest's fault, and the summary says which it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostLoad {
    /// `/proc/loadavg` 1/5/15-minute averages when the VM started.
    pub loadavg_start: [f64; 3],
    /// The same when the VM ended.
    pub loadavg_end: [f64; 3],
    /// Share of host CPU time stolen by a hypervisor below this host during
    /// the scenario (0–100, `/proc/stat` delta); `None` if unreadable.
    pub steal_pct: Option<f64>,
    /// CPUs the host let the lab use: a load of 7 swamps 2 CPUs but not
    /// 64. `None` in summaries written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
}

/// A received guest message with its arrival time (seconds since VM start).
#[derive(Debug, Clone)]
pub struct Received {
    /// Seconds since the VM was started.
    pub at: f64,
    /// The message.
    pub message: GuestMessage,
}

/// How the VM process ended. A summary's `vm_exit` is its text, the same
/// as before it was typed: `exited: exit status: 0`,
/// `killed by the runner (signal: 9 (SIGKILL))`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// It ended on its own: the guest powered off or rebooted, or the
    /// VMM died.
    Exited(ExitStatus),
    /// The runner killed it (the wait was over, or it did not power off
    /// after `done`); how it then ended.
    Killed(ExitStatus),
    /// The runner killed it and could not reap it (the `wait` error).
    Unreaped(String),
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExit::Exited(st) => write!(f, "exited: {st}"),
            VmExit::Killed(st) => write!(f, "killed by the runner ({st})"),
            VmExit::Unreaped(e) => write!(f, "killed by the runner (wait: {e})"),
        }
    }
}

impl Serialize for VmExit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VmExit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(VmExit::parse(&String::deserialize(d)?))
    }
}

impl VmExit {
    /// The text [`fmt::Display`] writes, read back (a summary's
    /// `vm_exit`); text it did not write is kept as the `wait` error.
    pub fn parse(text: &str) -> VmExit {
        use std::os::unix::process::ExitStatusExt;
        // `exit status: N` or `signal: N (NAME)[ (core dumped)]`.
        let status = |t: &str| -> Option<ExitStatus> {
            if let Some(code) = t.strip_prefix("exit status: ") {
                return Some(ExitStatus::from_raw(code.trim().parse::<i32>().ok()? << 8));
            }
            let sig = t.strip_prefix("signal: ")?;
            let n: i32 = sig.split_whitespace().next()?.parse().ok()?;
            let core = if sig.contains("(core dumped)") {
                0x80
            } else {
                0
            };
            Some(ExitStatus::from_raw(n | core))
        };
        if let Some(st) = text.strip_prefix("exited: ").and_then(status) {
            return VmExit::Exited(st);
        }
        let killed = text
            .strip_prefix("killed by the runner (")
            .and_then(|t| t.strip_suffix(')'));
        match killed {
            Some(k) => match k.strip_prefix("wait: ") {
                Some(e) => VmExit::Unreaped(e.to_owned()),
                None => status(k).map_or_else(|| VmExit::Unreaped(k.to_owned()), VmExit::Killed),
            },
            None => VmExit::Unreaped(text.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn vm_exits_read_back_as_written() {
        for e in [
            VmExit::Exited(ExitStatus::from_raw(0)),
            VmExit::Exited(ExitStatus::from_raw(3 << 8)),
            VmExit::Killed(ExitStatus::from_raw(9)),
            VmExit::Killed(ExitStatus::from_raw(6 | 0x80)),
            VmExit::Unreaped("No child processes (os error 10)".into()),
        ] {
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<VmExit>(&json).unwrap(), e, "{json}");
        }
    }
}

/// Everything a session observed.
#[derive(Debug)]
pub struct Record {
    /// The agent's hello.
    pub hello: Option<Hello>,
    /// Seconds from VM start to hello.
    pub boot_s: Option<f64>,
    /// Messages after hello, in order.
    pub messages: Vec<Received>,
    /// How it ended.
    pub end: End,
    /// How the VM process ended; `None` when it never started.
    pub vm_exit: Option<VmExit>,
    /// Seconds from VM start to VM end.
    pub total_s: f64,
    /// Host load while the VM ran (`None` where `/proc` is unreadable).
    pub host_load: Option<HostLoad>,
}

impl Record {
    /// A session that heard `messages` (all at 1 s, booted in 1 s, 2 s in
    /// all) and ended as `end`: the judge's tests build their records so.
    #[cfg(test)]
    pub fn heard(end: End, messages: Vec<GuestMessage>) -> Record {
        Record {
            hello: None,
            boot_s: Some(1.0),
            messages: messages
                .into_iter()
                .map(|message| Received { at: 1.0, message })
                .collect(),
            end,
            vm_exit: None,
            total_s: 2.0,
            host_load: None,
        }
    }

    /// A session whose VM never started, and why.
    pub fn unstarted(why: String) -> Record {
        Record {
            hello: None,
            boot_s: None,
            messages: Vec::new(),
            end: End::NoHello(why),
            vm_exit: None,
            total_s: 0.0,
            host_load: None,
        }
    }
}
