//! A stalled scenario diagnosed, not only timed out: what PID 1 reported
//! of the scenario's tasks when the host's stall clock ran out
//! ([`Diagnosis`]), what the kernel printed (hung-task and lockup splats,
//! sysrq `w`'s blocked tasks), and whether that is kernel evidence. Also
//! the task ids of the scenario's workers, so a splat's `PID: N` can be
//! named by its role.

use std::collections::BTreeMap;

use arena_protocol::message::{Diagnosis, TaskDiagnosis};
use arena_protocol::GuestMessage;
use serde::{Deserialize, Serialize};

use crate::judge::outcome::Record;
use crate::judge::splat::{self, strip_timestamp};

/// Blocked tasks read from the console at most.
const MAX_BLOCKED: usize = 64;
/// Frames kept per blocked task.
const MAX_FRAMES: usize = 32;
/// Frames named in a finding (`A ← B`).
const FINDING_FRAMES: usize = 2;
/// Tasks described in a finding without kernel evidence.
const FINDING_TASKS: usize = 3;
/// Characters kept of a comm read from the console.
const MAX_COMM: usize = 64;

/// A task the kernel reported blocked (`D`) on the console: by sysrq `w`,
/// or by the hung-task detector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedTask {
    /// `comm`.
    pub comm: String,
    /// Its pid (task id).
    pub pid: u32,
    /// Its frames, innermost first (`folio_wait_bit_common+0x…/0x…`).
    pub frames: Vec<String>,
    /// 1-based line of its `task:` line in `console.log`.
    pub line: usize,
    /// Reported by the hung-task detector (else: by sysrq `w`).
    #[serde(default)]
    pub hung: bool,
}

/// The judge's reading of a stall: the summary's `diagnosis`, and
/// `diagnosis.txt` ([`StallDiagnosis::text`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StallDiagnosis {
    /// Whether the kernel showed the hang (a hung task or lockup splat, or
    /// a task of the scenario blocked in `D` state): the verdict is then
    /// `fail`, else `timeout`.
    pub kernel_evidence: bool,
    /// What was found, one line (`task arena-agent:57 (waiter 0) blocked
    /// in …`, or `no kernel evidence: …`).
    pub finding: String,
    /// Tasks the console shows blocked (`D`), any task's.
    #[serde(default)]
    pub blocked: Vec<BlockedTask>,
    /// What PID 1 reported; `None` when it did not answer in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<Diagnosis>,
}

/// The symbol of a trace frame line (`__schedule+0x3c1/0xb60 [mod]`,
/// timestamp and indentation removed); `None` for anything else and for
/// unreliable (`? `) frames.
fn frame_symbol(line: &str) -> Option<&str> {
    let (sym, rest) = line.trim().split_once('+')?;
    let valid = !sym.is_empty()
        && sym
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.$".contains(c));
    (valid && rest.starts_with("0x")).then_some(sym)
}

/// Frames of the scheduler itself, which every sleeping task shows first.
fn is_scheduler(sym: &str) -> bool {
    let base = sym.split('.').next().unwrap_or(sym);
    base.contains("schedule")
        || base.starts_with("__switch_to")
        || matches!(
            base,
            "context_switch" | "__cond_resched" | "preempt_schedule_common"
        )
}

/// Where a task waits: its first frames past the scheduler's, `A ← B`.
pub fn waits_in(frames: &[String]) -> Option<String> {
    let syms: Vec<&str> = frames.iter().filter_map(|f| frame_symbol(f)).collect();
    let own: Vec<&str> = syms.iter().copied().filter(|s| !is_scheduler(s)).collect();
    let pick = if own.is_empty() { &syms } else { &own };
    (!pick.is_empty()).then(|| {
        pick.iter()
            .take(FINDING_FRAMES)
            .copied()
            .collect::<Vec<_>>()
            .join(" ← ")
    })
}

