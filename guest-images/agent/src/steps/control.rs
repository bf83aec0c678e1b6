//! `sleep:`, `sysctl:`, `sysrq:`, `repeat:`, `sweep:`, `expect_kernel_log:` and `crash:`.

use std::io::Read;
use std::time::Duration;

use arena_protocol::scenario::{
    CrashStep, KernelLogStep, RepeatStep, SleepStep, SweepStep, SysctlStep, SysrqStep,
};

use super::{Ctx, Outcome, StepError, StepResult};

/// `sleep:` step.
pub fn sleep(s: &SleepStep) -> StepResult {
    if s.socket {
        return sleep_in_recv(s.ms);
    }
    std::thread::sleep(Duration::from_millis(s.ms));
    Ok(Outcome::said(format!("slept {} ms", s.ms)))
}

/// `sleep: { socket: true }`: wait `ms` in a blocking `recv` on one end of
/// a socket pair whose other end nobody writes to; `SO_RCVTIMEO` ends it.
fn sleep_in_recv(ms: u64) -> StepResult {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let err = |e: std::io::Error| StepError::Error(format!("sleep on a socket: {e}"));
    let (mut a, _b) = UnixStream::pair().map_err(err)?;
    // A zero timeout would mean none: wait at least a millisecond.
    a.set_read_timeout(Some(Duration::from_millis(ms.max(1))))
        .map_err(err)?;
    let mut byte = [0u8; 1];
    match a.read(&mut byte) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(Outcome::said(format!("waited {ms} ms in recv on a socket")))
        }
        Err(e) => Err(err(e)),
        Ok(n) => Err(StepError::Error(format!(
            "sleep on a socket: recv returned {n} bytes nobody wrote"
        ))),
    }
}

/// `crash:` the worker dies of `signal` (the default action: no handler of
/// the agent's catches it). Only returns if the signal did not end it.
pub fn crash(s: &CrashStep) -> StepResult {
    let sig = s.signal.number();
    // SAFETY: signal and raise take no pointers; SIG_DFL installs no Rust
    // handler, so the signal's default action runs, in this worker only.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
    Err(StepError::Error(format!(
        "the worker survived raising {:?}",
        s.signal
    )))
}

/// `sysrq:` step. Enables sysrq for this key's write (the kernel's
/// default mask may refuse it), then writes the key.
pub fn sysrq(s: &SysrqStep) -> StepResult {
    if !SysrqStep::KEYS.contains(&s.key) {
        return Err(StepError::Error(format!(
            "sysrq key {:?} is not allowed",
            s.key
        )));
    }
    let _ = std::fs::write("/proc/sys/kernel/sysrq", "1");
    std::fs::write("/proc/sysrq-trigger", s.key.to_string()).map_err(|e| {
        StepError::Error(format!(
            "/proc/sysrq-trigger: {e} (the kernel needs CONFIG_MAGIC_SYSRQ)"
        ))
    })?;
    Ok(Outcome::said(format!("sysrq {} sent", s.key)))
}

/// `sysctl:` step.
pub fn sysctl(s: &SysctlStep) -> StepResult {
    let file = s
        .file()
        .ok_or_else(|| StepError::Error(format!("bad sysctl path {:?}", s.path)))?;
    if let Some(value) = &s.value {
        std::fs::write(&file, value)
            .map_err(|e| StepError::Error(format!("writing {value:?} to {file}: {e}")))?;
    }
    let now = std::fs::read_to_string(&file);
    match (&s.expect, now) {
        (Some(want), Ok(now)) if now.trim() != want.trim() => Err(StepError::Fail(format!(
            "{file} = {}, expected {}",
            now.trim(),
            want.trim()
        ))),
        // An expectation that cannot be read is not met: an error.
        (Some(_), Err(e)) => Err(StepError::Error(format!("reading {file}: {e}"))),
        (_, now) => Ok(Outcome::said(format!(
            "{file} = {}",
            now.unwrap_or_default().trim()
        ))),
    }
}

/// `repeat:` step.
pub fn repeat(ctx: &mut Ctx, s: &RepeatStep) -> StepResult {
    let field = format!("{}.repeat.steps", ctx.at);
    for i in 0..s.times {
        (ctx.run_nested)(ctx, &s.steps, &field).map_err(|(at, e)| {
            let text = format!("iteration {}/{}, {at}: {}", i + 1, s.times, e.text());
            match e {
                StepError::Fail(_) => StepError::Fail(text),
                StepError::Error(_) => StepError::Error(text),
            }
        })?;
    }
    Ok(Outcome::said(format!(
        "{} iterations of {} step(s) passed",
        s.times,
        s.steps.len()
    )))
}

