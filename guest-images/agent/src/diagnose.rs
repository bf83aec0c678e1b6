//! What PID 1 tells the host about a stalled scenario
//! ([`HostMessage::Diagnose`](arena_protocol::HostMessage::Diagnose)):
//! every task of the worker and its descendants (their threads too) with
//! its state, wait channel, kernel stack and, for a worker of a parallel
//! step, its role, index and iteration (from the shared page); then sysrq
//! `w` (blocked tasks) and `l` (all CPUs' backtraces) so the kernel prints
//! its side on the console. PID 1 is not the stuck worker, so it can.
//!
//! Bounded: at most [`DIAGNOSIS_MAX_TASKS`] tasks, [`STACK_BYTES`] read of
//! each stack, [`DIAGNOSIS_MAX_FRAMES`] frames kept.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use arena_protocol::message::{
    Diagnosis, TaskDiagnosis, DIAGNOSIS_MAX_FRAMES, DIAGNOSIS_MAX_TASKS,
};

use crate::counters;

/// Bytes read of one `/proc/PID/stack` (a deep stack is cut, not a flood).
const STACK_BYTES: u64 = 8192;
/// Bytes read of the small `/proc` files (`stat`, `wchan`).
const SMALL_BYTES: u64 = 1024;
/// Processes looked at in `/proc` at most (the guest runs few).
const MAX_PROCS: usize = 4096;

/// At most `limit` bytes of `path`, as text; the error's words if unreadable.
fn read_bounded(path: &str, limit: u64) -> Result<String, String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    f.take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// (comm, state, ppid) of a `/proc/PID/stat` text: `57 (arena-agent) S 1 …`
/// (the comm may hold spaces and parentheses: it ends at the last `)`).
pub fn parse_stat(text: &str) -> Option<(String, String, u32)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let mut rest = text.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.to_owned();
    let ppid = rest.next()?.parse().ok()?;
    Some((comm, state, ppid))
}

/// The frames of a `/proc/PID/stack` text (`[<0>] pipe_read+0x2f8/0x440`),
/// innermost first.
pub fn parse_stack(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| match l.trim().split_once("] ") {
            Some((addr, f)) if addr.starts_with("[<") => f.trim(),
            _ => l.trim(),
        })
        .filter(|f| !f.is_empty())
        .take(DIAGNOSIS_MAX_FRAMES)
        .map(str::to_owned)
        .collect()
}

/// Every process in `/proc` with its parent (bounded).
fn processes() -> BTreeMap<u32, u32> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten().take(MAX_PROCS) {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((_, _, ppid)) = read_bounded(&format!("/proc/{pid}/stat"), SMALL_BYTES)
            .ok()
            .as_deref()
            .and_then(parse_stat)
        {
            out.insert(pid, ppid);
        }
    }
    out
}

/// `root` and its descendants among `parents` (pid → ppid), root first,
/// then by pid.
pub fn descendants(parents: &BTreeMap<u32, u32>, root: u32) -> Vec<u32> {
    let mut found = BTreeSet::from([root]);
    // Parents come before children in pid order only mostly: repeat until
    // nothing is added (bounded by the number of processes).
    loop {
        let before = found.len();
        for (&pid, ppid) in parents {
            if found.contains(ppid) {
                found.insert(pid);
            }
        }
        if found.len() == before {
            break;
        }
    }
    let mut out = vec![root];
    out.extend(found.into_iter().filter(|&p| p != root));
    out
}

/// The threads of process `pid` (itself first).
fn threads(pid: u32) -> Vec<u32> {
    let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .take(MAX_PROCS)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    tids.sort_unstable_by_key(|&t| (t != pid, t));
    if tids.is_empty() {
        tids.push(pid);
    }
    tids
}

/// One task as `/proc` shows it.
fn task(tgid: u32, tid: u32) -> Option<TaskDiagnosis> {
    let dir = format!("/proc/{tgid}/task/{tid}");
    let (comm, state, ppid) = parse_stat(&read_bounded(&format!("{dir}/stat"), SMALL_BYTES).ok()?)?;
    let wchan = read_bounded(&format!("{dir}/wchan"), SMALL_BYTES)
        .map(|w| w.trim().to_owned())
        .unwrap_or_default();
    let (stack, stack_error) = match read_bounded(&format!("{dir}/stack"), STACK_BYTES) {
        Ok(text) => (parse_stack(&text), None),
        Err(e) => (
            Vec::new(),
            Some(format!(
                "{dir}/stack: {e} (the kernel needs CONFIG_STACKTRACE)"
            )),
        ),
    };
    let w = counters::worker_task(tid);
    Some(TaskDiagnosis {
        pid: tid,
        tgid,
        ppid,
        comm,
        state,
        role: w.as_ref().and_then(|w| w.role.clone()),
        index: w.as_ref().and_then(|w| w.index),
        worker: w.as_ref().map(|w| w.worker),
        iteration: w.as_ref().map(|w| w.iteration),
        wchan,
        stack,
        stack_error,
    })
}

/// Write `key` to `/proc/sysrq-trigger` (enabling sysrq first): the key,
/// or why it could not be written.
fn sysrq(key: char) -> String {
    let _ = std::fs::write("/proc/sys/kernel/sysrq", "1");
    match std::fs::write("/proc/sysrq-trigger", key.to_string()) {
        Ok(()) => key.to_string(),
        Err(e) => format!("{key}: /proc/sysrq-trigger: {e}"),
    }
}

