//! One VM, one scenario: start the VM, wait for the agent's hello on the
//! results channel, send the scenario, collect events until the agent is
//! done, the VM exits, or time runs out (then the VM is killed).
//!
//! "Time runs out" is judged by progress, not by the clock alone: a loaded
//! host slows a guest down without hanging it. The scenario's `timeout_s`
//! bounds a *stall* (no event, and no `progress` that advanced); the hard
//! cap ([`hard_cap_s`] × `timeout_s`) bounds the whole run.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use arena_protocol::framing::write_message;
use arena_protocol::message::hard_cap_s;
use arena_protocol::{GuestMessage, Hello, HostMessage, LineReader, Scenario, StepStatus};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, Console, VmSpec};

/// Time the VM gets to power off after the agent said it is done.
const POWEROFF_GRACE: Duration = Duration::from_secs(10);
/// Host-side slack on top of the scenario's hard cap (the agent's watchdog
/// reports the hard cap first; this catches a wedged guest).
const HOST_GRACE: Duration = Duration::from_secs(10);
/// Poll interval while waiting (also the worst-case latency it adds).
const TICK: Duration = Duration::from_millis(5);

/// Timeouts of a session.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// VM start → agent hello.
    pub boot: Duration,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// The agent said it is done.
    Done {
        /// Its status.
        status: StepStatus,
        /// Its reason.
        reason: String,
    },
    /// The VM never got to the agent's hello.
    NoHello(String),
    /// The scenario stalled or outlived its hard cap; the VM was killed.
    HostTimeout(HostTimeout),
    /// The VM exited after hello without the agent saying done.
    VmExited(String),
    /// The guest broke the protocol.
    Protocol(String),
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

/// Whether to stop waiting, `elapsed` after the scenario was sent and
/// `stalled` after the guest last made progress: the hard cap `cap` wins,
/// else a stall of `stall_limit` or more.
pub fn check_time(
    elapsed: Duration,
    stalled: Duration,
    stall_limit: Duration,
    cap: Duration,
) -> Option<Stop> {
    if elapsed >= cap {
        Some(Stop::HardCap(cap))
    } else if stalled >= stall_limit {
        Some(Stop::Stalled(stalled))
    } else {
        None
    }
}

/// When the wait must be looked at again (the earlier of the two limits).
fn next_check(sent: Instant, advanced: Instant, stall_limit: Duration, cap: Duration) -> Instant {
    (sent + cap).min(advanced + stall_limit)
}

/// The position a `progress` message reports, for telling whether the
/// guest advanced since the last one (elapsed time alone is no progress).
fn progress_key(m: &GuestMessage) -> Option<(&str, u64, Option<u64>)> {
    match m {
        GuestMessage::Progress {
            path,
            ticks,
            workers,
            ..
        } => Some((path, *ticks, workers.map(|w| w.iteration))),
        _ => None,
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
}

/// A `/proc/stat` reading: (steal, total) jiffies of the `cpu` line.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuTimes {
    steal: u64,
    total: u64,
}

/// The three load averages of a `/proc/loadavg` text.
fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// Steal and total jiffies of the aggregate `cpu` line of `/proc/stat`
/// (user nice system idle iowait irq softirq steal; guest time is already
/// inside user/nice, so it is not added again).
fn parse_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    Some(CpuTimes {
        steal: *fields.get(7).unwrap_or(&0),
        total: fields.iter().sum(),
    })
}

/// Steal share (%) between two readings; `None` when no time passed.
fn steal_pct(start: CpuTimes, end: CpuTimes) -> Option<f64> {
    let total = end.total.checked_sub(start.total).filter(|&t| t > 0)?;
    let steal = end.steal.saturating_sub(start.steal);
    Some((steal as f64 * 100.0 / total as f64 * 10.0).round() / 10.0)
}

/// Readings taken when a VM starts, finished into [`HostLoad`] at its end.
struct LoadProbe {
    loadavg: Option<[f64; 3]>,
    stat: Option<CpuTimes>,
}

impl LoadProbe {
    fn start() -> LoadProbe {
        LoadProbe {
            loadavg: read_loadavg(),
            stat: read_stat(),
        }
    }

    fn finish(self) -> Option<HostLoad> {
        let steal = match (self.stat, read_stat()) {
            (Some(a), Some(b)) => steal_pct(a, b),
            _ => None,
        };
        Some(HostLoad {
            loadavg_start: self.loadavg?,
            loadavg_end: read_loadavg()?,
            steal_pct: steal,
        })
    }
}

