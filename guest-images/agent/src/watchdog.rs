//! PID 1's watch over the scenario's worker. While it waits for the worker
//! it sends `progress` every second for the step the worker published in
//! the shared page (the host judges stalls from it), and at the scenario's
//! hard cap it kills the worker and reports the open step as timed out.
//!
//! It runs in PID 1, not in a thread of the worker: the worker forks
//! (`processes:` workers, touch probes), and a child forked beside a
//! running thread can inherit a lock that thread holds (the channel's, the
//! allocator's) and wait for it forever. PID 1 is single-threaded.

use std::time::{Duration, Instant};

use arena_protocol::{GuestMessage, HostMessage, StepRef, StepStatus};

use crate::channel::Channel;
use crate::executor::set_verdict_fd;
use crate::worker::{spawn, Worker};
use crate::{counters, sys};

/// How often PID 1 tells the host how far the scenario got.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How soon a tick is tried again when the worker is in the middle of a
/// message.
const RETRY_TICK: Duration = Duration::from_millis(5);
/// How often PID 1 looks for a message from the host (a
/// [`HostMessage::Diagnose`]) while it waits for the worker.
const CHANNEL_POLL: Duration = Duration::from_millis(20);
/// How long a killed worker gets to die before its timeout is reported
/// anyway (one stuck in the kernel may never die).
const KILLED_WAIT: Duration = Duration::from_secs(1);

/// What PID 1 watches for.
pub struct Watch {
    /// Each top-level step as `progress` and a timeout's reason name it.
    pub steps: Vec<StepRef>,
    /// The scenario's hard cap (s), from when the watch starts.
    pub cap_s: u64,
    /// How often to send `progress` ([`PROGRESS_EVERY`]).
    pub every: Duration,
    /// How long past the cap a worker that ran all its steps may take to
    /// exit (its maps are torn down then).
    pub grace: Duration,
}

/// How the watch ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The worker ended with this wait status.
    Exited(i32),
    /// The hard cap came in a step (or between steps): the worker was
    /// killed, and the step's `step_ended` and the `done` were sent.
    TimedOut,
    /// The worker ran all its steps but was still there at the cap plus
    /// the grace: it was killed; its verdict may be in its pipe.
    Lingered,
}

/// Watch the worker `pid` until it ends or the hard cap is reached.
pub fn watch(channel: &Channel, pid: libc::pid_t, w: &Watch) -> Ended {
    let start = Instant::now();
    // A cap too far to add is no cap (a century).
    let cap = start
        .checked_add(Duration::from_secs(w.cap_s))
        .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 86_400));
    let give_up = cap.checked_add(w.grace).unwrap_or(cap);
    let mut next_tick = start + w.every;
    loop {
        let wake = if Instant::now() < cap {
            next_tick.min(cap)
        } else {
            give_up
        };
        if let Some(status) = sys::reap_children_until(pid, wake.min(Instant::now() + CHANNEL_POLL))
        {
            return Ended::Exited(status);
        }
        if let Some(HostMessage::Diagnose) = channel.poll_receive() {
            channel.send(&GuestMessage::Diagnosis(crate::diagnose::diagnose(pid)));
        }
        let now = Instant::now();
        if now >= cap {
            if !counters::worker_finished() {
                return time_out(channel, pid, w);
            }
            if now >= give_up {
                kill(pid);
                return Ended::Lingered;
            }
            continue;
        }
        if now >= next_tick {
            next_tick = now
                + if tick(channel, &w.steps) {
                    w.every
                } else {
                    RETRY_TICK
                };
        }
    }
}

/// The kind of top-level step `i`.
fn kind_of(steps: &[StepRef], i: usize) -> &str {
    steps.get(i).map_or("?", |s| s.kind.as_str())
}

/// Milliseconds since `started_ns` ([`counters::monotonic_ns`]).
fn elapsed_ms(started_ns: u64) -> u64 {
    counters::monotonic_ns().saturating_sub(started_ns) / 1_000_000
}

