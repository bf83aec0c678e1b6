//! SIGUSR2: pause the VM and wait for a debugger (`--gdb-on-demand`).
//!
//! Same shape as the snapshot request on SIGUSR1: the handler only sets a
//! flag (all a signal handler may safely do), and the run loop, which
//! already polls for snapshot requests, polls this one too, then pauses
//! every vCPU the way it does for a snapshot.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by SIGUSR2 (or [`request`]); taken by the VM's run loop.
static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigusr2(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only an atomic store: async-signal-safe.
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Makes SIGUSR2 request a debugger instead of killing the process. Done
/// before the VM is built, so an early signal is not fatal either.
pub fn arm_sigusr2() -> Result<(), std::io::Error> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGUSR2, on_sigusr2)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Requests a debugger from inside the process (what SIGUSR2 does).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// True once after each request.
pub fn take_request() -> bool {
    REQUESTED.swap(false, Ordering::SeqCst)
}
