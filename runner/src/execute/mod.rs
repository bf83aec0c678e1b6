//! Running VMs: backends turn a VM description into a process, the
//! console is captured, one session drives a scenario in one VM, and
//! snapshots let a run restore instead of boot, and a signal stops them all.

pub mod backend;
pub mod console_capture;
pub mod session;
pub mod signals;
pub mod snapshot;