/// Send `progress` for the running step, if any; `false` when the worker
/// had the channel (try again soon).
fn tick(channel: &Channel, steps: &[StepRef]) -> bool {
    // During PID 1's turn the worker can neither send nor end its step, so
    // the step read here has not ended yet on the channel.
    let Some(_turn) = counters::try_channel_turn() else {
        return false;
    };
    if let Some((i, started_ns)) = counters::running_step() {
        let (ticks, workers) = counters::read_counters();
        channel.send(&GuestMessage::Progress {
            path: i.to_string(),
            kind: kind_of(steps, i).into(),
            elapsed_ms: elapsed_ms(started_ns),
            ticks,
            workers,
        });
    }
    true
}

/// Kill the worker and wait a little for it to go.
fn kill(pid: libc::pid_t) {
    // SAFETY: kill takes no pointers; `pid` is our child and not yet
    // reaped, so the pid cannot have been reused.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = sys::reap_children_until(pid, Instant::now() + KILLED_WAIT);
}

/// The hard cap: report the open step as timed out, as the worker's own
/// watchdog thread used to (the same `step_ended` and `done`).
fn time_out(channel: &Channel, pid: libc::pid_t, w: &Watch) -> Ended {
    // The channel is PID 1's from here: the worker is not killed in the
    // middle of a message, and its step cannot end on the channel first.
    let _turn = counters::channel_turn();
    let running = counters::running_step();
    let at = counters::read_counters()
        .1
        .map(|p| format!(", {p}"))
        .unwrap_or_default();
    kill(pid);
    let (path, kind, ms) = match running {
        Some((i, started_ns)) => (i.to_string(), kind_of(&w.steps, i), elapsed_ms(started_ns)),
        None => ("?".to_owned(), "?", 0),
    };
    // How the reason names the step: `step 3/12 (touch, x.yaml:9)`.
    let step = running
        .and_then(|(i, _)| w.steps.get(i))
        .map_or_else(|| "step ?".to_owned(), StepRef::to_string);
    let detail = format!(
        "hard cap {} s reached while still running{at}, {:.1} s into the step",
        w.cap_s,
        ms as f64 / 1000.0
    );
    channel.send(&GuestMessage::StepEnded {
        path: path.clone(),
        kind: kind.into(),
        status: StepStatus::Timeout,
        detail: detail.clone(),
        duration_ms: ms,
        data: serde_json::Value::Null,
    });
    channel.send(&GuestMessage::Done {
        status: StepStatus::Timeout,
        reason: format!("{step}: {detail}"),
        killed: None,
    });
    Ended::TimedOut
}

/// The `done` message the worker left in its verdict pipe, if any.
fn read_verdict(w: &Worker) -> Option<GuestMessage> {
    String::from_utf8_lossy(&w.output())
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
}

