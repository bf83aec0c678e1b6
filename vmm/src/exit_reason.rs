//! Why a VM stopped ([`ExitReason`]), and the `arena-vmm` exit code each
//! reason maps to.

use std::path::PathBuf;
use std::time::Duration;

/// Why the VM stopped. Maps 1:1 to `arena-vmm` exit codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// Guest reset the machine (i8042 0xFE or KVM_SYSTEM_EVENT_RESET): clean.
    Reset,
    /// Guest powered off (KVM_SYSTEM_EVENT_SHUTDOWN): clean.
    PowerOff,
    /// KVM_EXIT_SHUTDOWN: triple fault.
    TripleFault {
        /// vCPU that faulted.
        vcpu: u8,
        /// Its instruction pointer.
        rip: u64,
    },
    /// KVM_EXIT_INTERNAL_ERROR (e.g. an instruction the emulator lacks).
    InternalError {
        /// `kvm_run.internal.suberror` (1 = emulation failure).
        suberror: u32,
        /// vCPU that failed.
        vcpu: u8,
        /// Its instruction pointer.
        rip: u64,
    },
    /// KVM_EXIT_FAIL_ENTRY: hardware refused to enter the guest.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
        /// Physical CPU.
        cpu: u32,
    },
    /// Host-side timeout expired.
    Timeout,
    /// The guest wrote nothing to the serial port for the whole stall
    /// window (`--stall-timeout-s`): it stopped making progress.
    Stalled {
        /// The stall window.
        window: Duration,
    },
    /// Any other exit the VMM cannot handle.
    Unexpected(String),
    /// KVM_RUN itself failed.
    VcpuError(String),
    /// Paused on request and saved to a snapshot file.
    SnapshotSaved {
        /// The snapshot file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
        /// Time from the request to the file being renamed into place.
        millis: u64,
    },
    /// Paused on request, but the snapshot could not be saved (no file left behind).
    SnapshotFailed(String),
    /// The attached gdb client killed the VM (`kill`).
    DebuggerKill,
}

/// `arena-vmm` exit code: guest reset or powered off.
pub const EXIT_CLEAN: i32 = 0;
/// `arena-vmm` exit code: setup error (bad arguments, missing kernel, KVM
/// failure, a snapshot refused at restore).
pub const EXIT_SETUP_ERROR: i32 = 2;
/// `arena-vmm` exit code: the VM was paused and saved (`--snapshot-to`, SIGUSR1).
pub const EXIT_SNAPSHOT_SAVED: i32 = 3;
/// `arena-vmm` exit code: the VM was paused for a snapshot that could not be saved.
pub const EXIT_SNAPSHOT_FAILED: i32 = 4;
/// `arena-vmm` exit code: triple fault.
pub const EXIT_TRIPLE_FAULT: i32 = 10;
/// `arena-vmm` exit code: KVM internal error.
pub const EXIT_INTERNAL_ERROR: i32 = 11;
/// `arena-vmm` exit code: VM entry failed.
pub const EXIT_FAIL_ENTRY: i32 = 12;
/// `arena-vmm` exit code: host-side timeout.
pub const EXIT_TIMEOUT: i32 = 13;
/// `arena-vmm` exit code: unexpected exit or KVM_RUN error.
pub const EXIT_UNEXPECTED: i32 = 14;
/// `arena-vmm` exit code: the gdb client killed the VM.
pub const EXIT_DEBUGGER_KILL: i32 = 15;
/// `arena-vmm` exit code: no serial output for the stall window.
pub const EXIT_STALLED: i32 = 16;

impl ExitReason {
    /// Process exit code for this reason.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Reset | ExitReason::PowerOff => EXIT_CLEAN,
            ExitReason::TripleFault { .. } => EXIT_TRIPLE_FAULT,
            ExitReason::InternalError { .. } => EXIT_INTERNAL_ERROR,
            ExitReason::FailEntry { .. } => EXIT_FAIL_ENTRY,
            ExitReason::Timeout => EXIT_TIMEOUT,
            ExitReason::Stalled { .. } => EXIT_STALLED,
            ExitReason::Unexpected(_) | ExitReason::VcpuError(_) => EXIT_UNEXPECTED,
            ExitReason::SnapshotSaved { .. } => EXIT_SNAPSHOT_SAVED,
            ExitReason::SnapshotFailed(_) => EXIT_SNAPSHOT_FAILED,
            ExitReason::DebuggerKill => EXIT_DEBUGGER_KILL,
        }
    }

    /// True for a guest-requested reset or power-off.
    pub fn is_clean(&self) -> bool {
        self.exit_code() == EXIT_CLEAN
    }

    /// Fills in which vCPU and where, for fault reasons.
    pub fn with_location(self, id: u8, at: u64) -> Self {
        match self {
            ExitReason::TripleFault { .. } => ExitReason::TripleFault { vcpu: id, rip: at },
            ExitReason::InternalError { suberror, .. } => ExitReason::InternalError {
                suberror,
                vcpu: id,
                rip: at,
            },
            other => other,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Reset => write!(f, "guest reset (clean exit)"),
            ExitReason::PowerOff => write!(f, "guest powered off (clean exit)"),
            ExitReason::TripleFault { vcpu, rip } => write!(
                f,
                "triple fault (KVM_EXIT_SHUTDOWN) on vCPU {vcpu} at rip {rip:#x}"
            ),
            ExitReason::InternalError {
                suberror,
                vcpu,
                rip,
            } => write!(
                f,
                "KVM_EXIT_INTERNAL_ERROR suberror {suberror} on vCPU {vcpu} at rip {rip:#x}"
            ),
            ExitReason::FailEntry { reason, cpu } => write!(
                f,
                "KVM_EXIT_FAIL_ENTRY hardware reason {reason:#x} on host CPU {cpu}"
            ),
            ExitReason::Timeout => write!(f, "host-side timeout"),
            ExitReason::Stalled { window } => write!(
                f,
                "guest stalled: no serial output for {:.3} s",
                window.as_secs_f64()
            ),
            ExitReason::Unexpected(s) => write!(f, "unexpected vCPU exit: {s}"),
            ExitReason::VcpuError(s) => write!(f, "vCPU error: {s}"),
            ExitReason::SnapshotSaved {
                path,
                bytes,
                millis,
            } => write!(
                f,
                "snapshot saved to {} ({bytes} bytes, {millis} ms)",
                path.display()
            ),
            ExitReason::SnapshotFailed(s) => write!(f, "snapshot failed: {s}"),
            ExitReason::DebuggerKill => write!(f, "killed by the gdb client"),
        }
    }
}