/// The comm and pid of a `task:comm state:D stack:0 pid:57 tgid:57 …`
/// line (older kernels pad the numbers: `pid:   57`), when its state is `D`.
fn blocked_task_line(line: &str) -> Option<(String, u32)> {
    let rest = line.strip_prefix("task:")?;
    let (comm, rest) = rest.split_once(" state:")?;
    if !rest.starts_with('D') {
        return None;
    }
    let mut words = rest.split_whitespace();
    let pid = loop {
        let w = words.next()?;
        if let Some(n) = w.strip_prefix("pid:") {
            break if n.is_empty() { words.next()? } else { n };
        }
    };
    Some((
        comm.trim().chars().take(MAX_COMM).collect(),
        pid.parse().ok()?,
    ))
}

/// The comm and pid of a hung-task title: `INFO: task comm:57 blocked for
/// more than 5 seconds.`
fn hung_task_title(title: &str) -> Option<(&str, u32)> {
    let rest = &title[title.find("task ")? + 5..];
    let who = &rest[..rest.find(" blocked for more than")?];
    let (comm, pid) = who.rsplit_once(':')?;
    Some((comm, pid.parse().ok()?))
}

/// Every task the console shows blocked in `D` state, with its frames
/// (bounded): sysrq `w` prints them, and so does the hung-task detector
/// after its `INFO: task … blocked for more than` line.
pub fn blocked_tasks(console: &str) -> Vec<BlockedTask> {
    let lines: Vec<&str> = console
        .lines()
        .map(|l| strip_timestamp(l.trim_end_matches('\r')))
        .collect();
    let mut out: Vec<BlockedTask> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some((comm, pid)) = blocked_task_line(line) else {
            continue;
        };
        if out.len() >= MAX_BLOCKED {
            break;
        }
        let hung = lines[i.saturating_sub(3)..i]
            .iter()
            .any(|l| hung_task_title(l).is_some_and(|(_, p)| p == pid));
        let mut frames = Vec::new();
        for l in &lines[i + 1..] {
            let t = l.trim();
            if matches!(t, "Call Trace:" | "<TASK>") || t.starts_with("? ") {
                continue;
            }
            match frame_symbol(t) {
                Some(_) if frames.len() < MAX_FRAMES => frames.push(t.to_owned()),
                Some(_) => {}
                None => break,
            }
        }
        out.push(BlockedTask {
            comm,
            pid,
            frames,
            line: i + 1,
            hung,
        });
    }
    out
}

/// `PID N` named in a splat's title or text: `CPU: 1 PID: 7 at …`,
/// `CPU: 0 UID: 0 PID: 104 Comm: …`, `INFO: task comm:57 blocked …`,
/// `soft lockup - CPU#0 stuck for 26s! [comm:81]`.
pub fn splat_pid(title: &str, text: Option<&str>) -> Option<u32> {
    let numbered = |s: &str| -> Option<u32> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let in_line = |l: &str| -> Option<u32> {
        if let Some(i) = l.find(" PID: ") {
            return numbered(&l[i + 6..]);
        }
        if let Some((_, pid)) = hung_task_title(l) {
            return Some(pid);
        }
        let open = l.rfind('[')?;
        let inner = l[open + 1..].strip_suffix(']')?;
        numbered(inner.rsplit_once(':')?.1)
    };
    in_line(title).or_else(|| {
        text?
            .lines()
            .take(8)
            .find_map(|l| in_line(strip_timestamp(l)))
    })
}

