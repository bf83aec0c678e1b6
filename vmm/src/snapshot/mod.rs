//! VM snapshots: pause a running VM, save it to one file, and later resume
//! it exactly where it was paused, in a new `arena-vmm` process.
//!
//! # File format (version 1)
//!
//! One file, little endian, every section page (4 KiB) aligned:
//!
//! ```text
//! offset 0     header (page 0, 112 bytes used, rest zero)
//!                0  magic           8 bytes  "ARNASNAP"
//!                8  version         u32      FORMAT_VERSION = 1
//!               12  reserved        u32      0
//!               16  build id        32 bytes SHA-256 of the arena-vmm executable
//!               48  state_offset    u64      4096
//!               56  state_len       u64      at most 64 MiB
//!               64  mem_offset      u64      state_offset + state_len, rounded up to 4096
//!               72  mem_len         u64      guest RAM bytes
//!               80  checksum        32 bytes SHA-256 of header[0..80] ‖ state ‖
//!                                            SHA-256 of each 2 MiB chunk of guest RAM
//! 4096         state: UTF-8 JSON of [`state::VmState`]: the machine shape
//!              (vCPUs, MiB, console slot; kernel and command line for the
//!              record), in-kernel irqchip/PIT/kvmclock, per-vCPU KVM state,
//!              and every device's state. KVM structures are arrays of
//!              their raw bytes (kvm-bindings' serde support), length-checked.
//! mem_offset   guest RAM: the regions of `memory::ram_ranges(mem_mib)` back
//!              to back (RAM below the 3 GiB MMIO gap, then above 4 GiB).
//!              All-zero pages are holes, so the file is sparse.
//! ```
//!
//! Restore maps guest RAM straight from the file with `MAP_PRIVATE`: pages
//! are read on first touch and copied only when the guest writes them.
//! The checksum is verified before anything is used, which reads the data
//! chunks once through the page cache (the mapping then shares those
//! pages); chunks that are holes are known to be zero and skipped (see
//! [`mod@format`]).
//!
//! Every field is untrusted: magic, version, offsets and lengths (against
//! the file size and the limits above), the build id (a snapshot is only
//! restored by the very executable that took it, since device and KVM state
//! layouts are not promised across builds), the checksum, then the state's
//! counts and sizes against the limits of a fresh VM (`state::VmState::validate`)
//! and each device's contents by the device itself.
//!
//! Saving writes `FILE.tmp`, fsyncs it and renames it over `FILE`; on
//! failure `FILE.tmp` is removed, so `FILE` is never partial.
//!
//! A restored VM keeps reading not-yet-written pages from the file, so the
//! file must not be modified in place while such a VM runs (pages the
//! guest has not copied would change under it; truncation is a SIGBUS).
//! Replacing it by rename, as saving does, is safe.

pub mod error;
pub mod format;
pub mod kvm_state;
pub mod state;

use std::sync::atomic::{AtomicBool, Ordering};

pub use error::{build_id, BuildId, SnapshotError};
pub use format::FORMAT_VERSION;

/// Set by SIGUSR1 (or [`request`]); taken by the VM's run loop.
static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigusr1(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only an atomic store: async-signal-safe.
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Makes SIGUSR1 request a snapshot instead of killing the process. Done
/// before the VM is built, so an early signal is not fatal either.
pub fn arm_sigusr1() -> Result<(), std::io::Error> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGUSR1, on_sigusr1)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Requests a snapshot from inside the process (what SIGUSR1 does).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// True once after each request.
pub fn take_request() -> bool {
    REQUESTED.swap(false, Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_is_stable_and_short_form_is_hex() {
        let a = build_id().unwrap();
        assert_eq!(a, build_id().unwrap());
        assert_eq!(a.to_string().len(), 16);
        assert_eq!(BuildId([0xab; 32]).to_string(), "abababababababab");
    }
}
