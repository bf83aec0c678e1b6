//! VM backends. A backend turns a [`VmSpec`] into the command that runs the
//! VM; the session (timeouts, results channel, verdicts) is the same for all.
//! Both backends put the kernel log on the serial console and bridge the
//! guest's virtio console to a Unix socket the runner listens on.

pub mod kvm;

pub mod qemu;

use std::path::PathBuf;
use std::process::Command;

/// Where the serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Console {
    /// Written to this file (`console.log`).
    File(PathBuf),
    /// Streamed to the runner's stdout (`lab boot`).
    Stdout,
}

/// Everything a backend needs to start a VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Kernel image (vmlinux with PVH entry, or bzImage).
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest RAM.
    pub memory_mib: u32,
    /// Serial console destination.
    pub console: Console,
    /// Unix socket (listening, owned by the runner) for the virtio console.
    pub channel: Option<PathBuf>,
}

/// Which backend a user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// Our own VMM where hardware KVM can run a stock kernel, else QEMU/TCG.
    Auto,
    /// arena lab's own VMM (needs hardware KVM).
    Kvm,
    /// QEMU microvm (KVM where usable, else TCG).
    Qemu,
}

/// A chosen backend.
pub trait Backend: Send + Sync {
    /// `qemu` or `kvm`.
    fn name(&self) -> &'static str;
    /// Accelerator in use (`tcg`, `kvm`).
    fn accelerator(&self) -> &'static str;
    /// The command that runs the VM described by `spec`.
    fn command(&self, spec: &VmSpec) -> Command;
    /// The file of `kernel` this backend boots, or why it cannot boot it.
    fn boot_file(&self, kernel: &arena_images::kernel::Kernel) -> Result<PathBuf, String> {
        Ok(kernel.boot_image.clone())
    }
}

/// The backend for `choice`, with the one-line reason for the pick.
pub fn select(choice: BackendChoice) -> Result<(Box<dyn Backend>, String), String> {
    let kvm = vmm::probe::probe();
    let own = |why: String| -> Result<(Box<dyn Backend>, String), String> {
        Ok((Box::new(kvm::OwnVmm::locate()?), why))
    };
    match (choice, kvm.usable) {
        (BackendChoice::Kvm, true) | (BackendChoice::Auto, true) => {
            own(format!("own VMM on KVM: {}", kvm.reason))
        }
        (BackendChoice::Kvm, false) => {
            own(format!("own VMM forced on a host where {}", kvm.reason))
        }
        (BackendChoice::Qemu, true) => Ok((
            Box::new(qemu::Qemu::new(qemu::Accel::Kvm)),
            format!("qemu with KVM: {}", kvm.reason),
        )),
        (BackendChoice::Qemu, false) | (BackendChoice::Auto, false) => Ok((
            Box::new(qemu::Qemu::new(qemu::Accel::Tcg)),
            format!("qemu with TCG: {}", kvm.reason),
        )),
    }
}
