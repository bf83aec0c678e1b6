//! Forked workers: the agent's one way to run code in a child process and
//! collect what it leaves behind (its output pipe, its crash report). The
//! pipe ends are `OwnedFd`s, so every path — fork failure, early return,
//! timeout — closes them.
//!
//! It forks only while the calling process has a single thread: a child
//! forked beside a running thread gets a copy of every lock that thread
//! held at that moment (the results channel's, the allocator's, a step's)
//! and no thread to ever release it, so it waits forever on the first one
//! it needs. [`spawn`] counts the threads and refuses, with an error that
//! says why, instead of hoping for a lucky interleaving.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::time::{Duration, Instant};

use arena_protocol::message::WorkerKilled;

use crate::{crash, sys};

/// A forked worker: its pid and the read ends of its two pipes.
pub struct Worker {
    /// Process id.
    pub pid: libc::pid_t,
    out: OwnedFd,
    crash: OwnedFd,
}

/// A close-on-exec pipe as owned (read, write) ends.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = crate::sys::pipe()?;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(r), OwnedFd::from_raw_fd(w)) })
}

/// How long [`spawn`] waits for extra threads to go before it refuses: a
/// thread that was just joined leaves `/proc/self/task` a moment after its
/// joiner wakes (the kernel releases it after clearing its tid).
const THREADS_SETTLE: Duration = Duration::from_secs(1);

