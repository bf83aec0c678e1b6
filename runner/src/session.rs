//! One VM, one scenario: start the VM, wait for the agent's hello on the
//! results channel, send the scenario, collect events until the agent is
//! done, the VM exits, or time runs out (then the VM is killed).

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use arena_protocol::framing::write_message;
use arena_protocol::{GuestMessage, Hello, HostMessage, LineReader, Scenario, StepStatus};

use crate::backend::{Backend, Console, VmSpec};

/// Time the VM gets to power off after the agent said it is done.
const POWEROFF_GRACE: Duration = Duration::from_secs(10);
/// Host-side slack on top of the scenario's own timeout (the agent's
/// watchdog reports first; this catches a wedged guest).
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
    /// The scenario outlived its timeout; the VM was killed.
    HostTimeout(Duration),
    /// The VM exited after hello without the agent saying done.
    VmExited(String),
    /// The guest broke the protocol.
    Protocol(String),
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
    };
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
    let limit = Duration::from_secs(scenario.timeout_s) + HOST_GRACE;
    let deadline = Instant::now() + limit;
    loop {
        match next_event(&rx, child, deadline) {
            Ok(Event::Message(m)) => {
                let at = started.elapsed().as_secs_f64();
                log(&m, at);
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
            Err(Wait::Timeout) => return End::HostTimeout(limit),
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
