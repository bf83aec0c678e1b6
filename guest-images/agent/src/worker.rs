//! Forked workers: the agent's one way to run code in a child process and
//! collect what it leaves behind (its output pipe, its crash report). The
//! pipe ends are `OwnedFd`s, so every path — fork failure, early return,
//! timeout — closes them.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

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

/// Forks a worker that runs `child` with the raw write end of its output
/// pipe, reports faults on its crash pipe ([`crash::install`]) and exits
/// with the code `child` returns; `child` never returns into the caller.
pub fn spawn(child: impl FnOnce(i32) -> i32) -> io::Result<Worker> {
    let (out_rx, out_tx) = pipe()?;
    let (crash_rx, crash_tx) = pipe()?;
    // SAFETY: fork in the single-threaded agent; the child only runs `child`
    // and exits without returning into the caller's frames.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait(w: &Worker) -> i32 {
        crate::sys::wait_child(w.pid, Instant::now() + Duration::from_secs(30)).expect("exits")
    }

    #[test]
    fn output_exit_code_and_fault_come_back() {
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
