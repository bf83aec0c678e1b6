//! SIGINT/SIGTERM and the VMs they stop: a run records the signal, and
//! every registered VM process is killed (the run then writes its results
//! marked interrupted). The display only reports it; nothing else kills.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The signal that asked the run to stop, 0 for none.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Process ids of the VMs running now.
static VMS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    let _ = SIGNAL.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
}

/// Catch SIGINT and SIGTERM (once: the handler resets to the default, so a
/// second Ctrl-C ends the runner at once, its results still `complete: false`).
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; the handler only does an
        // atomic store.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// The name of the signal that interrupted the run, if one did.
pub fn interrupted() -> Option<&'static str> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        libc::SIGINT => Some("SIGINT"),
        libc::SIGTERM => Some("SIGTERM"),
        _ => Some("signal"),
    }
}

/// A VM process started: kill it if the run is interrupted.
pub fn vm_started(pid: u32) {
    VMS.lock().expect("lock").push(pid);
    if interrupted().is_some() {
        kill_vms();
    }
}

/// A VM process was reaped: its pid may be reused, never kill it again.
pub fn vm_ended(pid: u32) {
    VMS.lock().expect("lock").retain(|&p| p != pid);
}

/// SIGKILL every registered VM. Registered pids are not reaped yet (they are
/// removed only after), so none can belong to another process.
fn kill_vms() {
    for &pid in VMS.lock().expect("lock").iter() {
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: plain kill(2) of our own unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Kill the registered VMs whenever a signal has come, until `running` is
/// cleared (a VM registered after the signal is killed by [`vm_started`]).
pub fn stop_vms_on_signal(running: &AtomicBool) {
    while running.load(Ordering::SeqCst) {
        if interrupted().is_some() {
            kill_vms();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
