//! One VM, one scenario: start the VM, wait for the agent's hello on the
//! results channel, send the scenario, collect events until the agent is
//! done, the VM exits, or time runs out (then the VM is killed).
//!
//! "Time runs out" is judged by progress, not by the clock alone: a loaded
//! host slows a guest down without hanging it. The scenario's `timeout_s`
//! bounds a *stall* (no event, and no `progress` that advanced); the hard
//! cap ([`hard_cap_s`] × `timeout_s`) bounds the whole run.

use std::fs::File;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use arena_protocol::framing::write_message;
use arena_protocol::message::hard_cap_s;
use arena_protocol::{GuestMessage, Hello, HostMessage, LineReader, Scenario, StepStatus};

use crate::execute::backend::{Backend, Console, GdbWhen, SnapshotRole, VmCommand, VmSpec};
use crate::execute::console_capture::ConsoleCapture;
pub use crate::judge::outcome::{
    End, HostLoad, HostTimeout, Received, Record, Stop, VmExit, PANIC_GRACE,
};

/// Time the VM gets to power off after the agent said it is done.
const POWEROFF_GRACE: Duration = Duration::from_secs(10);
/// Host-side slack on top of the scenario's hard cap (the agent's watchdog
/// reports the hard cap first; this catches a wedged guest).
const HOST_GRACE: Duration = Duration::from_secs(10);
/// Poll interval while waiting (also the worst-case latency it adds).
const TICK: Duration = Duration::from_millis(5);
/// How often a VM held for gdb is checked for its end.
const HOLD_POLL: Duration = Duration::from_millis(100);
/// How often the console is checked for a panic while waiting.
const PANIC_POLL: Duration = Duration::from_millis(200);
/// How long a stalled guest gets to answer [`HostMessage::Diagnose`] and
/// for the kernel's dumps (sysrq `w`, `l`) to reach the console: a host
/// limit on the diagnosis, not a guest bound.
pub const DIAGNOSE_WAIT: Duration = Duration::from_secs(10);
/// The console is settled once it has not grown for this long.
const CONSOLE_QUIET: Duration = Duration::from_millis(500);

/// Timeouts of a session.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// VM start → agent hello.
    pub boot: Duration,
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

/// The host's time accounting once the scenario is sent: a stall of the
/// scenario's `timeout_s`, or its hard cap (plus [`HOST_GRACE`]), ends the
/// wait.
#[derive(Debug)]
struct Watch {
    stall_limit: Duration,
    cap: Duration,
    /// When the scenario was sent.
    sent: Instant,
    /// When the guest last advanced.
    advanced: Instant,
    /// When the guest last sent anything (a heartbeat included).
    heard: Instant,
    /// The position of the last `progress`.
    last_key: Option<(String, u64, Option<u64>)>,
    /// The path of the last step started.
    last_started: Option<String>,
}

impl Watch {
    fn new(timeout_s: u64, sent: Instant) -> Watch {
        Watch {
            stall_limit: Duration::from_secs(timeout_s),
            cap: Duration::from_secs(hard_cap_s(timeout_s)) + HOST_GRACE,
            sent,
            advanced: sent,
            heard: sent,
            last_key: None,
            last_started: None,
        }
    }

    /// Note `m`, arrived at `now`: a step that starts or ends, a selftest
    /// result or the end is progress; a `progress` heartbeat only when its
    /// position moved; anything else (output, log lines, a step started
    /// again) is not, so chatter cannot hold off the stall clock.
    fn heard(&mut self, m: &GuestMessage, now: Instant) {
        self.heard = now;
        let advanced = match m {
            GuestMessage::Progress { .. } => {
                let (path, ticks, iteration) = progress_key(m).expect("a progress message");
                let key = (path.to_owned(), ticks, iteration);
                let moved = self.last_key.as_ref() != Some(&key);
                self.last_key = Some(key);
                moved
            }
            GuestMessage::StepStarted { path, .. } => {
                let new = self.last_started.as_deref() != Some(path.as_str());
                self.last_started = Some(path.clone());
                new
            }
            GuestMessage::StepEnded { .. }
            | GuestMessage::Testcase { .. }
            | GuestMessage::Done { .. }
            | GuestMessage::Fatal { .. } => true,
            _ => false,
        };
        if advanced {
            self.advanced = now;
        }
    }

