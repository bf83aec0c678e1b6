//! Step 6: the vCPUs run, one thread each, until the VM is over.
//!
//! The loop starts the vCPU threads, waits for a reason to stop them,
//! pauses them all, then acts on the reason: the VM is over; a snapshot is
//! saved (SIGUSR1); or the gdb stub takes the paused VM (a vCPU's debug
//! exit, the client's Ctrl-C, SIGUSR2) until its client resumes it, and
//! the loop starts the threads again. Pausing is one mechanism for all:
//! set the stop flag, kick every thread out of `KVM_RUN` with a signal,
//! join it; each thread settles its pending I/O first and hands its vCPU
//! back.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::signal::Killable;

use crate::error::Error;
use crate::event::{DebugExit, VmEvent};
use crate::exit_reason::ExitReason;
use crate::gdb::{self, Debugger, Outcome};
use crate::vcpu::{self, Vcpu, VcpuContext};
use crate::vm::{RunReport, Vm};
use crate::{devices, exit_stats, snapshot};

/// How often the loop looks for a signal's request (snapshot, debugger):
/// a signal handler can only set a flag.
const SIGNAL_POLL: Duration = Duration::from_millis(5);

/// How often the loop looks at the guest's serial output for progress.
const STALL_POLL: Duration = Duration::from_millis(100);

/// When the guest's serial output last grew.
struct Progress<'a> {
    bytes: &'a AtomicU64,
    last: u64,
    since: Instant,
}

impl<'a> Progress<'a> {
    fn new(bytes: &'a AtomicU64) -> Self {
        Self {
            bytes,
            last: bytes.load(Ordering::Relaxed),
            since: Instant::now(),
        }
    }

    /// Time since the output last grew.
    fn idle(&mut self) -> Duration {
        let now = self.bytes.load(Ordering::Relaxed);
        if now != self.last {
            self.last = now;
            self.since = Instant::now();
        }
        self.since.elapsed()
    }
}

/// Why the loop paused the vCPUs.
enum Stop {
    /// The VM is over.
    Exit(ExitReason),
    /// Save to this file.
    Snapshot(PathBuf),
    /// For the attached debugger: a vCPU's debug exit, or (`None`) its
    /// client interrupted, left or failed.
    Debugger(Option<DebugExit>),
    /// SIGUSR2: wait for a debugger.
    OnDemand,
}

/// What the vCPU threads share with the loop over the VM's life.
#[derive(Default)]
struct Shared {
    stop: Arc<AtomicBool>,
    boot_started: Arc<OnceLock<Instant>>,
    stats: Arc<Mutex<exit_stats::ExitStats>>,
}

/// The host-side timeout counts the time the guest could run: not the
/// time a debugger held it stopped.
struct Clock {
    start: Instant,
    held: Duration,
}

type Threads = Vec<JoinHandle<Option<Vcpu>>>;