/// Run `work` in a forked worker, watched by this process (`progress`, the
/// hard cap: [`watch`]), and send the `done`: the worker's
/// verdict, or how it ended without one (crash, kill, hard cap); whether
/// it passed.
pub fn supervise(channel: &Channel, limits: &Watch, work: impl FnOnce() -> bool) -> bool {
    // Mapped before the fork, so that the worker and PID 1 share it: the
    // worker publishes its step there and PID 1 reads it.
    counters::map_counters();
    // No pipes or no fork, no worker: report it; the caller powers off.
    let w = match spawn(|verdict_tx| {
        set_verdict_fd(verdict_tx);
        if work() {
            0
        } else {
            1
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            channel.send(&GuestMessage::Done {
                status: StepStatus::Error,
                reason: format!("cannot start the agent worker: {e}"),
                killed: None,
            });
            return false;
        }
    };
    let done = match watch(channel, w.pid, limits) {
        Ended::Exited(st) if libc::WIFEXITED(st) => {
            // The worker is gone, and with it its maps and mappings: only now
            // is the scenario over (teardown splats land before `done`).
            read_verdict(&w).unwrap_or_else(|| GuestMessage::Done {
                status: StepStatus::Error,
                reason: format!(
                    "agent worker exited ({}) without a verdict",
                    sys::describe_status(st)
                ),
                killed: None,
            })
        }
        Ended::Exited(st) => {
            let killed = w.killed_by(libc::WTERMSIG(st));
            GuestMessage::Done {
                status: StepStatus::Fail,
                reason: killed.to_string(),
                killed: Some(killed),
            }
        }
        // The watchdog sent the step's end and the `done`.
        Ended::TimedOut => return false,
        // It had its verdict but did not exit: the verdict stands.
        Ended::Lingered => read_verdict(&w).unwrap_or_else(|| GuestMessage::Done {
            status: StepStatus::Timeout,
            reason: "worker did not finish within the scenario's hard cap".into(),
            killed: None,
        }),
    };
    let passed = matches!(
        &done,
        GuestMessage::Done {
            status: StepStatus::Pass | StepStatus::Skip,
            ..
        }
    );
    channel.send(&done);
    passed
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{Read, Seek};
    use std::os::fd::FromRawFd;

    use arena_protocol::WorkerProgress;

    use super::*;
    use crate::counters::WorkerCounters;
    use crate::worker::{self, testing::in_single_threaded_child};

    /// A file both processes of a test write the channel's lines to (a
    /// memfd: no reader needed while they run, nothing blocks).
    fn channel_file() -> File {
        // SAFETY: a new anonymous file; the File owns the fd.
        let fd = unsafe { libc::memfd_create(c"channel".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` was just created and nothing else owns it.
        unsafe { File::from_raw_fd(fd) }
    }

    /// Every line written to `file`, each parsed as one whole message.
    fn messages(mut file: &File) -> Vec<GuestMessage> {
        let mut text = String::new();
        file.rewind().unwrap();
        file.read_to_string(&mut text).unwrap();
        assert!(text.ends_with('\n'), "a cut line at the end: {text:?}");
        text.lines()
            .map(|l| {
                serde_json::from_str::<GuestMessage>(l)
                    .unwrap_or_else(|e| panic!("not one whole message: {l:?}: {e}"))
            })
            .collect()
    }

    fn watch(kinds: Vec<&'static str>, cap_s: u64, every: Duration) -> Watch {
        let steps = kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| StepRef {
                index: i + 1,
                of: kinds.len(),
                kind: (*kind).into(),
                file: "w.yaml".into(),
                line: Some(7),
            })
            .collect();
        Watch {
            steps,
            cap_s,
            every,
            grace: Duration::from_secs(5),
        }
    }

    fn started(kind: &str) -> GuestMessage {
        GuestMessage::StepStarted {
            path: "0".into(),
            kind: kind.into(),
            at: None,
        }
    }

    const CHILDREN: usize = 200;

    /// The worker side of the test below: one step in which it forks
    /// `CHILDREN` children (in waves of 20) that allocate, report and exit,
    /// sending lines of its own between waves; whether all reported.
    fn fork_many(channel: &Channel) -> bool {
        let t0 = Instant::now();
        channel.send(&started("processes"));
        counters::step_started(0);
        let mut ok = 0;
        for wave in 0..CHILDREN / 20 {
            let children: Vec<_> = (0..20)
                .map(|i| {
                    worker::spawn(move |out| {
                        let v: Vec<u64> = (0..10_000 + i).collect();
                        let text = format!("{}", v.iter().sum::<u64>());
                        // SAFETY: a live local buffer to the output pipe.
                        unsafe { libc::write(out, text.as_ptr().cast(), text.len()) };
                        0
                    })
                    .expect("the worker has one thread: it forks")
                })
                .collect();
            for (i, c) in children.iter().enumerate() {
                let st = sys::wait_child(c.pid, Instant::now() + Duration::from_secs(30));
                let n = 10_000 + i as u64;
                let want = (n * (n - 1) / 2).to_string();
                if st == Some(0) && c.output() == want.as_bytes() {
                    ok += 1;
                }
            }
            channel.send(&GuestMessage::Log {
                line: format!("wave {wave}: {ok} children so far"),
            });
        }
        // Long enough for many ticks, however fast the forks were.
        std::thread::sleep(Duration::from_millis(300).saturating_sub(t0.elapsed()));
        counters::step_done();
        channel.send(&GuestMessage::StepEnded {
            path: "0".into(),
            kind: "processes".into(),
            status: StepStatus::Pass,
            detail: format!("{ok} children"),
            duration_ms: t0.elapsed().as_millis() as u64,
            data: serde_json::Value::Null,
        });
        counters::scenario_done();
        let all = ok == CHILDREN;
        let status = if all {
            StepStatus::Pass
        } else {
            StepStatus::Fail
        };
        crate::executor::verdict(status, format!("{ok} of {CHILDREN} children"));
        all
    }

    #[test]
    fn a_worker_forks_many_children_while_pid1_sends_progress() {
        let out = channel_file();
        let theirs = out.try_clone().unwrap();
        in_single_threaded_child(move || {
            let channel = Channel::from_files(File::open("/dev/null").unwrap(), theirs);
            // PID 1's part, busy: a tick every 5 ms.
            let w = watch(vec!["processes"], 120, Duration::from_millis(5));
            assert!(supervise(&channel, &w, || fork_many(&channel)));
        });
        let msgs = messages(&out);
        assert_eq!(msgs[0], started("processes"));
        let end = msgs
            .iter()
            .position(|m| matches!(m, GuestMessage::StepEnded { .. }))
            .expect("the step ended");
        let GuestMessage::StepEnded { detail, status, .. } = &msgs[end] else {
            unreachable!()
        };
        assert_eq!(
            (detail.as_str(), *status),
            ("200 children", StepStatus::Pass)
        );
        let mut last_ms = 0;
        let mut progress = 0;
        for m in &msgs[1..end] {
            match m {
                GuestMessage::Progress {
                    path,
                    kind,
                    elapsed_ms,
                    ..
                } => {
                    assert_eq!((path.as_str(), kind.as_str()), ("0", "processes"));
                    assert!(*elapsed_ms >= last_ms);
                    last_ms = *elapsed_ms;
                    progress += 1;
                }
                GuestMessage::Log { .. } => {}
                other => panic!("unexpected in the step: {other:?}"),
            }
        }
        assert!(progress >= 10, "{progress} progress lines: {msgs:?}");
        assert_eq!(
            msgs.iter()
                .filter(|m| matches!(m, GuestMessage::Log { .. }))
                .count(),
            CHILDREN / 20
        );
        // After the step's end: no progress, only PID 1's `done`.
        assert_eq!(
            &msgs[end + 1..],
            [GuestMessage::Done {
                status: StepStatus::Pass,
                reason: format!("{CHILDREN} of {CHILDREN} children"),
                killed: None,
            }]
        );
    }

    #[test]
    fn pid1_times_out_the_open_step_at_the_hard_cap() {
        let out = channel_file();
        let theirs = out.try_clone().unwrap();
        in_single_threaded_child(move || {
            let channel = Channel::from_files(File::open("/dev/null").unwrap(), theirs);
            let w = watch(vec!["threads"], 1, Duration::from_millis(100));
            let t0 = Instant::now();
            let passed = supervise(&channel, &w, || {
                channel.send(&started("threads"));
                counters::step_started(0);
                let workers = WorkerCounters::claim(2, 10).unwrap();
                workers.iteration_done(0);
                std::thread::sleep(Duration::from_secs(60));
                true
            });
            assert!(!passed);
            let took = t0.elapsed();
            assert!(took < Duration::from_secs(5), "{took:?}");
        });
        let msgs = messages(&out);
        assert_eq!(msgs[0], started("threads"));
        let n = msgs.len();
        assert!(n >= 5, "{msgs:?}");
        assert!(msgs[1..n - 2]
            .iter()
            .all(|m| matches!(m, GuestMessage::Progress { path, kind, workers: Some(WorkerProgress { workers: 2, .. }), .. } if path == "0" && kind == "threads")));
        let GuestMessage::StepEnded {
            path,
            kind,
            status,
            detail,
            ..
        } = &msgs[n - 2]
        else {
            panic!("{:?}", msgs[n - 2]);
        };
        assert_eq!(
            (path.as_str(), kind.as_str(), *status),
            ("0", "threads", StepStatus::Timeout)
        );
        let at = "hard cap 1 s reached while still running, iteration 1/10 in 2 of 2 workers, ";
        assert!(
            detail.starts_with(at) && detail.ends_with(" s into the step"),
            "{detail}"
        );
        assert_eq!(
            msgs[n - 1],
            GuestMessage::Done {
                status: StepStatus::Timeout,
                reason: format!("step 1/1 (threads, w.yaml:7): {detail}"),
                killed: None,
            }
        );
    }
}
