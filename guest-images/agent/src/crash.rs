//! Reporting fatal faults: a SIGSEGV/SIGBUS handler writes the signal and
//! faulting address to a pipe (async-signal-safe), then lets the signal kill
//! the process as usual. The parent reads the report after `waitpid`.

use std::sync::atomic::{AtomicI32, Ordering};

static REPORT_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let fd = REPORT_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
        let addr = unsafe { (*info).si_addr() } as u64;
        let mut buf = [0u8; 16];
        buf[..8].copy_from_slice(&(sig as u64).to_le_bytes());
        buf[8..].copy_from_slice(&addr.to_le_bytes());
        // SAFETY: write(2) is async-signal-safe; buf outlives the call.
        unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    }
    // SA_RESETHAND restored the default action: returning re-runs the access,
    // which faults again and kills the process with the same signal.
}

/// Report faults of this process (and its future children until they call
/// `install` themselves) to `fd`.
pub fn install(fd: i32) {
    REPORT_FD.store(fd, Ordering::Relaxed);
    for sig in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: installing a handler with a zeroed, then filled, sigaction.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_fault as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// The faulting address a dead child reported on `fd`, if any (non-blocking).
pub fn read_report(fd: i32) -> Option<u64> {
    let mut buf = [0u8; 16];
    // SAFETY: fcntl takes no pointers; `buf` is a live local of exactly
    // `buf.len()` bytes, the count passed to read.
    let n = unsafe {
        libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK);
        libc::read(fd, buf.as_mut_ptr().cast(), buf.len())
    };
    (n == 16).then(|| u64::from_le_bytes(buf[8..].try_into().expect("8 bytes")))
}