/// `sweep:` every case in order, each from where the last left off. A
/// failing case does not stop the others, so the step reports every
/// value's outcome: the detail lists them, the data holds one entry each.
/// The step fails if any case failed, and is an error if none failed but
/// some could not be carried out.
pub fn sweep(ctx: &mut Ctx, s: &SweepStep) -> StepResult {
    let mut report = Vec::with_capacity(s.cases.len());
    let (mut failed, mut errors) = (Vec::new(), Vec::new());
    // Every case runs the template's steps: their lines are the template's.
    let field = format!("{}.sweep.steps", ctx.at);
    for case in &s.cases {
        let label = case.label();
        let (status, detail) = match (ctx.run_nested)(ctx, &case.steps, &field) {
            Ok(()) => ("pass", String::new()),
            Err((at, e)) => {
                let text = format!("{label}: {at}: {}", e.text());
                let status = match e {
                    StepError::Fail(_) => "fail",
                    StepError::Error(_) => "error",
                };
                match e {
                    StepError::Fail(_) => failed.push(text.clone()),
                    StepError::Error(_) => errors.push(text.clone()),
                }
                (status, text)
            }
        };
        report.push(serde_json::json!({"values": case.values, "status": status, "detail": detail}));
    }
    let passed: Vec<String> = s
        .cases
        .iter()
        .zip(&report)
        .filter(|(_, r)| r["status"] == "pass")
        .map(|(c, _)| c.label())
        .collect();
    let n = s.cases.len();
    let passed_text = format!(
        "passed: {}",
        if passed.is_empty() {
            "none".into()
        } else {
            passed.join(", ")
        }
    );
    if !failed.is_empty() || !errors.is_empty() {
        let text = format!(
            "{} of {n} cases failed, {} could not run; {}; {passed_text}",
            failed.len(),
            errors.len(),
            failed
                .iter()
                .chain(&errors)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
        return Err(match failed.is_empty() {
            true => StepError::Error(text),
            false => StepError::Fail(text),
        });
    }
    Ok(Outcome {
        detail: format!("{n} of {n} cases {passed_text}"),
        data: serde_json::json!({ "cases": report }),
    })
}

/// The first line of a `/dev/kmsg` record (`prio,seq,usec,flags;text`)
/// written by the kernel; `None` for records user space wrote (facility
/// other than `LOG_KERN`, e.g. the agent's own diagnostics), which are not
/// what a scenario's kernel-log expectations are about.
fn kernel_record_text(rec: &str) -> Option<&str> {
    let (head, msg) = rec.split_once(';').unwrap_or(("0", rec));
    let prio: u32 = head.split(',').next()?.trim().parse().unwrap_or(0);
    (prio >> 3 == 0).then(|| msg.lines().next().unwrap_or(""))
}

/// Every message the kernel put in its ring buffer, one per line, without
/// the `/dev/kmsg` record prefix.
pub fn kernel_log() -> std::io::Result<Vec<String>> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_nonblock()
        .open("/dev/kmsg")?;
    let mut lines = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                if let Some(line) = kernel_record_text(&rec) {
                    lines.push(line.to_owned());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            // A record overwritten while reading: skip it.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(lines)
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

/// Check `lines` against the step's patterns.
pub fn check_log(s: &KernelLogStep, lines: &[String]) -> StepResult {
    let compile = |p: &String| {
        regex_lite::Regex::new(p).map_err(|e| StepError::Error(format!("bad regex {p:?}: {e}")))
    };
    for p in &s.contains {
        let re = compile(p)?;
        if !lines.iter().any(|l| re.is_match(l)) {
            return Err(StepError::Fail(format!(
                "expected the kernel log to contain /{p}/, it does not ({} lines searched)",
                lines.len()
            )));
        }
    }
    for p in &s.not_contains {
        let re = compile(p)?;
        if let Some(l) = lines.iter().find(|l| re.is_match(l)) {
            return Err(StepError::Fail(format!(
                "expected no kernel log line matching /{p}/, found: {l}"
            )));
        }
    }
    Ok(Outcome::said(format!(
        "{} required and {} forbidden pattern(s) checked against {} lines",
        s.contains.len(),
        s.not_contains.len(),
        lines.len()
    )))
}

/// `expect_kernel_log:` step.
pub fn kernel_log_step(s: &KernelLogStep) -> StepResult {
    let lines = kernel_log().map_err(|e| StepError::Error(format!("/dev/kmsg: {e}")))?;
    check_log(s, &lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_space_records_are_not_kernel_log() {
        assert_eq!(
            kernel_record_text("4,120,5000,-;WARNING: CPU: 0\n SUBSYSTEM=x"),
            Some("WARNING: CPU: 0")
        );
        // LOG_USER (facility 1) at debug level: what the agent writes.
        assert_eq!(kernel_record_text("15,121,5001,-;arena-agent: hi"), None);
        assert_eq!(
            kernel_record_text("10,122,5002,-;arena-agent: FATAL: x"),
            None
        );
    }

    #[test]
    fn log_patterns() {
        let lines = vec!["BUG: x".to_owned(), "hello world".to_owned()];
        let s = KernelLogStep {
            contains: vec!["hel+o".into()],
            not_contains: vec!["^WARNING".into()],
        };
        assert!(check_log(&s, &lines).is_ok());
        let s = KernelLogStep {
            contains: vec![],
            not_contains: vec!["BUG:".into()],
        };
        assert!(check_log(&s, &lines)
            .unwrap_err()
            .text()
            .contains("found: BUG: x"));
        let s = KernelLogStep {
            contains: vec!["absent".into()],
            not_contains: vec![],
        };
        assert!(matches!(check_log(&s, &lines), Err(StepError::Fail(_))));
    }
}
