//! Errors setting up or running a VM.

use crate::arch::x86_64::ArchError;
use crate::devices::BusError;
use crate::loader::LoadError;
use crate::memory::MemoryError;
use crate::snapshot::SnapshotError;
use crate::{gdb, vcpu};

/// Errors setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KVM ioctl failed.
    #[error("{0} failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Kernel, initrd or boot parameters could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// CPU or platform table setup failed.
    #[error(transparent)]
    Arch(#[from] ArchError),
    /// Device registration failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A host resource (file, socket, eventfd, thread) failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A snapshot file was refused or could not be applied.
    #[error("snapshot {0}: {1}")]
    Snapshot(String, SnapshotError),
    /// Saved device state was refused.
    #[error("cannot restore the snapshot: {0}")]
    Restore(String),
    /// The gdb stub could not start.
    #[error(transparent)]
    Gdb(#[from] gdb::GdbError),
    /// The vCPU kick signal's handler could not be installed.
    #[error(transparent)]
    Kick(#[from] vcpu::KickError),
}