/// How many threads this process has (entries of `/proc/self/task`).
pub fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// `Ok` when this process has one thread (after [`THREADS_SETTLE`] for
/// threads on their way out); else why a fork now is refused.
fn check_single_threaded() -> io::Result<()> {
    let give_up = Instant::now() + THREADS_SETTLE;
    loop {
        let n = thread_count().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "refusing to fork: cannot count this process's threads in /proc/self/task: {e}"
                ),
            )
        })?;
        if n <= 1 {
            return Ok(());
        }
        if Instant::now() >= give_up {
            return Err(io::Error::other(format!(
                "refusing to fork: this process has {n} threads, and a child forked beside running threads can inherit a lock one of them holds and wait for it forever (the agent forks only while single-threaded)"
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Forks a worker that runs `child` with the raw write end of its output
/// pipe, reports faults on its crash pipe ([`crash::install`]) and exits
/// with the code `child` returns; `child` never returns into the caller.
/// Refuses (an error saying why) when the calling process has more than
/// one thread.
pub fn spawn(child: impl FnOnce(i32) -> i32) -> io::Result<Worker> {
    check_single_threaded()?;
    let (out_rx, out_tx) = pipe()?;
    let (crash_rx, crash_tx) = pipe()?;
    // SAFETY: the process has one thread (checked above; nothing in this
    // function starts one), so the child inherits no lock held by another
    // thread. It only runs `child` and exits without returning into the
    // caller's frames.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        drop(out_rx);
        drop(crash_rx);
        crash::install(crash_tx.into_raw_fd());
        let code = child(out_tx.as_raw_fd());
        // SAFETY: plain exit of the worker (no parent-owned destructors run).
        unsafe { libc::_exit(code) };
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    // The write ends (`out_tx`, `crash_tx`) close here: only the worker
    // holds them, so its exit ends the pipes.
    Ok(Worker {
        pid,
        out: out_rx,
        crash: crash_rx,
    })
}

impl Worker {
    /// What the worker wrote to its output pipe. Non-blocking: call it once
    /// the worker is gone; a wedged descendant holding the write end cannot
    /// block the agent, whatever was written is already in the pipe.
    pub fn output(&self) -> Vec<u8> {
        let fd = self.out.as_raw_fd();
        // SAFETY: F_SETFL takes no pointers; `self.out` owns `fd`, so it is
        // open for the call.
        unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
        let mut bytes = Vec::new();
        // SAFETY: the File borrows our descriptor; ManuallyDrop keeps it
        // from closing it (the OwnedFd does, once).
        let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
        let _ = f.read_to_end(&mut bytes);
        bytes
    }

    /// The faulting address the worker's crash handler reported, if any.
    pub fn fault(&self) -> Option<u64> {
        crash::read_report(self.crash.as_raw_fd())
    }

    /// The worker's death by `signal`, as PID 1 reports it: the signal and
    /// the faulting address (read from the crash pipe, so call it once).
    pub fn killed_by(&self, signal: i32) -> WorkerKilled {
        WorkerKilled {
            signal,
            signal_name: sys::signal_name(signal).to_owned(),
            addr: self.fault(),
        }
    }
}

/// Running code where [`spawn`] may fork: the test harness runs every
/// test in a thread of a multi-threaded process, so tests that fork go
/// through a fresh child of it, which has one thread.
#[cfg(test)]
pub mod testing {
    use std::time::{Duration, Instant};

    /// Run `f` in a forked child of the test process (single-threaded, with
    /// its own counters page); panics if `f` panics there or the child does
    /// not exit within `limit`.
    pub fn in_single_threaded_child_within(limit: Duration, f: impl FnOnce()) {
        // SAFETY: the child only runs `f` and leaves with `_exit`. Forking
        // the multi-threaded harness is what the agent refuses; here it is
        // the way to a single-threaded process, and `f` needs no lock
        // another test thread could have held (the allocator's are made
        // fork-safe by the C library).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            crate::counters::fresh_counters();
            let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                Ok(()) => 0,
                Err(p) => {
                    let why = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    // The harness captured the panic message in this
                    // child's copy of its buffer: say it on stderr.
                    let line = format!("single-threaded child panicked: {why}\n");
                    // SAFETY: writing a live local buffer to stderr.
                    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
                    101
                }
            };
            // SAFETY: _exit has no preconditions; no harness state is torn
            // down in the child.
            unsafe { libc::_exit(code) };
        }
        assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
        let st = crate::sys::wait_child(pid, Instant::now() + limit)
            .expect("the single-threaded child did not finish in time");
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "the single-threaded child failed: {}",
            crate::sys::describe_status(st)
        );
    }

    /// [`in_single_threaded_child_within`] a minute.
    pub fn in_single_threaded_child(f: impl FnOnce()) {
        in_single_threaded_child_within(Duration::from_secs(60), f);
    }
}

#[cfg(test)]
mod tests {
    use super::testing::in_single_threaded_child;
    use super::*;

    fn wait(w: &Worker) -> i32 {
        crate::sys::wait_child(w.pid, Instant::now() + Duration::from_secs(30)).expect("exits")
    }

    #[test]
    fn spawn_refuses_while_a_second_thread_runs() {
        // The harness itself runs tests in threads: refused at once.
        let e = spawn(|_| 0).err().expect("refused in the harness");
        assert!(e.to_string().contains("threads"), "{e}");
        in_single_threaded_child(|| {
            assert_eq!(thread_count().unwrap(), 1);
            let w = spawn(|_| 7).expect("one thread: forks");
            let st = wait(&w);
            assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 7);
            // A second thread, as the worker's watchdog thread used to be.
            let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
            let t = std::thread::spawn(move || {
                let _ = stop_rx.recv();
            });
            assert_eq!(thread_count().unwrap(), 2);
            let e = spawn(|_| 0).err().expect("refused beside a running thread");
            assert!(
                e.to_string()
                    .starts_with("refusing to fork: this process has 2 threads"),
                "{e}"
            );
            // Joined: one thread again, and forks work again.
            drop(stop_tx);
            t.join().unwrap();
            let w = spawn(|_| 0).expect("the thread is gone: forks");
            assert_eq!(wait(&w), 0);
        });
    }

    #[test]
    fn output_exit_code_and_fault_come_back() {
        in_single_threaded_child(output_exit_code_and_fault);
    }

    fn output_exit_code_and_fault() {
        let w = spawn(|fd| {
            // SAFETY: writing a static buffer to the output pipe.
            unsafe { libc::write(fd, b"report".as_ptr().cast(), 6) };
            3
        })
        .unwrap();
        let st = wait(&w);
        assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 3);
        assert_eq!(w.output(), b"report");
        assert_eq!(w.fault(), None);

        let w = spawn(|_| {
            // SAFETY: reads an address nothing maps, in the forked child only:
            // the fault is the point of the test.
            unsafe { std::ptr::read_volatile(0x1000 as *const u8) };
            0
        })
        .unwrap();
        let st = wait(&w);
        assert!(libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGSEGV);
        assert_eq!(w.fault(), Some(0x1000));
        assert!(w.output().is_empty());
    }

    #[test]
    fn a_killed_worker_names_its_signal_and_address() {
        in_single_threaded_child(a_killed_worker_names);
    }

    fn a_killed_worker_names() {
        let w = spawn(|_| {
            // SAFETY: reads an address nothing maps, in the forked child only:
            // the fault is the point of the test.
            unsafe { std::ptr::read_volatile(0x2000 as *const u8) };
            0
        })
        .unwrap();
        let st = wait(&w);
        let killed = w.killed_by(libc::WTERMSIG(st));
        assert_eq!(
            killed,
            WorkerKilled {
                signal: libc::SIGSEGV,
                signal_name: "SIGSEGV".into(),
                addr: Some(0x2000),
            }
        );
        assert_eq!(
            killed.to_string(),
            "agent worker killed by signal 11 (SIGSEGV) at address 0x2000"
        );

        // A kill from outside leaves no crash report: no address.
        let w = spawn(|_| {
            // SAFETY: raise takes no pointers; only the forked child dies.
            unsafe { libc::raise(libc::SIGKILL) };
            0
        })
        .unwrap();
        let st = wait(&w);
        assert_eq!(
            w.killed_by(libc::WTERMSIG(st)).to_string(),
            "agent worker killed by signal 9 (SIGKILL)"
        );
    }
}
