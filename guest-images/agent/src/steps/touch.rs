//! `touch:` read or write arena pages from user space. Accesses expected to
//! kill the process run in a forked child, which maps the arena again at the
//! same address when this process has it mapped (arena mappings are
//! `VM_DONTCOPY`, so a fork does not inherit them).

use arena_protocol::scenario::{page_pattern, AccessOp, TouchExpect, TouchStep, PAGE_SIZE};

use super::mapping::map;
use crate::crash;
use crate::executor::{ArenaState, Ctx, Outcome, StepError, StepResult};
use crate::sys;

/// Exit code of a touch child whose values did not match.
const CHILD_MISMATCH: i32 = 1;
/// Exit code of a touch child that could not map the arena again.
const CHILD_REMAP_FAILED: i32 = 100;

/// The value a write stores into `page`.
fn write_value(s: &TouchStep, page: u64) -> u64 {
    s.value.unwrap_or_else(|| page_pattern(page))
}

/// The value a read of `page` must return, if the step expects one.
fn expected_read(e: &TouchExpect, page: u64) -> Option<u64> {
    if let Some(v) = e.value {
        Some(v)
    } else if e.zero {
        Some(0)
    } else if e.pattern {
        Some(page_pattern(page))
    } else {
        None
    }
}

/// Do the accesses; returns the first mismatch as text.
fn access(s: &TouchStep, base: u64) -> Result<String, String> {
    let mut last = 0;
    for page in s.page..s.page + s.count {
        let ptr = (base + page * PAGE_SIZE + s.offset) as *mut u64;
        match s.op {
            AccessOp::Write => {
                // SAFETY: the address is inside the arena mapping (checked by the
                // caller); a fault is the behaviour under test and is caught by
                // the crash reporter or the forked child.
                unsafe { std::ptr::write_volatile(ptr, write_value(s, page)) };
            }
            AccessOp::Read => {
                // SAFETY: as above.
                let got = unsafe { std::ptr::read_volatile(ptr) };
                last = got;
                if let Some(want) = expected_read(&s.expect, page) {
                    if got != want {
                        return Err(format!(
                            "page {page} offset {:#x}: expected {want:#x}, read {got:#x}",
                            s.offset
                        ));
                    }
                }
            }
        }
    }
    Ok(match s.op {
        AccessOp::Write => format!("wrote {} page(s) from page {}", s.count, s.page),
        AccessOp::Read => format!(
            "read {} page(s) from page {} (last value {last:#x})",
            s.count, s.page
        ),
    })
}

/// `touch:` step.
pub fn touch(ctx: &mut Ctx, s: &TouchStep) -> StepResult {
    if s.offset >= PAGE_SIZE || !s.offset.is_multiple_of(8) {
        return Err(StepError::Error(format!(
            "offset {:#x} must be 8-byte aligned and inside the page",
            s.offset
        )));
    }
    if s.op == AccessOp::Write && expected_read(&s.expect, 0).is_some() {
        return Err(StepError::Error(
            "a write cannot expect a read value".into(),
        ));
    }
    let a = ctx.arena(&s.arena)?.clone();
    let base = a.addr.ok_or_else(|| {
        StepError::Error(format!(
            "arena `{}` has no user address (mmap it first)",
            s.arena
        ))
    })?;
    // Where a fault is the point of the step or plausible (segv_on_fault
    // arenas, or no mapping here), touch from a child that survives it.
    if s.expect.signal.is_some() || a.flags & sys::BPF_F_SEGV_ON_FAULT != 0 || !a.mapped {
        return touch_in_child(ctx, s, &a, base);
    }
    access(s, base).map(Outcome::said).map_err(StepError::Fail)
}

fn touch_in_child(ctx: &Ctx, s: &TouchStep, a: &ArenaState, base: u64) -> StepResult {
    let first = base + s.page * PAGE_SIZE + s.offset;
    let err = |e: std::io::Error| StepError::Error(e.to_string());
    let (crash_rx, crash_tx) = sys::pipe().map_err(err)?;
    let (text_rx, text_tx) = sys::pipe().map_err(err)?;
    // SAFETY: the child only maps, touches, reports and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        sys::close(crash_rx);
        sys::close(text_rx);
        crash::install(crash_tx);
        if a.mapped {
            let flags = libc::MAP_SHARED | libc::MAP_FIXED;
            if map(a.fd, base, a.mapped_pages * PAGE_SIZE, flags, 0).is_err() {
                // SAFETY: exiting the child.
                unsafe { libc::_exit(CHILD_REMAP_FAILED) };
            }
        }
        let (code, text) = match access(s, base) {
            Ok(t) => (0, t),
            Err(t) => (CHILD_MISMATCH, t),
        };
        // SAFETY: writing a local buffer to our pipe, then exiting.
        unsafe {
            libc::write(text_tx, text.as_ptr().cast(), text.len());
            libc::_exit(code);
        }
    }
    sys::close(crash_tx);
    sys::close(text_tx);
    if pid < 0 {
        sys::close(crash_rx);
        sys::close(text_rx);
        return Err(StepError::Error(format!(
            "fork: {}",
            std::io::Error::last_os_error()
        )));
    }
    let status = sys::wait_child(pid, ctx.deadline);
    let fault = crash::read_report(crash_rx);
    sys::close(crash_rx);
    let text = read_all(text_rx);
    let Some(status) = status else {
        return Err(StepError::Fail(format!(
            "the access at {first:#x} did not finish in time"
        )));
    };
    let killed_by = libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status));
    let fault_text = |sig: i32| {
        let at = fault.map(|f| format!(" at {f:#x}")).unwrap_or_default();
        format!("{}{at}", sys::signal_name(sig))
    };
    match (s.expect.signal, killed_by) {
        (Some(want), Some(got)) if got == want.number() => match fault {
            Some(addr) if addr != first => Err(StepError::Fail(format!(
                "expected {} at {first:#x}, got it at {addr:#x}",
                sys::signal_name(got)
            ))),
            _ => Ok(Outcome::said(format!(
                "{} (page {}) as expected",
                fault_text(got),
                s.page
            ))),
        },
        (Some(want), _) if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 => {
            Err(StepError::Fail(format!(
                "expected {} at {first:#x}, but the access succeeded ({text})",
                sys::signal_name(want.number())
            )))
        }
        (Some(want), _) => Err(StepError::Fail(format!(
            "expected {} at {first:#x}, but {}",
            sys::signal_name(want.number()),
            describe(status, &text)
        ))),
        (None, Some(got)) => Err(StepError::Fail(format!(
            "expected the access at {first:#x} to succeed, got {}",
            fault_text(got)
        ))),
        (None, None) if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 => {
            Ok(Outcome::said(text))
        }
        (None, None) => Err(StepError::Fail(describe(status, &text))),
    }
}

fn describe(status: i32, text: &str) -> String {
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == CHILD_REMAP_FAILED {
        "the child could not map the arena again at the same address".into()
    } else if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == CHILD_MISMATCH {
        text.to_owned()
    } else {
        sys::describe_status(status)
    }
}

fn read_all(fd: i32) -> String {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let mut out = String::new();
    // SAFETY: we own fd; File closes it.
    let _ = unsafe { std::fs::File::from_raw_fd(fd) }.read_to_string(&mut out);
    out
}
