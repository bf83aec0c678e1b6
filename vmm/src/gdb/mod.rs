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
pub mod memory;
pub mod probe;
pub mod regs;
pub mod session;
pub mod signal;
pub mod stop;
pub mod target;

use std::net::SocketAddr;

pub use crate::event::{ClientEvent, ClientInput, DebugExit};
pub use session::{Debugger, Outcome};

/// `arena-vmm` flag: stub on ADDR, the VM halted until a client resumes it.
pub const GDB_FLAG: &str = "--gdb";
/// `arena-vmm` flag: stub on ADDR once SIGUSR2 pauses the VM.
pub const GDB_ON_DEMAND_FLAG: &str = "--gdb-on-demand";

/// Where and when the stub listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GdbConfig {
    /// TCP address to listen on (port 0: any free port, named on stderr).
    pub addr: SocketAddr,
    /// Hold the first instruction until a client resumes the VM (`--gdb`);
    /// otherwise wait for SIGUSR2 (`--gdb-on-demand`).
    pub wait: bool,
}

impl GdbConfig {
    /// The config `flag` (one of [`GDB_FLAG`], [`GDB_ON_DEMAND_FLAG`]) with
    /// `value` gives.
    pub fn parse(flag: &str, value: &str) -> Result<GdbConfig, String> {
        let addr = value
            .parse()
            .map_err(|e| format!("{flag} {value}: expected IP:PORT ({e})"))?;
        Ok(GdbConfig {
            addr,
            wait: flag == GDB_FLAG,
        })
    }

    /// The flag that gives this config.
    pub fn flag(&self) -> &'static str {
        if self.wait {
            GDB_FLAG
        } else {
            GDB_ON_DEMAND_FLAG
        }
    }
}

/// Why the stub could not serve.
#[derive(Debug, thiserror::Error)]
pub enum GdbError {
    /// The address could not be listened on.
    #[error("gdb stub: cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The client's socket or the reader thread failed.
    #[error("gdb stub: {0}")]
    Io(std::io::Error),
    /// `gdbstub` refused the session.
    #[error("gdb stub: {0}")]
    Protocol(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_to_configs_and_back() {
        let c = GdbConfig::parse(GDB_FLAG, "127.0.0.1:1234").unwrap();
        assert_eq!(c.addr, "127.0.0.1:1234".parse().unwrap());
        assert!(c.wait);
        assert_eq!(c.flag(), GDB_FLAG);
        let d = GdbConfig::parse(GDB_ON_DEMAND_FLAG, "[::1]:0").unwrap();
        assert!(!d.wait);
        assert_eq!(d.flag(), GDB_ON_DEMAND_FLAG);
        for bad in ["1234", "localhost:1234", "127.0.0.1", "127.0.0.1:99999", ""] {
            let e = GdbConfig::parse(GDB_FLAG, bad).unwrap_err();
            assert!(e.contains("expected IP:PORT"), "{e}");
        }
    }
}
