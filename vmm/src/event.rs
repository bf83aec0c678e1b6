//! What the run loop hears ([`VmEvent`]), from the vCPU threads, the
//! devices and the gdb client's reader thread: the types they share, so
//! that neither side needs the other (a vCPU reports a debug exit without
//! knowing the gdb stub; the stub hears it through the run loop).

use kvm_bindings::kvm_debug_exit_arch;

use crate::exit_reason::ExitReason;

/// What the run loop hears: from the vCPU threads, the devices, and the
/// gdb client's reader thread, on one channel, so it waits in one place.
#[derive(Debug)]
pub enum VmEvent {
    /// The VM is over.
    Exit(ExitReason),
    /// A vCPU left `KVM_RUN` with `KVM_EXIT_DEBUG` (a debugger is attached).
    Debug(DebugExit),
    /// The gdb client sent bytes or hung up.
    Gdb(ClientEvent),
}

/// A vCPU that left `KVM_RUN` with `KVM_EXIT_DEBUG`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DebugExit {
    /// Which vCPU.
    pub vcpu: u8,
    /// What KVM reported.
    pub arch: kvm_debug_exit_arch,
}

/// What the client's reader thread saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientInput {
    /// Bytes, as read.
    Bytes(Vec<u8>),
    /// The connection closed.
    HungUp,
}

/// Client input, tagged with its session so that a late event of an ended
/// session is never taken for the next one's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEvent {
    /// The session it belongs to.
    pub session: u64,
    /// What came.
    pub input: ClientInput,
}
