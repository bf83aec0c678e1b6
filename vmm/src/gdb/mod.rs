//! A gdb remote stub for the guest kernel, on the `gdbstub` crate.
//!
//! `arena-vmm --gdb ADDR` builds the VM and holds its first instruction
//! until a client attaches and resumes it; `--gdb-on-demand ADDR` runs the
//! VM normally and, on SIGUSR2, pauses every vCPU and listens (for the
//! runner's keep-a-failing-VM-for-gdb). Either way SIGUSR2 re-attaches
//! after a detach. One client at a time; it sees:
//!
//! - one thread per vCPU ([`target`]), registers from KVM's regs, sregs
//!   and FPU state ([`regs`]);
//! - memory at guest virtual addresses, translated page by page with
//!   `KVM_TRANSLATE` on a stopped vCPU and bounds-checked against guest
//!   RAM ([`memory`]);
//! - hardware breakpoints in DR0–DR3 and software `int3` breakpoints
//!   through `KVM_SET_GUEST_DEBUG` ([`breakpoints`]), single-step, and
//!   stop reasons from `KVM_EXIT_DEBUG` ([`stop`]);
//! - Ctrl-C, detach (the VM runs on without a debugger) and kill (the VM
//!   ends, exit status [`crate::EXIT_DEBUGGER_KILL`]) ([`session`]).
//!
//! All-stop: whenever gdb has the VM stopped, every vCPU is out of
//! `KVM_RUN`, paused by the same stop/kick/join the run loop uses for
//! snapshots; resuming starts their threads again. Debugging a boot: a
//! kernel maps (PVH vmlinux) or decompresses (bzImage) itself after the
//! first instruction, so breakpoints at kernel virtual addresses set
//! before boot must be hardware ones (`hbreak`); `break` (an `int3`
//! written into memory) needs the code mapped and in place.
//!
//! Software breakpoints need KVM to intercept the guest's `int3`; where
//! it does not (PVM; KVM on QEMU TCG's emulated SVM, i.e. in `lab
//! nested`), they are refused with an error reply ([`probe`]).
//! Single-step and hardware breakpoints work on all three.

pub mod breakpoints;
pub mod config;
pub mod memory;
pub mod probe;
pub mod regs;
pub mod session;
pub mod signal;
pub mod stop;
pub mod target;

pub use crate::event::{ClientEvent, ClientInput, DebugExit};
pub use config::{GdbConfig, GdbError, GDB_FLAG, GDB_ON_DEMAND_FLAG};
pub use session::{Debugger, Outcome};
