//! The agent's log: each line on the console tty (captured as
//! `console.log`) and in the kernel log (`/dev/kmsg`). At the bottom of the
//! agent: it uses nothing of the agent's own.

/// Kernel log priority of the agent's ordinary lines: debug, so they sit in
/// the kernel's ring buffer without being printed twice on the console.
const KMSG_LOG_PRIORITY: u8 = 7;
/// Kernel log priority of a fatal line: critical, printed on the console by
/// printk itself even when the console tty is broken.
const KMSG_FATAL_PRIORITY: u8 = 2;

/// Writes `line` to stderr (the console tty) and to `/dev/kmsg` at
/// `priority`. Never panics: under a broken VMM or kernel, writes to the
/// console tty fail with EIO, and `eprintln!` turned that into a silent
/// exit 101 of PID 1 (the first cause of issue 8's dead agent).
fn emit(line: &str, priority: u8) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
    if let Ok(mut kmsg) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        // One write is one record; keep it within the kernel's record limit.
        let text: String = line.chars().take(900).collect();
        let _ = kmsg.write_all(format!("<{priority}>{text}\n").as_bytes());
    }
}

/// Log a line on the kernel console (captured as `console.log`) and in the
/// kernel log.
pub fn log(msg: &str) {
    emit(&format!("arena-agent: {msg}"), KMSG_LOG_PRIORITY);
}

/// Log a critical line (a fatal reason, a worker's panic): printed on the
/// console by printk itself even when the console tty is broken.
pub fn critical(line: &str) {
    emit(line, KMSG_FATAL_PRIORITY);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` in a forked child whose stderr is `/dev/full` (every write
    /// fails, with ENOSPC, as console writes failed with EIO); returns the
    /// child's exit status. Not a pipe: a child forked meanwhile by another
    /// test would inherit its read end, and the writes would succeed.
    fn with_broken_stderr(f: fn()) -> i32 {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        // SAFETY: the child only redirects fd 2, runs `f` and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: dup2 takes no pointers; `full` is open and fd 2 has no
            // Rust owner that would later close the replaced descriptor.
            unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&full), 2) };
            let ok = std::panic::catch_unwind(f).is_ok();
            // SAFETY: _exit has no preconditions; skipping destructors only
            // leaks, and keeps the child out of the harness's exit code.
            unsafe { libc::_exit(if ok { 0 } else { 101 }) };
        }
        drop(full);
        let mut status = 0;
        // SAFETY: `status` is a live local the kernel writes an int into;
        // `pid` is our own, not yet reaped child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -libc::WTERMSIG(status)
        }
    }

    #[test]
    fn logging_survives_a_console_that_fails_every_write() {
        assert_eq!(with_broken_stderr(|| log("still alive")), 0);
    }

    #[test]
    fn the_broken_console_harness_can_fail() {
        // What PID 1 did before: `eprintln!` panics when the write fails
        // (spelled out, since the test harness captures `eprintln!`).
        assert_eq!(
            with_broken_stderr(|| {
                use std::io::Write;
                writeln!(std::io::stderr(), "dies").expect("failed printing to stderr");
            }),
            101
        );
    }
}