impl Vm {
    /// Step 6: runs the vCPUs until the guest stops, the timeout expires,
    /// or the VM is saved or killed on request.
    pub fn run(mut self) -> Result<RunReport, Error> {
        vcpu::install_kick_handler()?;
        let start = Instant::now();
        if let Some(b) = &mut self.console_bridge {
            b.start_reader(self.console.clone())?;
        }
        let shared = Shared::default();
        let mut clock = Clock {
            start,
            held: Duration::ZERO,
        };
        let mut debugger = self.debugger.take();
        let vcpus = std::mem::take(&mut self.vcpus);
        let mut next = match debugger.as_mut() {
            Some(d) if d.waits_at_start() => {
                let addr = d.listen()?;
                eprintln!("arena-vmm: waiting for gdb on {addr}");
                let held = Instant::now();
                let o = d.attach(vcpus, &self.exit_rx);
                clock.held += held.elapsed();
                o
            }
            _ => Outcome::Resume(vcpus),
        };
        let exit = loop {
            let run = match next {
                Outcome::Resume(v) => v,
                Outcome::End(r) => break r,
            };
            let threads = self.spawn_vcpus(run, &shared)?;
            let why = self.wait_for_stop(&clock, debugger.as_mut());
            let paused_at = Instant::now();
            let paused = pause(threads, &shared.stop);
            let why = self.drain(why, debugger.as_mut());
            let (d, why) = match (why, debugger.as_mut()) {
                (Stop::Exit(r), d) => {
                    if let Some(d) = d {
                        d.vm_ended(&r);
                    }
                    break r;
                }
                (Stop::Snapshot(path), _) => break self.snapshot(&path, paused, paused_at),
                (why, Some(d)) => (d, why),
                (_, None) => {
                    break ExitReason::VcpuError("a debugger stop without a debugger".into())
                }
            };
            let Some(paused) = paused.into_iter().collect::<Option<Vec<_>>>() else {
                break ExitReason::VcpuError("a vCPU thread panicked".into());
            };
            next = match why {
                Stop::OnDemand => match d.listen() {
                    Ok(addr) => {
                        eprintln!("arena-vmm: paused; gdb stub on {addr}");
                        d.attach(paused, &self.exit_rx)
                    }
                    Err(e) => {
                        eprintln!("arena-vmm: {e}; the VM runs on");
                        Outcome::Resume(paused)
                    }
                },
                Stop::Debugger(debug) => d.stopped(paused, debug, &self.exit_rx),
                Stop::Exit(_) | Stop::Snapshot(_) => unreachable!("handled above"),
            };
            clock.held += paused_at.elapsed();
        };
        if let Some(b) = &mut self.console_bridge {
            b.stop();
        }
        let exits = std::mem::take(&mut *devices::lock(&shared.stats));
        let first_entry = shared.boot_started.get().copied();
        Ok(RunReport {
            exit,
            time_to_first_entry: first_entry.map(|t| t.duration_since(start)),
            run_time: start.elapsed(),
            first_entry_at: first_entry,
            exits,
            restore: self.restore_times,
        })
    }