/// Diagnose the scenario whose worker is `worker`: its tasks, then the
/// kernel's dumps on the console.
pub fn diagnose(worker: libc::pid_t) -> Diagnosis {
    let parents = processes();
    let mut tasks = Vec::new();
    let mut omitted = 0u32;
    for pid in descendants(&parents, worker as u32) {
        for tid in threads(pid) {
            if tasks.len() >= DIAGNOSIS_MAX_TASKS {
                omitted = omitted.saturating_add(1);
                continue;
            }
            if let Some(t) = task(pid, tid) {
                tasks.push(t);
            }
        }
    }
    // After the stacks were read: the dumps then do not disturb them.
    let sysrq = vec![sysrq('w'), sysrq('l')];
    Diagnosis {
        tasks,
        omitted,
        sysrq,
    }
    .bounded()
}

/// The least hung-task timeout set (s): shorter ones would call a task
/// that waits a few seconds for a slow host hung, and a splat fails the
/// scenario.
const MIN_HUNG_TASK_S: u64 = 5;
/// The least `watchdog_thresh` set (s; a soft lockup is reported after
/// twice it): a VM descheduled on a loaded host must not look locked up.
const MIN_WATCHDOG_THRESH_S: u64 = 5;

/// The kernel's hang detectors tuned to a scenario with `timeout_s` (its
/// stall limit), so a kernel hang shows as their splat before the host's
/// stall clock runs out: (file under `/proc/sys/kernel`, value). Only
/// lowers `watchdog_thresh` (`current`, when readable).
pub fn detector_settings(
    timeout_s: u64,
    watchdog_thresh: Option<u64>,
) -> Vec<(&'static str, String)> {
    let hung = (timeout_s / 2).max(MIN_HUNG_TASK_S);
    let mut out = vec![
        ("hung_task_timeout_secs", hung.to_string()),
        // Checked every second: a task is reported about `hung` s after
        // its last switch, not up to twice that.
        ("hung_task_check_interval_secs", "1".to_owned()),
        ("hung_task_panic", "0".to_owned()),
        ("hung_task_warnings", "-1".to_owned()),
    ];
    let thresh = (timeout_s / 3).max(MIN_WATCHDOG_THRESH_S);
    if watchdog_thresh.is_some_and(|now| thresh < now) {
        out.push(("watchdog_thresh", thresh.to_string()));
    }
    out
}

/// Apply [`detector_settings`] where the kernel has the files (silently
/// skipping the others); what was set, for the log.
pub fn tune_detectors(timeout_s: u64) -> Vec<String> {
    let dir = "/proc/sys/kernel";
    let thresh = read_bounded(&format!("{dir}/watchdog_thresh"), SMALL_BYTES)
        .ok()
        .and_then(|t| t.trim().parse().ok());
    detector_settings(timeout_s, thresh)
        .into_iter()
        .filter(|(file, value)| std::fs::write(format!("{dir}/{file}"), value).is_ok())
        .map(|(file, value)| format!("{file}={value}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detectors_fire_before_the_stall_limit_where_they_can() {
        let get = |timeout_s, thresh| -> BTreeMap<&str, String> {
            detector_settings(timeout_s, thresh).into_iter().collect()
        };
        let s = get(120, Some(10));
        assert_eq!(s["hung_task_timeout_secs"], "60");
        assert_eq!(s["hung_task_panic"], "0");
        assert_eq!(s["hung_task_warnings"], "-1");
        // 40 s would raise the default 10: left alone.
        assert!(!s.contains_key("watchdog_thresh"));
        let s = get(21, Some(10));
        assert_eq!(s["hung_task_timeout_secs"], "10");
        assert_eq!(s["watchdog_thresh"], "7");
        // Short limits: never below the floors.
        let s = get(5, Some(10));
        assert_eq!(s["hung_task_timeout_secs"], "5");
        assert_eq!(s["watchdog_thresh"], "5");
        assert!(!get(5, None).contains_key("watchdog_thresh"));
    }

    #[test]
    fn stat_lines_parse_with_odd_comms() {
        assert_eq!(
            parse_stat("57 (arena-agent) S 1 57 57 0 -1 4194560 0"),
            Some(("arena-agent".into(), "S".into(), 1))
        );
        assert_eq!(
            parse_stat("9 (a) b (c)) D 8 9"),
            Some(("a) b (c)".into(), "D".into(), 8))
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn stack_frames_lose_their_address_column() {
        let text = "[<0>] unix_stream_data_wait+0x12c/0x1b0\n[<0>] unix_stream_read_generic+0x2b4/0x9b0\n\n";
        assert_eq!(
            parse_stack(text),
            [
                "unix_stream_data_wait+0x12c/0x1b0",
                "unix_stream_read_generic+0x2b4/0x9b0"
            ]
        );
        let deep: String = (0..100).map(|i| format!("[<0>] f{i}+0x1/0x2\n")).collect();
        assert_eq!(parse_stack(&deep).len(), DIAGNOSIS_MAX_FRAMES);
    }

    #[test]
    fn descendants_follow_parents_whatever_the_pid_order() {
        // 10 forked 5 (pids wrapped), 5 forked 12; 3 is someone else's.
        let parents = BTreeMap::from([(10, 1), (5, 10), (12, 5), (3, 1), (1, 0)]);
        assert_eq!(descendants(&parents, 10), [10, 5, 12]);
        assert_eq!(descendants(&parents, 12), [12]);
    }

    #[test]
    fn this_process_diagnoses_itself() {
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() } as u32;
        let t = task(me, me).expect("own /proc entry");
        assert_eq!((t.pid, t.tgid), (me, me));
        assert!(!t.comm.is_empty() && !t.state.is_empty());
        assert!(threads(me).first() == Some(&me));
    }
}