/// `role index` of each worker task id the guest reported: the parallel
/// steps' `workers` (in their data, whatever the nesting) and the
/// diagnosis' tasks.
pub fn worker_roles(record: &Record) -> BTreeMap<u32, String> {
    fn walk(v: &serde_json::Value, depth: usize, out: &mut BTreeMap<u32, String>) {
        if depth > 8 {
            return;
        }
        match v {
            serde_json::Value::Object(o) => {
                let pid = o.get("pid").and_then(|p| p.as_u64());
                let role = o.get("role").and_then(|r| r.as_str());
                let index = o.get("index").and_then(|i| i.as_u64());
                if let (Some(pid @ 1..), Some(role), Some(index)) = (pid, role, index) {
                    out.insert(pid as u32, format!("{role} {index}"));
                }
                o.values().for_each(|v| walk(v, depth + 1, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, depth + 1, out)),
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    for r in &record.messages {
        match &r.message {
            GuestMessage::StepEnded { data, .. } => walk(data, 0, &mut out),
            GuestMessage::Diagnosis(d) => {
                for t in &d.tasks {
                    if let Some(role) = &t.role {
                        let index = t.index.map(|i| format!(" {i}")).unwrap_or_default();
                        out.insert(t.pid, format!("{role}{index}"));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The last diagnosis PID 1 sent, within the bounds.
fn guest_diagnosis(record: &Record) -> Option<Diagnosis> {
    record.messages.iter().rev().find_map(|r| match &r.message {
        GuestMessage::Diagnosis(d) => Some(d.clone().bounded()),
        _ => None,
    })
}

/// `comm:pid (role index)`, the role when known.
fn label(comm: &str, pid: u32, roles: &BTreeMap<u32, String>) -> String {
    match roles.get(&pid) {
        Some(r) => format!("{comm}:{pid} ({r})"),
        None => format!("{comm}:{pid}"),
    }
}

/// Where a task of the guest's diagnosis waits: its stack past the
/// scheduler, else its wait channel.
fn guest_waits_in(t: &TaskDiagnosis) -> Option<String> {
    waits_in(&t.stack).or_else(|| {
        let w = t.wchan.trim();
        (!w.is_empty() && w != "0").then(|| w.to_owned())
    })
}

/// A guest task in a few words: `arena-agent:57 (waiter 0, iteration 1)
/// S in unix_stream_data_wait ← unix_stream_read_generic`.
fn describe(t: &TaskDiagnosis) -> String {
    let mut who = format!("{}:{}", t.comm, t.pid);
    if let Some(role) = &t.role {
        let index = t.index.map(|i| format!(" {i}")).unwrap_or_default();
        let it = t
            .iteration
            .map(|i| format!(", iteration {i}"))
            .unwrap_or_default();
        who.push_str(&format!(" ({role}{index}{it})"));
    }
    match guest_waits_in(t) {
        Some(w) => format!("{who} {} in {w}", t.state),
        None => format!("{who} {}", t.state),
    }
}

/// Read a stalled scenario: kernel evidence first (a hung task of any
/// kind, a lockup, a task of the scenario that sysrq `w` shows blocked),
/// else where the scenario's tasks wait.
pub fn assess(record: &Record, console: &str) -> StallDiagnosis {
    let guest = guest_diagnosis(record);
    let blocked = blocked_tasks(console);
    let roles = worker_roles(record);
    let ours = |pid: u32| {
        roles.contains_key(&pid)
            || guest
                .as_ref()
                .is_some_and(|g| g.tasks.iter().any(|t| t.pid == pid))
    };
    let finding = |b: &BlockedTask, by: &str| {
        let at = waits_in(&b.frames)
            .map(|w| format!(" in {w}"))
            .unwrap_or_default();
        format!(
            "task {} blocked{at} ({by}, console.log:{})",
            label(&b.comm, b.pid, &roles),
            b.line
        )
    };
    let splats = splat::detect(console);
    let found = blocked
        .iter()
        .find(|b| b.hung && ours(b.pid))
        .map(|b| finding(b, "hung task detector"))
        .or_else(|| {
            splats
                .iter()
                .find(|s| {
                    matches!(s.kind, "soft_lockup" | "hard_lockup" | "rcu_stall")
                        || s.title.contains("soft lockup - CPU#")
                })
                .map(|s| format!("kernel lockup: {} (console.log:{})", s.title, s.line))
        })
        .or_else(|| {
            blocked
                .iter()
                .find(|b| b.hung)
                .map(|b| finding(b, "hung task detector"))
        })
        .or_else(|| {
            splats
                .iter()
                .find(|s| s.kind == "hung_task")
                .map(|s| format!("hung task: {} (console.log:{})", s.title, s.line))
        })
        .or_else(|| {
            blocked
                .iter()
                .find(|b| ours(b.pid))
                .map(|b| finding(b, "sysrq w"))
        });
    if let Some(finding) = found {
        return StallDiagnosis {
            kernel_evidence: true,
            finding,
            blocked,
            guest,
        };
    }
    let finding = match &guest {
        None => "no kernel evidence, and no diagnosis from the agent (it did not answer in time)"
            .to_owned(),
        Some(g) if g.tasks.is_empty() => {
            "no kernel evidence, and the agent found no task of the scenario".to_owned()
        }
        Some(g) => {
            // Workers first: they run the steps.
            let mut tasks: Vec<&TaskDiagnosis> = g.tasks.iter().collect();
            tasks.sort_by_key(|t| (t.role.is_none(), t.worker, t.pid));
            let mut said: Vec<String> = tasks
                .iter()
                .take(FINDING_TASKS)
                .map(|t| describe(t))
                .collect();
            let more = g.tasks.len() + g.omitted as usize - said.len();
            if more > 0 {
                said.push(format!("{more} more in diagnosis.txt"));
            }
            format!(
                "no kernel evidence: the kernel reported no hung task, lockup or blocked task \
                 of the scenario; {}",
                said.join("; ")
            )
        }
    };
    StallDiagnosis {
        kernel_evidence: false,
        finding,
        blocked,
        guest,
    }
}

impl StallDiagnosis {
    /// `diagnosis.txt`: the finding, every task PID 1 reported with its
    /// stack, the console's blocked tasks. `decode` adds source lines to a
    /// stack's text when a vmlinux with symbols is there.
    pub fn text(&self, decode: Option<&dyn Fn(&str) -> String>) -> String {
        let frames = |frames: &[String]| -> String {
            let text: String = frames.iter().map(|f| format!("    {f}\n")).collect();
            match decode {
                Some(d) => d(&text),
                None => text,
            }
        };
        let mut out = format!(
            "{}: {}\n",
            if self.kernel_evidence {
                "kernel evidence"
            } else {
                "finding"
            },
            self.finding
        );
        match &self.guest {
            None => out.push_str("\nThe agent sent no diagnosis.\n"),
            Some(g) => {
                out.push_str(&format!(
                    "\nTasks of the scenario ({}{}), as PID 1 read them from /proc:\n",
                    g.tasks.len(),
                    if g.omitted > 0 {
                        format!(", {} more left out", g.omitted)
                    } else {
                        String::new()
                    }
                ));
                for t in &g.tasks {
                    let role = match (&t.role, t.index) {
                        (Some(r), Some(i)) => format!(" {r} {i}"),
                        (Some(r), None) => format!(" {r}"),
                        _ => String::new(),
                    };
                    let worker = t
                        .worker
                        .map(|w| format!(", worker {w}"))
                        .unwrap_or_default();
                    let it = t
                        .iteration
                        .map(|i| format!(", iteration {i}"))
                        .unwrap_or_default();
                    out.push_str(&format!(
                        "\n  {}:{} (tgid {}, ppid {}){role}{worker}{it}: state {}, wchan {}\n",
                        t.comm,
                        t.pid,
                        t.tgid,
                        t.ppid,
                        t.state,
                        if t.wchan.is_empty() { "-" } else { &t.wchan }
                    ));
                    if let Some(e) = &t.stack_error {
                        out.push_str(&format!("    (no stack: {e})\n"));
                    }
                    out.push_str(&frames(&t.stack));
                }
                out.push_str(&format!(
                    "\nsysrq: {}\n",
                    if g.sysrq.is_empty() {
                        "none".to_owned()
                    } else {
                        g.sysrq.join(", ")
                    }
                ));
            }
        }
        if self.blocked.is_empty() {
            out.push_str("\nThe console shows no task blocked in D state.\n");
        } else {
            out.push_str("\nTasks the console shows blocked in D state:\n");
            for b in &self.blocked {
                out.push_str(&format!(
                    "\n  {}:{} (console.log:{}{})\n",
                    b.comm,
                    b.pid,
                    b.line,
                    if b.hung { ", hung task detector" } else { "" }
                ));
                out.push_str(&frames(&b.frames));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::outcome::{End, HostTimeout, Stop};
    use std::time::Duration;

    fn record(messages: Vec<GuestMessage>) -> Record {
        let stalled = End::HostTimeout(HostTimeout {
            stop: Stop::Stalled(Duration::from_secs(5)),
            silent: Duration::from_millis(300),
        });
        Record::heard(stalled, messages)
    }

    fn task(pid: u32, role: Option<(&str, u32)>, state: &str, stack: &[&str]) -> TaskDiagnosis {
        TaskDiagnosis {
            pid,
            tgid: pid,
            ppid: 40,
            comm: "arena-agent".into(),
            state: state.into(),
            role: role.map(|(r, _)| r.to_owned()),
            index: role.map(|(_, i)| i),
            worker: role.map(|(_, i)| i),
            iteration: role.map(|_| 1),
            wchan: stack
                .first()
                .map(|f| f.split('+').next().unwrap().to_owned())
                .unwrap_or_default(),
            stack: stack.iter().map(|s| (*s).to_owned()).collect(),
            stack_error: None,
        }
    }

    const RECV: &[&str] = &[
        "unix_stream_data_wait+0x12c/0x1b0",
        "unix_stream_read_generic+0x2b4/0x9b0",
        "unix_stream_recvmsg+0x8c/0xa0",
    ];

    /// Blocked-task dumps as 6.12 prints them (sysrq w, then a hung task).
    const BLOCKED: &str = "\
[   20.1] sysrq: Show Blocked State
[   20.1] task:arena-agent     state:D stack:0     pid:57    tgid:57    ppid:40     flags:0x00004002
[   20.1] Call Trace:
[   20.1]  <TASK>
[   20.1]  __schedule+0x3c1/0xb60
[   20.1]  schedule+0x27/0xf0
[   20.1]  io_schedule+0x46/0x70
[   20.1]  ? wake_page_function+0x10/0x10
[   20.1]  folio_wait_bit_common+0x13d/0x350
[   20.1]  __do_fault+0x36/0x140
[   20.1]  do_fault+0x2c2/0x500
[   20.1]  </TASK>
[   20.2] task:kworker/0:1     state:I stack:0     pid:12    tgid:12    ppid:2      flags:0x00004000
";

    #[test]
    fn sysrq_w_tasks_are_read_with_their_frames() {
        let b = blocked_tasks(BLOCKED);
        assert_eq!(b.len(), 1, "only D tasks: {b:?}");
        assert_eq!(
            (b[0].comm.as_str(), b[0].pid, b[0].line),
            ("arena-agent", 57, 2)
        );
        assert_eq!(b[0].frames.len(), 6, "{:?}", b[0].frames);
        assert!(!b[0].hung);
        assert_eq!(
            waits_in(&b[0].frames).as_deref(),
            Some("folio_wait_bit_common ← __do_fault")
        );
        // Older kernels pad the numbers.
        assert_eq!(
            blocked_task_line(
                "task:init            state:D stack:    0 pid:   57 ppid:     1 flags:0x0"
            ),
            Some(("init".into(), 57))
        );
    }

    #[test]
    fn a_scenario_task_in_d_state_is_kernel_evidence_named_by_its_role() {
        let d = Diagnosis {
            tasks: vec![task(57, Some(("faulter", 2)), "D", &[])],
            omitted: 0,
            sysrq: vec!["w".into(), "l".into()],
        };
        let s = assess(&record(vec![GuestMessage::Diagnosis(d)]), BLOCKED);
        assert!(s.kernel_evidence);
        assert_eq!(
            s.finding,
            "task arena-agent:57 (faulter 2) blocked in folio_wait_bit_common ← __do_fault (sysrq w, console.log:2)"
        );
        // Someone else's blocked task is no evidence about the scenario.
        let other = BLOCKED.replace("pid:57 ", "pid:99 ");
        let d = Diagnosis {
            tasks: vec![task(57, Some(("faulter", 2)), "S", RECV)],
            ..Default::default()
        };
        let s = assess(&record(vec![GuestMessage::Diagnosis(d)]), &other);
        assert!(!s.kernel_evidence, "{}", s.finding);
    }

    #[test]
    fn the_hung_task_detector_is_evidence_whatever_the_task() {
        let console = "\
[   30.0] INFO: task kworker/u4:2:33 blocked for more than 5 seconds.
[   30.0]       Not tainted 6.12.117 #1
[   30.0] task:kworker/u4:2    state:D stack:0     pid:33    tgid:33    ppid:2      flags:0x00004000
[   30.0] Call Trace:
[   30.0]  <TASK>
[   30.0]  __schedule+0x3c1/0xb60
[   30.0]  rwsem_down_write_slowpath+0x1e1/0x600
[   30.0]  down_write+0x5b/0x60
[   30.0]  </TASK>
";
        let s = assess(&record(vec![]), console);
        assert!(s.kernel_evidence);
        assert_eq!(
            s.finding,
            "task kworker/u4:2:33 blocked in rwsem_down_write_slowpath ← down_write (hung task detector, console.log:3)"
        );
        assert!(s.blocked[0].hung);
        let lockup = "[ 9.0] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [arena-agent:81]\n";
        let s = assess(&record(vec![]), lockup);
        assert!(s.kernel_evidence);
        assert!(
            s.finding
                .starts_with("kernel lockup: watchdog: BUG: soft lockup"),
            "{}",
            s.finding
        );
    }

    #[test]
    fn without_evidence_the_finding_says_where_the_tasks_wait() {
        let d = Diagnosis {
            tasks: vec![
                task(
                    50,
                    None,
                    "S",
                    &["do_wait+0x5e/0xf0", "kernel_wait4+0xa6/0x140"],
                ),
                task(57, Some(("waiter", 1)), "S", RECV),
                task(56, Some(("waiter", 0)), "S", RECV),
            ],
            omitted: 0,
            sysrq: vec!["w".into(), "l".into()],
        };
        let s = assess(
            &record(vec![GuestMessage::Diagnosis(d)]),
            "[ 1.0] sysrq: Show Blocked State\n",
        );
        assert!(!s.kernel_evidence);
        assert_eq!(
            s.finding,
            "no kernel evidence: the kernel reported no hung task, lockup or blocked task of the \
             scenario; arena-agent:56 (waiter 0, iteration 1) S in unix_stream_data_wait ← \
             unix_stream_read_generic; arena-agent:57 (waiter 1, iteration 1) S in \
             unix_stream_data_wait ← unix_stream_read_generic; arena-agent:50 S in do_wait ← \
             kernel_wait4"
        );
        let text = s.text(None);
        assert!(text.starts_with("finding: no kernel evidence"), "{text}");
        assert!(text.contains("\n  arena-agent:57 (tgid 57, ppid 40) waiter 1, worker 1, iteration 1: state S, wchan unix_stream_data_wait\n    unix_stream_data_wait+0x12c/0x1b0\n"), "{text}");
        assert!(text.contains("\nsysrq: w, l\n"), "{text}");
        let s = assess(&record(vec![]), "");
        assert!(
            s.finding.contains("no diagnosis from the agent"),
            "{}",
            s.finding
        );
    }

    #[test]
    fn splat_pids_are_found_and_named_by_role() {
        for (title, text, pid) in [
            ("WARNING: CPU: 1 PID: 104 at kernel/bpf/arena.c:10 f+0x1", None, 104),
            ("BUG: Bad page state in process init  pfn:05c23", Some("[ 1.0] BUG: Bad page state\n[ 1.0] CPU: 0 UID: 0 PID: 104 Comm: init Not tainted\n"), 104),
            ("INFO: task arena-agent:77 blocked for more than 120 seconds.", None, 77),
            ("watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [arena-agent:81]", None, 81),
        ] {
            assert_eq!(splat_pid(title, text), Some(pid), "{title}");
        }
        assert_eq!(
            splat_pid("BUG: kernel NULL pointer dereference", None),
            None
        );
        let data = serde_json::json!({"workers": [{"worker": 0, "role": "faulter", "index": 2, "pid": 104}],
            "choices": [{"workers": [{"role": "freer", "index": 0, "pid": 105}]}]});
        let r = record(vec![GuestMessage::StepEnded {
            path: "0".into(),
            kind: "processes".into(),
            status: arena_protocol::StepStatus::Pass,
            detail: String::new(),
            duration_ms: 1,
            data,
        }]);
        let roles = worker_roles(&r);
        assert_eq!(roles.get(&104).map(String::as_str), Some("faulter 2"));
        assert_eq!(roles.get(&105).map(String::as_str), Some("freer 0"));
    }
}