    /// Starts one thread per vCPU in `vcpus`. Each hands its vCPU back when
    /// it stops (`None` if its exit handling panicked, which ends the VM).
    fn spawn_vcpus(&self, vcpus: Vec<Vcpu>, shared: &Shared) -> Result<Threads, Error> {
        shared.stop.store(false, Ordering::Release);
        let mut threads = Vec::with_capacity(vcpus.len());
        for mut v in vcpus {
            let started = if v.id == 0 {
                shared.boot_started.clone()
            } else {
                Arc::new(OnceLock::new())
            };
            let ctx = VcpuContext {
                pio: self.pio.clone(),
                mmio: self.mmio.clone(),
                exit_tx: self.exit_tx.clone(),
                stop: shared.stop.clone(),
                started,
                stats: shared.stats.clone(),
            };
            let id = v.id;
            let h = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    // A bug in an exit handler must end the VM, not hang it.
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| v.run(&ctx)));
                    if r.is_err() {
                        let why = ExitReason::VcpuError(format!("vCPU {id} thread panicked"));
                        let _ = ctx.exit_tx.send(VmEvent::Exit(why));
                        return None;
                    }
                    Some(v)
                })
                .map_err(|e| Error::Io("spawn vCPU thread".into(), e))?;
            threads.push(h);
        }
        Ok(threads)
    }

    /// Waits for the guest to end, the timeout, a stall, a debug exit, the
    /// gdb client, or a signal's request (polled).
    fn wait_for_stop(&self, clock: &Clock, mut debugger: Option<&mut Debugger>) -> Stop {
        let deadline = self.timeout.map(|t| clock.start + clock.held + t);
        let poll = self.snapshot_to.is_some() || debugger.is_some();
        // The stall window restarts with every resume: time the VM was
        // held (debugger) is not the guest's.
        let mut progress = Progress::new(&self.serial_progress);
        loop {
            if let Some(window) = self.stall_timeout {
                if progress.idle() >= window {
                    return Stop::Exit(ExitReason::Stalled { window });
                }
            }
            if self.snapshot_to.is_some() && snapshot::take_request() {
                if let Some(p) = &self.snapshot_to {
                    return Stop::Snapshot(p.clone());
                }
            }
            if let Some(d) = debugger.as_deref_mut() {
                if gdb::signal::take_request() {
                    if !d.attached() {
                        return Stop::OnDemand;
                    }
                    eprintln!("arena-vmm: SIGUSR2 ignored: a gdb client is attached");
                }
            }
            let mut wait = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) => left,
                    None => return Stop::Exit(ExitReason::Timeout),
                },
                None => Duration::from_secs(3600),
            };
            if poll {
                wait = wait.min(SIGNAL_POLL);
            }
            if let Some(window) = self.stall_timeout {
                wait = wait.min(STALL_POLL.min(window.saturating_sub(progress.idle())));
            }
            match self.exit_rx.recv_timeout(wait) {
                Ok(VmEvent::Exit(r)) => return Stop::Exit(r),
                Ok(VmEvent::Debug(e)) if debugger.is_some() => return Stop::Debugger(Some(e)),
                Ok(VmEvent::Debug(e)) => {
                    return Stop::Exit(ExitReason::Unexpected(format!(
                        "KVM_EXIT_DEBUG on vCPU {} with no debugger",
                        e.vcpu
                    )))
                }
                Ok(VmEvent::Gdb(ev)) => {
                    if let Some(d) = debugger.as_deref_mut() {
                        if d.input_while_running(ev) {
                            return Stop::Debugger(None);
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    return Stop::Exit(ExitReason::VcpuError("all vCPU threads ended".into()))
                }
            }
        }
    }

    /// Events that came in while the vCPUs were being paused: the VM's end
    /// overrides a debugger stop, a debug exit completes a client's one,
    /// client bytes wait for the debugger.
    fn drain(&self, mut why: Stop, mut debugger: Option<&mut Debugger>) -> Stop {
        while let Ok(ev) = self.exit_rx.try_recv() {
            match ev {
                VmEvent::Exit(r) => {
                    if matches!(why, Stop::Debugger(_) | Stop::OnDemand) {
                        why = Stop::Exit(r);
                    }
                }
                VmEvent::Debug(e) => {
                    if let Stop::Debugger(None) = why {
                        why = Stop::Debugger(Some(e));
                    }
                }
                VmEvent::Gdb(ev) => {
                    if let Some(d) = debugger.as_deref_mut() {
                        d.queue_input(ev);
                    }
                }
            }
        }
        why
    }

    /// Saves the paused VM; `vcpus` are the joined vCPU threads' results
    /// (`None` for one that panicked).
    fn snapshot(&self, path: &Path, vcpus: Vec<Option<Vcpu>>, paused_at: Instant) -> ExitReason {
        let Some(vcpus) = vcpus.into_iter().collect::<Option<Vec<_>>>() else {
            return ExitReason::SnapshotFailed("a vCPU thread panicked".into());
        };
        match self.save_snapshot(path, &vcpus) {
            Ok(bytes) => ExitReason::SnapshotSaved {
                path: path.to_path_buf(),
                bytes,
                millis: paused_at.elapsed().as_millis() as u64,
            },
            Err(e) => ExitReason::SnapshotFailed(format!("{}: {e}", path.display())),
        }
    }
}

/// Pauses every running vCPU: sets the stop flag and kicks each thread
/// out of `KVM_RUN` until it has ended; returns their vCPUs, settled (see
/// `Vcpu::run`). The snapshot and the debugger both start from this.
fn pause(threads: Threads, stop: &AtomicBool) -> Vec<Option<Vcpu>> {
    stop.store(true, Ordering::Release);
    threads
        .into_iter()
        .map(|h| {
            while !h.is_finished() {
                let _ = h.kill(vcpu::kick_signal());
                std::thread::sleep(Duration::from_millis(1));
            }
            h.join().ok().flatten()
        })
        .collect()
}