    /// When the wait must be looked at again (the earlier of the two limits).
    fn next_check(&self) -> Instant {
        (self.sent + self.cap).min(self.advanced + self.stall_limit)
    }

    /// The host-side timeout at `now`, if the wait is over.
    fn expired(&self, now: Instant) -> Option<HostTimeout> {
        let stop = check_time(
            now - self.sent,
            now - self.advanced,
            self.stall_limit,
            self.cap,
        )?;
        Some(HostTimeout {
            stop,
            silent: now - self.heard,
        })
    }
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
            cpus: std::thread::available_parallelism()
                .ok()
                .and_then(|n| u32::try_from(n.get()).ok()),
        })
    }
}

fn read_loadavg() -> Option<[f64; 3]> {
    parse_loadavg(&std::fs::read_to_string("/proc/loadavg").ok()?)
}

fn read_stat() -> Option<CpuTimes> {
    parse_stat(&std::fs::read_to_string("/proc/stat").ok()?)
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
/// Returns what the session saw, and the capture of the VM's console when it
/// went to a file (`None` also when no VM command was made): the caller
/// reads it for the verdict, which waits for the capture to end.
pub fn run(
    backend: &dyn Backend,
    spec: VmSpec,
    scenario: &Scenario,
    seed: u64,
    limits: Limits,
    events_log: &Path,
    vmm_log: &Path,
) -> (Record, Option<ConsoleCapture>) {
    let sock = socket_path();
    let started = Instant::now();
    let load = LoadProbe::start();
    let hold = spec
        .gdb
        .filter(|g| g.when == GdbWhen::OnFailure)
        .map(|_| VmSpec {
            channel: Some(sock.clone()),
            ..spec.clone()
        });
    let mut session = match Session::start(backend, spec, &sock, started, events_log, vmm_log) {
        Ok(s) => s,
        Err(why) => return (Record::unstarted(why), None),
    };
    session.hold_on_failure = hold.is_some();
    let end = session.drive(scenario, seed, started + limits.boot);
    let _ = std::fs::remove_file(&sock);
    if let Some(spec) = hold.filter(|_| end.is_failure()) {
        session.hold_for_gdb(backend, &spec, &scenario.name, &end);
    }
    let _ = std::fs::remove_file(sock.with_extension("ctl"));
    let vm_exit = session.shut_down(&end);
    let record = Record {
        hello: session.hello,
        boot_s: session.boot_s,
        messages: session.messages,
        end,
        vm_exit: Some(vm_exit),
        total_s: started.elapsed().as_secs_f64(),
        host_load: load.finish(),
    };
    (record, session.console)
}

/// Boot the VM `spec` describes (its snapshot role [`SnapshotRole::Save`])
/// to the agent's hello, then have the backend save its state, taking up to
/// `save_limit`: seconds from VM start to hello. The VM is gone afterwards,
/// and its console's capture has ended (restores begin with that file).
pub fn boot_and_save(
    backend: &dyn Backend,
    spec: VmSpec,
    boot_limit: Duration,
    save_limit: Duration,
    events_log: &Path,
    vmm_log: &Path,
) -> Result<f64, String> {
    let Some(role) = spec.snapshot.clone() else {
        return Err("not a VM booted to be saved".into());
    };
    let sock = socket_path();
    let started = Instant::now();
    let mut session = Session::start(backend, spec, &sock, started, events_log, vmm_log)?;
    let saved = (|| {
        let stream = session
            .accept_channel(started + boot_limit)
            .map_err(|e| crate::judge::verdict::SessionEnd::from(&e).to_string())?;
        let _ = stream.set_nonblocking(false);
        // Both ends stay open while the state is saved: the guest must not
        // see its host go away.
        let _writer = stream.try_clone().map_err(|e| e.to_string())?;
        let rx = spawn_reader(stream);
        session
            .await_hello(&rx, started + boot_limit)
            .map_err(|e| crate::judge::verdict::SessionEnd::from(&e).to_string())?;
        let boot_s = session.boot_s.unwrap_or_default();
        backend.save_snapshot(&mut session.child, &role, Instant::now() + save_limit)?;
        Ok(boot_s)
    })();
    let _ = std::fs::remove_file(&sock);
    session.shut_down(&End::NoHello(String::new()));
    if let Some(console) = session.console.as_mut() {
        let _ = console.settle();
    }
    saved
}

/// A started VM and what has been seen of it: the state of one [`run`].
struct Session {
    child: Child,
    /// Where the VM connects its results channel.
    listener: UnixListener,
    /// When the VM was started: message times count from here.
    started: Instant,
    /// `events.jsonl`, if it could be created.
    events: Option<File>,
    /// The backend's stderr, quoted when the VM dies early.
    vmm_log: PathBuf,
    hello: Option<Hello>,
    boot_s: Option<f64>,
    messages: Vec<Received>,
    /// Restored from a snapshot: the agent is told so before its hello.
    restored: bool,
    /// The console's capture, watched for a kernel panic; handed back to
    /// the caller when the session ends.
    console: Option<ConsoleCapture>,
    /// `--gdb-on-fail`: the agent keeps a failed VM up for the debugger.
    hold_on_failure: bool,
}

impl Session {
    /// Listen on `sock` and start the VM with it as its results channel;
    /// why not, if that fails.
    fn start(
        backend: &dyn Backend,
        mut spec: VmSpec,
        sock: &Path,
        started: Instant,
        events_log: &Path,
        vmm_log: &Path,
    ) -> Result<Session, String> {
        let _ = std::fs::remove_file(sock);
        let listener = UnixListener::bind(sock)
            .map_err(|e| format!("cannot listen on {}: {e}", sock.display()))?;
        let restored = matches!(spec.snapshot, Some(SnapshotRole::Restore { .. }));
        spec.channel = Some(sock.to_owned());
        let events = File::create(events_log).ok();
        let stderr = File::create(vmm_log)
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        let stdout = if spec.console == Console::Stdout {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        let VmCommand {
            mut command,
            console,
        } = backend.command(&spec);
        // SAFETY: prctl is async-signal-safe; the closure touches nothing else.
        // The VM dies with the runner, so a killed `lab` leaves no VM behind.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                let _ = std::fs::remove_file(sock);
                format!("cannot start the {} backend: {e}", backend.name())
            })?;
        // The VM holds the console pipe now: the capture ends with it.
        drop(command);
        crate::execute::signals::vm_started(child.id());
        Ok(Session {
            child,
            listener,
            started,
            events,
            vmm_log: vmm_log.to_owned(),
            hello: None,
            boot_s: None,
            messages: Vec::new(),
            restored,
            console,
            hold_on_failure: false,
        })
    }

    /// The whole conversation: how it ended (the agent's `done`, or why
    /// there was none).
    fn drive(&mut self, scenario: &Scenario, seed: u64, boot_deadline: Instant) -> End {
        // The writer stays open while the scenario runs.
        let (rx, mut writer) = match self.open(scenario, seed, boot_deadline) {
            Ok(channel) => channel,
            Err(end) => return end,
        };
        self.collect(
            &rx,
            &mut writer,
            Watch::new(scenario.timeout_s, Instant::now()),
        )
    }

    /// Wait for the results channel and the agent's hello, then send the
    /// scenario: the guest's messages to come, and the channel's writer.
    fn open(
        &mut self,
        scenario: &Scenario,
        seed: u64,
        boot_deadline: Instant,
    ) -> Result<(Receiver<Event>, UnixStream), End> {
        let stream = self.accept_channel(boot_deadline)?;
        let _ = stream.set_nonblocking(false);
        let mut writer = stream
            .try_clone()
            .map_err(|_| End::NoHello("cannot clone the results channel".into()))?;
        let rx = spawn_reader(stream);
        if self.restored {
            send_resume(&mut writer)?;
        }
        self.await_hello(&rx, boot_deadline)?;
        send_scenario(&mut writer, scenario, seed, self.hold_on_failure)?;
        Ok((rx, writer))
    }

    /// Wait for the VM to connect to the results channel.
    fn accept_channel(&mut self, deadline: Instant) -> Result<UnixStream, End> {
        let _ = self.listener.set_nonblocking(true);
        loop {
            match self.listener.accept() {
                Ok((s, _)) => return Ok(s),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(End::NoHello(format!("accepting the results channel: {e}"))),
            }
            if let Some(st) = self.exit_status() {
                return Err(End::NoHello(format!(
                    "the VM exited ({st}) before opening the results channel: {}",
                    tail_of(&self.vmm_log, 5)
                )));
            }
            if Instant::now() >= deadline {
                return Err(End::NoHello(
                    "the VM did not open the results channel in time".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Wait for the agent's hello and keep it.
    fn await_hello(&mut self, rx: &Receiver<Event>, deadline: Instant) -> Result<(), End> {
        let why = match next_event(rx, &mut self.child, deadline) {
            Ok(Event::Message(GuestMessage::Hello(h))) => {
                let at = self.now_s();
                self.log(&GuestMessage::Hello(h.clone()), at);
                self.boot_s = Some(at);
                self.hello = Some(h);
                return Ok(());
            }
            Ok(Event::Message(GuestMessage::Fatal { reason })) => {
                format!("the agent gave up before hello: {reason}")
            }
            Ok(Event::Message(other)) => {
                let sent = serde_json::to_string(&other).unwrap_or_default();
                format!("expected hello, the guest sent {sent}")
            }
            Ok(Event::Bad(why)) => format!("garbage before hello: {why}"),
            Ok(Event::Eof) => {
                // The guest is going down (a boot-time panic reboots it): let
                // the VM end on its own so its exit is recorded as such.
                self.wait_exit(Duration::from_secs(3));
                "results channel closed before hello".into()
            }
            Err(Wait::Exited(st)) => format!("the VM exited ({st}) before the agent said hello"),
            Err(Wait::Timeout) => "no hello from the agent before the boot timeout".into(),
        };
        Err(End::NoHello(why))
    }

    /// Guest messages until the agent's `done`, the VM's end, or the host's
    /// timeout by `watch`.
    fn collect(&mut self, rx: &Receiver<Event>, writer: &mut UnixStream, mut watch: Watch) -> End {
        loop {
            let wake = watch.next_check().min(Instant::now() + PANIC_POLL);
            match next_event(rx, &mut self.child, wake) {
                Ok(Event::Message(m)) => {
                    watch.heard(&m, Instant::now());
                    if let Some(end) = self.on_message(m) {
                        return end;
                    }
                }
                Ok(Event::Bad(why)) => return End::Protocol(why),
                // The guest closed its side; see whether the VM is going down.
                Ok(Event::Eof) => {
                    return End::VmExited(match self.wait_exit(Duration::from_secs(2)) {
                        Some(st) => st.to_string(),
                        None => "results channel closed; VM still running".into(),
                    })
                }
                Err(Wait::Exited(st)) => return End::VmExited(st.to_string()),
                Err(Wait::Timeout) => {
                    if self.panicked_long_ago() {
                        return End::KernelPanic;
                    }
                    if let Some(timeout) = watch.expired(Instant::now()) {
                        self.diagnose(rx, writer);
                        return End::HostTimeout(timeout);
                    }
                }
            }
        }
    }

    /// Before a stalled VM is killed: ask PID 1 for a
    /// [`GuestMessage::Diagnosis`] (kept with the other messages) and let
    /// the kernel's dumps reach the console, within [`DIAGNOSE_WAIT`].
    /// Whatever else arrives meanwhile is kept too; the session's end
    /// stays the timeout.
    fn diagnose(&mut self, rx: &Receiver<Event>, writer: &mut UnixStream) {
        let until = Instant::now() + DIAGNOSE_WAIT;
        if write_message(writer, &HostMessage::Diagnose).is_err() {
            return;
        }
        loop {
            match next_event(rx, &mut self.child, until) {
                Ok(Event::Message(m)) => {
                    let answered = matches!(m, GuestMessage::Diagnosis(_));
                    let _ = self.on_message(m);
                    if answered {
                        break;
                    }
                }
                _ => return,
            }
        }
        if let Some(console) = &self.console {
            settle_file(console.path(), CONSOLE_QUIET, until);
        }
    }

    /// The console showed a kernel panic more than [`PANIC_GRACE`] ago.
    fn panicked_long_ago(&self) -> bool {
        self.console
            .as_ref()
            .and_then(ConsoleCapture::panicked_at)
            .is_some_and(|t| t.elapsed() >= PANIC_GRACE)
    }

    /// Keep a message that came after hello (and log it); the end it
    /// brings, if any.
    fn on_message(&mut self, m: GuestMessage) -> Option<End> {
        let at = self.now_s();
        self.log(&m, at);
        let end = end_of(&m);
        self.messages.push(Received { at, message: m });
        end
    }

    /// Append `m`, received `at`, to `events.jsonl`.
    fn log(&mut self, m: &GuestMessage, at: f64) {
        if let Some(f) = self.events.as_mut() {
            let _ = writeln!(f, "{}", event_line(m, at));
        }
    }

    /// Seconds since the VM was started.
    fn now_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The VM's exit status, if it has ended.
    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Give the VM up to `grace` to end on its own; its status if it did.
    fn wait_exit(&mut self, grace: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + grace;
        loop {
            if let Some(st) = self.exit_status() {
                return Some(st);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(TICK);
        }
    }

    /// `--gdb-on-fail`: pause the failed VM for gdb and wait until it ends
    /// (gdb's `kill`) or the user interrupts the run; then the run goes on.
    fn hold_for_gdb(&mut self, backend: &dyn Backend, spec: &VmSpec, name: &str, end: &End) {
        if self.exit_status().is_some() {
            return;
        }
        let port = spec.gdb.map_or(0, |g| g.port);
        match backend.hold_for_gdb(&mut self.child, spec) {
            Ok(()) => eprintln!(
                "lab: {name} failed ({}); its VM is paused with a gdb stub on 127.0.0.1:{port} \
                 (the gdb line is above). End it with gdb's `kill`, or Ctrl-C here.",
                crate::judge::verdict::SessionEnd::from(end)
            ),
            Err(e) => {
                eprintln!("lab: {name} failed, but its VM cannot be paused for gdb: {e}");
                return;
            }
        }
        while self.exit_status().is_none() && crate::execute::signals::interrupted().is_none() {
            std::thread::sleep(HOLD_POLL);
        }
    }

    /// End the VM: it gets [`POWEROFF_GRACE`] to power off when it was told
    /// to (the agent said done) or is going already, else it is killed.
    fn shut_down(&mut self, end: &End) -> VmExit {
        let grace = if matches!(end, End::Done { .. } | End::VmExited(_)) {
            POWEROFF_GRACE
        } else {
            Duration::ZERO
        };
        let exit = stop(&mut self.child, grace);
        crate::execute::signals::vm_ended(self.child.id());
        exit
    }
}

/// Tell a restored agent so, with fresh entropy and the wall clock: every
/// restore of a snapshot would otherwise replay the same kernel RNG state.
fn send_resume(writer: &mut UnixStream) -> Result<(), End> {
    write_message(writer, &resume_message())
        .map_err(|e| End::NoHello(format!("telling the restored agent: {e}")))
}

/// What a restored agent is told first (see [`HostMessage::Resume`]).
pub fn resume_message() -> HostMessage {
    HostMessage::Resume {
        entropy: host_entropy(),
        unix_time_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
    }
}

/// 32 bytes from the host's kernel RNG.
fn host_entropy() -> [u64; 4] {
    let mut words = [0u64; 4];
    // SAFETY: `words` is 32 writable bytes; getrandom writes at most that.
    let n = unsafe { libc::getrandom(words.as_mut_ptr().cast(), 32, 0) };
    if n != 32 {
        // Never the same twice, if not random: the clock and the pid.
        words[0] = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        words[1] = u64::from(std::process::id());
    }
    words
}

/// Send the agent its scenario.
fn send_scenario(
    writer: &mut UnixStream,
    scenario: &Scenario,
    seed: u64,
    hold_on_failure: bool,
) -> Result<(), End> {
    let run = HostMessage::Run {
        scenario: scenario.clone(),
        seed,
        hold_on_failure,
    };
    write_message(writer, &run).map_err(|e| End::Protocol(format!("sending the scenario: {e}")))
}

/// The end a guest message brings: the agent's `done`, or its `fatal`
/// (it gave up).
fn end_of(m: &GuestMessage) -> Option<End> {
    match m {
        GuestMessage::Done {
            status,
            reason,
            killed,
        } => Some(End::Done {
            status: *status,
            reason: reason.clone(),
            killed: killed.clone(),
        }),
        GuestMessage::Fatal { reason } => Some(End::Done {
            status: StepStatus::Error,
            reason: format!("the agent gave up: {reason}"),
            killed: None,
        }),
        _ => None,
    }
}

/// An `events.jsonl` line: the message, stamped with its arrival
/// (`host_time_s`, seconds since VM start).
fn event_line(m: &GuestMessage, at: f64) -> serde_json::Value {
    let mut v = serde_json::to_value(m).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("host_time_s".into(), serde_json::json!(at));
    }
    v
}

/// Wait up to `grace` for `child` to end on its own, then kill it.
fn stop(child: &mut Child, grace: Duration) -> VmExit {
    let until = Instant::now() + grace;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return VmExit::Exited(st);
        }
        if Instant::now() >= until {
            let _ = child.kill();
            return match child.wait() {
                // It ended on its own just before the kill landed.
                Ok(st) if st.code().is_some() => VmExit::Exited(st),
                Ok(st) => VmExit::Killed(st),
                Err(e) => VmExit::Unreaped(e.to_string()),
            };
        }
        std::thread::sleep(TICK);
    }
}

/// Wait until `path` has not grown for `quiet`, or until `until`.
fn settle_file(path: &Path, quiet: Duration, until: Instant) {
    let len = || std::fs::metadata(path).map_or(0, |m| m.len());
    let (mut last, mut since) = (len(), Instant::now());
    while Instant::now() < until {
        std::thread::sleep(TICK * 10);
        let now = len();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= quiet {
            return;
        }
    }
}

fn tail_of(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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

/// What one VM's results channel may carry in all: far above any real
/// scenario (a progress line a second, a few hundred selftest results and
/// their output), so reaching it means a flood, which ends the scenario
/// instead of growing the runner's memory and the events log without end.
pub const CHANNEL_MAX_MESSAGES: u64 = 200_000;
/// Bytes of the same budget (each line is also capped at
/// `framing::MAX_LINE_BYTES`).
pub const CHANNEL_MAX_BYTES: u64 = 64 << 20;
/// Messages the reader may be ahead of the session: a guest that writes
/// faster than the host judges waits, instead of queueing in host memory.
const CHANNEL_QUEUE: usize = 256;

/// The per-VM budget of the results channel: lines (blank ones too) and
/// their bytes.
#[derive(Debug)]
struct ChannelBudget {
    messages: u64,
    bytes: u64,
    max_messages: u64,
    max_bytes: u64,
}

impl ChannelBudget {
    fn new(max_messages: u64, max_bytes: u64) -> ChannelBudget {
        ChannelBudget {
            messages: 0,
            bytes: 0,
            max_messages,
            max_bytes,
        }
    }

    /// Count one line of `len` bytes; the flood's description once over.
    fn take(&mut self, len: usize) -> Result<(), String> {
        self.messages += 1;
        self.bytes += len as u64 + 1;
        if self.messages > self.max_messages || self.bytes > self.max_bytes {
            return Err(format!(
                "the guest flooded the results channel: {} messages, {} bytes, over the \
                 per-scenario bound of {} messages or {} bytes",
                self.messages, self.bytes, self.max_messages, self.max_bytes
            ));
        }
        Ok(())
    }
}

/// The guest's lines as events, within `budget`; the first line over it
/// ends the stream as [`Event::Bad`].
fn read_events(
    mut reader: LineReader<impl std::io::Read>,
    mut budget: ChannelBudget,
    tx: &mpsc::SyncSender<Event>,
) {
    loop {
        let ev = match reader.next_line() {
            Ok(Some(line)) => match budget.take(line.len()) {
                Err(flood) => Event::Bad(flood),
                Ok(()) if line.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(()) => match serde_json::from_slice::<GuestMessage>(&line) {
                    Ok(m) => Event::Message(m),
                    Err(e) => Event::Bad(
                        arena_protocol::framing::FrameError::Malformed {
                            line: String::from_utf8_lossy(&line[..line.len().min(200)])
                                .into_owned(),
                            source: e,
                        }
                        .to_string(),
                    ),
                },
            },
            Ok(None) => Event::Eof,
            Err(e) => Event::Bad(e.to_string()),
        };
        let stop = !matches!(ev, Event::Message(_));
        if tx.send(ev).is_err() || stop {
            return;
        }
    }
}

fn spawn_reader(stream: UnixStream) -> Receiver<Event> {
    let (tx, rx) = mpsc::sync_channel(CHANNEL_QUEUE);
    std::thread::spawn(move || {
        let budget = ChannelBudget::new(CHANNEL_MAX_MESSAGES, CHANNEL_MAX_BYTES);
        read_events(LineReader::new(stream), budget, &tx);
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use arena_protocol::message::WorkerKilled;
    use std::os::unix::process::ExitStatusExt;

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
        // timeout_s 3: stall limit 3 s, cap 12 s + HOST_GRACE.
        let t = Instant::now();
        let mut w = Watch::new(3, t);
        assert_eq!(w.next_check(), t + S(3));
        w.advanced = t + S(20);
        assert_eq!(w.next_check(), t + S(12) + HOST_GRACE);
    }

    fn heartbeat(ticks: u64, elapsed_ms: u64) -> GuestMessage {
        GuestMessage::Progress {
            path: "0".into(),
            kind: "sleep".into(),
            elapsed_ms,
            ticks,
            workers: None,
        }
    }

    #[test]
    fn the_watch_times_stalls_from_the_last_advance() {
        let t = Instant::now();
        let mut w = Watch::new(10, t);
        assert_eq!(w.expired(t + S(9)), None);
        w.heard(&heartbeat(0, 1000), t + S(5));
        // Heartbeats that repeat the position keep the guest heard, not advanced.
        w.heard(&heartbeat(0, 9000), t + S(13));
        assert_eq!(
            w.expired(t + S(15)),
            Some(HostTimeout {
                stop: Stop::Stalled(S(10)),
                silent: S(2),
            })
        );
        // A moved position, or any other event, is progress.
        w.heard(&heartbeat(1, 10_000), t + S(14));
        assert_eq!(w.expired(t + S(23)), None);
        let started = GuestMessage::StepStarted {
            path: "1".into(),
            kind: "touch".into(),
            at: None,
        };
        w.heard(&started, t + S(22));
        assert_eq!(w.expired(t + S(31)), None);
        // However lively, the hard cap (plus the host's grace) ends it.
        let cap = S(40) + HOST_GRACE;
        w.heard(&heartbeat(2, 11_000), t + cap - S(1));
        assert_eq!(
            w.expired(t + cap),
            Some(HostTimeout {
                stop: Stop::HardCap(cap),
                silent: S(1),
            })
        );
    }

    #[test]
    fn chatter_and_repeated_starts_do_not_hold_off_the_stall_clock() {
        let t = Instant::now();
        let mut w = Watch::new(10, t);
        let started = GuestMessage::StepStarted {
            path: "0".into(),
            kind: "touch".into(),
            at: None,
        };
        w.heard(&started, t + S(1));
        // The same step started again, output and log lines: heard, no advance.
        for k in 2..=12 {
            w.heard(&started, t + S(k));
            w.heard(
                &GuestMessage::Output {
                    name: "x".into(),
                    text: "x".into(),
                },
                t + S(k),
            );
        }
        assert_eq!(
            w.expired(t + S(12)),
            Some(HostTimeout {
                stop: Stop::Stalled(S(11)),
                silent: S(0),
            })
        );
    }

    /// A guest that writes `lines` to the channel, read within `budget`.
    fn read_all(lines: &[u8], budget: ChannelBudget) -> Vec<Event> {
        let (tx, rx) = mpsc::sync_channel(1 << 20);
        read_events(LineReader::new(lines), budget, &tx);
        drop(tx);
        rx.into_iter().collect()
    }

    #[test]
    fn a_flood_ends_the_channel_with_its_reason() {
        let hb = serde_json::to_string(&heartbeat(1, 1)).unwrap();
        let three = format!("{hb}\n{hb}\n{hb}\n");
        // Within the budget: every message, then the end of the stream.
        let evs = read_all(three.as_bytes(), ChannelBudget::new(3, 1 << 20));
        assert_eq!(evs.len(), 4);
        assert!(matches!(evs[3], Event::Eof));
        // One message over: it is not delivered; the flood is named.
        let evs = read_all(three.as_bytes(), ChannelBudget::new(2, 1 << 20));
        assert_eq!(evs.len(), 3);
        let Event::Bad(why) = &evs[2] else {
            panic!("not a flood: {:?}", evs.len())
        };
        assert!(
            why.contains("flooded the results channel: 3 messages"),
            "{why}"
        );
        // Blank lines count too, and so do bytes.
        let blanks = "\n".repeat(1000);
        let evs = read_all(blanks.as_bytes(), ChannelBudget::new(100, 1 << 20));
        assert!(matches!(&evs[..], [Event::Bad(w)] if w.contains("101 messages")));
        let evs = read_all(
            three.as_bytes(),
            ChannelBudget::new(100, hb.len() as u64 + 1),
        );
        assert!(matches!(&evs[..], [Event::Message(_), Event::Bad(_)]));
        // The real bounds leave room for any real scenario.
        const { assert!(CHANNEL_MAX_MESSAGES >= 100_000 && CHANNEL_MAX_BYTES >= 32 << 20) };
    }

    #[test]
    fn done_and_fatal_end_the_session() {
        let killed = WorkerKilled {
            signal: 11,
            signal_name: "SIGSEGV".into(),
            addr: None,
        };
        let done = GuestMessage::Done {
            status: StepStatus::Fail,
            reason: killed.to_string(),
            killed: Some(killed.clone()),
        };
        assert_eq!(
            end_of(&done),
            Some(End::Done {
                status: StepStatus::Fail,
                reason: "agent worker killed by signal 11 (SIGSEGV)".into(),
                killed: Some(killed),
            })
        );
        let fatal = GuestMessage::Fatal {
            reason: "no memory".into(),
        };
        assert_eq!(
            end_of(&fatal),
            Some(End::Done {
                status: StepStatus::Error,
                reason: "the agent gave up: no memory".into(),
                killed: None,
            })
        );
        assert_eq!(end_of(&heartbeat(0, 0)), None);
    }

    #[test]
    fn events_are_stamped_with_their_arrival() {
        let line = event_line(&heartbeat(3, 1500), 2.5);
        assert_eq!(
            line,
            serde_json::json!({"type": "progress", "path": "0", "kind": "sleep",
                "elapsed_ms": 1500, "ticks": 3, "host_time_s": 2.5})
        );
    }

    #[test]
    fn vm_exits_read_as_the_os_says() {
        let cases = [
            (
                VmExit::Exited(ExitStatus::from_raw(0)),
                "exited: exit status: 0",
            ),
            (
                VmExit::Exited(ExitStatus::from_raw(3 << 8)),
                "exited: exit status: 3",
            ),
            (
                VmExit::Exited(ExitStatus::from_raw(libc::SIGABRT | 0x80)),
                "exited: signal: 6 (SIGABRT) (core dumped)",
            ),
            (
                VmExit::Killed(ExitStatus::from_raw(libc::SIGKILL)),
                "killed by the runner (signal: 9 (SIGKILL))",
            ),
            (
                VmExit::Unreaped("No child processes (os error 10)".into()),
                "killed by the runner (wait: No child processes (os error 10))",
            ),
        ];
        for (exit, text) in cases {
            assert_eq!(exit.to_string(), text);
            assert_eq!(
                serde_json::to_value(&exit).unwrap(),
                serde_json::json!(text)
            );
        }
    }

    #[test]
    fn a_vm_that_does_not_end_is_killed() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert_eq!(
            stop(&mut child, Duration::ZERO),
            VmExit::Killed(ExitStatus::from_raw(libc::SIGKILL))
        );
        let mut child = std::process::Command::new("true").spawn().unwrap();
        assert_eq!(
            stop(&mut child, S(10)),
            VmExit::Exited(ExitStatus::from_raw(0))
        );
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
            killed: None,
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