fn read_loadavg() -> Option<[f64; 3]> {
    parse_loadavg(&std::fs::read_to_string("/proc/loadavg").ok()?)
}

fn read_stat() -> Option<CpuTimes> {
    parse_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// A received guest message with its arrival time (seconds since VM start).
#[derive(Debug, Clone)]
pub struct Received {
    /// Seconds since the VM was started.
    pub at: f64,
    /// The message.
    pub message: GuestMessage,
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
    /// How the VM process ended.
    pub vm_exit: String,
    /// Seconds from VM start to VM end.
    pub total_s: f64,
    /// Host load while the VM ran (`None` where `/proc` is unreadable).
    pub host_load: Option<HostLoad>,
}

enum Event {
    Message(GuestMessage),
    Bad(String),
    Eof,
}

static SOCKET_COUNTER: AtomicU64 = AtomicU64::new(0);

fn socket_path() -> PathBuf {
    std::env::temp_dir().join(format!(
        "arena-lab-{}-{}.sock",
        std::process::id(),
        SOCKET_COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Run `scenario` in a VM described by `spec` (whose `channel` is replaced).
/// `events_log` receives every guest message as a JSON line as it arrives.
pub fn run(
    backend: &dyn Backend,
    mut spec: VmSpec,
    scenario: &Scenario,
    seed: u64,
    limits: Limits,
    events_log: &Path,
    vmm_log: &Path,
) -> Record {
    let sock = socket_path();
    let _ = std::fs::remove_file(&sock);
    let started = Instant::now();
    let mut record = Record {
        hello: None,
        boot_s: None,
        messages: Vec::new(),
        end: End::NoHello(String::new()),
        vm_exit: String::new(),
        total_s: 0.0,
        host_load: None,
    };
    let load = LoadProbe::start();
    let listener = match UnixListener::bind(&sock) {
        Ok(l) => l,
        Err(e) => {
            record.end = End::NoHello(format!("cannot listen on {}: {e}", sock.display()));
            return record;
        }
    };
    spec.channel = Some(sock.clone());
    let mut events = std::fs::File::create(events_log).ok();
    let stderr = std::fs::File::create(vmm_log)
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    let stdout = if spec.console == Console::Stdout {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    let mut command = backend.command(&spec);
    // SAFETY: prctl is async-signal-safe; the closure touches nothing else.
    // The VM dies with the runner, so a killed `lab` leaves no VM behind.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = match command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            record.end = End::NoHello(format!("cannot start the {} backend: {e}", backend.name()));
            let _ = std::fs::remove_file(&sock);
            return record;
        }
    };
    crate::progress::vm_started(child.id());
    let boot_deadline = started + limits.boot;
    record.end = drive(
        &mut child,
        &listener,
        scenario,
        seed,
        boot_deadline,
        started,
        &mut record.hello,
        &mut record.boot_s,
        &mut record.messages,
        &mut events,
        vmm_log,
    );
    let _ = std::fs::remove_file(&sock);
    record.vm_exit = finish(
        &mut child,
        matches!(record.end, End::Done { .. } | End::VmExited(_)),
    );
    crate::progress::vm_ended(child.id());
    record.total_s = started.elapsed().as_secs_f64();
    record.host_load = load.finish();
    record
}

/// Wait for the VM to power off (when it was told to), else kill it.
fn finish(child: &mut Child, expect_exit: bool) -> String {
    let until = Instant::now()
        + if expect_exit {
            POWEROFF_GRACE
        } else {
            Duration::ZERO
        };
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return format!("exited: {st}");
        }
        if Instant::now() >= until {
            let _ = child.kill();
            return match child.wait() {
                // It ended on its own just before the kill landed.
                Ok(st) if st.code().is_some() => format!("exited: {st}"),
                Ok(st) => format!("killed by the runner ({st})"),
                Err(e) => format!("killed by the runner (wait: {e})"),
            };
        }
        std::thread::sleep(TICK);
    }
}

fn tail_of(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[allow(clippy::too_many_arguments)]
fn drive(
    child: &mut Child,
    listener: &UnixListener,
    scenario: &Scenario,
    seed: u64,
    boot_deadline: Instant,
    started: Instant,
    hello: &mut Option<Hello>,
    boot_s: &mut Option<f64>,
    messages: &mut Vec<Received>,
    events: &mut Option<std::fs::File>,
    vmm_log: &Path,
) -> End {
    let exited = |child: &mut Child| child.try_wait().ok().flatten();
    let _ = listener.set_nonblocking(true);
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return End::NoHello(format!("accepting the results channel: {e}")),
        }
        if let Some(st) = exited(child) {
            return End::NoHello(format!(
                "the VM exited ({st}) before opening the results channel: {}",
                tail_of(vmm_log, 5)
            ));
        }
        if Instant::now() >= boot_deadline {
            return End::NoHello("the VM did not open the results channel in time".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let _ = stream.set_nonblocking(false);
    let Ok(mut writer) = stream.try_clone() else {
        return End::NoHello("cannot clone the results channel".into());
    };
    let rx = spawn_reader(stream);
    let mut log = |m: &GuestMessage, at: f64| {
        if let Some(f) = events.as_mut() {
            let mut v = serde_json::to_value(m).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("host_time_s".into(), serde_json::json!(at));
            }
            let _ = writeln!(f, "{v}");
        }
    };
    // Hello.
    match next_event(&rx, child, boot_deadline) {
        Ok(Event::Message(GuestMessage::Hello(h))) => {
            let at = started.elapsed().as_secs_f64();
            log(&GuestMessage::Hello(h.clone()), at);
            *boot_s = Some(at);
            *hello = Some(h);
        }
        Ok(Event::Message(GuestMessage::Fatal { reason })) => {
            return End::NoHello(format!("the agent gave up before hello: {reason}"))
        }
        Ok(Event::Message(other)) => {
            let sent = serde_json::to_string(&other).unwrap_or_default();
            return End::NoHello(format!("expected hello, the guest sent {sent}"));
        }
        Ok(Event::Bad(why)) => return End::NoHello(format!("garbage before hello: {why}")),
        Ok(Event::Eof) => {
            // The guest is going down (a boot-time panic reboots it): let the
            // VM end on its own so its exit is recorded as such.
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until && exited(child).is_none() {
                std::thread::sleep(TICK);
            }
            return End::NoHello("results channel closed before hello".into());
        }
        Err(Wait::Exited(st)) => {
            return End::NoHello(format!("the VM exited ({st}) before the agent said hello"))
        }
        Err(Wait::Timeout) => {
            return End::NoHello("no hello from the agent before the boot timeout".into())
        }
    }
    let run = HostMessage::Run {
        scenario: scenario.clone(),
        seed,
    };
    if let Err(e) = write_message(&mut writer, &run) {
        return End::Protocol(format!("sending the scenario: {e}"));
    }
    let stall_limit = Duration::from_secs(scenario.timeout_s);
    let cap = Duration::from_secs(hard_cap_s(scenario.timeout_s)) + HOST_GRACE;
    let sent = Instant::now();
    let mut advanced = sent;
    let mut heard = sent;
    let mut last_key: Option<(String, u64, Option<u64>)> = None;
    loop {
        match next_event(&rx, child, next_check(sent, advanced, stall_limit, cap)) {
            Ok(Event::Message(m)) => {
                let at = started.elapsed().as_secs_f64();
                log(&m, at);
                heard = Instant::now();
                match progress_key(&m) {
                    Some((path, ticks, iteration)) => {
                        let key = (path.to_owned(), ticks, iteration);
                        if last_key.as_ref() != Some(&key) {
                            advanced = heard;
                            last_key = Some(key);
                        }
                    }
                    // Any event is progress (a step started or ended...).
                    None => advanced = heard,
                }
                let done = match &m {
                    GuestMessage::Done { status, reason } => Some(End::Done {
                        status: *status,
                        reason: reason.clone(),
                    }),
                    GuestMessage::Fatal { reason } => Some(End::Done {
                        status: StepStatus::Error,
                        reason: format!("the agent gave up: {reason}"),
                    }),
                    _ => None,
                };
                messages.push(Received { at, message: m });
                if let Some(end) = done {
                    return end;
                }
            }
            Ok(Event::Bad(why)) => return End::Protocol(why),
            Ok(Event::Eof) => {
                // The guest closed its side; see whether the VM is going down.
                let until = Instant::now() + Duration::from_secs(2);
                while Instant::now() < until {
                    if let Some(st) = exited(child) {
                        return End::VmExited(st.to_string());
                    }
                    std::thread::sleep(TICK);
                }
                return End::VmExited("results channel closed; VM still running".into());
            }
            Err(Wait::Exited(st)) => return End::VmExited(st.to_string()),
            Err(Wait::Timeout) => {
                let now = Instant::now();
                let stop = check_time(now - sent, now - advanced, stall_limit, cap);
                if let Some(stop) = stop {
                    return End::HostTimeout(HostTimeout {
                        stop,
                        silent: now - heard,
                    });
                }
            }
        }
    }
}

enum Wait {
    Exited(std::process::ExitStatus),
    Timeout,
}

fn next_event(rx: &Receiver<Event>, child: &mut Child, deadline: Instant) -> Result<Event, Wait> {
    loop {
        match rx.recv_timeout(TICK) {
            Ok(ev) => return Ok(ev),
            Err(RecvTimeoutError::Disconnected) => return Ok(Event::Eof),
            Err(RecvTimeoutError::Timeout) => {}
        }
        if let Ok(Some(st)) = child.try_wait() {
            // Drain whatever arrived just before the exit.
            return rx
                .recv_timeout(Duration::from_millis(200))
                .map_err(|_| Wait::Exited(st));
        }
        if Instant::now() >= deadline {
            return Err(Wait::Timeout);
        }
    }
}

fn spawn_reader(stream: UnixStream) -> Receiver<Event> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = LineReader::new(stream);
        loop {
            let ev = match reader.next_message::<GuestMessage>() {
                Ok(Some(m)) => Event::Message(m),
                Ok(None) => Event::Eof,
                Err(e) => Event::Bad(e.to_string()),
            };
            let stop = !matches!(ev, Event::Message(_));
            if tx.send(ev).is_err() || stop {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_progressing_guest_runs_past_timeout_s_until_the_cap() {
        // timeout_s 120, cap 480: 300 s in, progress 1 s ago: go on.
        assert_eq!(check_time(S(300), S(1), S(120), S(480)), None);
        assert_eq!(
            check_time(S(480), S(1), S(120), S(480)),
            Some(Stop::HardCap(S(480)))
        );
    }

    #[test]
    fn a_stall_of_timeout_s_ends_the_wait() {
        assert_eq!(check_time(S(119), S(119), S(120), S(480)), None);
        assert_eq!(
            check_time(S(200), S(120), S(120), S(480)),
            Some(Stop::Stalled(S(120)))
        );
        // Both at once: the cap is the stronger statement.
        assert_eq!(
            check_time(S(480), S(130), S(120), S(480)),
            Some(Stop::HardCap(S(480)))
        );
    }

    #[test]
    fn the_next_check_is_the_earlier_limit() {
        let t = Instant::now();
        assert_eq!(next_check(t, t + S(10), S(3), S(12)), t + S(12));
        assert_eq!(next_check(t, t + S(2), S(3), S(12)), t + S(5));
    }

    #[test]
    fn heartbeats_without_advance_are_no_progress() {
        let p = |path: &str, ticks, elapsed_ms| GuestMessage::Progress {
            path: path.into(),
            kind: "sleep".into(),
            elapsed_ms,
            ticks,
            workers: None,
        };
        assert_eq!(
            progress_key(&p("0", 0, 1000)),
            progress_key(&p("0", 0, 2000))
        );
        assert_ne!(
            progress_key(&p("0", 0, 1000)),
            progress_key(&p("0", 1, 2000))
        );
        assert_ne!(
            progress_key(&p("0", 0, 1000)),
            progress_key(&p("1", 0, 1000))
        );
        let done = GuestMessage::Done {
            status: StepStatus::Pass,
            reason: String::new(),
        };
        assert_eq!(progress_key(&done), None);
    }

    #[test]
    fn host_load_comes_from_proc_texts() {
        assert_eq!(
            parse_loadavg("3.10 2.05 1.00 4/321 12345\n"),
            Some([3.1, 2.05, 1.0])
        );
        assert_eq!(parse_loadavg("garbage"), None);
        let a = parse_stat("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3\n").unwrap();
        assert_eq!(
            a,
            CpuTimes {
                steal: 40,
                total: 1000
            }
        );
        let b = CpuTimes {
            steal: 140,
            total: 2000,
        };
        assert_eq!(steal_pct(a, b), Some(10.0));
        assert_eq!(steal_pct(a, a), None);
        assert_eq!(parse_stat("intr 1 2\n"), None);
    }
}
